"""Coding the pruning mask, which the decoder needs to zero the don't-care positions.

`bitmask` is one bit per weight. `entropy` is a binary range coder with one static
probability per block of BLOCK positions: within a fraction of a percent of the binary
entropy on random masks, and blocks decode independently (in parallel) through an offset
table. The default (`auto`) keeps whichever is smaller. Layout: docs/FORMAT.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

DEFAULT_BLOCK = 1 << 16
PROB_BITS = 16
TOP = 1 << 24


@dataclass(frozen=True)
class MaskCode:
    codec: str  # "bitmask" or "entropy"
    length: int
    data: np.ndarray  # uint8
    block: int = 0  # entropy: positions per block
    offsets: np.ndarray | None = None  # entropy: uint32 end offset of each block's bytes
    probs: np.ndarray | None = None  # entropy: uint16 P(kept) of each block in 1/65536

    @property
    def nbits(self) -> int:
        """Bits the mask costs: payload plus the block table."""
        n = self.data.size * 8
        if self.codec == "entropy":
            n += self.offsets.size * 32 + self.probs.size * 16
        return n


def binary_entropy(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


@njit(cache=True)
def _shift_low(low, cache, cache_size, out, pos):
    # LZMA-style carry handling: bytes are held back while they could still be carried into
    if low < np.uint64(0xFF000000) or low >= np.uint64(1 << 32):
        carry = np.uint8(low >> np.uint64(32))
        temp = cache
        while True:
            out[pos] = np.uint8((temp + carry) & 0xFF)
            pos += 1
            temp = np.uint8(0xFF)
            cache_size -= 1
            if cache_size == 0:
                break
        cache = np.uint8((low >> np.uint64(24)) & np.uint64(0xFF))
    cache_size += 1
    low = (low & np.uint64(0x00FFFFFF)) << np.uint64(8)
    return low, cache, cache_size, pos


@njit(cache=True)
def _encode_block(bits, p1, out):
    """Range-code bits (1 = kept) with static P(1) = p1/65536; returns bytes written."""
    low = np.uint64(0)
    rng = np.uint64(0xFFFFFFFF)
    cache = np.uint8(0)
    cache_size = 1
    pos = 0
    p0 = np.uint64(65536 - p1)
    for b in bits:
        bound = (rng >> np.uint64(PROB_BITS)) * p0
        if b == 0:
            rng = bound
        else:
            low += bound
            rng -= bound
        while rng < np.uint64(TOP):
            rng <<= np.uint64(8)
            low, cache, cache_size, pos = _shift_low(low, cache, cache_size, out, pos)
    for _ in range(5):
        low, cache, cache_size, pos = _shift_low(low, cache, cache_size, out, pos)
    return pos


@njit(cache=True)
def _decode_block(data, start, end, p1, out):
    """Inverse of _encode_block into out; returns False if the block's bytes run out."""
    p0 = np.uint64(65536 - p1)
    rng = np.uint64(0xFFFFFFFF)
    code = np.uint64(0)
    pos = start
    for _ in range(5):
        byte = data[pos] if pos < end else np.uint8(0)
        code = ((code << np.uint64(8)) | np.uint64(byte)) & np.uint64(0xFFFFFFFFFF)
        pos += 1
    for n in range(out.shape[0]):
        bound = (rng >> np.uint64(PROB_BITS)) * p0
        if code < bound:
            rng = bound
            out[n] = 0
        else:
            code -= bound
            rng -= bound
            out[n] = 1
        while rng < np.uint64(TOP):
            if pos >= end + 5:
                return False
            byte = data[pos] if pos < end else np.uint8(0)
            rng <<= np.uint64(8)
            code = ((code << np.uint64(8)) | np.uint64(byte)) & np.uint64(0xFFFFFFFF)
            pos += 1
    return True


@njit(parallel=True, cache=True)
def _encode_blocks(bits, block, probs, scratch, sizes):
    nb = probs.shape[0]
    for i in prange(nb):
        s = i * block
        e = min(bits.shape[0], s + block)
        sizes[i] = _encode_block(bits[s:e], probs[i], scratch[i])


@njit(parallel=True, cache=True)
def _decode_blocks(data, offsets, probs, block, out, ok):
    nb = probs.shape[0]
    for i in prange(nb):
        s = i * block
        e = min(out.shape[0], s + block)
        start = offsets[i - 1] if i > 0 else 0
        ok[i] = _decode_block(data, np.int64(start), np.int64(offsets[i]), probs[i], out[s:e])


def block_probs(keep: np.ndarray, block: int) -> np.ndarray:
    """P(kept) per block in 1/65536, kept inside 1..65535 so both symbols stay codable."""
    n = keep.size
    nb = -(-n // block)
    counts = np.add.reduceat(keep.astype(np.int64), np.arange(nb) * block) if nb else np.zeros(0, np.int64)
    lens = np.minimum(block, n - np.arange(nb) * block)
    return np.clip(np.rint(counts * 65536.0 / np.maximum(lens, 1)), 1, 65535).astype(np.uint16)


def encode_entropy(keep: np.ndarray, block: int = DEFAULT_BLOCK) -> MaskCode:
    k = np.ascontiguousarray(np.asarray(keep, dtype=bool).ravel()).view(np.uint8)
    probs = block_probs(k, block)
    nb = probs.size
    # worst case per block: 16 bits/position at p=1/65536, plus flush bytes
    cap = 2 * min(block, max(k.size, 1)) + 16
    scratch = np.zeros((max(nb, 1), cap), dtype=np.uint8)
    sizes = np.zeros(max(nb, 1), dtype=np.int64)
    if nb:
        _encode_blocks(k, block, probs, scratch, sizes)
    sizes = sizes[:nb]
    offsets = np.cumsum(sizes).astype(np.uint32)
    data = np.concatenate([scratch[i, : sizes[i]] for i in range(nb)]) if nb else np.zeros(0, np.uint8)
    return MaskCode("entropy", k.size, data, block, offsets, probs)


def encode_bitmask(keep: np.ndarray) -> MaskCode:
    k = np.asarray(keep, dtype=bool).ravel()
    return MaskCode("bitmask", k.size, np.packbits(k, bitorder="little"))


def encode_mask(keep: np.ndarray, codec: str = "auto", block: int = DEFAULT_BLOCK) -> MaskCode:
    if codec == "bitmask":
        return encode_bitmask(keep)
    if codec == "entropy":
        return encode_entropy(keep, block)
    if codec == "auto":
        a, b = encode_entropy(keep, block), encode_bitmask(keep)
        return a if a.nbits < b.nbits else b
    raise ValueError(f"mask codec must be 'auto', 'bitmask' or 'entropy', got {codec!r}")


def decode_mask(code: MaskCode) -> np.ndarray:
    """Flat boolean keep mask of code.length; ValueError if the data are inconsistent."""
    n = code.length
    if code.codec == "bitmask":
        if code.data.size != -(-n // 8):
            raise ValueError(f"bitmask holds {code.data.size} bytes, expected {-(-n // 8)}")
        return np.unpackbits(code.data, bitorder="little", count=n).astype(bool)
    if code.codec != "entropy":
        raise ValueError(f"unknown mask codec {code.codec!r}")
    nb = -(-n // code.block) if code.block > 0 else -1
    if nb < 0 or code.offsets.size != nb or code.probs.size != nb:
        raise ValueError(f"mask block table has {code.offsets.size} entries, expected {nb}")
    if nb and (int(code.offsets[-1]) != code.data.size or np.any(np.diff(code.offsets.astype(np.int64)) < 0)):
        raise ValueError("mask block offsets do not match the mask data")
    if np.any(code.probs == 0):
        raise ValueError("mask block probability of 0 is invalid")
    out = np.zeros(n, dtype=np.uint8)
    ok = np.ones(max(nb, 1), dtype=np.bool_)
    if nb:
        _decode_blocks(code.data, code.offsets.astype(np.int64), code.probs, code.block, out, ok)
    if not ok[:nb].all():
        raise ValueError(f"mask block {int(np.argmin(ok))} is truncated")
    return out.view(bool)
