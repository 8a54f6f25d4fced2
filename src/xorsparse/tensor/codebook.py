"""Codebook quantization: 2^q levels fitted to the kept weights (weighted k-means / Lloyd-Max).

Magnitude pruning leaves no small weights, so the kept values are two tails, not a bell:
uniform levels waste codes near zero and binary coding can only place sums of +-alpha.
Here a weight is `scale[row] * book[code]`: one float16 scale per row (or per group of rows,
`scale_rows`) and a shared normalised codebook of 2^q float16 levels (per tensor, or per
`codebook_rows` rows), fitted by alternating Lloyd iterations on the normalised weights with
least-squares scales. Codes are stored as bit-planes like the others; codebook and scales
are counted in every figure. Layout: docs/FORMAT.md section 4.2.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .quant import Quantized, _check_bits, _groups, _scale_dtype, codes_to_planes, row_layout, scale_groups

LLOYD_ITERS = 25
CODEBOOK_MAX_BITS = 4


@njit(parallel=True, cache=True)
def assign_codes(w, keep, levels, gsize, scale_rows, book_rows, codes):
    """Nearest level per kept weight; levels[(row group, col group, book), code] precomputed
    in float32 as the decoder computes them. Ties go to the lower code."""
    rows, cols = w.shape
    k = levels.shape[3]
    for r in prange(rows):
        rs = r // scale_rows
        b = r // book_rows
        for c in range(cols):
            if not keep[r, c]:
                codes[r, c] = 0
                continue
            g = c // gsize
            v = w[r, c]
            best = 0
            bd = abs(v - levels[rs, g, b, 0])
            for j in range(1, k):
                d = abs(v - levels[rs, g, b, j])
                if d < bd:
                    bd = d
                    best = j
            codes[r, c] = best


def codebook_levels(scales: np.ndarray, book: np.ndarray, scale_rows: int, book_rows: int, rows: int) -> np.ndarray:
    """float32 level of every code for every row: (rows, groups, 2^q), FORMAT.md section 4.2."""
    s = scales.astype(np.float32)[:, :, 0]  # (scale rows, groups)
    bk = book.astype(np.float32)
    r = np.arange(rows)
    return np.ascontiguousarray(s[r // scale_rows][:, :, None] * bk[r // book_rows][:, None, :], dtype=np.float32)


def _weighted_lloyd(u: np.ndarray, wt: np.ndarray, k: int, init: np.ndarray | None) -> np.ndarray:
    """k levels minimising sum wt * (u - level)^2 (1-D weighted k-means), sorted."""
    if u.size == 0:
        return np.zeros(k) if init is None else init
    order = np.argsort(u, kind="stable")
    us, ws = u[order], wt[order]
    cw = np.cumsum(ws)
    if init is None:  # weighted quantile midpoints
        targets = (np.arange(k) + 0.5) / k * cw[-1]
        lv = us[np.minimum(np.searchsorted(cw, targets), us.size - 1)].astype(np.float64)
    else:
        lv = np.sort(init.astype(np.float64))
    cwu = np.cumsum(ws * us)
    for _ in range(LLOYD_ITERS):
        bounds = (lv[1:] + lv[:-1]) / 2
        cut = np.concatenate(([0], np.searchsorted(us, bounds, side="right"), [us.size]))
        sw = np.diff(np.concatenate(([0.0], cw))[cut])
        swu = np.diff(np.concatenate(([0.0], cwu))[cut])
        new = np.where(sw > 0, swu / np.where(sw > 0, sw, 1), lv)
        if np.allclose(new, lv, rtol=0, atol=1e-9):
            lv = new
            break
        lv = np.sort(new)
    return lv


def quantize_codebook(w: np.ndarray, keep: np.ndarray, bits: int, group_size: int | None = None,
                      scale_rows: int = 1, codebook_rows: int | None = None,
                      importance: np.ndarray | None = None, iters: int = 15) -> Quantized:
    """Per-row (or row-group) scales times a shared normalised codebook of 2^bits levels."""
    _check_bits("codebook", bits, CODEBOOK_MAX_BITS)
    rows, cols = row_layout(np.shape(w))
    w2 = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(rows, cols))
    k2 = np.ascontiguousarray(np.asarray(keep, dtype=bool).reshape(rows, cols))
    gsize, ngroups = _groups(cols, group_size)
    scale_rows = max(1, min(int(scale_rows), max(rows, 1)))
    book_rows = max(rows, 1) if not codebook_rows else max(1, min(int(codebook_rows), max(rows, 1)))
    nbooks = -(-rows // book_rows)
    rs, gc = scale_groups(rows, cols, gsize, scale_rows)
    k = 1 << bits
    imp = np.ones((rows, cols), np.float64) if importance is None else \
        np.asarray(importance, dtype=np.float64).reshape(rows, cols)
    if imp.size and (not np.all(np.isfinite(imp)) or imp.min() < 0):
        raise ValueError("importance must be finite and non-negative")

    ridx = np.arange(rows)[:, None] // scale_rows
    gidx = np.arange(cols)[None, :] // gsize
    sg = (ridx * gc + gidx)  # scale group of every position
    bidx = np.broadcast_to(np.arange(rows)[:, None] // book_rows, (rows, cols))
    kept = k2.ravel()
    wk = w2.ravel()[kept].astype(np.float64)
    sgk = sg.ravel()[kept] if kept.size else np.zeros(0, np.int64)
    bk = bidx.ravel()[kept] if kept.size else np.zeros(0, np.int64)
    ik = imp.ravel()[kept]
    nsg = rs * gc
    # start: scale = largest kept magnitude of the group, so normalised weights lie in [-1, 1]
    amax = np.zeros(nsg)
    if wk.size:
        np.maximum.at(amax, sgk, np.abs(wk))
    scale = amax.copy()
    book = np.zeros((nbooks, k))
    init = [None] * nbooks
    rounds = max(1, min(4, iters))
    for _ in range(rounds):
        s_k = scale[sgk]
        ok = s_k > 0
        u = np.where(ok, wk / np.where(ok, s_k, 1), 0.0)
        for b in range(nbooks):
            sel = (bk == b) & ok
            book[b] = _weighted_lloyd(u[sel], (ik * s_k * s_k)[sel], k, init[b])
            init[b] = book[b]
        # least-squares scale per group for the current assignment
        lv = book[bk]
        code = np.abs(u[:, None] - lv).argmin(axis=1) if u.size else np.zeros(0, np.int64)
        c = lv[np.arange(u.size), code] if u.size else np.zeros(0)
        num = np.bincount(sgk, ik * wk * c, minlength=nsg)
        den = np.bincount(sgk, ik * c * c, minlength=nsg)
        scale = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
        scale = np.where(scale > 0, scale, amax)  # a degenerate fit keeps the range
    sdt = _scale_dtype(np.concatenate([scale, book.ravel()]))
    scales = scale.reshape(rs, gc, 1).astype(sdt)
    stored_book = book.astype(sdt)
    levels = codebook_levels(scales, stored_book, scale_rows, book_rows, rows)  # (rows, gc, k)
    # assign_codes reads levels[row group, col group, book]: give it the per-row table as is
    lv4 = np.ascontiguousarray(levels[:, :, None, :])
    codes = np.zeros((rows, cols), dtype=np.int64)
    if rows and cols:
        assign_codes(w2, k2, lv4, gsize, 1, 1 << 62, codes)
    return Quantized("codebook", bits, codes_to_planes(codes, bits), scales, rows, cols, gsize, True,
                     scale_rows=scale_rows, codebook=stored_book, codebook_rows=book_rows)


def fit_codebook_range(qz: Quantized, w: np.ndarray, keep: np.ndarray, limit: float) -> Quantized:
    """Shrink the scales of any scale set whose levels (scale x codebook entry, in float32)
    would exceed `limit` (the largest finite value of the tensor's dtype), then choose every
    kept weight's code again for the stored levels: no finite weight decodes to inf.
    Reference and codec both quantize through here, so they agree."""
    if qz.scales.size == 0 or qz.codebook is None or qz.codebook.size == 0:
        return qz
    rows, cols, gsize = qz.rows, qz.cols, qz.group_size
    rs_n = qz.scale_rows
    lim = np.float32(limit)
    scales = qz.scales.copy()
    book = np.abs(qz.codebook.astype(np.float64))
    changed = False
    for i in range(40):
        with np.errstate(over="ignore", invalid="ignore"):
            lv = codebook_levels(scales, qz.codebook, rs_n, qz.codebook_rows, rows)
        bad = ~np.all(np.abs(lv) <= lim, axis=2)  # (rows, column groups)
        if not bad.any():
            break
        changed = True
        for a, g in {(int(r) // rs_n, int(g)) for r, g in zip(*np.nonzero(bad))}:
            books = np.unique(np.arange(a * rs_n, min(rows, (a + 1) * rs_n)) // qz.codebook_rows)
            bmax = float(book[books].max()) or 1.0
            s = float(scales[a, g, 0])
            mag = min(abs(s), float(np.finfo(scales.dtype).max), limit / bmax) * (1.0 - 2.0 ** (i - 24))
            scales[a, g, 0] = np.copysign(mag, s)
    else:
        scales[...] = 0  # (not reached in practice: each round shrinks by a growing factor)
    if not changed:
        return qz
    levels = codebook_levels(scales, qz.codebook, rs_n, qz.codebook_rows, rows)
    w2 = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(rows, cols))
    k2 = np.ascontiguousarray(np.asarray(keep, dtype=bool).reshape(rows, cols))
    codes = np.zeros((rows, cols), dtype=np.int64)
    if rows and cols:
        assign_codes(w2, k2, np.ascontiguousarray(levels[:, :, None, :]), gsize, 1, 1 << 62, codes)
    return Quantized("codebook", qz.bits, codes_to_planes(codes, qz.bits), scales, rows, cols, gsize, True,
                     scale_rows=rs_n, codebook=qz.codebook, codebook_rows=qz.codebook_rows)
