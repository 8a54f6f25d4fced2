"""numba kernels of the codec: sequential GF(2) elimination, exhaustive search, table decoding.

Chunks are independent (inputs before a chunk's first slice are zero), so every kernel is
a prange over chunks. A chunk holds a multiple of 64 slices, so its stream bits and its
output bits both start on a 64-bit word boundary and threads never share a word.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import U64, ctz64, low_mask, popcount64, read128, read_bits, shl128, shr128


@njit(inline="always", cache=True)
def _store_chunk(stream, xw, first_bit, nbits):
    """Copy a chunk's solved inputs into the stream; chunks start on a word boundary."""
    w0 = first_bit >> 6
    for i in range((nbits + 63) // 64):
        stream[w0 + i] = xw[i]


@njit(cache=True, nogil=True)
def chunk_care_offsets(care, chunk_len, offsets):
    """offsets[c] = care bits before chunk c (offsets has n_chunks + 1 entries): one pass,
    no full-length temporary (a cumulative sum per plane used to cost a sixth of encoding)."""
    total = 0
    n = care.shape[0]
    for c in range(offsets.shape[0] - 1):
        offsets[c] = total
        for p in range(c * chunk_len, min(n, (c + 1) * chunk_len)):
            total += care[p] != 0
    offsets[offsets.shape[0] - 1] = total


@njit(parallel=True, cache=True, nogil=True)
def encode_elimination(bits, care, g_lo, g_hi, n_in, n_out, n_s, chunk_slices,
                       stream, patch_off, patch_buf, patch_cnt):
    """Solve every care bit as a GF(2) row over its slice's window, chunk by chunk.

    A row's pivot is its oldest variable. Rows kept in echelon form then only ever hold
    variables at or after their pivot, so a new row, reduced against them, never picks up
    a variable that has left its window; a row reduced to zero with rhs 1 contradicts the
    rows before it and its position becomes a patch. Back-substitution runs newest to
    oldest pivot; free variables are 0.
    """
    length = bits.shape[0]
    n_slices = (length + n_out - 1) // n_out
    n_chunks = (n_slices + chunk_slices - 1) // chunk_slices
    for c in prange(n_chunks):
        t0 = c * chunk_slices
        t1 = min(n_slices, t0 + chunk_slices)
        nv = (t1 - t0) * n_in
        piv = np.full(nv, -1, dtype=np.int32)
        rows_lo = np.empty(nv, dtype=np.uint64)
        rows_hi = np.empty(nv, dtype=np.uint64)
        rows_rhs = np.empty(nv, dtype=np.uint8)
        nrows = 0
        npatch = 0
        base = patch_off[c]
        for t in range(t0, t1):
            ws = (t - t0 - n_s) * n_in  # chunk-local index of window bit 0
            nbad = -ws if ws < 0 else 0  # window bits before the chunk: zero inputs
            p0 = t * n_out
            p1 = min(length, p0 + n_out)
            for p in range(p0, p1):
                if care[p] == 0:
                    continue
                j = p - p0
                rlo = g_lo[j]
                rhi = g_hi[j]
                if nbad > 0:
                    if nbad >= 64:
                        rlo = U64(0)
                        rhi &= ~low_mask(nbad - 64)
                    else:
                        rlo &= ~low_mask(nbad)
                rhs = bits[p]
                while True:
                    if rlo == 0 and rhi == 0:
                        if rhs != 0:
                            patch_buf[base + npatch] = p
                            npatch += 1
                        break
                    if rlo != 0:
                        b = ctz64(rlo)
                    else:
                        b = ctz64(rhi) + 64
                    a = ws + b
                    r = piv[a]
                    if r < 0:
                        nlo, nhi = shr128(rlo, rhi, b)
                        rows_lo[nrows] = nlo
                        rows_hi[nrows] = nhi
                        rows_rhs[nrows] = rhs
                        piv[a] = nrows
                        nrows += 1
                        break
                    slo, shi = shl128(rows_lo[r], rows_hi[r], b)
                    rlo ^= slo
                    rhi ^= shi
                    rhs ^= rows_rhs[r]
        patch_cnt[c] = npatch
        # back-substitution into the chunk's words of the stream
        xw = np.zeros(nv // 64 + 3, dtype=np.uint64)
        for a in range(nv - 1, -1, -1):
            r = piv[a]
            if r < 0:
                continue
            xlo, xhi = read128(xw, a)
            v = (popcount64((rows_lo[r] & xlo) ^ (rows_hi[r] & xhi)) & 1) ^ rows_rhs[r]
            if v != 0:
                xw[a >> 6] |= U64(1) << U64(a & 63)
        _store_chunk(stream, xw, t0 * n_in, nv)


@njit(parallel=True, cache=True, nogil=True)
def encode_exhaustive(bits, care, cols, n_in, n_out, chunk_slices,
                      stream, patch_off, patch_buf, patch_cnt):
    """The paper's search (n_s = 0): every x in Gray-code order, keep the fewest mismatches.

    cols[i] is input i's column of M_0 packed as n_out-bit words; the first x with the
    minimum mismatch count wins, so the result is deterministic.
    """
    length = bits.shape[0]
    nwords = cols.shape[1]
    n_slices = (length + n_out - 1) // n_out
    n_chunks = (n_slices + chunk_slices - 1) // chunk_slices
    for c in prange(n_chunks):
        t0 = c * chunk_slices
        t1 = min(n_slices, t0 + chunk_slices)
        tgt = np.zeros(nwords, dtype=np.uint64)
        cm = np.zeros(nwords, dtype=np.uint64)
        y = np.zeros(nwords, dtype=np.uint64)
        npatch = 0
        base = patch_off[c]
        xw = np.zeros(((t1 - t0) * n_in) // 64 + 2, dtype=np.uint64)
        for t in range(t0, t1):
            p0 = t * n_out
            p1 = min(length, p0 + n_out)
            tgt[:] = 0
            cm[:] = 0
            for p in range(p0, p1):
                j = p - p0
                if care[p] != 0:
                    cm[j >> 6] |= U64(1) << U64(j & 63)
                    if bits[p] != 0:
                        tgt[j >> 6] |= U64(1) << U64(j & 63)
            best = 0
            for w in range(nwords):
                best += popcount64(tgt[w] & cm[w])
            bestx = 0
            if best > 0:
                y[:] = 0
                x = 0
                for g in range(1, 1 << n_in):
                    i = ctz64(U64(g))
                    x ^= 1 << i
                    mm = 0
                    for w in range(nwords):
                        y[w] ^= cols[i, w]
                        mm += popcount64((y[w] ^ tgt[w]) & cm[w])
                    if mm < best:
                        best = mm
                        bestx = x
                        if best == 0:
                            break
            # patches: care positions the best x gets wrong
            if best > 0:
                y[:] = 0
                for i in range(n_in):
                    if (bestx >> i) & 1:
                        for w in range(nwords):
                            y[w] ^= cols[i, w]
                for p in range(p0, p1):
                    j = p - p0
                    wrong = ((y[j >> 6] ^ tgt[j >> 6]) & cm[j >> 6]) >> U64(j & 63)
                    if wrong & U64(1):
                        patch_buf[base + npatch] = p
                        npatch += 1
            pos = (t - t0) * n_in
            for i in range(n_in):
                if (bestx >> i) & 1:
                    q = pos + i
                    xw[q >> 6] |= U64(1) << U64(q & 63)
        patch_cnt[c] = npatch
        _store_chunk(stream, xw, t0 * n_in, (t1 - t0) * n_in)


@njit(inline="always", cache=True)
def _emit(y, n_out, acc, nacc, out, wi):
    """Append the n_out bits held in y's words to the output bit stream (LSB first)."""
    remaining = n_out
    for w in range(y.shape[0]):
        k = 64 if remaining > 64 else remaining
        remaining -= k
        val = y[w]
        acc |= val << U64(nacc)
        if nacc + k >= 64:
            out[wi] = acc
            wi += 1
            acc = (val >> U64(64 - nacc)) if nacc > 0 else U64(0)
            nacc = nacc + k - 64
        else:
            nacc += k
    return acc, nacc, wi


@njit(parallel=True, cache=True, nogil=True)
def decode_tables(stream, n_slices, n_in, n_out, n_s, chunk_slices, table, out):
    """Fixed-rate decode: a shift register of the window, one table look-up per window byte.

    Every slice does the same work whatever its care bits, so chunks balance perfectly.
    `stream` is padded by one word; `out` receives n_slices*n_out bits, little-endian.
    """
    window = n_in * (n_s + 1)
    nbytes = table.shape[0]
    nwords = table.shape[2]
    n_chunks = (n_slices + chunk_slices - 1) // chunk_slices
    top = window - n_in
    for c in prange(n_chunks):
        t0 = c * chunk_slices
        t1 = min(n_slices, t0 + chunk_slices)
        y = np.zeros(nwords, dtype=np.uint64)
        lo = U64(0)
        hi = U64(0)
        wi = (t0 * n_out) >> 6
        acc = U64(0)
        nacc = 0
        for t in range(t0, t1):
            xt = read_bits(stream, t * n_in, n_in)
            lo, hi = shr128(lo, hi, n_in)
            xl, xh = shl128(xt, U64(0), top)
            lo |= xl
            hi |= xh
            for w in range(nwords):
                y[w] = 0
            for m in range(nbytes):
                if m < 8:
                    v = (lo >> U64(8 * m)) & U64(255)
                else:
                    v = (hi >> U64(8 * (m - 8))) & U64(255)
                for w in range(nwords):
                    y[w] ^= table[m, v, w]
            acc, nacc, wi = _emit(y, n_out, acc, nacc, out, wi)
        if nacc > 0:
            out[wi] = acc & low_mask(nacc)


@njit(cache=True)
def flip_bits(words, positions):
    for p in positions:
        words[p >> 6] ^= U64(1) << U64(p & 63)


# ---------------------------------------------------------------------------------------
# Wide windows (W > 128): the same algorithms on rows of NW 64-bit words. Slower per care
# bit (the work grows about as W^2), but a longer memory absorbs more of the spread of
# care bits between slices, which is what the last percent of efficiency costs.


@njit(inline="always", cache=True)
def _xor_shifted(r, s, b, nw):
    """r ^= s << b for multiword values (s spans at most nw words after the shift)."""
    ws = b >> 6
    bs = b & 63
    if bs == 0:
        for i in range(nw - ws):
            r[i + ws] ^= s[i]
    else:
        carry = U64(0)
        for i in range(nw - ws):
            v = s[i]
            r[i + ws] ^= (v << U64(bs)) | carry
            carry = v >> U64(64 - bs)


@njit(inline="always", cache=True)
def _store_shifted(dst, r, b, nw):
    """dst = r >> b."""
    ws = b >> 6
    bs = b & 63
    for i in range(nw):
        j = i + ws
        v = U64(0)
        if j < nw:
            v = r[j] >> U64(bs)
            if bs != 0 and j + 1 < nw:
                v |= r[j + 1] << U64(64 - bs)
        dst[i] = v


@njit(parallel=True, cache=True, nogil=True)
def encode_elimination_wide(bits, care, g, n_in, n_out, n_s, chunk_slices,
                            stream, patch_off, patch_buf, patch_cnt):
    """encode_elimination for windows of up to 64 * g.shape[1] bits."""
    nw = g.shape[1]
    length = bits.shape[0]
    n_slices = (length + n_out - 1) // n_out
    n_chunks = (n_slices + chunk_slices - 1) // chunk_slices
    for c in prange(n_chunks):
        t0 = c * chunk_slices
        t1 = min(n_slices, t0 + chunk_slices)
        nv = (t1 - t0) * n_in
        piv = np.full(nv, -1, dtype=np.int32)
        rows = np.empty((nv, nw), dtype=np.uint64)
        rows_rhs = np.empty(nv, dtype=np.uint8)
        r = np.empty(nw, dtype=np.uint64)
        nrows = 0
        npatch = 0
        base = patch_off[c]
        for t in range(t0, t1):
            ws = (t - t0 - n_s) * n_in
            nbad = -ws if ws < 0 else 0
            p0 = t * n_out
            p1 = min(length, p0 + n_out)
            for p in range(p0, p1):
                if care[p] == 0:
                    continue
                j = p - p0
                for i in range(nw):
                    lo_bit = 64 * i
                    if nbad >= lo_bit + 64:
                        r[i] = U64(0)
                    elif nbad > lo_bit:
                        r[i] = g[j, i] & ~low_mask(nbad - lo_bit)
                    else:
                        r[i] = g[j, i]
                rhs = bits[p]
                while True:
                    b = -1
                    for i in range(nw):
                        if r[i] != 0:
                            b = 64 * i + ctz64(r[i])
                            break
                    if b < 0:
                        if rhs != 0:
                            patch_buf[base + npatch] = p
                            npatch += 1
                        break
                    a = ws + b
                    q = piv[a]
                    if q < 0:
                        _store_shifted(rows[nrows], r, b, nw)
                        rows_rhs[nrows] = rhs
                        piv[a] = nrows
                        nrows += 1
                        break
                    _xor_shifted(r, rows[q], b, nw)
                    rhs ^= rows_rhs[q]
        patch_cnt[c] = npatch
        xw = np.zeros(nv // 64 + nw + 2, dtype=np.uint64)
        for a in range(nv - 1, -1, -1):
            q = piv[a]
            if q < 0:
                continue
            par = 0
            for i in range(nw):
                par ^= popcount64(rows[q, i] & read_bits(xw, a + 64 * i, 64))
            v = (par & 1) ^ rows_rhs[q]
            if v != 0:
                xw[a >> 6] |= U64(1) << U64(a & 63)
        _store_chunk(stream, xw, t0 * n_in, nv)


@njit(parallel=True, cache=True, nogil=True)
def decode_tables_wide(stream, n_slices, n_in, n_out, n_s, chunk_slices, table, out):
    """decode_tables with the window register held in several words."""
    window = n_in * (n_s + 1)
    nreg = (window + 63) // 64
    nbytes = table.shape[0]
    nwords = table.shape[2]
    n_chunks = (n_slices + chunk_slices - 1) // chunk_slices
    top = window - n_in
    for c in prange(n_chunks):
        t0 = c * chunk_slices
        t1 = min(n_slices, t0 + chunk_slices)
        y = np.zeros(nwords, dtype=np.uint64)
        reg = np.zeros(nreg + 1, dtype=np.uint64)
        wi = (t0 * n_out) >> 6
        acc = U64(0)
        nacc = 0
        for t in range(t0, t1):
            xt = read_bits(stream, t * n_in, n_in)
            # reg >>= n_in (n_in <= 64), then x_t enters at bit `top`
            s = n_in
            for i in range(nreg):
                if s == 64:
                    reg[i] = reg[i + 1]
                else:
                    reg[i] = (reg[i] >> U64(s)) | (reg[i + 1] << U64(64 - s))
            wsh = top >> 6
            bsh = top & 63
            reg[wsh] |= xt << U64(bsh)
            if bsh != 0 and wsh + 1 < nreg:
                reg[wsh + 1] |= xt >> U64(64 - bsh)
            for w in range(nwords):
                y[w] = 0
            for m in range(nbytes):
                v = (reg[m >> 3] >> U64(8 * (m & 7))) & U64(255)
                for w in range(nwords):
                    y[w] ^= table[m, v, w]
            acc, nacc, wi = _emit(y, n_out, acc, nacc, out, wi)
        if nacc > 0:
            out[wi] = acc & low_mask(nacc)
