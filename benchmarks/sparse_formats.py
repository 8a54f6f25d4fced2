"""The sparse formats people use today, implemented for real so they can be measured.

Each format stores the same thing xorsparse does: which weights are kept, their q-bit
quantization codes and the per-row scales. Each has an `encode` returning the stored bytes
and their bit counts, and a `decode` that rebuilds the dense float32 tensor; the benchmark
checks every decode against the reference bit for bit.
"""

from __future__ import annotations

import heapq
import lzma
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from numba import njit

from xorsparse.tensor.quant import Quantized


@dataclass
class Sparse:
    """What every format stores: kept positions, their codes, and the dequantization levels."""

    shape: tuple[int, int]
    pos: np.ndarray  # int64 row-major positions of kept weights
    codes: np.ndarray  # uint8 codes of kept weights (bit i = plane i)
    levels: np.ndarray  # float32 (rows, 2^q): value of each code in each row
    q: int
    scale_bits: int

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def levels_table(qz: Quantized) -> np.ndarray:
    """Value of every code per row: dequant.levels_table, the library's float32 operations."""
    if qz.group_size != qz.cols and qz.cols:
        raise ValueError("the formats benchmark uses one scale group per row")
    from xorsparse.tensor.dequant import levels_table as per_group

    return np.ascontiguousarray(per_group(qz)[:, 0, :]) if qz.rows else np.zeros((0, 1 << qz.bits), np.float32)


def from_quantized(qz: Quantized, keep: np.ndarray) -> Sparse:
    flat = keep.ravel()
    pos = np.flatnonzero(flat)
    codes = np.zeros(pos.size, dtype=np.uint8)
    for i in range(qz.bits):
        codes |= qz.planes[i][pos] << i
    return Sparse((qz.rows, qz.cols), pos, codes, levels_table(qz), qz.bits, qz.scale_bits)


def scatter_dense(sp: Sparse, pos: np.ndarray, codes: np.ndarray) -> np.ndarray:
    rows, cols = sp.shape
    out = np.zeros(rows * cols, dtype=np.float32)
    out[pos] = sp.levels[pos // cols, codes]
    return out.reshape(rows, cols)


@dataclass
class Stored:
    value_bits: int
    total_bits: int
    decode: Callable[[], np.ndarray]


# --- CSR (scipy.sparse), int32 column indices, packed q-bit values ---------------------------

def pack_codes(codes: np.ndarray, q: int) -> np.ndarray:
    bits = ((codes[:, None] >> np.arange(q, dtype=np.uint8)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little")


def unpack_codes(packed: np.ndarray, n: int, q: int) -> np.ndarray:
    bits = np.unpackbits(packed, bitorder="little", count=n * q).reshape(n, q)
    return (bits << np.arange(q, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def csr(sp: Sparse) -> Stored:
    import scipy.sparse

    rows, cols = sp.shape
    indptr = np.searchsorted(sp.pos // cols, np.arange(rows + 1)).astype(np.int32)
    indices = (sp.pos % cols).astype(np.int32)
    packed = pack_codes(sp.codes, sp.q)
    n = sp.pos.size

    def decode():
        codes = unpack_codes(packed, n, sp.q)
        row_of = np.repeat(np.arange(rows), np.diff(indptr))
        vals = sp.levels[row_of, codes]
        return scipy.sparse.csr_matrix((vals, indices, indptr), shape=sp.shape).toarray()

    value = n * sp.q + sp.scale_bits
    return Stored(value, value + 32 * (rows + 1) + 32 * n, decode)


# --- compressed-tensors style: 1-bit mask + int8 values ----------------------------------------

def bitmask_layout(sp: Sparse) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(sp.numel, dtype=bool)
    mask[sp.pos] = True
    return np.packbits(mask, bitorder="little"), sp.codes.astype(np.int8)


def decode_bitmask_layout(sp: Sparse, mask_bytes: np.ndarray, values: np.ndarray) -> np.ndarray:
    keep = np.unpackbits(mask_bytes, bitorder="little", count=sp.numel).astype(bool)
    pos = np.flatnonzero(keep)
    return scatter_dense(sp, pos, values.view(np.uint8))


def bitmask_int8(sp: Sparse) -> Stored:
    mask_bytes, values = bitmask_layout(sp)
    value = 8 * values.size + sp.scale_bits
    return Stored(value, value + sp.numel, lambda: decode_bitmask_layout(sp, mask_bytes, values))


# --- general-purpose compressors over the bitmask layout ----------------------------------------

def _compressed(sp: Sparse, compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]) -> Stored:
    mask_bytes, values = bitmask_layout(sp)
    blob = compress(mask_bytes.tobytes() + values.tobytes())
    values_only = compress(values.tobytes())
    nmask = mask_bytes.size

    def decode():
        raw = np.frombuffer(decompress(blob), dtype=np.uint8)
        return decode_bitmask_layout(sp, raw[:nmask], raw[nmask:].view(np.int8))

    return Stored(8 * len(values_only) + sp.scale_bits, 8 * len(blob) + sp.scale_bits, decode)


def zstd19(sp: Sparse) -> Stored:
    import zstandard

    c = zstandard.ZstdCompressor(level=19)
    d = zstandard.ZstdDecompressor()
    return _compressed(sp, c.compress, d.decompress)


def lzma9(sp: Sparse) -> Stored:
    return _compressed(sp, lambda b: lzma.compress(b, preset=9), lzma.decompress)


# --- Deep Compression: 4-bit relative indices with fillers, Huffman-coded indices and values --

def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length per symbol (0 for unused symbols); a lone symbol gets length 1."""
    used = [(int(c), i) for i, c in enumerate(counts) if c > 0]
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(used) == 1:
        lengths[used[0][1]] = 1
        return lengths
    heap = [(c, k, [i]) for k, (c, i) in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes, stored bit-reversed so they can be written LSB first."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code = 0
    prev = 0
    for sym in sorted((int(l), s) for s, l in enumerate(lengths) if l > 0):
        length, s = sym
        code <<= length - prev
        prev = length
        rev = int(format(code, f"0{length}b")[::-1], 2)
        codes[s] = rev
        code += 1
    return codes


@njit(cache=True)
def _huff_encode(symbols, codes, lengths, out):
    pos = 0
    for s in symbols:
        c = codes[s]
        for i in range(lengths[s]):
            if (c >> i) & 1:
                out[pos >> 3] |= np.uint8(1 << (pos & 7))
            pos += 1
    return pos


@njit(cache=True)
def _huff_decode(data, n, table_sym, table_len, maxlen, out):
    pos = 0
    nbits = data.shape[0] * 8
    for k in range(n):
        window = 0
        for i in range(maxlen):
            p = pos + i
            if p < nbits and (data[p >> 3] >> (p & 7)) & 1:
                window |= 1 << i
        out[k] = table_sym[window]
        pos += table_len[window]


class Huffman:
    def __init__(self, symbols: np.ndarray, nsym: int):
        counts = np.bincount(symbols, minlength=nsym)
        self.lengths = huffman_lengths(counts)
        self.codes = canonical_codes(self.lengths)
        self.maxlen = int(self.lengths.max()) if symbols.size else 1
        self.nbits = int((counts * self.lengths).sum())
        self.table_bits = 8 * nsym  # the codebook: one byte of code length per symbol
        self.data = np.zeros((self.nbits + 7) // 8, dtype=np.uint8)
        if symbols.size:
            _huff_encode(symbols.astype(np.int64), self.codes, self.lengths, self.data)
        size = 1 << self.maxlen
        self.table_sym = np.zeros(size, dtype=np.int64)
        self.table_len = np.zeros(size, dtype=np.int64)
        for s in np.flatnonzero(self.lengths):
            step = 1 << int(self.lengths[s])
            self.table_sym[int(self.codes[s])::step] = s
            self.table_len[int(self.codes[s])::step] = self.lengths[s]
        self.n = symbols.size

    def decode(self) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.int64)
        _huff_decode(self.data, self.n, self.table_sym, self.table_len, self.maxlen, out)
        return out


def deep_compression(sp: Sparse, index_bits: int = 4) -> Stored:
    span = 1 << index_bits
    gaps = np.diff(np.concatenate(([-1], sp.pos))) - 1  # zeros skipped before each kept weight
    fillers = gaps // span  # each filler entry skips `span` positions and stores a zero
    n_entries = sp.pos.size + int(fillers.sum())
    idx = np.empty(n_entries, dtype=np.int64)
    val = np.empty(n_entries, dtype=np.int64)
    filler_sym = 1 << sp.q
    # entries for kept weight k: fillers[k] filler entries (index span-1) then the weight itself
    starts = np.concatenate(([0], np.cumsum(fillers + 1)[:-1])) if sp.pos.size else np.zeros(0, np.int64)
    is_real = np.zeros(n_entries, dtype=bool)
    real_at = starts + fillers
    is_real[real_at] = True
    idx[~is_real] = span - 1
    val[~is_real] = filler_sym
    idx[real_at] = gaps - fillers * span
    val[real_at] = sp.codes
    h_idx = Huffman(idx, span)
    h_val = Huffman(val, filler_sym + 1)

    def decode():
        di = h_idx.decode()
        dv = h_val.decode()
        pos = np.cumsum(di + 1) - 1
        real = dv != filler_sym
        return scatter_dense(sp, pos[real], dv[real].astype(np.uint8))

    value = h_val.nbits + h_val.table_bits + sp.scale_bits
    return Stored(value, value + h_idx.nbits + h_idx.table_bits, decode)


# --- zipnn: lossless compression of the dense pruned-and-quantized tensor ------------------------

def zipnn_dense(dense: np.ndarray, sp: Sparse) -> Stored:
    """The real `zipnn` package on the dense float32 tensor (its byte grouping + entropy coding)."""
    import zipnn

    z = zipnn.ZipNN(input_format="numpy", bytearray_dtype="float32", threads=1)
    a = np.ascontiguousarray(dense, dtype=np.float32)
    blob = z.compress(a)

    def decode():
        return np.asarray(z.decompress(blob), dtype=np.float32).reshape(a.shape)

    bits = 8 * len(blob)
    return Stored(bits, bits, decode)


FORMATS: dict[str, Callable[[Sparse], Stored]] = {
    "csr-int32": csr,
    "bitmask+int8": bitmask_int8,
    "deep-compression": deep_compression,
    "zstd-19": zstd19,
    "lzma": lzma9,
}


def info(_: Any = None) -> str:
    return ", ".join(FORMATS)
