"""Coding the pruning mask, which the decoder needs to zero the don't-care positions.

`bitmask` is one bit per weight. `entropy` codes the gaps between kept weights with a
Golomb code whose parameter is chosen per block of BLOCK positions: on random masks the
gaps are geometric, for which Golomb codes are the optimal prefix codes (within 1% of the
binary entropy from 50% to 99% sparsity), and decoding costs work per *kept* weight, not
per position. Blocks decode independently (in parallel) through an offset table. `ctx`
(maskctx.py, format version 2) range-codes each position with a probability from a
row x column model the file carries. The default (`auto`) keeps whichever is smallest.
Layout: docs/FORMAT.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from ..codec._bits import U64

DEFAULT_BLOCK = 1 << 16
MAX_GOLOMB = 1 << 20


@dataclass(frozen=True)
class MaskCode:
    codec: str  # "bitmask", "entropy" or "ctx"
    length: int
    data: np.ndarray  # uint8
    block: int = 0  # entropy: positions per block (a multiple of 64)
    offsets: np.ndarray | None = None  # entropy: uint32 end offset of each block's bytes
    params: np.ndarray | None = None  # entropy: uint32 Golomb parameter m of each block
    model: Any = None  # ctx: maskctx.CtxModel (offsets hold the block table)

    @property
    def nbits(self) -> int:
        """Bits the mask costs: payload plus the block table (and the ctx model)."""
        n = self.data.size * 8
        if self.codec == "entropy":
            n += self.offsets.size * 32 + self.params.size * 32
        if self.codec == "ctx":
            n += self.offsets.size * 32 + self.model.data.size * 8
        return n


def binary_entropy(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


@njit(inline="always", cache=True)
def _code_len(g, m, b, u):
    r = g % m
    extra = 0 if m == 1 else (b - 1 if r < u else b)
    return g // m + 1 + extra


@njit(cache=True)
def _gaps(keep):
    """Gaps before each kept position, plus the gap to the end of the block (the terminator)."""
    n = 0
    for v in keep:
        n += v
    gaps = np.empty(n + 1, dtype=np.int64)
    prev = -1
    k = 0
    for i in range(keep.shape[0]):
        if keep[i]:
            gaps[k] = i - prev - 1
            prev = i
            k += 1
    gaps[k] = keep.shape[0] - prev - 1
    return gaps


@njit(cache=True)
def _golomb_shape(m):
    b = 0
    while (1 << b) < m:
        b += 1
    return b, (1 << b) - m


@njit(cache=True)
def _best_param(gaps, length):
    """The Golomb parameter with the fewest bits for these gaps, searched near the optimum."""
    n = gaps.shape[0]
    p = (n - 1) / length if length else 0.5
    if p <= 0.0:
        m0 = MAX_GOLOMB
    elif p >= 0.5:
        m0 = 1
    else:
        m0 = int(np.ceil(np.log(2.0 - p) / -np.log(1.0 - p)))
    best_m = 1
    best = -1
    lo = max(1, m0 // 2)
    hi = min(MAX_GOLOMB, 2 * m0 + 1)
    m = lo
    while m <= hi:
        b, u = _golomb_shape(m)
        total = 0
        for g in gaps:
            total += _code_len(g, m, b, u)
        if best < 0 or total < best:
            best = total
            best_m = m
        m = m + 1 if m < 64 else m + max(1, m // 32)
    return best_m, best


@njit(cache=True)
def _put(out, pos, bit):
    if bit:
        out[pos >> 3] |= np.uint8(1 << (pos & 7))


@njit(cache=True)
def _golomb_encode(gaps, m, out):
    b, u = _golomb_shape(m)
    pos = 0
    for g in gaps:
        q = g // m
        r = g % m
        for _ in range(q):
            _put(out, pos, 1)
            pos += 1
        pos += 1  # the 0 that ends the unary part
        if m > 1:
            if r < u:
                nb, v = b - 1, r
            else:
                nb, v = b, r + u
            for i in range(nb - 1, -1, -1):  # most significant bit first
                _put(out, pos, (v >> i) & 1)
                pos += 1
    return pos


@njit(cache=True)
def _encode_blocks(keep, block, params, scratch, sizes):
    nb = params.shape[0]
    for i in range(nb):
        s = i * block
        e = min(keep.shape[0], s + block)
        gaps = _gaps(keep[s:e])
        m, _ = _best_param(gaps, e - s)
        params[i] = m
        nbits = _golomb_encode(gaps, m, scratch[i])
        sizes[i] = (nbits + 7) // 8


@njit(cache=True)
def _decode_block(data, start, end, m, length, out, w0):
    """Set the kept bits of one block in `out` (from word w0); False if the data are bad.

    Bit by bit: unary runs are short on typical masks (about 1.4 bits at 90% sparsity), and
    this measured faster than reading 64-bit windows.
    """
    b, u = _golomb_shape(m)
    pos = start * 8
    limit = end * 8
    prev = -1
    while True:
        q = 0
        while True:
            if pos >= limit:
                return False
            bit = (data[pos >> 3] >> (pos & 7)) & 1
            pos += 1
            if bit == 0:
                break
            q += 1
        r = 0
        if m > 1:
            if pos + b - 1 > limit:
                return False
            for _ in range(b - 1):
                r = (r << 1) | ((data[pos >> 3] >> (pos & 7)) & 1)
                pos += 1
            if r >= u:
                if pos >= limit:
                    return False
                r = ((r << 1) | ((data[pos >> 3] >> (pos & 7)) & 1)) - u
                pos += 1
        p = prev + 1 + q * m + r
        if p == length:
            return True
        if p > length:
            return False
        out[w0 + (p >> 6)] |= U64(1) << U64(p & 63)
        prev = p


@njit(parallel=True, cache=True)
def _decode_blocks(data, offsets, params, block, length, words, ok):
    nb = params.shape[0]
    for i in prange(nb):
        s = i * block
        e = min(length, s + block)
        start = offsets[i - 1] if i > 0 else 0
        ok[i] = _decode_block(data, np.int64(start), np.int64(offsets[i]), params[i], e - s, words, s >> 6)


def encode_entropy(keep: np.ndarray, block: int = DEFAULT_BLOCK) -> MaskCode:
    if block <= 0 or block % 64:
        raise ValueError(f"mask block must be a positive multiple of 64, got {block}")
    k = np.ascontiguousarray(np.asarray(keep, dtype=bool).ravel()).view(np.uint8)
    nb = -(-k.size // block)
    params = np.zeros(nb, dtype=np.uint32)
    # worst case: m = 1 and every position kept, one bit each, plus the terminator
    scratch = np.zeros((max(nb, 1), min(block, max(k.size, 1)) // 8 + 16), dtype=np.uint8)
    sizes = np.zeros(max(nb, 1), dtype=np.int64)
    if nb:
        _encode_blocks(k, block, params, scratch, sizes)
    sizes = sizes[:nb]
    offsets = np.cumsum(sizes).astype(np.uint32)
    data = np.concatenate([scratch[i, : sizes[i]] for i in range(nb)]) if nb else np.zeros(0, np.uint8)
    return MaskCode("entropy", k.size, data, block, offsets, params)


def encode_bitmask(keep: np.ndarray) -> MaskCode:
    k = np.asarray(keep, dtype=bool).ravel()
    return MaskCode("bitmask", k.size, np.packbits(k, bitorder="little"))


def encode_mask(keep: np.ndarray, codec: str = "auto", block: int = DEFAULT_BLOCK,
                cols: int | None = None) -> MaskCode:
    """cols: row length of the row-major mask, for the ctx model (default: keep's last axis)."""
    if codec == "bitmask":
        return encode_bitmask(keep)
    if codec == "entropy":
        return encode_entropy(keep, block)
    if codec == "ctx":
        from .maskctx import encode_ctx

        return encode_ctx(keep, cols, block)
    if codec == "auto":
        from .maskctx import encode_ctx

        cands = [encode_entropy(keep, block), encode_bitmask(keep), encode_ctx(keep, cols, block)]
        return min(cands, key=lambda c: c.nbits)  # ties: the first (the cheaper decode)
    raise ValueError(f"mask codec must be 'auto', 'bitmask', 'entropy' or 'ctx', got {codec!r}")


def decode_mask_words(code: MaskCode) -> np.ndarray:
    """The mask as little-endian packed bits in uint64 words (ceil(length/64) + 1 words)."""
    n = code.length
    nw = -(-n // 64) + 1
    if code.codec == "bitmask":
        if code.data.size != -(-n // 8):
            raise ValueError(f"bitmask holds {code.data.size} bytes, expected {-(-n // 8)}")
        out = np.zeros(nw * 8, dtype=np.uint8)
        out[: code.data.size] = code.data
        words = out.view("<u8")
        if n % 64:
            words[n // 64] &= U64((1 << (n % 64)) - 1)
        return words
    if code.codec == "ctx":
        from .maskctx import decode_ctx_words

        return decode_ctx_words(code)
    if code.codec != "entropy":
        raise ValueError(f"unknown mask codec {code.codec!r}")
    if code.block <= 0 or code.block % 64:
        raise ValueError(f"mask block size {code.block} is not a positive multiple of 64")
    nb = -(-n // code.block)
    if code.offsets.size != nb or code.params.size != nb:
        raise ValueError(f"mask block table has {code.offsets.size} entries, expected {nb}")
    offs = code.offsets.astype(np.int64)
    if nb and (offs[-1] != code.data.size or np.any(np.diff(offs) < 0)):
        raise ValueError("mask block offsets do not match the mask data")
    if np.any(code.params == 0):
        raise ValueError("mask Golomb parameter of 0 is invalid")
    words = np.zeros(nw, dtype=np.uint64)
    ok = np.ones(max(nb, 1), dtype=np.bool_)
    if nb:
        _decode_blocks(code.data, offs, code.params.astype(np.int64), code.block, n, words, ok)
    if not ok[:nb].all():
        raise ValueError(f"mask block {int(np.argmin(ok[:nb]))} is corrupt or truncated")
    return words


def decode_mask(code: MaskCode) -> np.ndarray:
    """Flat boolean keep mask of code.length; ValueError if the data are inconsistent."""
    words = decode_mask_words(code)
    return np.unpackbits(words.view(np.uint8), bitorder="little", count=code.length).view(bool)

