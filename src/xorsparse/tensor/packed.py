"""Packed planes: the plane's bits at the kept positions, one bit each, in row-major order.

The XOR-gate code spends about 2% more than the care bits and has fixed costs per plane
(the rate grid, the last slices of a chunk), which on small tensors (a 3x3 convolution of
864 weights) push its efficiency down to 0.7. There the bits are stored as they are: exactly
one bit per kept weight, decoded by walking the mask, which costs nothing at that size.
Format version 2; layout in docs/FORMAT.md section 1.8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ..codec._bits import U64, ctz64


@dataclass(frozen=True)
class PackedPlane:
    length: int
    care_bits: int  # kept positions = bits stored
    stream: np.ndarray  # uint8, ceil(care_bits / 8) bytes, little-endian bit order
    patches: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kind: str = "packed"
    n_in: int = 0
    n_out: int = 0
    n_s: int = 0

    @property
    def stream_bits(self) -> int:
        return self.care_bits

    @property
    def patch_bits(self) -> int:
        return 0

    @property
    def value_bits(self) -> int:
        return self.care_bits

    @property
    def efficiency(self) -> float:
        return 1.0


def pack_plane(bits: np.ndarray, keep: np.ndarray) -> PackedPlane:
    """bits, keep: natural (row-major) order, one element per position."""
    k = np.asarray(keep, dtype=bool).ravel()
    b = np.asarray(bits).ravel()[k].astype(bool)
    return PackedPlane(int(k.size), int(b.size), np.packbits(b, bitorder="little"))


@njit(cache=True)
def _unpack(mask_words, stream, nwords, out):
    j = 0
    for w in range(nwords):
        m = mask_words[w]
        acc = U64(0)
        while m:
            b = ctz64(m)
            m &= m - U64(1)
            if (stream[j >> 3] >> (j & 7)) & 1:
                acc |= U64(1) << U64(b)
            j += 1
        out[w] = acc
    return j


def unpack_plane_words(p: PackedPlane, mask_words: np.ndarray, out: np.ndarray) -> None:
    """Natural-order packed plane words from the mask: the j-th kept position gets bit j."""
    nwords = -(-p.length // 64)
    kept = int(np.unpackbits(mask_words[:nwords].view(np.uint8)).sum()) if nwords else 0
    if kept != p.care_bits:
        raise ValueError(f"packed plane holds {p.care_bits} bits for {kept} kept weights")
    if p.stream.size != -(-p.care_bits // 8):
        raise ValueError(f"packed plane stream holds {p.stream.size} bytes, expected {-(-p.care_bits // 8)}")
    if nwords:
        stream = p.stream if p.stream.size else np.zeros(1, np.uint8)
        _unpack(mask_words, stream, nwords, out)
