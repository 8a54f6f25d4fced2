"""Triton kernels over a ResidentWeight: decode tiles of positions where they lie.

Every kernel works on 2-D tiles of the weight's (rows, cols) view, one lane per position,
and calls `_tile_levels`, which for each position p = r * cols + c:

1. reads its mask bit (the resident bitmask; pruned positions end as +0.0);
2. finds its coded position: natural word w = p // 64 is coded word (w * step) mod NB
   (FORMAT.md section 5), so pc = coded word * 64 + p % 64;
3. per XOR plane: slice t = pc // n_out, output j = pc mod n_out; the window is the
   n_in * (n_s + 1) stream bits from bit (t - n_s) * n_in (fixed rate: no offsets or
   scans), with the bits before the chunk's first slice cleared; the plane bit is
   parity(G[j] & window). A packed plane's bit is stream bit rank(p) (kept weights
   before p: per-word counts plus a popcount);
4. patches: the tile's rows look up their first patch through per-chunk offsets and XOR
   the patch bits in;
5. the level, in float32 in the order of FORMAT.md section 4 (the numba kernel's `_level`).

Kernels run with enable_fp_fusion=False so that no multiply-add of a level is contracted
into an FMA (bit-exactness with the CPU decoders). Rounding to bfloat16 is done on the
bits (ties to even), which the interpreter and the GPU agree on.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..tensor import fused
from .resident import PATCH_CHUNK_SHIFT, PREFIX_WORDS

Q_TABLE = tl.constexpr(fused.Q_TABLE)
Q_BCQ = tl.constexpr(fused.Q_BCQ)
Q_UNIFORM_SYM = tl.constexpr(fused.Q_UNIFORM_SYM)
Q_UNIFORM_ASYM = tl.constexpr(fused.Q_UNIFORM_ASYM)
Q_AFFINE_F16 = tl.constexpr(fused.Q_AFFINE_F16)
Q_AFFINE_BF16 = tl.constexpr(fused.Q_AFFINE_BF16)
OUT_F32 = tl.constexpr(fused.OUT_F32)
OUT_F64 = tl.constexpr(fused.OUT_F64)
OUT_F16 = tl.constexpr(fused.OUT_F16)
OUT_BF16 = tl.constexpr(fused.OUT_BF16)
PREFIX_BITS = tl.constexpr(64 * PREFIX_WORDS)
CHUNK_SHIFT = tl.constexpr(PATCH_CHUNK_SHIFT)
FIELDS = tl.constexpr(8)


@triton.jit
def _parity64(x):
    x = x ^ (x >> 32)
    x = x ^ (x >> 16)
    x = x ^ (x >> 8)
    x = x ^ (x >> 4)
    x = x ^ (x >> 2)
    x = x ^ (x >> 1)
    return (x & 1).to(tl.int32)


@triton.jit
def _popcount64(x):
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return (x & 127).to(tl.int32)


@triton.jit
def _bf16_bits(v):
    """float32 -> bfloat16 bits (int16), round to nearest even; levels are never NaN."""
    b = v.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return r.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _round_bf16(v):
    """float32 rounded to the nearest bfloat16 (ties to even), as float32."""
    b = v.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return r.to(tl.float32, bitcast=True)


@triton.jit
def _coded_word(w64, nfull, nfull_safe, step, inv_nfull_ptr, MULMOD_F64: tl.constexpr):
    """Coded word of natural word w: (w * step) mod NB for full blocks (FORMAT.md 5), else w.

    With MULMOD_F64 (every product below 2^53) the quotient comes from a float64
    reciprocal and is corrected by one step: a 64-bit integer remainder is a long
    instruction sequence on a GPU, and this runs once per position.
    """
    prod = w64 * step
    if MULMOD_F64:
        inv = tl.load(inv_nfull_ptr)
        r = prod - (prod.to(tl.float64) * inv).to(tl.int64) * nfull_safe
        r = tl.where(r < 0, r + nfull_safe, r)
        r = tl.where(r >= nfull_safe, r - nfull_safe, r)
    else:
        r = prod % nfull_safe
    return tl.where(w64 < nfull, r, w64)


@triton.jit
def _xor_plane_bit(streams_ptr, soff, pc, t, j, z, g_ptr, goff, n_in, n_s, live,
                   WW: tl.constexpr, IDX: tl.constexpr):
    """parity(G[j] & window_t) for one plane, window bits below z cleared."""
    sb = (t - n_s) * n_in + PREFIX_BITS  # >= 0: the stream sits behind PREFIX_BITS zero bits
    a = soff + (sb >> 6)
    sh = (sb & 63).to(tl.uint64)
    acc = tl.zeros(pc.shape, tl.uint64)
    nxt = tl.load(streams_ptr + a, mask=live, other=0).to(tl.uint64, bitcast=True)
    for kk in tl.static_range(WW):
        cur = nxt
        nxt = tl.load(streams_ptr + a + (kk + 1), mask=live, other=0).to(tl.uint64, bitcast=True)
        win = (cur >> sh) | ((nxt << 1) << (63 - sh))
        zc = tl.minimum(tl.maximum(z - 64 * kk, 0), 64)
        one = tl.full(pc.shape, 1, tl.uint64)
        clear = ((one << tl.minimum(zc, 63).to(tl.uint64)) - 1) | tl.where(zc >= 64, one << 63, 0)
        gk = tl.load(g_ptr + goff + j * WW + kk, mask=live, other=0).to(tl.uint64, bitcast=True)
        acc = acc ^ (gk & win & ~clear)
    return _parity64(acc)


@triton.jit
def _tile_levels(rows, cols, row_ok, col_lo, col_hi,
                 mask_ptr, streams_ptr, g_ptr, params_ptr, patch_pos_ptr, patch_xor_ptr, patch_chunk_ptr,
                 word_rank_ptr, scales_ptr, inv_nfull_ptr, ncols, nfull, nfull_safe, step, ngroups, group_size,
                 Q: tl.constexpr, WW: tl.constexpr, PACKED: tl.constexpr, SHARED: tl.constexpr,
                 KIND: tl.constexpr, SCALE_K: tl.constexpr, GROUPED: tl.constexpr, IDX: tl.constexpr,
                 MULMOD_F64: tl.constexpr):
    """Float32 levels of the tile rows x cols (+0.0 at pruned or out-of-range positions).

    rows: [BN] row indices (any rows: embedding looks up unsorted, repeated ones);
    cols: [BK] consecutive columns col_lo .. col_lo + BK - 1, valid below col_hi.
    """
    rows = rows.to(IDX)
    cols = cols.to(IDX)
    ok = row_ok[:, None] & (cols < col_hi)[None, :]
    p = tl.where(ok, rows[:, None] * ncols + cols[None, :], 0)
    w = p >> 6
    b = (p & 63).to(tl.uint64)
    mword = tl.load(mask_ptr + w, mask=ok, other=0).to(tl.uint64, bitcast=True)
    live = ok & (((mword >> b) & 1) != 0)
    w64 = w.to(tl.int64)
    kw = _coded_word(w64, nfull, nfull_safe, step, inv_nfull_ptr, MULMOD_F64)
    pc = (kw * 64 + b.to(tl.int64)).to(IDX)
    code = tl.zeros(p.shape, tl.int32)
    if SHARED:  # one decoder for every plane: slice, output, chunk reset and G row once
        n_in = tl.load(params_ptr + 0).to(IDX)
        n_out = tl.load(params_ptr + 1).to(IDX)
        n_s = tl.load(params_ptr + 2).to(IDX)
        cs = tl.load(params_ptr + 3).to(IDX)
        goff = tl.load(params_ptr + 5).to(IDX)
        t = pc // n_out
        j = pc - t * n_out
        z = (t // cs) * cs * n_in - (t - n_s) * n_in
        for i in tl.static_range(Q):
            soff = tl.load(params_ptr + i * FIELDS + 4).to(IDX)
            code = code | (_xor_plane_bit(streams_ptr, soff, pc, t, j, z, g_ptr, goff, n_in, n_s, live,
                                          WW, IDX) << i)
    else:
        for i in tl.static_range(Q):
            soff = tl.load(params_ptr + i * FIELDS + 4).to(IDX)
            if (PACKED >> i) & 1:  # FORMAT.md 1.8: the k-th kept weight has stream bit k
                below = mword & ((tl.full(p.shape, 1, tl.uint64) << b) - 1)
                rank = (tl.load(word_rank_ptr + w, mask=live, other=0).to(IDX) + _popcount64(below).to(IDX))
                word = tl.load(streams_ptr + soff + PREFIX_BITS // 64 + (rank >> 6), mask=live, other=0)
                bit = (word.to(tl.uint64, bitcast=True) >> (rank & 63).to(tl.uint64)) & 1
                code = code | (bit.to(tl.int32) << i)
            else:
                n_in = tl.load(params_ptr + i * FIELDS + 0).to(IDX)
                n_out = tl.load(params_ptr + i * FIELDS + 1).to(IDX)
                n_s = tl.load(params_ptr + i * FIELDS + 2).to(IDX)
                cs = tl.load(params_ptr + i * FIELDS + 3).to(IDX)
                goff = tl.load(params_ptr + i * FIELDS + 5).to(IDX)
                t = pc // n_out
                j = pc - t * n_out
                z = (t // cs) * cs * n_in - (t - n_s) * n_in
                code = code | (_xor_plane_bit(streams_ptr, soff, pc, t, j, z, g_ptr, goff, n_in, n_s, live,
                                              WW, IDX) << i)
    # patches: rows look up the patches of the chunks their column range touches
    first_p = rows * ncols + col_lo
    last_p = rows * ncols + (col_hi - 1)
    first = tl.load(patch_chunk_ptr + (first_p >> CHUNK_SHIFT), mask=row_ok, other=0)
    last = tl.load(patch_chunk_ptr + (last_p >> CHUNK_SHIFT) + 1, mask=row_ok, other=0)
    count = tl.where(row_ok, last - first, 0)
    for k in range(tl.max(count, axis=0)):
        has = k < count
        pp = tl.load(patch_pos_ptr + first + k, mask=has, other=-1).to(IDX)
        px = tl.load(patch_xor_ptr + first + k, mask=has, other=0).to(tl.int32)
        code = code ^ tl.where(p == pp[:, None], px[:, None], 0)
    # levels (FORMAT.md section 4, float32, operation for operation)
    if GROUPED:
        gi = cols // group_size
    else:
        gi = tl.zeros(cols.shape, IDX)
    base = (rows[:, None] * ngroups + gi[None, :]) * SCALE_K
    if KIND == Q_TABLE:
        v = tl.load(scales_ptr + base + code, mask=live, other=0.0)
    elif KIND == Q_BCQ:
        v = tl.zeros(p.shape, tl.float32)
        for i in tl.static_range(Q):
            s = tl.load(scales_ptr + base + i, mask=live, other=0.0)
            v = v + tl.where(((code >> i) & 1) != 0, s, -s)
    elif KIND == Q_UNIFORM_SYM:
        s = tl.load(scales_ptr + base, mask=live, other=0.0)
        v = s * (code.to(tl.float32) - (((1 << Q) - 1) / 2))
    elif KIND == Q_UNIFORM_ASYM:
        s = tl.load(scales_ptr + base, mask=live, other=0.0)
        off = tl.load(scales_ptr + base + 1, mask=live, other=0.0)
        v = off + s * code.to(tl.float32)
    else:  # affine: the exact integer c - z times the scale, rounded once to the scale dtype
        s = tl.load(scales_ptr + base, mask=live, other=0.0)
        zp = tl.load(scales_ptr + base + 1, mask=live, other=0.0).to(tl.int32)
        v = (code - (1 << (Q - 1)) - zp).to(tl.float32) * s
        if KIND == Q_AFFINE_F16:
            v = v.to(tl.float16).to(tl.float32)
        elif KIND == Q_AFFINE_BF16:
            v = _round_bf16(v)
    return tl.where(live, v, 0.0)


@triton.jit
def _store_out(out_ptr, offs, v, ok, OUT: tl.constexpr):
    if OUT == OUT_BF16:
        tl.store(out_ptr + offs, _bf16_bits(v), mask=ok)
    elif OUT == OUT_F16:
        tl.store(out_ptr + offs, v.to(tl.float16), mask=ok)
    elif OUT == OUT_F64:
        tl.store(out_ptr + offs, v.to(tl.float64), mask=ok)
    else:
        tl.store(out_ptr + offs, v, mask=ok)


@triton.jit
def decode_rows_kernel(out_ptr, row_idx_ptr, nsel, col_tiles,
                       mask_ptr, streams_ptr, g_ptr, params_ptr, patch_pos_ptr, patch_xor_ptr, patch_chunk_ptr,
                       word_rank_ptr, scales_ptr, inv_nfull_ptr, nrows, ncols, nfull, nfull_safe, step, ngroups,
                       group_size,
                       Q: tl.constexpr, WW: tl.constexpr, PACKED: tl.constexpr, SHARED: tl.constexpr,
                       KIND: tl.constexpr, SCALE_K: tl.constexpr, GROUPED: tl.constexpr, IDX: tl.constexpr,
                       MULMOD_F64: tl.constexpr, OUT: tl.constexpr, GATHER: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr):
    """Dense rows into out (nsel x ncols, row-major): all rows in order (GATHER=False:
    decode_dense), or the rows listed in row_idx (embedding)."""
    pid = tl.program_id(0)
    pid_r = pid // col_tiles
    pid_c = pid - pid_r * col_tiles
    sel = pid_r * BN + tl.arange(0, BN)
    sel_ok = sel < nsel
    if GATHER:
        rows = tl.load(row_idx_ptr + sel, mask=sel_ok, other=0)
    else:
        rows = sel
    col_lo = pid_c * BK
    cols = col_lo + tl.arange(0, BK)
    col_hi = tl.minimum(col_lo + BK, ncols)
    v = _tile_levels(rows, cols, sel_ok, col_lo, col_hi, mask_ptr, streams_ptr, g_ptr, params_ptr, patch_pos_ptr,
                     patch_xor_ptr, patch_chunk_ptr, word_rank_ptr, scales_ptr, inv_nfull_ptr, ncols, nfull,
                     nfull_safe, step,
                     ngroups, group_size, Q, WW, PACKED, SHARED, KIND, SCALE_K, GROUPED, IDX,
                     MULMOD_F64)
    ok = sel_ok[:, None] & (cols < ncols)[None, :]
    offs = sel.to(tl.int64)[:, None] * ncols + cols.to(tl.int64)[None, :]  # many indices may pass 2^31
    _store_out(out_ptr, offs, v, ok, OUT)


@triton.jit
def linear_fused_kernel(x_ptr, part_ptr, M, stride_xm, split,
                        mask_ptr, streams_ptr, g_ptr, params_ptr, patch_pos_ptr, patch_xor_ptr, patch_chunk_ptr,
                        word_rank_ptr, scales_ptr, inv_nfull_ptr, nrows, ncols, nfull, nfull_safe, step, ngroups,
                        group_size,
                        Q: tl.constexpr, WW: tl.constexpr, PACKED: tl.constexpr, SHARED: tl.constexpr,
                        KIND: tl.constexpr, SCALE_K: tl.constexpr, GROUPED: tl.constexpr, IDX: tl.constexpr,
                        MULMOD_F64: tl.constexpr, OUT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr, BF16_VIA_F32: tl.constexpr):
    """Partial products x[:, K-tiles of this split] @ W[rows, same]^T into part[split, M, N].

    Each program decodes its weight tiles in registers (rounded to the weight dtype, as
    decode_dense writes them) and never stores them; splits over K fill the GPU at batch 1.
    BM < 16 (1 to 4 rows of x): products and row sums in float32, no padding to the 16 rows
    a tl.dot needs; BM = 16: tl.dot (tensor cores for float16 / bfloat16).
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BN + tl.arange(0, BN)
    row_ok = rows < nrows
    m = tl.arange(0, BM)
    m_ok = m < M
    acc = tl.zeros([BM, BN], tl.float32)
    k_tiles = tl.cdiv(ncols, BK)
    for kt in range(pid_s, k_tiles, split):
        col_lo = kt * BK
        cols = col_lo + tl.arange(0, BK)
        col_hi = tl.minimum(col_lo + BK, ncols)
        v = _tile_levels(rows, cols, row_ok, col_lo, col_hi, mask_ptr, streams_ptr, g_ptr, params_ptr,
                         patch_pos_ptr, patch_xor_ptr, patch_chunk_ptr, word_rank_ptr, scales_ptr, inv_nfull_ptr,
                         ncols, nfull, nfull_safe, step, ngroups, group_size, Q, WW, PACKED, SHARED, KIND, SCALE_K,
                         GROUPED, IDX, MULMOD_F64)
        xt = tl.load(x_ptr + m[:, None] * stride_xm + cols[None, :], mask=m_ok[:, None] & (cols < ncols)[None, :],
                     other=0.0)
        # the weight as decode_dense writes it, in float32 (exact) or its own dtype
        if OUT == OUT_BF16:
            w32 = (_bf16_bits(v).to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        elif OUT == OUT_F16:
            w32 = v.to(tl.float16).to(tl.float32)
        else:
            w32 = v
        if BM < 16:
            acc += tl.sum(xt.to(tl.float32)[:, None, :] * w32[None, :, :], axis=2)
        elif OUT == OUT_F16:
            acc += tl.dot(xt, tl.trans(v.to(tl.float16)))
        elif OUT == OUT_BF16:
            if BF16_VIA_F32:  # the interpreter's dot does not take bfloat16: exact products in float32
                acc += tl.dot(xt.to(tl.float32), tl.trans(w32), input_precision="ieee")
            else:
                acc += tl.dot(xt, tl.trans(w32.to(tl.bfloat16)))
        else:
            acc += tl.dot(xt, tl.trans(v), input_precision="ieee")
    offs = pid_s * M * nrows + m[:, None] * nrows + rows[None, :]
    tl.store(part_ptr + offs, acc, mask=m_ok[:, None] & row_ok[None, :])
