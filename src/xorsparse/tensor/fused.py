"""Fused whole-tensor decoding: mask, XOR planes, patches and dequantization in one pass.

The dense output is written once, tile by tile, in row-major order; tiles run in parallel.
For each tile the mask is decoded into a small local bitmask (one word per 64 positions,
a few KiB), then every kept weight is computed where it lies:

- its plane bits come straight from the streams. Natural block j is coded block
  (j * step) mod NB (docs/FORMAT.md section 5), so the coded position of a kept weight
  is known, hence its slice t and output j; the output bit is parity(G[j] & window_t),
  and window_t is W stream bits read from bit (t - n_s) * n_in (bits before the chunk's
  first slice are zero). At 90% sparsity that is cheaper than decoding every position,
  and it needs no plane in memory at all, so the permuted block order costs nothing;
- patches are applied from one list of natural positions sorted once per tensor, with
  the XOR of every plane's flip at that position;
- the level is computed in float32 in the order of FORMAT.md section 4 and rounded to
  the output dtype (IEEE half and bfloat16 with round-to-nearest-even).

The usual tensor (one decoder for all planes, windows up to 128 bits, per-row scales)
takes `_fused_fast_impl`, which does per 64-position word what it can (both slices' windows,
the list of kept positions) and then runs over the kept weights of 64 words in one loop;
every other tensor, and rows of an embedding (`decode_rows_into`), take the general
kernels, which share their per-word work (`_word_general`). Hot loops index with unsigned
integers: numba adds a negative-index fix-up to every signed index.

Only validated input may reach these kernels (they do not bounds-check): `prepare`
takes a `CompressedTensor` that has passed `validate()` and checks the remaining
lengths itself; window reads may run up to STREAM_PAD_WORDS words past a stream's end. A mask codec (tensor/variants/) says how the kernels read it
(`MaskCodec.kernel_mask`): through `MASK_WORDS`, a bitmask of the whole tensor (any codec),
or as one more tile decoder (`_mask_tile`). A new quantizer adds one branch to `_level`,
or none: any quantizer's levels can go through the precomputed table `Q_TABLE`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numba
import numpy as np
from numba import njit, prange

from ..codec._bits import (
    U64,
    ctz64,
    div_magic,
    f32_to_bf16_bits,
    f32_to_f16_bits,
    fast_div,
    low_mask,
    popcount64,
    read128,
    read_bits,
    round_f32_to_bf16,
    round_f32_to_f16,
    shl128,
)
from ..codec.plane import get_decoder
from ..errors import caused_by_memory_error
from .maskcode import golomb_block, golomb_tables

# mask kinds (how the kernels read a mask) and quantizer kinds (how they turn the scales of a
# group and a code into a float32 level): each variant says which it uses (tensor/variants/)
from .variants import (
    MASK_GOLOMB,
    MASK_WORDS,
    Q_AFFINE_BF16,
    Q_AFFINE_F16,
    Q_AFFINE_F32,
    Q_BCQ,
    Q_TABLE,
    Q_UNIFORM_ASYM,
    Q_UNIFORM_SYM,
    levels_table,
    mask_codec,
    quantizer,
)

# output kinds: float32, float64, IEEE half bits, bfloat16 bits
OUT_F32, OUT_F64, OUT_F16, OUT_BF16 = 0, 1, 2, 3
OUT_KINDS = {"float32": OUT_F32, "float64": OUT_F64, "float16": OUT_F16, "bfloat16": OUT_BF16}
OUT_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.uint16, "bfloat16": np.uint16}
TILE_WORDS = 1024  # positions per tile for bitmask masks: 64 Ki, a quarter MiB of float32 output
STREAM_PAD_WORDS = 5  # a window read touches at most 5 words from its first

@dataclass(frozen=True)
class DecodePlan:
    """Everything the fused kernels read, as flat numpy arrays (views of module buffers work)."""

    length: int
    rows: int
    cols: int
    group_size: int
    nfull: int  # full 64-position blocks
    step: int
    mask_kind: int
    mask_words: np.ndarray  # uint64: the bitmask (MASK_WORDS) or the Golomb payload, padded
    mask_offsets: np.ndarray  # int64 end byte of each Golomb block (empty for MASK_WORDS)
    mask_params: np.ndarray  # int64 Golomb parameter of each block
    mask_block: int  # positions per Golomb block; tile size for MASK_WORDS
    gtables: np.ndarray  # uint64 Golomb look-up tables (maskcode.golomb_tables)
    gindex: np.ndarray  # int64 table of each block, -1 for none
    streams: np.ndarray  # uint64 (q, words), each padded by STREAM_PAD_WORDS zero words
    plane_params: np.ndarray  # int64 (q, 4): n_in, n_out, n_s, chunk_slices
    g: np.ndarray  # uint64 (q, max n_out, 4): rows of each plane's window matrix
    patch_pos: np.ndarray  # int64 sorted natural positions, then a sentinel
    patch_xor: np.ndarray  # int64 code bits to flip at each
    scales: np.ndarray  # float32 (rows * groups * k)
    quant_kind: int
    bits: int
    scale_k: int
    wide: bool  # some window is longer than 128 bits
    fast_shared: bool = False  # every plane has the same decoder (n_in, n_out, n_s, chunk_slices, seed)

    @property
    def ntiles(self) -> int:
        return -(-self.length // self.mask_block) if self.length else 0


def kernel_scales(q) -> tuple[np.ndarray, int, int]:
    """(flat float32 parameters, parameters per group, quantizer kind) for the kernels' `_level`.

    bcq and uniform: the scales as stored. affine: each group's scale then its zero point
    (an integer, exact in float32). Codebook, scale row groups and log8 scales (format
    version 2): every row's table of 2^q levels (dequant.levels_table).
    """
    kind = quantizer(q.quantizer).kernel_kind(q)
    if kind == Q_TABLE or q.scale_rows > 1 or q.scale_format == "log8":
        return np.ascontiguousarray(levels_table(q)).reshape(-1), 1 << q.bits, Q_TABLE
    s = np.asarray(q.scales, dtype=np.float32)
    if kind in (Q_AFFINE_F32, Q_AFFINE_F16, Q_AFFINE_BF16):
        z = np.zeros(s.shape[:2], np.float32) if q.zero_points is None else q.zero_points.astype(np.float32)
        s = np.stack([s[:, :, 0], z], axis=-1)
    return np.ascontiguousarray(s).reshape(-1), int(s.shape[2]) if s.ndim == 3 else 1, kind


def natural_patches(planes, length: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Every plane's patch positions mapped to row-major order, merged: (positions, code XOR).

    A position patched in several planes appears once with all their bits. Ends with a
    sentinel (int64 max) so kernels can scan without bounds checks.
    """
    nfull = length // 64
    pos_list, bit_list = [], []
    for i, p in enumerate(planes):
        pc = np.asarray(p.patches, dtype=np.int64)
        if pc.size == 0:
            continue
        if pc[0] < 0 or pc[-1] >= length or np.any(np.diff(pc) <= 0):
            raise ValueError(f"plane {i}: patch positions must be strictly increasing and below {length}")
        k = pc >> 6
        nat = pc.copy()
        full = k < nfull
        if nfull > 1 and full.any():
            inv = pow(int(step), -1, nfull)
            kk = k[full]
            if nfull < (1 << 31):
                j = (kk * inv) % nfull
            else:  # products would overflow int64
                j = np.array([(int(v) * inv) % nfull for v in kk], dtype=np.int64)
            nat[full] = j * 64 + (pc[full] & 63)
        pos_list.append(nat)
        bit_list.append(np.full(nat.size, 1 << i, dtype=np.int64))
    if not pos_list:
        return np.array([np.iinfo(np.int64).max], np.int64), np.zeros(1, np.int64)
    pos = np.concatenate(pos_list)
    bits = np.concatenate(bit_list)
    order = np.argsort(pos, kind="stable")
    pos, bits = pos[order], bits[order]
    uniq, start = np.unique(pos, return_index=True)
    xor = np.bitwise_xor.reduceat(bits, start) if pos.size else bits
    return (np.concatenate([uniq, [np.iinfo(np.int64).max]]).astype(np.int64),
            np.concatenate([xor, [0]]).astype(np.int64))


def plane_arrays(planes) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(streams, params, g, wide) for the kernels from EncodedPlane objects."""

    q = len(planes)
    max_out = max((p.n_out for p in planes), default=1)
    nwords = max((-(-p.stream.size // 8) for p in planes), default=0) + STREAM_PAD_WORDS
    streams = np.zeros((q, nwords), dtype=np.uint64)
    params = np.zeros((q, 4), dtype=np.int64)
    g = np.zeros((q, max_out, 4), dtype=np.uint64)
    wide = False
    for i, p in enumerate(planes):
        streams[i].view(np.uint8)[: p.stream.size] = p.stream
        params[i] = (p.n_in, p.n_out, p.n_s, p.chunk_slices)
        gw = get_decoder(p.n_in, p.n_out, p.n_s, p.seed).g_words
        g[i, : p.n_out, : gw.shape[1]] = gw
        wide |= p.n_in * (p.n_s + 1) > 128
    return streams, params, g, wide


def check_planes(ct) -> None:
    """What CompressedTensor.validate() leaves to the decoders: stream lengths, chunk sizes."""
    n = ct.numel
    for i, p in enumerate(ct.planes):
        want = -(-(-(-n // p.n_out) * p.n_in) // 8)
        if p.stream.size != want:
            raise ValueError(f"plane {i} stream holds {p.stream.size} bytes, expected {want}")
        if p.chunk_slices <= 0 or p.chunk_slices % 64:
            raise ValueError(f"plane {i}: chunk_slices must be a positive multiple of 64, got {p.chunk_slices}")


@contextlib.contextmanager
def numba_threads(n: int | None) -> Iterator[None]:
    """Run numba's parallel kernels on at most n threads inside the block (None: leave as is).

    numba.set_num_threads is per calling thread, so this does not affect other threads'
    kernels; `parallel=False` everywhere means this with n = 1: a kernel compiled with
    parallel=True (the mask decoders) would otherwise still use the whole pool.
    """
    if n is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def prepare(ct, tile_words: int = TILE_WORDS) -> DecodePlan:
    """A DecodePlan for a validated CompressedTensor (checks what validate() leaves open).

    A `ctx` or `bitmask` mask is decoded here into whole-tensor words (on numba's threads:
    wrap in numba_threads(1) for one thread); a Golomb mask is decoded tile by tile inside
    the fused kernel.
    """
    q = ct.quant
    n = ct.numel
    check_planes(ct)
    km = mask_codec(ct.mask.codec).kernel_mask(ct.mask, 64 * tile_words)
    kind, words, offs, params, block = km.kind, km.words, km.offsets, km.params, km.block
    gtables, gindex = golomb_tables(params)
    streams, pparams, g, wide = plane_arrays(ct.planes)
    ppos, pxor = natural_patches(ct.planes, n, ct.block_step)
    shared = len({(p.n_in, p.n_out, p.n_s, p.chunk_slices, p.seed) for p in ct.planes}) == 1
    scales, scale_k, quant_kind = kernel_scales(q)
    return DecodePlan(n, q.rows, q.cols, q.group_size, n // 64, ct.block_step, kind, words, offs, params, block,
                      gtables, gindex, streams, pparams, g, ppos, pxor, scales, quant_kind, q.bits, scale_k,
                      wide, shared)


# ---------------------------------------------------------------------------------------
# kernels


@njit(inline="always", cache=True)
def _mask_tile(kind, words, offsets, params, tables, tindex, block, length, tile, wbuf):
    """The tile's mask as bitmask words in wbuf (zeroed by the caller); False if corrupt."""
    p0 = tile * block
    p1 = min(length, p0 + block)
    if kind == MASK_GOLOMB:
        start = offsets[tile - 1] if tile > 0 else 0
        t = tindex[tile]
        return golomb_block(words, start, offsets[tile], params[tile], p1 - p0, wbuf, 0, tables[max(t, 0)], t >= 0)
    w0 = p0 >> 6
    for w in range((p1 - p0 + 63) >> 6):
        wbuf[w] = words[w0 + w]
    if p1 & 63:
        wbuf[(p1 - p0 - 1) >> 6] &= low_mask(p1 & 63)
    return True


@njit(inline="always", cache=True)
def _div(a, d, inv):
    """floor(a / d) for 0 <= a < 2^50 through a float64 reciprocal inv = 1/d: integer division
    costs tens of cycles, and the kernels need several per 64 positions."""
    t = np.int64(np.float64(a) * inv)
    if t * d > a:
        t -= 1
    elif (t + 1) * d <= a:
        t += 1
    return t


@njit(inline="always", cache=True)
def _window(streams, i, t, n_in, n_s, cs, inv_cs):
    """The first 128 window bits of slice t of plane i (inputs before its chunk are zero)."""
    s = (t - n_s) * n_in
    c0 = _div(t, cs, inv_cs) * cs * n_in
    if s >= c0:
        return read128(streams[i], s)
    lo, hi = read128(streams[i], c0)
    return shl128(lo, hi, c0 - s)


@njit(inline="always", cache=True)
def _window_at(sflat, off, t, n_in, n_s, cs, inv_cs):
    """_window of the plane whose stream starts at bit off of the flattened streams sflat
    (one array: a row view streams[i] per read costs more than the read)."""
    s = (t - n_s) * n_in
    c0 = _div(t, cs, inv_cs) * cs * n_in
    if s >= c0:
        return read128(sflat, off + s)
    lo, hi = read128(sflat, off + c0)
    return shl128(lo, hi, c0 - s)


@njit(inline="always", cache=True)
def _funnel(a, b, sh):
    """Bits sh .. sh + 63 of the 128-bit value (b, a), 0 <= sh < 64, without a branch."""
    return (a >> U64(sh)) | ((b << (U64(63) - U64(sh))) << U64(1))


@njit(inline="always", cache=True)
def _windows2(sflat, off, t, tm, n_in, n_s, cs, inv_cs):
    """_window_at of slices t and t + 1 (tm: t's index in its chunk, n_in <= 64): one read
    of four words when t's window lies inside its chunk. (lo, hi of t, lo, hi of t + 1.)

    Chunks hold a multiple of 64 slices, so a chunk starts at a multiple of 64 coded
    positions: the slices of one coded 64-position block are in one chunk, and slice t + 1
    is only read (by _fused_fast_impl) when it shares t's chunk."""
    if tm >= n_s:
        pos = off + (t - n_s) * n_in
        i = U64(pos) >> U64(6)  # unsigned indices (pos >= 0): no negative-index fix-ups
        sh = pos & 63
        x0 = sflat[i]
        x1 = sflat[i + U64(1)]
        x2 = sflat[i + U64(2)]
        x3 = sflat[i + U64(3)]
        s1 = sh + n_in
        sh1 = s1 & 63
        if s1 >= 64:  # compiled to selects
            a, b, c = x1, x2, x3
        else:
            a, b, c = x0, x1, x2
        return _funnel(x0, x1, sh), _funnel(x1, x2, sh), _funnel(a, b, sh1), _funnel(b, c, sh1)
    lo0, hi0 = _window_at(sflat, off, t, n_in, n_s, cs, inv_cs)
    lo1, hi1 = _window_at(sflat, off, t + 1, n_in, n_s, cs, inv_cs)
    return lo0, hi0, lo1, hi1


@njit(inline="always", cache=True)
def _window_wide(streams, i, t, n_in, n_s, cs, inv_cs, win):
    """All 256 window bits of slice t of plane i into win[0..3]."""
    s = (t - n_s) * n_in
    c0 = _div(t, cs, inv_cs) * cs * n_in
    st = streams[i]
    start = s if s >= c0 else c0
    for k in range(4):
        win[k] = read_bits(st, start + 64 * k, 64)
    if s < c0:  # shift left by c0 - s (< 256) bits
        sh = c0 - s
        ws = sh >> 6
        bs = sh & 63
        for k in range(3, -1, -1):
            v = U64(0)
            if k - ws >= 0:
                v = win[k - ws] << U64(bs)
                if bs and k - ws - 1 >= 0:
                    v |= win[k - ws - 1] >> U64(64 - bs)
            win[k] = v


@njit(inline="always", cache=True)
def _level(kind, scales, base, q, code):
    """FORMAT.md section 4 in float32, operation for operation."""
    if kind == Q_TABLE:  # computed by dequant.levels_table, operation for operation
        return scales[base + code]
    if kind == Q_BCQ:
        w = np.float32(0.0)
        for i in range(q):
            s = scales[base + i]
            if (code >> i) & 1:
                w = w + s
            else:
                w = w + (-s)
        return w
    if kind == Q_UNIFORM_SYM:
        return scales[base] * (np.float32(code) - np.float32(((1 << q) - 1) / 2))
    if kind == Q_UNIFORM_ASYM:
        return scales[base + 1] + scales[base] * np.float32(code)
    # affine: one float32 product of the exact integer c - z, rounded once to the scale dtype
    w = np.float32(code - (1 << (q - 1)) - np.int64(scales[base + 1])) * scales[base]
    if kind == Q_AFFINE_F16:
        return round_f32_to_f16(w)
    if kind == Q_AFFINE_BF16:
        return round_f32_to_bf16(w)
    return w


@njit(inline="always", cache=True)
def _store(out, p, v, out_kind):
    if out_kind == OUT_F16:
        out[p] = f32_to_f16_bits(v)
    elif out_kind == OUT_BF16:
        out[p] = f32_to_bf16_bits(v)
    else:
        out[p] = v


@njit(inline="always", cache=True)
def _word_general(m, base, cbase, o0, streams, pp, g, wide, q, send, win, inv_out, inv_cs, patch_pos, patch_xor,
                  ptr, r, row0, cols, inv_cols, one_group, gsize, inv_g, ngroups, quant_kind, scales, scale_k,
                  out_kind, out):
    """The kept weights of one 64-position word into out[o0 + position]: m its mask bits, base
    the natural position of bit 0 and cbase its coded one; any decoders (per plane), windows
    up to 256 bits, scale groups. The work per word of _fused_impl and _rows_impl. r and row0
    are the row of the previous weight and its first position (a row kernel's never change);
    ptr the patch list's position. (ptr, r, row0) after the word."""
    for i in range(q):
        send[i] = -1  # per plane: end (coded position) of the slice whose window is in win[i]
    while m:
        b = ctz64(m)
        m &= m - U64(1)
        p = base + b
        pc = cbase + b
        code = 0
        for i in range(q):
            n_out = pp[i, 1]
            if pc >= send[i]:
                t = _div(pc, n_out, inv_out[i])
                send[i] = (t + 1) * n_out
                if wide:
                    _window_wide(streams, i, t, pp[i, 0], pp[i, 2], pp[i, 3], inv_cs[i], win[i])
                else:
                    lo, hi = _window(streams, i, t, pp[i, 0], pp[i, 2], pp[i, 3], inv_cs[i])
                    win[i, 0] = lo
                    win[i, 1] = hi
            jo = U64(pc - send[i] + n_out)  # unsigned indices: no negative-index fix-ups
            ui = U64(i)
            if wide:
                par = popcount64((g[ui, jo, U64(0)] & win[ui, U64(0)]) ^ (g[ui, jo, U64(1)] & win[ui, U64(1)])
                                 ^ (g[ui, jo, U64(2)] & win[ui, U64(2)]) ^ (g[ui, jo, U64(3)] & win[ui, U64(3)]))
            else:
                par = popcount64((g[ui, jo, U64(0)] & win[ui, U64(0)]) ^ (g[ui, jo, U64(1)] & win[ui, U64(1)]))
            code |= (par & 1) << i
        while patch_pos[ptr] < p:
            ptr += 1
        if patch_pos[ptr] == p:
            code ^= patch_xor[ptr]
        if p - row0 >= cols:
            r = _div(p, cols, inv_cols)
            row0 = r * cols
        gi = 0 if one_group else _div(p - row0, gsize, inv_g)
        v = _level(quant_kind, scales, (r * ngroups + gi) * scale_k, q, code)
        _store(out, U64(o0 + p), v, out_kind)
    return ptr, r, row0


def _fused_impl(mask_kind, mask_words, mask_offsets, mask_params, gtables, gindex, block, length, rows, cols,
                gsize, nfull, step, streams, pp, g, patch_pos, patch_xor, scales, quant_kind, q, scale_k, wide,
                out_kind, out, ok):
    """Any valid tensor: per-plane decoders, windows up to 256 bits, grouped scales."""
    ntiles = (length + block - 1) // block
    ngroups = (cols + gsize - 1) // gsize
    one_group = gsize >= cols
    inv_cols = 1.0 / cols
    inv_g = 1.0 / gsize
    for tile in prange(ntiles):
        p0 = tile * block
        p1 = min(length, p0 + block)
        out[p0:p1] = 0
        nwt = (p1 - p0 + 63) >> 6
        wbuf = np.zeros(nwt, dtype=np.uint64)
        if not _mask_tile(mask_kind, mask_words, mask_offsets, mask_params, gtables, gindex, block, length, tile,
                          wbuf):
            ok[tile] = False
            continue
        send = np.zeros(q, dtype=np.int64)  # per plane: end (coded position) of the current slice
        win = np.zeros((q, 4), dtype=np.uint64)  # and its window
        inv_out = np.empty(q, dtype=np.float64)
        inv_cs = np.empty(q, dtype=np.float64)
        for i in range(q):
            inv_out[i] = 1.0 / pp[i, 1]
            inv_cs[i] = 1.0 / pp[i, 3]
        ptr = np.searchsorted(patch_pos, p0)
        r = p0 // cols
        row0 = r * cols
        w_first = p0 >> 6
        k = (w_first * step) % nfull if nfull > 0 else 0
        for wl in range(nwt):
            m = wbuf[wl]
            w = w_first + wl
            kw = k if w < nfull else w
            k += step  # coded block of the next natural block: (w + 1) * step mod nfull
            if k >= nfull:
                k -= nfull
            if m == 0:
                continue
            ptr, r, row0 = _word_general(m, w * 64, kw * 64, 0, streams, pp, g, wide, q, send, win, inv_out, inv_cs,
                                         patch_pos, patch_xor, ptr, r, row0, cols, inv_cols, one_group, gsize, inv_g,
                                         ngroups, quant_kind, scales, scale_k, out_kind, out)


@njit(inline="always", cache=True)
def _fill_levels(lv, quant_kind, scales, r, scale_k, q, out_kind):
    """Row r's 2^q levels, in the output dtype, into lv."""
    for c in range(lv.size):
        _store(lv, c, _level(quant_kind, scales, r * scale_k, q, c), out_kind)


TILES_PER_CHUNK = 1  # tiles per parallel iteration (each allocates its scratch arrays once)
SUB_WORDS = 64  # words per sub-tile of the fast kernel: its output, windows and positions stay in L1


@njit(inline="always", cache=True)
def _planes_code(g, jo, win, wi, q):
    """The q plane bits of output jo of a slice whose windows are win[wi + 2 * plane + 0/1] (lo/hi)."""
    g0 = g[jo, 0]
    g1 = g[jo, 1]
    code = 0
    for i in range(q):
        code |= (popcount64((g0 & win[wi + 2 * i]) ^ (g1 & win[wi + 2 * i + 1])) & 1) << i
    return code


def _fused_fast_impl(mask_kind, mask_words, mask_offsets, mask_params, gtables, gindex, block, length, rows, cols,
                     nfull, step, streams, n_in, n_out, n_s, cs, c_out, c_cs, g, patch_pos, patch_xor, scales,
                     quant_kind, q, scale_k, out_kind, out, ok):
    """The usual case: one decoder for every plane, windows up to 128 bits, one scale set per row.

    A kept weight then costs one G row load and one AND/popcount per plane, and its level
    comes from a table of 2^q values per row, already in the output dtype.

    With n_out >= 64 (the usual rates), a sub-tile of SUB_WORDS words goes in two passes.
    The first, per word and without data-dependent branches, zeroes the word's output,
    lists its kept positions and reads the windows of the (at most two) slices that its
    64 coded positions span (the second may lie one past the last slice: it is then read
    from the streams' zero padding and never used); the reads of many words overlap. The
    second runs over the listed positions in one loop (no loop exit to mispredict per
    word): each weight picks its slice's windows by a compare, and a patch or a new row is
    a compare with a next position, rarely true. n_out < 64: word by word, slices read as
    the weights reach them.
    """
    ntiles = (length + block - 1) // block
    nlev = 1 << q
    inv_out = 1.0 / n_out
    inv_cs = 1.0 / cs
    inv_cols = 1.0 / cols
    golomb = mask_kind == MASK_GOLOMB
    flat = n_out >= 64
    uq2 = U64(2 * q)
    sflat = streams.reshape(-1)
    sbits = streams.shape[1] * 64
    nchunks = (ntiles + TILES_PER_CHUNK - 1) // TILES_PER_CHUNK
    for chunk in prange(nchunks):
        wbuf = np.empty(((block + 63) >> 6) if golomb else 1, dtype=np.uint64)
        lv = np.zeros(nlev, dtype=out.dtype)
        win = np.zeros(2 * SUB_WORDS * q * 2, dtype=np.uint64)  # [2 * word + 0/1: slice t / t + 1, plane, lo/hi]
        jbs = np.zeros(SUB_WORDS, dtype=np.uint64)  # per word: offset of its first coded position in slice t
        plist = np.zeros(SUB_WORDS * 64 + 64, dtype=np.int32)  # kept positions (from the sub-tile's start)
        for tile in range(chunk * TILES_PER_CHUNK, min(ntiles, (chunk + 1) * TILES_PER_CHUNK)):
            p0 = tile * block
            p1 = min(length, p0 + block)
            nwt = (p1 - p0 + 63) >> 6
            w_first = p0 >> 6
            if golomb:
                wbuf[:nwt] = 0
                if not _mask_tile(mask_kind, mask_words, mask_offsets, mask_params, gtables, gindex, block, length,
                                  tile, wbuf):
                    ok[tile] = False
                    continue
            ptr = np.searchsorted(patch_pos, p0)
            r = _div(p0, cols, inv_cols)
            row1 = (r + 1) * cols  # positions below row1 are in rows <= r, the row of lv
            _fill_levels(lv, quant_kind, scales, r, scale_k, q, out_kind)
            k = (w_first * step) % nfull if nfull > 0 else 0
            for sw in range(0, nwt, SUB_WORDS):
                sw1 = min(nwt, sw + SUB_WORDS)
                sbase = (w_first + sw) * 64
                out[sbase:min(p1, sbase + 64 * SUB_WORDS)] = 0
                n = 0
                for wl in range(sw, sw1):
                    w = w_first + wl
                    base = w * 64
                    end = min(base + 64, p1)
                    m = wbuf[U64(wl)] if golomb else mask_words[U64(w)]
                    if end - base < 64:
                        m &= low_mask(end - base)
                    kw = k if w < nfull else w
                    k += step  # coded block of the next natural block: (w + 1) * step mod nfull
                    if k >= nfull:
                        k -= nfull
                    if not flat:
                        ptr, r, row1 = _word_fast_lazy(m, base, kw * 64, sflat, sbits, n_in, n_out, n_s, cs, inv_out,
                                                       inv_cs, g, win, q, patch_pos, patch_xor, ptr, r, row1, cols,
                                                       inv_cols, lv, quant_kind, scales, scale_k, out_kind, out)
                        continue
                    cbase = kw * 64
                    t = fast_div(cbase, n_out, c_out)
                    ws = U64(2 * (wl - sw) * q * 2)
                    jbs[U64(wl - sw)] = U64(cbase - t * n_out)
                    tm = t - fast_div(t, cs, c_cs) * cs
                    for i in range(q):
                        lo0, hi0, lo1, hi1 = _windows2(sflat, i * sbits, t, tm, n_in, n_s, cs, inv_cs)
                        wi = ws + U64(2 * i)
                        win[wi] = lo0
                        win[wi + U64(1)] = hi0
                        win[wi + uq2] = lo1
                        win[wi + uq2 + U64(1)] = hi1
                    # list the kept positions: 8 without a loop exit, then any more
                    cnt = popcount64(m)
                    lb = np.int32(base - sbase)
                    for j in range(8):
                        plist[U64(n + j)] = lb + np.int32(ctz64(m))
                        m &= m - U64(1)
                    jj = n + 8
                    while m:
                        plist[U64(jj)] = lb + np.int32(ctz64(m))
                        m &= m - U64(1)
                        jj += 1
                    n += cnt
                if not flat:
                    continue
                ptr, r, row1 = _scatter_sub(plist, n, jbs, win, g, n_out, q, sbase, patch_pos, patch_xor, ptr, r,
                                             row1, cols, inv_cols, lv, quant_kind, scales, scale_k, out_kind, out)


@njit(nogil=True, cache=True)
def _scatter_sub(plist, n, jbs, win, g, n_out, q, sbase, patch_pos, patch_xor, ptr, r, row1, cols, inv_cols, lv,
                 quant_kind, scales, scale_k, out_kind, out):
    """The second pass of a sub-tile of _fused_fast_impl (a function of its own: inlined, the
    kernel's many live values would push this loop's into memory). (ptr, r, row1) after it."""
    un_out = U64(n_out)
    uq2 = U64(2 * q)
    npatch = patch_pos[ptr]
    for e in range(n):
        lp = np.uint64(plist[U64(e)])
        wi = lp >> U64(6)
        jo = jbs[wi] + (lp & U64(63))
        sl = U64(jo >= un_out)
        jo -= sl * un_out
        g0 = g[jo, U64(0)]
        g1 = g[jo, U64(1)]
        wb = (wi * U64(2) + sl) * uq2
        code = U64(0)
        for i in range(q):
            ui = U64(2 * i)
            code |= (U64(popcount64((g0 & win[wb + ui]) ^ (g1 & win[wb + ui + U64(1)])))
                     & U64(1)) << U64(i)
        p = sbase + np.int64(lp)
        if p >= npatch:
            while patch_pos[ptr] < p:
                ptr += 1
            if patch_pos[ptr] == p:
                code ^= U64(patch_xor[ptr])
            npatch = patch_pos[ptr]
        if p >= row1:
            r = _div(p, cols, inv_cols)
            row1 = (r + 1) * cols
            _fill_levels(lv, quant_kind, scales, r, scale_k, q, out_kind)
        out[U64(p)] = lv[code]
    return ptr, r, row1


@njit(inline="always", cache=True)
def _word_fast_lazy(m, base, cbase, sflat, sbits, n_in, n_out, n_s, cs, inv_out, inv_cs, g, win, q, patch_pos, patch_xor,
                    ptr, r, row1, cols, inv_cols, lv, quant_kind, scales, scale_k, out_kind, out):
    """One word of _fused_fast_impl weight by weight (any n_out): a slice's windows are read
    into win[0] when a weight reaches it. (ptr, r, row1) after the word."""
    send = np.int64(-1)
    sstart = np.int64(0)
    while m:
        b = ctz64(m)
        m &= m - U64(1)
        p = base + b
        pc = cbase + b
        if pc >= send:
            t = _div(pc, n_out, inv_out)
            sstart = t * n_out
            send = sstart + n_out
            for i in range(q):
                lo, hi = _window_at(sflat, i * sbits, t, n_in, n_s, cs, inv_cs)
                win[2 * i] = lo
                win[2 * i + 1] = hi
        code = _planes_code(g, pc - sstart, win, 0, q)
        while patch_pos[ptr] < p:
            ptr += 1
        if patch_pos[ptr] == p:
            code ^= patch_xor[ptr]
        if p >= row1:
            r = _div(p, cols, inv_cols)
            row1 = (r + 1) * cols
            _fill_levels(lv, quant_kind, scales, r, scale_k, q, out_kind)
        out[p] = lv[code]
    return ptr, r, row1


def _rows_impl(words, rows_sel, cols, gsize, nfull, step, streams, pp, g, patch_pos, patch_xor, scales, quant_kind,
               q, scale_k, wide, out_kind, out):
    """Rows rows_sel (each in range: checked by the caller) of a MASK_WORDS tensor into out,
    one after another (len(rows_sel) * cols values): what an embedding lookup needs. The
    same per-kept-weight work as _fused_impl; a 64-position word may straddle two rows, so
    the bits outside the row are masked off."""
    ngroups = (cols + gsize - 1) // gsize
    one_group = gsize >= cols
    inv_g = 1.0 / gsize
    inv_cols = 1.0 / cols
    for i in prange(rows_sel.size):
        r = rows_sel[i]
        p0 = r * cols
        p1 = p0 + cols
        o0 = i * cols - p0  # out index of position p: o0 + p
        out[i * cols:(i + 1) * cols] = 0
        send = np.zeros(q, dtype=np.int64)
        win = np.zeros((q, 4), dtype=np.uint64)
        inv_out = np.empty(q, dtype=np.float64)
        inv_cs = np.empty(q, dtype=np.float64)
        for j in range(q):
            inv_out[j] = 1.0 / pp[j, 1]
            inv_cs[j] = 1.0 / pp[j, 3]
        ptr = np.searchsorted(patch_pos, p0)
        for w in range(p0 >> 6, (p1 + 63) >> 6):
            base = w * 64
            m = words[w]
            if base < p0:
                m &= ~low_mask(p0 - base)
            if base + 64 > p1:
                m &= low_mask(p1 - base)
            if m == 0:
                continue
            kw = (w * step) % nfull if w < nfull else w
            ptr, _, _ = _word_general(m, base, kw * 64, o0, streams, pp, g, wide, q, send, win, inv_out, inv_cs,
                                      patch_pos, patch_xor, ptr, r, p0, cols, inv_cols, one_group, gsize, inv_g,
                                      ngroups, quant_kind, scales, scale_k, out_kind, out)


_rows_kernel = njit(nogil=True, cache=True)(_rows_impl)
_fused_parallel = njit(parallel=True, nogil=True, cache=True)(_fused_impl)
_fused_serial = njit(nogil=True, cache=True)(_fused_impl)
_fast_parallel = njit(parallel=True, nogil=True, cache=True)(_fused_fast_impl)
_fast_serial = njit(nogil=True, cache=True)(_fused_fast_impl)


def _fast_ok(plan: DecodePlan) -> bool:
    pp = plan.plane_params
    return (not plan.wide and plan.bits >= 1 and plan.group_size >= plan.cols and plan.fast_shared
            and bool(np.all(pp == pp[0])) and plan.cols >= (1 << plan.bits) // 4)


def decode_into(plan: DecodePlan, out: np.ndarray, out_kind: int, parallel: bool = True) -> np.ndarray:
    """Decode the whole tensor into the flat array out (float32/float64, or uint16 bits).

    parallel=False runs on the calling thread only (a kernel compiled without numba's
    parallel loops; the kernels release the GIL, so several tensors can decode at once
    from a thread pool).
    """
    if out.ndim != 1 or out.size != plan.length or not out.flags.c_contiguous:
        raise ValueError(f"output must be a contiguous flat array of {plan.length} elements")
    if out.dtype != np.dtype(OUT_DTYPES[[k for k, v in OUT_KINDS.items() if v == out_kind][0]]):
        raise ValueError(f"output dtype {out.dtype} does not match output kind {out_kind}")
    ntiles = plan.ntiles
    ok = np.ones(max(ntiles, 1), dtype=np.bool_)
    try:
        _run_kernel(plan, out, out_kind, parallel, ok)
    except SystemError as e:  # numba's parallel kernels report an allocation failure this way, at times
        if caused_by_memory_error(e):
            raise MemoryError(f"out of memory decoding a tensor of {plan.length} positions") from None
        raise
    if not ok[:ntiles].all():
        raise ValueError(f"mask block {int(np.argmin(ok[:ntiles]))} is corrupt or truncated")
    return out


def _run_kernel(plan: DecodePlan, out: np.ndarray, out_kind: int, parallel: bool, ok: np.ndarray) -> None:
    if plan.length:
        if _fast_ok(plan):
            n_in, n_out, n_s, cs = (int(v) for v in plan.plane_params[0])
            kernel = _fast_parallel if parallel else _fast_serial
            kernel(plan.mask_kind, plan.mask_words, plan.mask_offsets, plan.mask_params, plan.gtables, plan.gindex,
                   plan.mask_block, plan.length, plan.rows, plan.cols, plan.nfull, plan.step, plan.streams,
                   n_in, n_out, n_s, cs, U64(div_magic(n_out, plan.length + 64)),
                   U64(div_magic(cs, plan.length + 64)), plan.g[0], plan.patch_pos, plan.patch_xor, plan.scales, plan.quant_kind,
                   plan.bits, plan.scale_k, out_kind, out, ok)
        else:
            kernel = _fused_parallel if parallel else _fused_serial
            kernel(plan.mask_kind, plan.mask_words, plan.mask_offsets, plan.mask_params, plan.gtables, plan.gindex,
                   plan.mask_block, plan.length, plan.rows, plan.cols, plan.group_size, plan.nfull, plan.step,
                   plan.streams, plan.plane_params, plan.g, plan.patch_pos, plan.patch_xor, plan.scales,
                   plan.quant_kind, plan.bits, plan.scale_k, plan.wide, out_kind, out, ok)


def decode_dense(ct, parallel: bool = True) -> np.ndarray:
    """The dense tensor as a flat array: float32/float64/float16, or uint16 bfloat16 bits.

    parallel=False: every step (the mask decode in `prepare` included) on the calling thread.
    """
    with numba_threads(None if parallel else 1):
        plan = check_mask_blocks(prepare(ct))
        out = output_array(plan.length, OUT_DTYPES[ct.dtype])
        if ct.dtype == "float16":
            decode_into(plan, out, OUT_F16, parallel)
            return out.view(np.float16)
        return decode_into(plan, out, OUT_KINDS[ct.dtype], parallel)


# Tensors of at least this many positions have their Golomb mask decoded whole before the
# output is allocated: a corrupt block then costs no dense allocation (a forged file can
# declare a tensor of gigabytes with a mask of kilobytes), and the fused kernel reads the
# decoded bitmask (one bit a position: 1/32 of a float32 output) instead of decoding each
# block a second time. Bitmask and ctx masks are decoded whole by `prepare`, at any size.
PRECHECK_POSITIONS = 1 << 22


def check_mask_blocks(plan: DecodePlan) -> DecodePlan:
    """The plan with a large tensor's Golomb mask decoded into a bitmask (MASK_WORDS; any other
    plan as it is); ValueError naming the first corrupt or truncated block."""
    if plan.mask_kind != MASK_GOLOMB or plan.length < PRECHECK_POSITIONS:
        return plan
    ok = np.ones(max(plan.ntiles, 1), dtype=np.bool_)
    words = np.zeros((plan.length + 63) // 64 + 1, dtype=np.uint64)
    _decode_golomb_blocks(plan.mask_words, plan.mask_offsets, plan.mask_params, plan.gtables, plan.gindex,
                          plan.mask_block, plan.length, words, ok)
    if not ok[: plan.ntiles].all():
        raise ValueError(f"mask block {int(np.argmin(ok[: plan.ntiles]))} is corrupt or truncated")
    return replace(plan, mask_kind=MASK_WORDS, mask_words=words, mask_block=64 * TILE_WORDS)


def output_array(length: int, dtype) -> np.ndarray:
    """The flat output, allocated once the input has passed every check that needs no output."""
    return np.empty(length, dtype=dtype)


@njit(parallel=True, cache=True, nogil=True)
def _decode_golomb_blocks(words, offsets, params, tables, tindex, block, length, out, ok):
    """Every Golomb block into the whole-tensor bitmask out (zeroed); ok[block] False if corrupt."""
    ntiles = (length + block - 1) // block
    for tile in prange(ntiles):
        start = offsets[tile - 1] if tile > 0 else 0
        t = tindex[tile]
        ok[tile] = golomb_block(words, start, offsets[tile], params[tile], min(length, tile * block + block)
                                - tile * block, out, (tile * block) >> 6, tables[max(t, 0)], t >= 0)


def decode_rows_into(plan: DecodePlan, rows: np.ndarray, out: np.ndarray, out_kind: int) -> np.ndarray:
    """Rows `rows` of the tensor (as rows x cols: dim 0 by the rest) into the flat array out
    of len(rows) * cols elements, on the calling thread: an embedding lookup decodes the
    rows it reads, not the whole table. The plan's mask must be a bitmask (MASK_WORDS:
    a Golomb mask decodes only block by block); rows outside the tensor raise IndexError."""
    if plan.mask_kind != MASK_WORDS:
        raise ValueError("row decoding needs the mask as a bitmask (a MASK_WORDS plan)")
    sel = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    if sel.size and (int(sel.min()) < 0 or int(sel.max()) >= plan.rows):
        raise IndexError(f"row index out of range for a table of {plan.rows} rows")
    if out.ndim != 1 or out.size != sel.size * plan.cols or not out.flags.c_contiguous:
        raise ValueError(f"output must be a contiguous flat array of {sel.size * plan.cols} elements")
    if out.dtype != np.dtype(OUT_DTYPES[next(k for k, v in OUT_KINDS.items() if v == out_kind)]):
        raise ValueError(f"output dtype {out.dtype} does not match output kind {out_kind}")
    if sel.size and plan.cols:
        _rows_kernel(plan.mask_words, sel, plan.cols, plan.group_size, plan.nfull, plan.step, plan.streams,
                     plan.plane_params, plan.g, plan.patch_pos, plan.patch_xor, plan.scales, plan.quant_kind,
                     plan.bits, plan.scale_k, plan.wide, out_kind, out)
    return out
