"""Bit-twiddling primitives for the numba kernels (128-bit values held as lo/hi words)."""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.extending import intrinsic

U64 = np.uint64


@intrinsic
def popcount64(typingctx, x):
    """Hardware popcount; numba exposes none for integers."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def ctz64(typingctx, x):
    """Count trailing zeros (64 for x == 0)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, False))

    return sig, codegen


@njit(inline="always", cache=True)
def shr128(lo, hi, s):
    """(lo, hi) >> s for 0 <= s < 128; shifts of >= 64 are undefined in LLVM, hence the cases."""
    if s == 0:
        return lo, hi
    if s < 64:
        return (lo >> U64(s)) | (hi << U64(64 - s)), hi >> U64(s)
    return hi >> U64(s - 64), U64(0)


@njit(inline="always", cache=True)
def shl128(lo, hi, s):
    """(lo, hi) << s for 0 <= s < 128."""
    if s == 0:
        return lo, hi
    if s < 64:
        return lo << U64(s), (hi << U64(s)) | (lo >> U64(64 - s))
    return U64(0), lo << U64(s - 64)


@njit(inline="always", cache=True)
def low_mask(n):
    """A word with the low n bits set, 0 <= n <= 64."""
    if n >= 64:
        return ~U64(0)
    return (U64(1) << U64(n)) - U64(1)


@njit(inline="always", cache=True)
def read_bits(words, pos, n):
    """n <= 64 bits of a little-endian bit stream held in uint64 words, from bit pos.

    The caller pads `words` by one word so the second read never leaves the array.
    """
    i = pos >> 6
    s = pos & 63
    v = words[i] >> U64(s)
    if s != 0:
        v |= words[i + 1] << U64(64 - s)
    return v & low_mask(n)


@njit(inline="always", cache=True)
def read128(words, pos):
    """128 bits from bit pos (words padded by two)."""
    i = pos >> 6
    s = pos & 63
    if s == 0:
        return words[i], words[i + 1]
    lo = (words[i] >> U64(s)) | (words[i + 1] << U64(64 - s))
    hi = (words[i + 1] >> U64(s)) | (words[i + 2] << U64(64 - s))
    return lo, hi
