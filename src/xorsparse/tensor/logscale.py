"""8-bit log-domain scales: one byte per scale instead of 16 bits (format version 2).

A scale is stored as sign and a magnitude on a grid of 2^(1/8) steps below a per-tensor
float32 reference (one per scale index): 127 steps cover 16 octaves with at most 4.4%
between neighbours, which for the rows it is meant for (short rows whose scales cost more
than their codes) changes the weight error by far less than the bits it saves. Codes are
re-chosen for the stored scales, so the pruned-and-quantized reference and the decoder
agree bit for bit. Layout: docs/FORMAT.md section 4.3.
"""

from __future__ import annotations

import numpy as np

# 2^(-j/8) for j = 0..7, rounded to float32 (their bit patterns are in FORMAT.md)
STEPS = np.array([2.0 ** (-j / 8) for j in range(8)], dtype=np.float32)
MAX_CODE = 127


def decode_log8(codes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """float32 scales from bytes (..., k) and the float32 references (k,)."""
    b = np.asarray(codes, dtype=np.uint8).astype(np.int64)
    m = b & 127
    neg = (b >> 7) == 1
    e = np.maximum(m - 1, 0) // 8
    j = np.maximum(m - 1, 0) % 8
    r = np.asarray(ref, dtype=np.float32)
    mag = (r * STEPS[j]).astype(np.float32)  # broadcast over the last axis
    mag = (mag * np.ldexp(np.float32(1.0), -e).astype(np.float32)).astype(np.float32)
    out = np.where(m == 0, np.float32(0.0), np.where(neg, -mag, mag)).astype(np.float32)
    return out


def encode_log8(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, reference) whose decoded values are nearest to the given float scales."""
    s = np.asarray(scales, dtype=np.float64)
    k = s.shape[-1] if s.ndim else 1
    flat = s.reshape(-1, k) if s.size else np.zeros((0, k))
    ref = np.abs(flat).max(axis=0).astype(np.float32) if flat.size else np.zeros(k, np.float32)
    ref = np.where(np.isfinite(ref), ref, np.float32(0)).astype(np.float32)
    a = np.abs(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = 1 + np.rint(-8.0 * np.log2(a / ref.astype(np.float64)))
    m0 = np.where(np.isfinite(m0), m0, MAX_CODE).astype(np.int64)
    best = np.zeros(s.shape, dtype=np.int64)
    best_err = np.abs(s)  # code 0 decodes to 0
    for d in (-1, 0, 1):
        m = np.clip(m0 + d, 1, MAX_CODE)
        v = decode_log8(m.astype(np.uint8), ref).astype(np.float64)
        err = np.abs(a - v)
        better = err < best_err
        best = np.where(better, m, best)
        best_err = np.where(better, err, best_err)
    sign = (s < 0) & (best > 0)
    return (best | (sign.astype(np.int64) << 7)).astype(np.uint8), ref
