"""The XOR network of a plane decoder as a netlist of two-input XOR gates.

Output j of a decoder is the parity of the window bits its row G[j] selects
(docs/FORMAT.md 1.3). Built output by output, that costs weight(G[j]) - 1 gates per output.
Many outputs share pairs of window bits, though: with sharing, one gate computes such a
pair once and every output that contains it reads the gate. This module finds the pairs
by Paar's greedy algorithm (C. Paar, "Optimized arithmetic for Reed-Solomon encoders",
ISIT 1997): repeatedly take the pair of signals that occurs together in the most outputs,
replace it by a new signal in those outputs, until no pair occurs in two outputs; then
each output XORs its remaining signals as a balanced tree (shallowest signals first).
Ties between equally frequent pairs go to the shallower pair, then the lower indices, so
the netlist is a pure function of the matrix.

The search runs on columns packed as bit sets over the outputs: the count of a pair is
popcount(col_a & col_b). Counts of existing pairs only ever fall (extraction removes
rows from both columns), so a max-heap with lazy re-scoring pops the true maximum: a
popped pair whose stored count is stale is pushed back with its current one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np

Sharing = Literal["paar", "none"]
SHARING_MODES = ("paar", "none")

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    """Popcount of each row of a 2-D uint64 array."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)
    return _POP8[np.ascontiguousarray(words).view(np.uint8)].sum(axis=-1)


def _pack_columns(g: np.ndarray) -> np.ndarray:
    """Column b of G (n_out x W) as ceil(n_out/64) little-endian words over the outputs."""
    n_out, w = g.shape
    nwords = -(-n_out // 64)
    padded = np.zeros((w, nwords * 64), dtype=np.uint8)
    padded[:, :n_out] = g.T
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


@dataclass(frozen=True)
class XorNetlist:
    """Signals 0..n_inputs-1 are the window bits; signal n_inputs + g is gates[g, 0] ^ gates[g, 1].

    outputs[j] is the signal that carries output j (a window bit where a row selects one).
    Gates are in topological order: each reads only earlier signals.
    """

    n_inputs: int
    gates: np.ndarray  # (n_gates, 2) int32
    outputs: np.ndarray  # (n_out,) int32
    sharing: str

    @property
    def n_gates(self) -> int:
        return int(self.gates.shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.outputs.shape[0])

    def signal_depths(self) -> np.ndarray:
        """XOR levels from the window to each signal (window bits are level 0)."""
        d = np.zeros(self.n_inputs + self.n_gates, dtype=np.int32)
        for g, (a, b) in enumerate(self.gates.tolist()):
            d[self.n_inputs + g] = max(d[a], d[b]) + 1
        return d

    @property
    def depth(self) -> int:
        """Logic depth of the network: the most XOR levels on any window-to-output path."""
        if self.n_outputs == 0:
            return 0
        return int(self.signal_depths()[self.outputs].max())

    def fanout(self) -> np.ndarray:
        """How many gate inputs and outputs read each signal."""
        f = np.bincount(self.gates.ravel(), minlength=self.n_inputs + self.n_gates)
        return f + np.bincount(self.outputs, minlength=self.n_inputs + self.n_gates)

    def evaluate(self, windows: np.ndarray) -> np.ndarray:
        """Outputs (n, n_out) uint8 for windows (n, n_inputs) of 0/1: checks the netlist in software."""
        windows = np.asarray(windows, dtype=np.uint8)
        n = windows.shape[0]
        sig = np.zeros((self.n_inputs + self.n_gates, -(-n // 8)), dtype=np.uint8)
        sig[: self.n_inputs] = np.packbits(windows.T, axis=1, bitorder="little")
        base = self.n_inputs
        for g, (a, b) in enumerate(self.gates.tolist()):
            np.bitwise_xor(sig[a], sig[b], out=sig[base + g])
        return np.unpackbits(sig[self.outputs], axis=1, bitorder="little", count=n).T.copy()

    def matrix(self) -> np.ndarray:
        """The n_out x n_inputs GF(2) matrix the netlist computes (for checking it against G)."""
        cols = np.zeros((self.n_inputs + self.n_gates, self.n_inputs), dtype=np.uint8)
        cols[np.arange(self.n_inputs), np.arange(self.n_inputs)] = 1
        base = self.n_inputs
        for g, (a, b) in enumerate(self.gates.tolist()):
            cols[base + g] = cols[a] ^ cols[b]
        return cols[self.outputs]


def _balanced(terms: list[int], depth: list[int], gates: list[tuple[int, int]], first_signal: int) -> int:
    """XOR `terms` together, two shallowest first (Huffman on depth); returns the result's signal."""
    heap = [(depth[t], t) for t in terms]
    heapq.heapify(heap)
    while len(heap) > 1:
        da, a = heapq.heappop(heap)
        db, b = heapq.heappop(heap)
        s = first_signal + len(gates)
        gates.append((a, b))
        depth.append(max(da, db) + 1)
        heapq.heappush(heap, (depth[s], s))
    return heap[0][1]


def _finish(g_rows: list[list[int]], n_inputs: int, gates: list[tuple[int, int]], depth: list[int],
            sharing: str) -> XorNetlist:
    outputs = []
    for j, terms in enumerate(g_rows):
        if not terms:
            raise ValueError(f"output {j} selects no window bit (a decoder row is never all zero)")
        outputs.append(_balanced(terms, depth, gates, n_inputs))
    return XorNetlist(n_inputs, np.array(gates, dtype=np.int32).reshape(-1, 2),
                      np.array(outputs, dtype=np.int32), sharing)


def build_netlist(g: np.ndarray, sharing: Sharing = "paar") -> XorNetlist:
    """Two-input XOR netlist computing y = G . window over GF(2) for G (n_out x W) of 0/1.

    sharing="none": every output is its own balanced tree (weight - 1 gates each).
    sharing="paar": shared sub-terms by Paar's greedy pair extraction, then balanced trees.
    """
    g = np.asarray(g, dtype=np.uint8)
    if g.ndim != 2:
        raise ValueError(f"G must be a matrix, got shape {g.shape}")
    if sharing not in SHARING_MODES:
        raise ValueError(f"sharing must be one of {SHARING_MODES}, got {sharing!r}")
    n_out, w = g.shape
    depth: list[int] = [0] * w
    gates: list[tuple[int, int]] = []
    if sharing == "none":
        return _finish([np.flatnonzero(row).tolist() for row in g], w, gates, depth, sharing)

    cols = _pack_columns(g)
    cap = max(16, 2 * w)
    store = np.zeros((cap, cols.shape[1]), dtype=np.uint64)
    store[:w] = cols
    nsig = w
    r = g.astype(np.int32)
    counts = r.T @ r
    ia, ib = np.triu_indices(w, 1)
    c = counts[ia, ib]
    keep = c >= 2
    heap = list(zip((-c[keep]).tolist(), [0] * int(keep.sum()), ia[keep].tolist(), ib[keep].tolist()))
    heapq.heapify(heap)
    while heap:
        negc, d, a, b = heapq.heappop(heap)
        both = store[a] & store[b]
        cur = int(_popcount_rows(both[None])[0])
        if cur != -negc:
            if cur >= 2:
                heapq.heappush(heap, (-cur, d, a, b))
            continue
        store[a] ^= both
        store[b] ^= both
        if nsig == cap:
            cap *= 2
            grown = np.zeros((cap, store.shape[1]), dtype=np.uint64)
            grown[:nsig] = store[:nsig]
            store = grown
        v = nsig
        store[v] = both
        nsig += 1
        gates.append((a, b))
        depth.append(max(depth[a], depth[b]) + 1)
        shared = _popcount_rows(store[:v] & both)
        for u in np.flatnonzero(shared >= 2).tolist():
            heapq.heappush(heap, (-int(shared[u]), max(depth[u], depth[v]), u, v))
    # what is left: per output, the signals whose columns still hold it
    bits = np.unpackbits(store[:nsig].view(np.uint8), axis=1, bitorder="little", count=n_out)
    rows = [[] for _ in range(n_out)]
    sig_idx, out_idx = np.nonzero(bits)
    order = np.lexsort((sig_idx, out_idx))
    for s, j in zip(sig_idx[order].tolist(), out_idx[order].tolist()):
        rows[j].append(s)
    return _finish(rows, w, gates, depth, sharing)


def naive_gate_count(g: np.ndarray) -> int:
    """XOR-2 gates without sharing: sum over outputs of (row weight - 1)."""
    w = np.asarray(g, dtype=np.int64).sum(axis=1)
    return int(np.maximum(w - 1, 0).sum())
