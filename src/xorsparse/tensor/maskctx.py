"""The `ctx` mask codec: range coding of mask bits with probabilities from a row x column model.

Real pruning masks are not i.i.d.: magnitude pruning keeps 1%-43% of a row in MiniLM, and
columns (input features) differ as much. Golomb codes of the gaps sit at the binary entropy
H(S) of the whole tensor; this codec codes every position with its own probability

    P(kept at row r, column c) = P1[clamp(base + row_step * ia[r] + col_step * ib[c])]

where P1 is a fixed table of logistic probabilities in steps of 1/16 in log-odds, and the
small integers ia[r], ib[c] (the model) are carried by the file, range-coded with adaptive
binary contexts. The model's likelihood depends on the mask only through its row and column
counts, so it is fitted from those (fast, even on 38M-position tensors). Positions are cut
into blocks coded independently with static probabilities: blocks decode in parallel
through an offset table, with no loss from restarting. Layout: docs/FORMAT.md section 3.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..codec._bits import U64
from .maskcode import MaskCode

ZMAX = 255  # log-odds index range [-ZMAX, ZMAX], units of 1/16
UNIT = 1.0 / 16.0
RHO = float.fromhex("0x1.1082b577d34edp+0")  # exp(1/16) rounded to float64: defines the table
MAX_STEP = 64
MAX_INDEX = 255  # |ia|, |ib| bound (the unary binarization stops there)
ADAPT_SHIFT = 5
N_UNARY_CTX = 16
DEFAULT_BLOCK = 1 << 16
MAX_BLOCK = 1 << 24
TOP = 1 << 24
MASK32 = 0xFFFFFFFF


def probability_table() -> np.ndarray:
    """P1[z + ZMAX] = probability of a kept weight at log-odds index z, in units of 2^-16.

    Computed with float64 operations only (multiply, add, divide, floor), each exactly
    rounded in IEEE arithmetic, so every decoder builds the same table.
    """
    t = np.zeros(2 * ZMAX + 1, dtype=np.int64)
    o = 1.0
    for z in range(ZMAX + 1):
        v = int(np.floor(65536.0 * o / (1.0 + o) + 0.5))
        t[ZMAX + z] = min(max(v, 1), 65535)
        o = o * RHO
    for z in range(1, ZMAX + 1):
        t[ZMAX - z] = 65536 - t[ZMAX + z]
    return t


P1 = probability_table()


@dataclass(frozen=True)
class CtxModel:
    """The model a `ctx` mask carries: JSON scalars plus the range-coded row/column indices."""

    rows: int
    cols: int
    base: int
    row_step: int  # 0: no row indices stored (all 0)
    col_step: int  # 0: no column indices stored
    data: np.ndarray  # uint8, range-coded indices: rows first, then columns
    row_index: np.ndarray  # int64 (rows,) decoded / fitted indices
    col_index: np.ndarray  # int64 (cols,)


# --- range coder (docs/FORMAT.md section 3.2) ------------------------------------------------


@njit(cache=True)
def _rc_shift_low(st, out):
    # st: [low, range, cache, cache_size, pos]
    low = st[0]
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        temp = st[2]
        while True:
            out[st[4]] = np.uint8((temp + carry) & 0xFF)
            st[4] += 1
            temp = 0xFF
            st[3] -= 1
            if st[3] == 0:
                break
        st[2] = (low >> 24) & 0xFF
    st[3] += 1
    st[0] = (low & 0x00FFFFFF) << 8


@njit(cache=True)
def _rc_encode(st, out, bit, p1):
    bound = (st[1] >> 16) * p1
    if bit:
        st[1] = bound
    else:
        st[0] += bound
        st[1] -= bound
    while st[1] < TOP:
        st[1] = (st[1] << 8) & MASK32
        _rc_shift_low(st, out)


@njit(cache=True)
def _rc_init(st):
    st[0] = 0
    st[1] = MASK32
    st[2] = 0
    st[3] = 1
    st[4] = 0


@njit(cache=True)
def _rc_finish(st, out):
    """Flush with the value in [low, low + range) that has the most trailing zero bits, drop
    the leading zero byte the scheme always emits and every trailing zero byte; returns the size."""
    low = st[0]
    rng = st[1]
    for k in range(32, -1, -1):
        unit = np.int64(1) << k
        v = (low + unit - 1) & ~(unit - 1)
        if v < low + rng:
            st[0] = v
            break
    for _ in range(5):
        _rc_shift_low(st, out)
    n = st[4]
    while n > 1 and out[n - 1] == 0:
        n -= 1
    # out[0] is always 0 (the initial cache, never carried into): the decoder does not read it
    for i in range(1, n):
        out[i - 1] = out[i]
    return n - 1


@njit(inline="always", cache=True)
def _byte(data, i, end):
    return np.int64(data[i]) if i < end else np.int64(0)


@njit(cache=True)
def _rd_init(data, start, end, st):
    # st: [range, code, pos]
    code = np.int64(0)
    for i in range(4):
        code = (code << 8) | _byte(data, start + i, end)
    st[0] = MASK32
    st[1] = code
    st[2] = start + 4


@njit(inline="always", cache=True)
def _rd_decode(data, end, st, p1):
    bound = (st[0] >> 16) * p1
    if st[1] < bound:
        st[0] = bound
        bit = 1
    else:
        st[1] -= bound
        st[0] -= bound
        bit = 0
    while st[0] < TOP:
        st[0] = (st[0] << 8) & MASK32
        st[1] = ((st[1] << 8) & MASK32) | _byte(data, st[2], end)
        st[2] += 1
    return bit


# --- the model's indices: adaptive binary contexts ---------------------------------------------


@njit(inline="always", cache=True)
def _adapt(probs, k, bit):
    p = probs[k]
    if bit:
        probs[k] = p + ((65536 - p) >> ADAPT_SHIFT)
    else:
        probs[k] = p - (p >> ADAPT_SHIFT)


@njit(cache=True)
def _encode_indices(values, probs, st, out):
    """probs: [zero, sign, unary 0..15], fresh per axis (reset by the caller)."""
    for v in values:
        nz = 1 if v != 0 else 0
        _rc_encode(st, out, nz, probs[0])
        _adapt(probs, 0, nz)
        if nz:
            neg = 1 if v < 0 else 0
            _rc_encode(st, out, neg, probs[1])
            _adapt(probs, 1, neg)
            m = abs(v)
            j = 1
            while j < MAX_INDEX:
                more = 1 if m > j else 0
                k = 2 + min(j - 1, N_UNARY_CTX - 1)
                _rc_encode(st, out, more, probs[k])
                _adapt(probs, k, more)
                if not more:
                    break
                j += 1


@njit(cache=True)
def _decode_indices(data, end, st, probs, out):
    for n in range(out.shape[0]):
        nz = _rd_decode(data, end, st, probs[0])
        _adapt(probs, 0, nz)
        v = 0
        if nz:
            neg = _rd_decode(data, end, st, probs[1])
            _adapt(probs, 1, neg)
            m = 1
            while m < MAX_INDEX:
                k = 2 + min(m - 1, N_UNARY_CTX - 1)
                more = _rd_decode(data, end, st, probs[k])
                _adapt(probs, k, more)
                if not more:
                    break
                m += 1
            v = -m if neg else m
        out[n] = v


def _fresh_probs() -> np.ndarray:
    return np.full(2 + N_UNARY_CTX, 32768, dtype=np.int64)


def encode_model_indices(row_index: np.ndarray, col_index: np.ndarray, row_step: int, col_step: int) -> np.ndarray:
    n = (row_index.size if row_step else 0) + (col_index.size if col_step else 0)
    out = np.zeros(n * 300 + 16, dtype=np.uint8)  # unary of 255 at most, plus zero and sign
    st = np.zeros(5, dtype=np.int64)
    _rc_init(st)
    if row_step:
        _encode_indices(row_index.astype(np.int64), _fresh_probs(), st, out)
    if col_step:
        _encode_indices(col_index.astype(np.int64), _fresh_probs(), st, out)
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    size = _rc_finish(st, out)
    return out[:size].copy()


def decode_model_indices(data: np.ndarray, rows: int, cols: int, row_step: int, col_step: int):
    st = np.zeros(3, dtype=np.int64)
    d = np.ascontiguousarray(data, dtype=np.uint8)
    if d.size == 0:
        d = np.zeros(1, dtype=np.uint8)
        end = 0
    else:
        end = data.size
    _rd_init(d, 0, end, st)
    ia = np.zeros(rows, dtype=np.int64)
    ib = np.zeros(cols, dtype=np.int64)
    if row_step:
        _decode_indices(d, end, st, _fresh_probs(), ia)
    if col_step:
        _decode_indices(d, end, st, _fresh_probs(), ib)
    return ia, ib


# --- mask blocks ------------------------------------------------------------------------------


@njit(cache=True)
def _encode_block(keep, s, e, cols, zrow, zcol, table, out):
    st = np.zeros(5, dtype=np.int64)
    _rc_init(st)
    r = s // cols
    c = s - r * cols
    for p in range(s, e):
        z = zrow[r] + zcol[c]
        z = min(max(z, -ZMAX), ZMAX)
        _rc_encode(st, out, keep[p], table[z + ZMAX])
        c += 1
        if c == cols:
            c = 0
            r += 1
    return _rc_finish(st, out)


@njit(parallel=True, cache=True)
def _encode_blocks(keep, b0, b1, block, cols, zrow, zcol, table, scratch, sizes):
    n = keep.shape[0]
    for i in prange(b1 - b0):
        s = (b0 + i) * block
        e = min(n, s + block)
        sizes[i] = _encode_block(keep, s, e, cols, zrow, zcol, table, scratch[i])


@njit(cache=True)
def _decode_block(data, start, end, s, e, cols, zrow, zcol, table, words):
    """Decode positions s..e-1 (s a multiple of 64) into `words`. Branch-free on the coded
    bit (masks are 50-99% zeros: a branch on it mispredicts often), one store per word."""
    st = np.zeros(3, dtype=np.int64)
    _rd_init(data, start, end, st)
    rng = st[0]
    code = st[1]
    pos = st[2]
    acc = U64(0)
    p = s
    while p < e:
        r = p // cols
        c0 = p - r * cols
        c1 = min(cols, c0 + (e - p))
        zr = zrow[r]
        for c in range(c0, c1):
            z = min(max(zr + zcol[c], -ZMAX), ZMAX)
            bound = (rng >> 16) * table[z + ZMAX]
            bit = np.int64(code < bound)
            keep = -bit  # all ones when the bit is 1
            rng = (bound & keep) | ((rng - bound) & ~keep)
            code -= bound & ~keep
            acc |= U64(bit) << U64(p & 63)
            while rng < TOP:
                rng = (rng << 8) & MASK32
                code = ((code << 8) & MASK32) | _byte(data, pos, end)
                pos += 1
            if (p & 63) == 63:
                words[p >> 6] |= acc
                acc = U64(0)
            p += 1
    if p & 63:
        words[(p - 1) >> 6] |= acc


@njit(parallel=True, cache=True)
def _decode_blocks(data, offsets, block, n, cols, zrow, zcol, table, words):
    nb = offsets.shape[0]
    for i in prange(nb):
        s = i * block
        e = min(n, s + block)
        start = offsets[i - 1] if i > 0 else 0
        _decode_block(data, start, offsets[i], s, e, cols, zrow, zcol, table, words)


def offsets_z(model: CtxModel) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (base included) and per-column log-odds offsets, int64."""
    zrow = model.base + model.row_step * model.row_index.astype(np.int64)
    zcol = model.col_step * model.col_index.astype(np.int64)
    return np.ascontiguousarray(zrow), np.ascontiguousarray(zcol)


def encode_blocks(keep: np.ndarray, model: CtxModel, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(payload, uint32 end offsets), one independently decodable stream per block."""
    k = np.ascontiguousarray(keep, dtype=np.uint8)
    n = k.size
    nb = -(-n // block)
    zrow, zcol = offsets_z(model)
    pieces, sizes_all = [], []
    batch = 64
    for b0 in range(0, nb, batch):
        b1 = min(nb, b0 + batch)
        # a position costs at most 16 bits (probabilities are >= 2^-16), plus the flush
        scratch = np.zeros((b1 - b0, 2 * min(block, n) + 16), dtype=np.uint8)
        sizes = np.zeros(b1 - b0, dtype=np.int64)
        _encode_blocks(k, b0, b1, block, model.cols, zrow, zcol, P1, scratch, sizes)
        for i in range(b1 - b0):
            pieces.append(scratch[i, : sizes[i]].copy())
        sizes_all.append(sizes)
    sizes = np.concatenate(sizes_all) if sizes_all else np.zeros(0, np.int64)
    total = int(sizes.sum())
    if total >= 1 << 32:
        raise ValueError("ctx mask payload exceeds 4 GiB")
    data = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return data, np.cumsum(sizes).astype(np.uint32)


def decode_blocks_words(data: np.ndarray, offsets: np.ndarray, block: int, length: int, model: CtxModel,
                        words: np.ndarray) -> None:
    """OR the kept bits into `words` (little-endian packed, ceil(length/64)+ words). The
    caller has validated the block table; decoding cannot run out of bounds on any data."""
    if length == 0:
        return
    zrow, zcol = offsets_z(model)
    d = data if data.size else np.zeros(1, np.uint8)
    _decode_blocks(d, offsets.astype(np.int64), int(block), int(length), int(model.cols), zrow, zcol, P1, words)


# --- fitting the model from row and column counts -------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@njit(cache=True, nogil=True)
def _newton_offsets(target, levels, hist, a0):
    """Per line i: the root of sum_l hist[l] * sigmoid(a + levels[l]) - target[i], by Newton
    steps kept inside a shrinking bracket (bisection where a step would leave it)."""
    out = np.empty(target.size)
    for i in range(target.size):
        lo, hi, a = -40.0, 40.0, a0[i]
        for _ in range(100):
            f = -target[i]
            slope = 0.0
            for j in range(levels.size):
                sg = 0.5 * (1.0 + np.tanh(0.5 * (a + levels[j])))
                f += hist[j] * sg
                slope += hist[j] * sg * (1.0 - sg)
            if f < 0:
                lo = a
            else:
                hi = a
            nxt = a - f / slope if slope > 0 else 0.5 * (lo + hi)
            if not (lo < nxt < hi):
                nxt = 0.5 * (lo + hi)
            if abs(nxt - a) < 1e-11:
                a = nxt
                break
            a = nxt
        out[i] = a
    return out


def _solve_offsets(counts: np.ndarray, n_other: int, levels: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Per line: the real log-odds offset a with sum_l hist[l] * sigmoid(a + levels[l]) = count.

    The sum is increasing in a: Newton's method inside a bracket, line by line in numba
    (a few iterations where the former vectorised bisection took 40 over whole arrays; the
    fit dominated compress_model's time on small tensors). Counts of 0 or n_other are
    clamped a little inside so the offset stays finite.
    """
    target = np.clip(counts.astype(np.float64), 0.3, n_other - 0.3) if n_other > 0.6 else counts * 1.0
    lv = np.ascontiguousarray(levels, dtype=np.float64)
    h = np.ascontiguousarray(hist, dtype=np.float64)
    total = float(h.sum())
    if target.size == 0 or total <= 0:
        return np.zeros(target.shape)
    frac = np.clip(target / total, 1e-9, 1 - 1e-9)
    a0 = np.clip(np.log(frac / (1 - frac)) - float((lv * h).sum()) / total, -39.0, 39.0)
    return _newton_offsets(np.ascontiguousarray(target), lv, h, a0)


def _solve_offsets_bisect(counts: np.ndarray, n_other: int, levels: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Per line: the real log-odds offset a with sum_l hist[l] * sigmoid(a + levels[l]) = count.

    Bisection (monotone in a), vectorised over lines; counts of 0 or n_other are clamped
    a little inside so the offset stays finite.
    """
    target = np.clip(counts.astype(np.float64), 0.3, n_other - 0.3) if n_other > 0.6 else counts * 1.0
    lo = np.full(counts.shape, -40.0)
    hi = np.full(counts.shape, 40.0)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        s = (_sigmoid(mid[:, None] + levels[None, :]) * hist[None, :]).sum(axis=1)
        up = s < target
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    return 0.5 * (lo + hi)


def _levels_hist(index: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    vals, cnt = np.unique(index, return_counts=True)
    return vals * step * UNIT, cnt.astype(np.float64)


def _nll_bits(kr, kc, zr, zc) -> float:
    """Code length in bits of the mask under the (unquantized-table) logistic model, from
    margins only: sum K z - sum log(1 + e^z) over all positions."""
    vr, hr = np.unique(zr, return_counts=True)
    vc, hc = np.unique(zc, return_counts=True)
    z = (vr[:, None] + vc[None, :]) * UNIT
    z = np.clip(z, -ZMAX * UNIT, ZMAX * UNIT)
    softplus = np.logaddexp(0.0, z)
    ll = float((kr * zr).sum() + (kc * zc).sum()) * UNIT - float((hr[:, None] * hc[None, :] * softplus).sum())
    return -ll / np.log(2.0)


def _index_bits(index: np.ndarray) -> float:
    """Empirical entropy of the indices plus a little for learning the adaptive contexts."""
    if index.size == 0:
        return 0.0
    _, c = np.unique(index, return_counts=True)
    f = c / c.sum()
    return float(-(c * np.log2(f)).sum()) + 8.0 * c.size


def fit_model(keep2d: np.ndarray) -> CtxModel:
    """The row/column model with the smallest estimated code: steps are searched over a few
    values around the optimum quantization step sqrt(12 / (n p (1 - p))) per axis."""
    return fit_model_estimate(keep2d)[0]


PRECHECK_MARGIN = 0.03  # the full step search gains at most about this over the central steps


def fit_model_estimate(keep2d: np.ndarray, limit: float | None = None) -> tuple[CtxModel | None, float]:
    """fit_model, and the estimated size in bits of the mask coded with it (the model's
    likelihood from the row and column counts, plus its coded indices): what `auto` uses
    to decide whether coding the positions is worth it, before coding them.

    With `limit`, the central step pair alone is fitted first (a tenth of the search);
    if its estimate exceeds limit by more than PRECHECK_MARGIN, (None, that estimate)."""
    k = np.asarray(keep2d, dtype=bool)
    rows, cols = k.shape
    n = k.size
    kr = k.sum(axis=1).astype(np.float64)
    kc = k.sum(axis=0).astype(np.float64)
    dens = kr.sum() / n if n else 0.0
    p = min(max(dens, 1e-6), 1 - 1e-6)
    base0 = int(np.clip(np.round(np.log(p / (1 - p)) / UNIT), -ZMAX, ZMAX))

    def axis_steps(n_line: int, counts: np.ndarray) -> list[int]:
        # a line's offset is worth storing only if the counts vary beyond binomial noise
        if counts.size < 2 or n_line == 0:
            return [0]
        var = n_line * p * (1 - p)
        if counts.var() < 1.5 * var:
            return [0]
        s = np.sqrt(12.0 / max(var, 1e-9)) / UNIT
        return [0] + sorted({int(np.clip(round(s * f), 1, MAX_STEP)) for f in (0.7, 1.0, 1.4)})

    best = None
    row_steps, col_steps = axis_steps(cols, kr), axis_steps(rows, kc)
    if limit is not None:
        # the middle candidate of each axis ([0, s*0.7, s, s*1.4] -> s)
        central = _fit_steps(kr, kc, rows, cols, base0, row_steps[len(row_steps) // 2],
                             col_steps[len(col_steps) // 2])
        if central[0] > limit * (1.0 + PRECHECK_MARGIN):
            return None, central[0]
    for sr in row_steps:
        for sc in col_steps:
            cand = _fit_steps(kr, kc, rows, cols, base0, sr, sc)
            if best is None or cand[0] < best[0]:
                best = cand
    cost, base, sr, sc, ia, ib = best
    data = encode_model_indices(ia, ib, sr, sc)
    return CtxModel(rows, cols, base, sr, sc, data, ia, ib), cost - (_index_bits(ia) if sr else 0) \
        - (_index_bits(ib) if sc else 0) + 8.0 * data.size


def _fit_steps(kr, kc, rows, cols, base0, sr, sc):
    ia = np.zeros(rows, dtype=np.int64)
    ib = np.zeros(cols, dtype=np.int64)
    base = base0
    for _ in range(4 if (sr and sc) else 1):
        if sc:
            lv, h = _levels_hist(ia, sr)
            a = _solve_offsets(kc, rows, lv + base * UNIT, h)
            ib = np.clip(np.round(a / (sc * UNIT)), -MAX_INDEX, MAX_INDEX).astype(np.int64)
        if sr:
            lv, h = _levels_hist(ib, sc)
            a = _solve_offsets(kr, cols, lv + base * UNIT, h)
            ia = np.clip(np.round(a / (sr * UNIT)), -MAX_INDEX, MAX_INDEX).astype(np.int64)
        if not sr and not sc:
            break
    # centre the indices on their medians (cheapest to code), moving the offset into base
    if sr:
        m = int(np.median(ia))
        ia -= m
        base += m * sr
    if sc:
        m = int(np.median(ib))
        ib -= m
        base += m * sc
    if not sr and not sc:
        dens = kr.sum() / max(rows * cols, 1)
        p = min(max(dens, 1e-9), 1 - 1e-9)
        base = int(np.round(np.log(p / (1 - p)) / UNIT))
    base = int(np.clip(base, -4 * ZMAX, 4 * ZMAX))
    zr = base + sr * ia
    zc = sc * ib
    cost = _nll_bits(kr, kc, zr, zc) + (_index_bits(ia) if sr else 0) + (_index_bits(ib) if sc else 0)
    return cost, base, sr, sc, ia, ib


# --- the codec's entry points (registered in variants/ctx.py) ---------------------------------


def encode_ctx(keep: np.ndarray, cols: int | None = None, block: int = DEFAULT_BLOCK,
               model: CtxModel | None = None) -> MaskCode:
    """keep coded with `model` (default: the one fit_model finds for it)."""
    if block <= 0 or block % 64 or block > MAX_BLOCK:
        raise ValueError(f"mask block must be a positive multiple of 64 up to {MAX_BLOCK}, got {block}")
    k = np.asarray(keep, dtype=bool)
    if cols is None:
        cols = k.shape[-1] if k.ndim >= 2 else k.size
    flat = np.ascontiguousarray(k.ravel())
    n = flat.size
    cols = int(cols) if n else 0
    if n and (cols <= 0 or n % cols):
        raise ValueError(f"ctx mask: {n} positions are not whole rows of {cols}")
    rows = n // cols if cols else 0
    if model is None:
        model = fit_model(flat.reshape(rows, cols) if n else np.zeros((0, 0), bool))
    elif (model.rows, model.cols) != (rows, cols):
        raise ValueError(f"ctx model of {model.rows} x {model.cols} for a mask of {rows} x {cols}")
    data, offsets = encode_blocks(flat.view(np.uint8), model, block)
    return MaskCode("ctx", n, data, block, offsets, None, model)


def check_ctx_fields(length: int, block: int, rows: int, cols: int, base: int, row_step: int,
                     col_step: int) -> None:
    """Ranges of the ctx description (docs/FORMAT.md section 3.2); ValueError names the field."""
    for name, v in (("block", block), ("rows", rows), ("cols", cols), ("base", base),
                    ("row_step", row_step), ("col_step", col_step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"mask {name} must be an integer, got {v!r}")
    if block <= 0 or block % 64 or block > MAX_BLOCK:
        raise ValueError(f"mask block {block} is not a positive multiple of 64 up to {MAX_BLOCK}")
    if rows < 0 or cols < 0 or rows * cols != length:
        raise ValueError(f"mask rows x cols = {rows} x {cols} does not cover its {length} positions")
    if not -4 * ZMAX <= base <= 4 * ZMAX:
        raise ValueError(f"mask base {base} outside [-{4 * ZMAX}, {4 * ZMAX}]")
    for name, v in (("row_step", row_step), ("col_step", col_step)):
        if not 0 <= v <= MAX_STEP:
            raise ValueError(f"mask {name} {v} outside 0..{MAX_STEP}")


def ctx_model_from_parts(rows: int, cols: int, base: int, row_step: int, col_step: int,
                         data: np.ndarray) -> CtxModel:
    """Decode the carried indices (sequential, bounded work on any bytes)."""
    ia, ib = decode_model_indices(np.asarray(data, dtype=np.uint8), rows, cols, row_step, col_step)
    return CtxModel(rows, cols, base, row_step, col_step, np.asarray(data, dtype=np.uint8), ia, ib)


def decode_ctx_words(code: MaskCode) -> np.ndarray:
    m = code.model
    n = code.length
    if m is None:
        raise ValueError("ctx mask without its model")
    check_ctx_fields(n, code.block, m.rows, m.cols, m.base, m.row_step, m.col_step)
    if m.row_index.size != m.rows or m.col_index.size != m.cols:
        raise ValueError("ctx mask model does not match its rows and columns")
    nb = -(-n // code.block)
    if code.offsets is None or code.offsets.size != nb:
        got = None if code.offsets is None else code.offsets.size
        raise ValueError(f"mask block table has {got} entries, expected {nb}")
    offs = code.offsets.astype(np.int64)
    if nb and (offs[-1] != code.data.size or np.any(np.diff(offs) < 0)):
        raise ValueError("mask block offsets do not match the mask data")
    words = np.zeros(-(-n // 64) + 1, dtype=np.uint64)
    decode_blocks_words(code.data, offs, code.block, n, m, words)
    return words
