"""One-shot calibrated pruning and quantization: Wanda masks, SparseGPT, GPTQ error feedback.

Pure numpy functions on arrays. A layer `y = W x` is calibrated on the second-moment matrix
of its inputs, `H = sum over samples of x x^T` (X^T X; `xorsparse.torch.calibrate` collects
it with forward hooks). The aim is a small *output* error `tr((W - Q) H (W - Q)^T)`, not a
small weight error, which is what makes a few hundred unlabeled samples worth having:

- `wanda_mask`: prune, per output row, the weights with the smallest |w| * ||x_col||
  (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models").
- `obs_pass`: the column-by-column Optimal Brain Surgeon update of SparseGPT (Frantar and
  Alistarh, 2023) and GPTQ (Frantar et al., 2022): columns are visited in blocks; each
  column is pruned or quantized and its error is spread over the columns not yet visited
  through the upper Cholesky factor of the damped inverse Hessian. With `select=True` the
  mask of each block of columns is chosen when the pass reaches it, by the OBS saliency
  w^2 / [H^-1]_cc^2 of the weights as updated so far (SparseGPT's joint sparsify+quantize).
- `refit_scales`: after a pass the codes are fixed and the scales of every row are refit
  by least squares on the output error (weighted by H), then rounded to their stored dtype.

`calibrated_prune_quantize` puts them together and returns (keep mask, `Quantized`) for
`pipeline.compress_quantized`. Error feedback always uses the levels the decoder will
produce (scales rounded to their stored dtype, levels summed in float32 in the order of
docs/FORMAT.md section 4, rounded to the weight's dtype), so the pass knows the true error
of every decision, and `dequantize(qz, keep)` is exactly what the .xsp file decodes to.
Given the same weights, H and config, the result is deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from .dequant import dequantize, levels_table
from .prune import _check, _check_sparsity, given_mask, magnitude_mask, smallest_mask
from .quant import Quantized, _groups, _scale_dtype, codes_to_planes, planes_to_codes, row_layout
from .variants import QUANTIZERS, quantize

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED_METHODS = ("wanda", "sparsegpt")


# ---------------------------------------------------------------------------------------
# Statistics and the damped inverse Hessian


def input_norms(xtx: np.ndarray) -> np.ndarray:
    """||x_c||_2 over the calibration samples for every input column c: sqrt(diag(X^T X))."""
    return np.sqrt(np.clip(np.diag(np.asarray(xtx, dtype=np.float64)), 0.0, None))


def _check_xtx(xtx: Any, cols: int, name: str) -> np.ndarray:
    h = np.asarray(xtx, dtype=np.float64)
    if h.shape != (cols, cols):
        raise ValueError(f"tensor {name!r}: X^T X has shape {h.shape}, expected ({cols}, {cols})")
    if not np.all(np.isfinite(h)):
        raise ValueError(f"tensor {name!r}: X^T X contains NaN or infinite values "
                         "(the calibration inputs overflow this layer)")
    return h


def damped_hessian(xtx: np.ndarray, damp: float) -> np.ndarray:
    """X^T X + damp * mean(diag) * I, with inputs never seen (diag 0) given a unit diagonal.

    An input that is zero on every calibration sample says nothing about its weights; a
    unit diagonal treats them as uncorrelated with the rest (SparseGPT and GPTQ instead zero
    such weights, which changes the model on inputs where that feature is not zero).
    """
    h = np.array(xtx, dtype=np.float64, copy=True)
    idx = np.arange(h.shape[0])
    dead = h[idx, idx] <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[idx[dead], idx[dead]] = 1.0
    mean = float(np.mean(h[idx, idx])) if h.size else 1.0
    h[idx, idx] += damp * (mean if mean > 0 else 1.0)
    return h


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper-triangular U with U^T U = H^-1 (H symmetric positive definite).

    Row c of U, divided by U[c, c], is how an error in column c is best compensated by the
    columns after it; U[c, c]^2 is the OBS denominator [H_c..^-1]_cc. With P the reversal
    of the columns and P H P = L L^T, U = P L^-1 P: one factorization and one triangular
    inverse. If rounding makes the factorization fail, the diagonal is raised and it is
    tried again.
    """
    n = h.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    rev = np.ascontiguousarray(h[::-1, ::-1])
    extra = 0.0
    scale = float(np.mean(np.diag(h))) or 1.0
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(rev + extra * np.eye(n) if extra else rev)
            u = np.linalg.inv(lower)[::-1, ::-1]
            if np.all(np.isfinite(u)):
                return np.ascontiguousarray(np.triu(u))
        except np.linalg.LinAlgError:
            pass
        extra = scale * 1e-6 if extra == 0 else extra * 10
    raise ValueError("the calibration Hessian is not positive definite even after extra damping")


def output_error(w: np.ndarray, q: np.ndarray, xtx: np.ndarray) -> float:
    """Relative output error on the calibration inputs: tr(E H E^T) / tr(W H W^T), E = W - Q."""
    rows, cols = row_layout(np.shape(w))
    w2 = np.asarray(w, dtype=np.float64).reshape(rows, cols)
    e = w2 - np.asarray(q, dtype=np.float64).reshape(rows, cols)
    h = np.asarray(xtx, dtype=np.float64)
    num = float(np.sum((e @ h) * e))
    den = float(np.sum((w2 @ h) * w2))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


# ---------------------------------------------------------------------------------------
# Masks


def wanda_mask(w: np.ndarray, input_norms: np.ndarray, sparsity: float, name: str = "tensor") -> np.ndarray:
    """Keep mask pruning, in every output row, round(sparsity * cols) weights of smallest
    |w| * ||x_col|| (ties go to lower column indices); zero weights are always pruned."""
    a = _check(name, w)
    s = _check_sparsity(sparsity)
    rows, cols = row_layout(a.shape)
    norms = np.asarray(input_norms, dtype=np.float64).reshape(-1)
    if norms.size != cols:
        raise ValueError(f"tensor {name!r}: {norms.size} input norms for {cols} input columns")
    w2 = a.astype(np.float64, copy=False).reshape(rows, cols)
    score = np.abs(w2) * norms[None, :]
    k = int(round(s * cols))
    keep = np.ones((rows, cols), dtype=bool)
    if k > 0 and rows:
        order = np.argsort(score, axis=1, kind="stable")[:, :k]
        np.put_along_axis(keep, order, False, axis=1)
    keep &= w2 != 0
    return keep.reshape(a.shape)


# ---------------------------------------------------------------------------------------
# The OBS pass


def _round_to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as the decoder stores them in `dtype` (round to nearest even)."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    if dtype in ("float32", "float64"):
        return v
    if dtype == "float16":
        return v.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        u = v.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(np.uint32).view(np.float32)
    raise ValueError(f"unsupported dtype {dtype!r}")


def decoded_levels(qz: Quantized, dtype: str = "float32") -> np.ndarray:
    """(rows, groups, 2^q) float64: the weight every code decodes to, in every row and group."""
    return _round_to_dtype(levels_table(qz), dtype).astype(np.float64)


def _sorted_levels(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels sorted per (row, group), the code of each, and the midpoints between neighbours."""
    order = np.argsort(levels, axis=2, kind="stable")
    lv = np.ascontiguousarray(np.take_along_axis(levels, order, axis=2))
    mids = np.ascontiguousarray((lv[:, :, 1:] + lv[:, :, :-1]) / 2)
    return lv, mids, np.ascontiguousarray(order.astype(np.int64))


@njit(parallel=True, cache=True)
def _obs_columns(w1, u1, keep1, quant, lv, mids, lcodes, gcol, codes1, err1):
    """One block of columns: prune or quantize each column in turn, spread its error right.

    Rows are independent (the update of a row only involves that row), so they run in
    parallel; within a row the order of operations is fixed, so results do not depend on
    the thread count.
    """
    rows, nb = w1.shape
    nl = lv.shape[2]
    for r in prange(rows):
        for j in range(nb):
            w = w1[r, j]
            if keep1[r, j]:
                if quant:
                    g = gcol[j]
                    lo = 0
                    hi = nl - 1
                    while lo < hi:
                        m = (lo + hi) >> 1
                        if w > mids[r, g, m]:
                            lo = m + 1
                        else:
                            hi = m
                    qv = lv[r, g, lo]
                    codes1[r, j] = lcodes[r, g, lo]
                else:
                    qv = w
            else:
                qv = 0.0
            e = (w - qv) / u1[j, j]
            err1[r, j] = e
            w1[r, j] = qv
            for k in range(j + 1, nb):
                w1[r, k] -= e * u1[j, k]


def obs_pass(w: np.ndarray, u: np.ndarray, keep: np.ndarray | None = None, sparsity: float = 0.0,
             levels: np.ndarray | None = None, group_of_col: np.ndarray | None = None,
             block: int = 128, per_row: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One left-to-right pass over the columns of `w` (rows, cols) with U = inverse_cholesky(H).

    keep: a fixed mask, or None to choose it block by block (exactly round(sparsity * rows *
    cols) weights pruned in all; in each block the smallest w^2 / U_cc^2 of the weights as
    updated so far). levels: (rows, groups, 2^q) decoded levels to quantize kept weights to
    (None: kept weights take their updated values, i.e. pruning only).
    Returns (keep, codes, values): the mask, the code of every kept weight (0 elsewhere) and
    the final weights (0 at pruned positions).
    """
    rows, cols = w.shape
    work = np.array(w, dtype=np.float64, copy=True)
    u = np.asarray(u, dtype=np.float64)
    select = keep is None
    keep_out = np.ones((rows, cols), dtype=bool) if select else np.array(keep, dtype=bool, copy=True)
    codes = np.zeros((rows, cols), dtype=np.int64)
    quant = levels is not None
    if quant:
        lv, mids, lcodes = _sorted_levels(np.asarray(levels, dtype=np.float64))
    else:
        lv = mids = np.zeros((rows, 1, 1))
        lcodes = np.zeros((rows, 1, 1), dtype=np.int64)
    gcol_all = np.zeros(cols, dtype=np.int64) if group_of_col is None else np.asarray(group_of_col, np.int64)
    total = rows * cols
    for i1 in range(0, cols, block):
        i2 = min(cols, i1 + block)
        w1 = np.ascontiguousarray(work[:, i1:i2])
        u1 = np.ascontiguousarray(u[i1:i2, i1:i2])
        if select:
            d = np.diag(u1)
            score = (w1 * w1) / (d * d)[None, :]
            if per_row:
                # per row, the counts per block telescope to exactly round(sparsity * cols)
                k = int(round(sparsity * i2)) - int(round(sparsity * i1))
                keep1 = np.ones(score.shape, dtype=bool)
                if k > 0:
                    np.put_along_axis(keep1, np.argsort(score, axis=1, kind="stable")[:, :k], False, axis=1)
            else:
                # the counts per block telescope to exactly round(sparsity * rows * cols)
                k = int(round(sparsity * total * i2 / cols)) - int(round(sparsity * total * i1 / cols))
                keep1 = ~smallest_mask(score.ravel(), k).reshape(score.shape)
        else:
            keep1 = np.ascontiguousarray(keep_out[:, i1:i2])
        c1 = np.zeros((rows, i2 - i1), dtype=np.int64)
        err1 = np.zeros((rows, i2 - i1), dtype=np.float64)
        _obs_columns(w1, u1, keep1, quant, lv, mids, lcodes, np.ascontiguousarray(gcol_all[i1:i2]), c1, err1)
        keep_out[:, i1:i2] = keep1
        codes[:, i1:i2] = c1
        work[:, i1:i2] = w1
        if i2 < cols:
            work[:, i2:] -= err1 @ u[i1:i2, i2:]
    return keep_out, codes, work


@njit(parallel=True, cache=True)
def _nearest_kernel(w, keep, lv, mids, lcodes, gcol, codes):
    rows, cols = w.shape
    nl = lv.shape[2]
    for r in prange(rows):
        for c in range(cols):
            if keep[r, c]:
                g = gcol[c]
                lo = 0
                hi = nl - 1
                while lo < hi:
                    m = (lo + hi) >> 1
                    if w[r, c] > mids[r, g, m]:
                        lo = m + 1
                    else:
                        hi = m
                codes[r, c] = lcodes[r, g, lo]


def requantize(w: np.ndarray, keep: np.ndarray, qz: Quantized, dtype: str = "float32") -> Quantized:
    """`qz` with the codes of `w`'s kept weights rounded to the nearest level of qz's scales
    (as decoded: see `decoded_levels`); no error feedback. Used after recovery training,
    whose forward pass rounds the same way."""
    rows, cols = qz.rows, qz.cols
    w2 = np.ascontiguousarray(np.asarray(w, dtype=np.float64).reshape(rows, cols))
    k2 = np.ascontiguousarray(np.asarray(keep, dtype=bool).reshape(rows, cols))
    lv, mids, lcodes = _sorted_levels(decoded_levels(qz, dtype))
    codes = np.zeros((rows, cols), dtype=np.int64)
    gcol = np.ascontiguousarray(np.arange(cols, dtype=np.int64) // qz.group_size)
    _nearest_kernel(w2, k2, lv, mids, lcodes, gcol, codes)
    return _with_codes(qz, codes, k2)


# ---------------------------------------------------------------------------------------
# Scales refit for fixed codes


def _basis(codes: np.ndarray, keep: np.ndarray, qz: Quantized, gidx: np.ndarray) -> np.ndarray:
    """(rows, P, cols): weights = basis^T scales per row, P = groups * scales per group."""
    rows, cols = codes.shape
    ngroups, k = qz.scales.shape[1], qz.scales.shape[2]
    per = QUANTIZERS[qz.quantizer].scale_basis(codes, qz.bits, qz.symmetric) * keep[:, None, :]
    if ngroups == 1:
        return per
    out = np.zeros((rows, ngroups * k, cols), dtype=np.float64)
    for g in range(ngroups):
        sel = gidx == g
        out[:, g * k:(g + 1) * k, sel] = per[:, :, sel]
    return out


def _row_errors(w: np.ndarray, values: np.ndarray, h: np.ndarray) -> np.ndarray:
    e = w - values
    return np.einsum("rc,rc->r", e @ h, e)


def refit_scales(w: np.ndarray, xtx: np.ndarray, keep: np.ndarray, qz: Quantized,
                 dtype: str = "float32") -> Quantized:
    """Least-squares scales for the codes of `qz` on the output error, row by row.

    Minimizes (w_r - B_r s_r)^T H (w_r - B_r s_r) over the scales s_r of row r (B_r: the
    signs, or integer levels, of the row's codes). The solution is rounded to the stored
    scale dtype and kept only where it lowers that row's error with the rounded scales.
    """
    rows, cols = qz.rows, qz.cols
    w2 = np.asarray(w, dtype=np.float64).reshape(rows, cols)
    k2 = np.asarray(keep, dtype=bool).reshape(rows, cols)
    h = np.asarray(xtx, dtype=np.float64)
    codes = planes_to_codes(qz.planes).reshape(rows, cols)
    gidx = np.arange(cols) // qz.group_size
    ngroups, k = qz.scales.shape[1], qz.scales.shape[2]
    p = ngroups * k
    new = np.zeros((rows, p), dtype=np.float64)
    ok = np.zeros(rows, dtype=bool)
    chunk = max(1, (1 << 22) // max(1, p * cols))
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        b = _basis(codes[r0:r1], k2[r0:r1], qz, gidx)  # (R, P, cols)
        bh = (b.reshape(-1, cols) @ h).reshape(b.shape)  # one large product, not R small ones
        gram = np.matmul(bh, b.transpose(0, 2, 1))
        rhs = np.matmul(bh, w2[r0:r1, :, None])[..., 0]
        tr = np.trace(gram, axis1=1, axis2=2) / p
        ridge = (np.where(tr > 0, tr, 1.0) * 1e-9)[:, None, None] * np.eye(p)[None]
        try:
            sol = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            continue
        fine = np.all(np.isfinite(sol), axis=1)
        new[r0:r1] = np.where(fine[:, None], sol, 0.0)
        ok[r0:r1] = fine
    new = new.reshape(rows, ngroups, k)
    sdt = np.result_type(qz.scales.dtype, _scale_dtype(new[ok]))
    candidate = Quantized(qz.quantizer, qz.bits, qz.planes,
                          np.where(ok[:, None, None], new, qz.scales.astype(np.float64)).astype(sdt),
                          rows, cols, qz.group_size, qz.symmetric)
    before = _row_errors(w2, _round_to_dtype(dequantize(qz, k2), dtype).astype(np.float64), h)
    after = _row_errors(w2, _round_to_dtype(dequantize(candidate, k2), dtype).astype(np.float64), h)
    better = ok & (after < before)
    scales = np.where(better[:, None, None], candidate.scales.astype(np.float64),
                      qz.scales.astype(np.float64)).astype(sdt)
    return Quantized(qz.quantizer, qz.bits, qz.planes, scales, rows, cols, qz.group_size, qz.symmetric)


# ---------------------------------------------------------------------------------------
# Everything together


def _with_codes(qz: Quantized, codes: np.ndarray, keep: np.ndarray) -> Quantized:
    c = np.where(keep, codes, 0)
    return Quantized(qz.quantizer, qz.bits, codes_to_planes(c, qz.bits), qz.scales, qz.rows, qz.cols,
                     qz.group_size, qz.symmetric)


ERROR_FEEDBACK_QUANTIZERS = tuple(name for name, q in QUANTIZERS.items() if q.refits_scales)


def check_error_feedback_quantizer(config) -> None:
    """ValueError unless the error-feedback pass knows the config's quantizer: it needs a
    nearest-level rule per row and a least-squares refit of the row's scales (binary coding
    and uniform). Called before any model is run, so a bad choice fails at once."""
    quantizer = getattr(config, "quantizer", "bcq")
    if quantizer not in ERROR_FEEDBACK_QUANTIZERS:
        raise ValueError(f"calibrated methods (wanda, sparsegpt: GPTQ-style error feedback) support the quantizers "
                         f"{' and '.join(ERROR_FEEDBACK_QUANTIZERS)}, not {quantizer!r}; use --method magnitude "
                         "with it")
    # the pass refits one set of scales per row, stored as float16 or float32 values: scales
    # shared by several rows or stored in the 8-bit log format are not what it optimizes
    # ("auto", the default, means per-row float16 scales there)
    rows, fmt = getattr(config, "scale_rows", 1), getattr(config, "scale_format", "float16")
    if rows not in (1, "auto") or fmt not in ("float16", "auto"):
        raise ValueError(f"calibrated methods (wanda, sparsegpt) refit per-row float16 scales; scale_rows={rows!r} "
                         f"scale_format={fmt!r} is not supported with them (use --method magnitude, or the "
                         "defaults --scale-rows auto --scale-format auto)")


def calibrated_prune_quantize(w: np.ndarray, xtx: np.ndarray, config, *, keep: np.ndarray | None = None,
                              dtype: str = "float32", name: str = "tensor",
                              inverse_factor: np.ndarray | None = None) -> tuple[np.ndarray, Quantized]:
    """(keep mask, Quantized) for one weight from its inputs' X^T X.

    config: a CompressConfig (sparsity, quantizer, bits, symmetric, group_size, bcq_iters,
    method, calib_damp, calib_block, calib_passes). method picks the mask when `keep` is not
    given: 'magnitude' (data-free mask, then error feedback), 'wanda', or 'sparsegpt' (mask
    chosen inside the quantization pass). Every method then quantizes with error feedback,
    refits the scales, and repeats the pass with the refit scales `calib_passes - 1` times.
    inverse_factor: inverse_cholesky(damped_hessian(xtx, config.calib_damp)) if the caller
    has it already (the bit budget runs many candidates on one layer's statistics).
    """
    a = _check(name, w)
    rows, cols = row_layout(a.shape)
    w2 = a.astype(np.float64).reshape(rows, cols)
    h = _check_xtx(xtx, cols, name)
    method = getattr(config, "method", "sparsegpt")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_error_feedback_quantizer(config)
    u = inverse_cholesky(damped_hessian(h, config.calib_damp)) if inverse_factor is None else inverse_factor
    block = int(config.calib_block)
    gcol = np.arange(cols) // _groups(cols, config.group_size)[0]

    select = False
    if keep is not None:
        k2 = given_mask(a, keep, name).reshape(rows, cols)
        base = w2 * k2
    elif method == "wanda":
        k2 = wanda_mask(w2, input_norms(h), config.sparsity, name)
        base = w2 * k2
    elif method == "magnitude":
        k2 = magnitude_mask(w2, config.sparsity, name)
        base = w2 * k2
    else:
        # a pruning-only pass gives the scales a mask and weights to be fit on; the
        # quantization pass then chooses the mask again, with quantization errors in view
        k2, _, base = obs_pass(w2, u, None, config.sparsity, None, None, block)
        select = True
    qz = quantize(base.astype(np.float32), k2, config.quantizer, config.bits, config.symmetric,
                  config.group_size, config.bcq_iters)
    for it in range(max(1, int(config.calib_passes))):
        lv = decoded_levels(qz, dtype)
        k2, codes, _ = obs_pass(w2, u, None if (select and it == 0) else k2, config.sparsity, lv, gcol, block)
        qz = refit_scales(w2, h, k2, _with_codes(qz, codes, k2), dtype)
    return k2.reshape(a.shape), qz


__all__ = ["METHODS", "CALIBRATED_METHODS", "input_norms", "damped_hessian", "inverse_cholesky", "output_error",
           "wanda_mask", "obs_pass", "refit_scales", "decoded_levels", "requantize", "calibrated_prune_quantize"]
