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


@intrinsic
def mulhi64(typingctx, a, b):
    """The high 64 bits of the 128-bit product of two uint64."""
    if not isinstance(a, types.Integer) or not isinstance(b, types.Integer):
        return None
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        i128 = ir.IntType(128)
        x = builder.zext(args[0], i128)
        y = builder.zext(args[1], i128)
        return builder.trunc(builder.lshr(builder.mul(x, y), i128(64)), ir.IntType(64))

    return sig, codegen


def div_magic(d: int, limit: int) -> int:
    """The constant c of fast_div for divisor d and numerators below limit: ceil(2^64 / d)
    when limit and d are at most 2^32 (Lemire, Kaser and Kurz 2019: 64 >= 32 + log2(d) bits,
    so floor(n / d) is the high word of c * n for every such n), else 0 (fast_div divides)."""
    if d < 2 or d > (1 << 32) or limit > (1 << 32):
        return 0
    return -(-(1 << 64) // d) & ((1 << 64) - 1)


@njit(inline="always", cache=True)
def fast_div(a, d, c):
    """floor(a / d) for 0 <= a < 2^32 through one multiplication by c = div_magic(d, ...);
    c = 0: the division itself."""
    if c == 0:
        return a // d
    return np.int64(mulhi64(U64(c), U64(a)))


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
    """n <= 64 bits of a little-endian bit stream held in uint64 words, from bit pos >= 0.

    The caller pads `words` by one word so the second read never leaves the array.
    Branch-free (the high word is shifted in two steps so that s = 0 needs no case):
    the branchy form measured 15x slower inside the decoders' loops.
    """
    i = U64(pos) >> U64(6)  # pos >= 0: an unsigned index needs no negative-index fix-up
    s = U64(pos & 63)
    v = (words[i] >> s) | ((words[i + U64(1)] << (U64(63) - s)) << U64(1))
    if n >= 64:
        return v
    return v & ((U64(1) << U64(n)) - U64(1))


@njit(inline="always", cache=True)
def read128(words, pos):
    """128 bits from bit pos >= 0 (words padded by two), branch-free like read_bits."""
    i = U64(pos) >> U64(6)  # pos >= 0: an unsigned index needs no negative-index fix-up
    s = U64(pos & 63)
    r = U64(63) - s
    w1 = words[i + U64(1)]
    lo = (words[i] >> s) | ((w1 << r) << U64(1))
    hi = (w1 >> s) | ((words[i + U64(2)] << r) << U64(1))
    return lo, hi


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bit pattern of a float32, as uint32."""
    if not isinstance(x, types.Float) or x.bitwidth != 32:
        return None
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return sig, codegen


@intrinsic
def f32_to_f16_bits(typingctx, x):
    """float32 -> IEEE half with round-to-nearest-even (LLVM fptrunc), as uint16 bits."""
    if not isinstance(x, types.Float) or x.bitwidth != 32:
        return None
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        h = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(h, ir.IntType(16))

    return sig, codegen


@intrinsic
def f32_from_bits(typingctx, x):
    """The float32 whose IEEE bit pattern is the uint32 x."""
    if not isinstance(x, types.Integer) or x.bitwidth != 32:
        return None
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@intrinsic
def round_f32_to_f16(typingctx, x):
    """float32 rounded to the nearest IEEE half (ties to even), returned as float32."""
    if not isinstance(x, types.Float) or x.bitwidth != 32:
        return None
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(inline="always", cache=True)
def round_f32_to_bf16(x):
    """float32 rounded to the nearest bfloat16 (ties to even), returned as float32 (finite x)."""
    u = f32_bits(x)
    r = np.uint32((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))
    return f32_from_bits(r)


@njit(inline="always", cache=True)
def f32_to_bf16_bits(x):
    """float32 -> bfloat16 bits, round-to-nearest-even (as torch's conversion); NaN stays NaN."""
    u = f32_bits(x)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
