"""Quantization of the kept weights into q bit-planes plus per-row (or per-group) scales.

Both quantizers see only the kept weights: pruned positions become don't-care bits of
every plane, which is what makes the XOR code cheap. Scales are stored in float16 (the
format's usual cost, counted in every figure) unless a scale falls outside float16's
range (one that would overflow, or round to zero), in which case float32 is used for that
tensor. Subnormal float16 scales are allowed: they belong to rows of near-zero weights,
where their coarser relative precision costs nothing measurable.

Dequantization is one function used both by the reference path and by decompression, so
"bit-exact" means the codec returned exactly the planes the quantizer produced.

Scales are per (row, column group) by default; `scale_rows` > 1 shares one scale set among
that many consecutive rows (format version 2), which is what short-row tensors (depthwise
convolutions: rows of 9 or 25 weights) need, where per-row scales cost more than the codes.
The `codebook` quantizer (codebook.py) is the third quantizer.

A third kind, `affine`, does not quantize at all: it takes integer codes, scales and zero
points that already exist (compressed-tensors int4/int8 checkpoints) and stores them as
they are, so nothing is re-quantized (`quantize_given`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit, prange

from .logscale import decode_log8

BCQ_MAX_BITS = 4
UNIFORM_MAX_BITS = 8
SCALE_DTYPES = ("float16", "bfloat16", "float32")  # what an `affine` scale may be stored as
FP16_MIN = 2.0**-24  # smallest float16 subnormal
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Quantized:
    """q bit-planes over the flattened tensor and the scales that give them values."""

    quantizer: str
    bits: int
    planes: np.ndarray  # (q, size) uint8, C order of the tensor
    scales: np.ndarray  # bcq: (rows, groups, q); uniform: (rows, groups, 1 or 2)
    rows: int
    cols: int
    group_size: int  # columns per group; == cols when one group per row
    symmetric: bool = True
    # affine only: int8 zero points (rows, groups), None when symmetric (zero point 0);
    # scales then hold float32 values exactly representable in `scale_dtype`
    zero_points: np.ndarray | None = None
    scale_dtype: str = ""  # "" = the numpy dtype of `scales` (bcq, uniform, codebook)
    scale_rows: int = 1  # consecutive rows sharing one set of scales (version 2)
    codebook: np.ndarray | None = None  # codebook quantizer: (books, 2^q) float16/float32 levels
    codebook_rows: int = 0  # codebook quantizer: consecutive rows sharing one codebook
    scale_ref: np.ndarray | None = None  # log8 scales (uint8 `scales`): float32 reference per index

    @property
    def scale_storage_dtype(self) -> str:
        return self.scale_dtype or self.scales.dtype.name

    @property
    def parameter_bits(self) -> int:
        """Bits of scales (in their stored dtype; log8: 8 each plus 32 per reference), zero
        points and codebook."""
        sb = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64, "uint8": 8}[self.scale_storage_dtype]
        zb = 0 if self.zero_points is None else 8 * self.zero_points.size
        n = self.scales.size * sb + zb
        if self.scale_ref is not None:
            n += self.scale_ref.size * 32
        if self.codebook is not None:
            n += self.codebook.size * self.codebook.dtype.itemsize * 8
        return n

    @property
    def scale_format(self) -> str:
        """'log8' for 8-bit log-domain scales (version 2), else 'float' (F16 or F32)."""
        return "log8" if self.scales.dtype == np.uint8 else "float"

    def scale_values(self) -> np.ndarray:
        """The scales as float32, decoded from log8 bytes where stored so."""
        if self.scale_format == "log8":
            return decode_log8(self.scales, self.scale_ref)
        return self.scales.astype(np.float32)

    @property
    def scale_bits(self) -> int:
        """parameter_bits: everything but the planes that gives the codes their values."""
        return self.parameter_bits



def row_layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols): dim 0 is the output dimension of Linear and Conv weights."""
    size = int(np.prod(shape)) if shape else 1
    if len(shape) >= 2:
        return int(shape[0]), size // int(shape[0]) if shape[0] else 0
    return 1, size


def _groups(cols: int, group_size: int | None) -> tuple[int, int]:
    g = cols if not group_size or group_size >= cols else int(group_size)
    g = max(g, 1)
    return g, max(1, -(-cols // g))


def _scale_dtype(values: np.ndarray) -> np.dtype:
    a = np.abs(values[values != 0])
    if a.size and (a.min() < FP16_MIN or a.max() > FP16_MAX):
        return np.dtype(np.float32)
    return np.dtype(np.float16)


@njit(cache=True)
def _solve_small(a, y):
    """Gaussian elimination with partial pivoting for q <= 4; None-like (ok=False) if singular."""
    n = a.shape[0]
    m = a.copy()
    v = y.copy()
    for c in range(n):
        p = c
        for r in range(c + 1, n):
            if abs(m[r, c]) > abs(m[p, c]):
                p = r
        if abs(m[p, c]) < 1e-12:
            return v, False
        if p != c:
            for k in range(n):
                m[c, k], m[p, k] = m[p, k], m[c, k]
            v[c], v[p] = v[p], v[c]
        for r in range(c + 1, n):
            f = m[r, c] / m[c, c]
            for k in range(c, n):
                m[r, k] -= f * m[c, k]
            v[r] -= f * v[c]
    for c in range(n - 1, -1, -1):
        s = v[c]
        for k in range(c + 1, n):
            s -= m[c, k] * v[k]
        v[c] = s / m[c, c]
    return v, True


@njit(cache=True)
def _levels(alpha, q):
    """Value of every sign pattern c (bit i set = +alpha_i), summed in dequantize's order."""
    levels = np.zeros(1 << q, dtype=np.float32)
    for c in range(1 << q):
        acc = np.float32(0.0)
        for i in range(q):
            s = np.float32(1.0) if (c >> i) & 1 else np.float32(-1.0)
            acc += np.float32(alpha[i]) * s
        levels[c] = acc
    return levels


@njit(cache=True)
def _nearest(val, levels):
    best = 0
    bd = abs(val - levels[0])
    for c in range(1, levels.shape[0]):
        d = abs(val - levels[c])
        if d < bd:
            bd = d
            best = c
    return best


@njit(cache=True)
def _nearest_codes(vals, alpha, q, out_codes):
    levels = _levels(alpha, q)
    for n in range(vals.shape[0]):
        out_codes[n] = _nearest(vals[n], levels)


@njit(cache=True, nogil=True)
def _bcq_kernel(w, keep, q, gsize, ngroups, iters, alphas, codes):
    """Greedy residual BCQ, then alternating least-squares alphas / nearest sign patterns."""
    rows, cols = w.shape
    for r in range(rows):
        for g in range(ngroups):
            c0 = g * gsize
            c1 = min(cols, c0 + gsize)
            idx = np.empty(c1 - c0, dtype=np.int64)
            n = 0
            for c in range(c0, c1):
                if keep[r, c]:
                    idx[n] = c
                    n += 1
            if n == 0:
                for i in range(q):
                    alphas[r, g, i] = 0.0
                continue
            v = np.empty(n, dtype=np.float64)
            for k in range(n):
                v[k] = w[r, idx[k]]
            # greedy: alpha_i = mean |residual|, b_i = sign(residual)
            res = v.copy()
            alpha = np.zeros(q, dtype=np.float64)
            code = np.zeros(n, dtype=np.int64)
            for i in range(q):
                a = 0.0
                for k in range(n):
                    a += abs(res[k])
                a /= n
                alpha[i] = a
                for k in range(n):
                    if res[k] >= 0:
                        code[k] |= 1 << i
                        res[k] -= a
                    else:
                        res[k] += a
            # alternating refinement
            ata = np.zeros((q, q), dtype=np.float64)
            aty = np.zeros(q, dtype=np.float64)
            v32 = v.astype(np.float32)
            for _ in range(iters):
                ata[:, :] = 0.0
                aty[:] = 0.0
                for k in range(n):
                    for i in range(q):
                        si = 1.0 if (code[k] >> i) & 1 else -1.0
                        aty[i] += si * v[k]
                        for j in range(q):
                            sj = 1.0 if (code[k] >> j) & 1 else -1.0
                            ata[i, j] += si * sj
                sol, ok = _solve_small(ata, aty)
                if not ok:
                    break
                alpha[:] = sol
                _nearest_codes(v32, alpha, q, code)
            for i in range(q):
                alphas[r, g, i] = alpha[i]
            for k in range(n):
                codes[r, idx[k]] = code[k]


@njit(cache=True, nogil=True)
def bcq_reassign(w, keep, q, gsize, alphas, codes):
    """Best sign patterns for the stored (rounded) alphas."""
    rows, cols = w.shape
    for r in range(rows):
        for g in range(alphas.shape[1]):
            levels = _levels(alphas[r, g], q)
            for c in range(g * gsize, min(cols, (g + 1) * gsize)):
                if keep[r, c]:
                    codes[r, c] = _nearest(w[r, c], levels)


@njit(parallel=True, cache=True, nogil=True)
def _split_planes(flat, planes):
    q = planes.shape[0]
    for p in prange(flat.shape[0]):
        c = flat[p]
        for i in range(q):
            planes[i, p] = (c >> i) & 1


def codes_to_planes(codes: np.ndarray, q: int) -> np.ndarray:
    """(q, size) uint8 bit-planes of integer codes, in one pass (numpy's shift-and-stack
    per plane cost as much as binary-coding quantization itself)."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    planes = np.empty((q, flat.size), dtype=np.uint8)
    if q and flat.size:
        _split_planes(flat, planes)
    return planes


def planes_to_codes(planes: np.ndarray) -> np.ndarray:
    codes = np.zeros(planes.shape[1], dtype=np.int64)
    for i in range(planes.shape[0]):
        codes |= planes[i].astype(np.int64) << i
    return codes


def _check_bits(quantizer: str, bits: int, limit: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= limit:
        raise ValueError(f"{quantizer} bits must be in 1..{limit}, got {bits}")


def quantize_bcq(w: np.ndarray, keep: np.ndarray, bits: int, group_size: int | None = None,
                 iters: int = 15) -> Quantized:
    """Binary-coding quantization w ~ sum_i alpha_i b_i over the kept weights."""
    _check_bits("bcq", bits, BCQ_MAX_BITS)
    rows, cols = row_layout(w.shape)
    w2 = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(rows, cols))
    k2 = np.ascontiguousarray(np.asarray(keep, dtype=bool).reshape(rows, cols))
    gsize, ngroups = _groups(cols, group_size)
    alphas = np.zeros((rows, ngroups, bits), dtype=np.float64)
    codes = np.zeros((rows, cols), dtype=np.uint8)
    _bcq_kernel(w2, k2, bits, gsize, ngroups, int(iters), alphas, codes)
    sdt = _scale_dtype(alphas)
    stored = alphas.astype(sdt)
    bcq_reassign(w2, k2, bits, gsize, stored.astype(np.float32), codes)
    return Quantized("bcq", bits, codes_to_planes(codes, bits), stored, rows, cols, gsize, True)


def quantize_uniform(w: np.ndarray, keep: np.ndarray, bits: int, symmetric: bool = True,
                     group_size: int | None = None) -> Quantized:
    """Integer codes c in [0, 2^q - 1] per row/group.

    symmetric: value = scale * (c - (2^q - 1) / 2), scale = 2 max|w| / (2^q - 1);
    asymmetric: value = low + scale * c over [min, max] of the kept weights.
    """
    _check_bits("uniform", bits, UNIFORM_MAX_BITS)
    rows, cols = row_layout(w.shape)
    w2 = np.asarray(w, dtype=np.float32).reshape(rows, cols)
    k2 = np.asarray(keep, dtype=bool).reshape(rows, cols)
    gsize, ngroups = _groups(cols, group_size)
    pad = ngroups * gsize - cols
    wg = np.pad(w2, ((0, 0), (0, pad))).reshape(rows, ngroups, gsize)
    kg = np.pad(k2, ((0, 0), (0, pad))).reshape(rows, ngroups, gsize)
    levels = (1 << bits) - 1
    any_kept = kg.any(axis=2)
    if symmetric:
        amax = np.where(kg, np.abs(wg), 0).max(axis=2) if gsize else np.zeros((rows, ngroups), np.float32)
        scale = (2.0 * amax / levels).astype(np.float32)
        sdt = _scale_dtype(scale)
        scales = scale.astype(sdt)[..., None]
    else:
        lo = np.where(kg, wg, np.inf).min(axis=2) if gsize else np.zeros((rows, ngroups), np.float32)
        hi = np.where(kg, wg, -np.inf).max(axis=2) if gsize else np.zeros((rows, ngroups), np.float32)
        lo = np.where(any_kept, lo, 0).astype(np.float32)
        hi = np.where(any_kept, hi, 0).astype(np.float32)
        scale = ((hi - lo) / levels).astype(np.float32)
        sdt = _scale_dtype(np.concatenate([scale.ravel(), lo.ravel()]))
        scales = np.stack([scale.astype(sdt), lo.astype(sdt)], axis=-1)
    s32 = scales.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        if symmetric:
            x = wg / s32[..., 0:1] + levels / 2.0
        else:
            x = (wg - s32[..., 1:2]) / s32[..., 0:1]
    x = np.where(np.isfinite(x), x, 0.0)
    codes = np.clip(np.rint(x), 0, levels).astype(np.uint8)
    codes = np.where(kg, codes, 0).reshape(rows, ngroups * gsize)[:, :cols]
    return Quantized("uniform", bits, codes_to_planes(codes, bits), scales, rows, cols, gsize, symmetric)


def scale_groups(rows: int, cols: int, group_size: int, scale_rows: int) -> tuple[int, int]:
    """(scale rows, column groups) of the scales array."""
    return -(-rows // scale_rows), max(1, -(-cols // group_size))


def to_row_groups(a: np.ndarray, scale_rows: int, gsize: int, fill) -> np.ndarray:
    """(rows, cols) -> (scale rows, column groups * scale_rows * gsize): one virtual row per
    scale row, holding each column group's slices of its rows side by side, so the per-row
    quantizers fit one scale set to `scale_rows` rows at once. Padding gets `fill`."""
    rows, cols = a.shape
    rs, gc = scale_groups(rows, cols, gsize, scale_rows)
    pad = np.full((rs * scale_rows, gc * gsize), fill, dtype=a.dtype)
    pad[:rows, :cols] = a
    return np.ascontiguousarray(pad.reshape(rs, scale_rows, gc, gsize).transpose(0, 2, 1, 3)
                                .reshape(rs, gc * scale_rows * gsize))


def from_row_groups(v: np.ndarray, rows: int, cols: int, scale_rows: int, gsize: int) -> np.ndarray:
    rs, gc = scale_groups(rows, cols, gsize, scale_rows)
    out = v.reshape(rs, gc, scale_rows, gsize).transpose(0, 2, 1, 3).reshape(rs * scale_rows, gc * gsize)
    return np.ascontiguousarray(out[:rows, :cols])


def check_scale_rows(scale_rows: int) -> int:
    if isinstance(scale_rows, bool) or not isinstance(scale_rows, (int, np.integer)) or scale_rows < 1:
        raise ValueError(f"scale_rows must be a positive integer, got {scale_rows!r}")
    return int(scale_rows)


# Largest magnitude a float32 level may have so that it converts to a finite value of the
# tensor's dtype (float64 tensors are decoded through float32 levels, hence float32's).
LEVEL_LIMIT = {"float16": FP16_MAX, "bfloat16": float(np.uint32(0x7F7F0000).view(np.float32)),
               "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float32).max)}


def quantize_in_row_groups(quantize_groups: Callable[[np.ndarray, np.ndarray, int | None], Quantized],
                           w: np.ndarray, keep: np.ndarray, group_size: int | None, scale_rows: int) -> Quantized:
    """A per-group quantizer (quantize_groups(w, keep, group_size)) run with scale_rows
    consecutive rows sharing one scale set: each row group's columns become one long group."""
    rows, cols = row_layout(np.shape(w))
    if scale_rows == 1 or rows <= 1:
        return quantize_groups(w, keep, group_size)
    gsize, _ = _groups(cols, group_size)
    scale_rows = min(scale_rows, rows)
    w2 = np.asarray(w, dtype=np.float32).reshape(rows, cols)
    k2 = np.asarray(keep, dtype=bool).reshape(rows, cols)
    vw, vk = to_row_groups(w2, scale_rows, gsize, 0.0), to_row_groups(k2, scale_rows, gsize, False)
    v = quantize_groups(vw, vk, scale_rows * gsize)
    codes = from_row_groups(planes_to_codes(v.planes).reshape(vw.shape), rows, cols, scale_rows, gsize)
    return Quantized(v.quantizer, v.bits, codes_to_planes(codes, v.bits), v.scales, rows, cols, gsize, v.symmetric,
                     scale_rows=scale_rows)


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32 values; inf stays inf."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def round_to_scale_dtype(x: np.ndarray, scale_dtype: str) -> np.ndarray:
    """One IEEE rounding of float32 values to float16 / bfloat16 (identity for float32)."""
    x = np.asarray(x, dtype=np.float32)
    if scale_dtype == "float32":
        return x
    if scale_dtype == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    if scale_dtype == "bfloat16":
        return round_to_bfloat16(x)
    raise ValueError(f"scale dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")


def code_range(bits: int) -> tuple[int, int]:
    """Signed q-bit codes: [-2^(q-1), 2^(q-1) - 1], stored on the planes as code + 2^(q-1)."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def check_given_parameters(bits: int, scales: np.ndarray, zero_points: np.ndarray | None, scale_dtype: str,
                           rows: int, groups: int) -> None:
    """What an affine tensor's parameters must satisfy (shared by quantize_given and validation)."""
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"affine bits must be in 1..8, got {bits!r}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"affine scale dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")
    if tuple(scales.shape) != (rows, groups, 1):
        raise ValueError(f"scales have shape {tuple(scales.shape)}, expected {(rows, groups, 1)}")
    s = np.asarray(scales, dtype=np.float32)
    if s.size and not np.all(np.isfinite(s)):
        raise ValueError("scales contain NaN or infinite values")
    if s.size and not np.array_equal(round_to_scale_dtype(s, scale_dtype).view(np.uint32), s.view(np.uint32)):
        raise ValueError(f"scales are not {scale_dtype} values")
    if zero_points is not None:
        if zero_points.dtype != np.int8:
            raise ValueError(f"zero points must be int8, got {zero_points.dtype}")
        if tuple(zero_points.shape) != (rows, groups):
            raise ValueError(f"zero points have shape {tuple(zero_points.shape)}, expected {(rows, groups)}")


def given_keep(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
               group_size: int) -> np.ndarray:
    """Kept positions of an affine tensor: all but those that dequantize to +0.0 because
    their code equals the zero point (and the scale's sign bit is clear, so 0 * scale = +0).

    Those positions decode to +0.0 as pruned weights, exactly what the given parameters
    give; every other code, even one whose value rounds to zero, is stored as it is.
    """
    rows, cols = row_layout(codes.shape)
    c = np.asarray(codes).reshape(rows, cols)
    gidx = np.arange(cols) // max(group_size, 1)
    z = np.zeros((rows, 1), np.int64) if zero_points is None else zero_points.astype(np.int64)[:, gidx]
    positive = ~np.signbit(np.asarray(scales, dtype=np.float32)[:, :, 0])[:, gidx]
    return ~((c == z) & positive).reshape(codes.shape)


def quantize_given(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int,
                   group_size: int | None, scale_dtype: str) -> Quantized:
    """An `affine` Quantized from codes, scales and zero points that already exist.

    codes: signed integers in [-2^(q-1), 2^(q-1) - 1], shape of the tensor (row-major);
    scales: (rows, groups) values of `scale_dtype` (float16, bfloat16 or float32);
    zero_points: (rows, groups) int8, or None for symmetric codes (zero point 0).
    The level of code c is round_{scale_dtype}(float32(c - z) * float32(s)): exactly what
    compressed-tensors computes in the scale's dtype (docs/FORMAT.md, affine quantizer).
    """
    rows, cols = row_layout(np.shape(codes))
    gsize, ngroups = _groups(cols, group_size)
    s = np.asarray(scales, dtype=np.float32).reshape(rows, ngroups, 1)
    zp = None if zero_points is None else np.asarray(zero_points)
    if zp is not None:
        if zp.size and (zp.min() < -128 or zp.max() > 127 or not np.issubdtype(zp.dtype, np.integer)):
            raise ValueError("zero points must be integers in -128..127")
        zp = zp.astype(np.int8).reshape(rows, ngroups)
    check_given_parameters(bits, s, zp, scale_dtype, rows, ngroups)
    c = np.asarray(codes)
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {c.dtype}")
    lo, hi = code_range(bits)
    if c.size and (c.min() < lo or c.max() > hi):
        raise ValueError(f"codes outside the {bits}-bit range {lo}..{hi}")
    unsigned = (c.astype(np.int64) - lo).reshape(rows, cols)
    return Quantized("affine", int(bits), codes_to_planes(unsigned, int(bits)), s, rows, cols, gsize,
                     zp is None, zp, scale_dtype)
