"""Coding the pruning mask, which the decoder needs to zero the don't-care positions.

`bitmask` is one bit per weight. `entropy` codes the gaps between kept weights with a
Golomb code whose parameter is chosen per block of BLOCK positions: on random masks the
gaps are geometric, for which Golomb codes are the optimal prefix codes (within 1% of the
binary entropy from 50% to 99% sparsity), and decoding costs work per *kept* weight, not
per position. Blocks decode independently (in parallel) through an offset table. `ctx`
(maskctx.py, format version 2) range-codes each position with a probability from a
row x column model the file carries. The codecs as the library sees them, and `auto`
(whichever is smallest), are in tensor/variants/. Layout: docs/FORMAT.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from ..codec._bits import U64, ctz64, read_bits

DEFAULT_BLOCK = 1 << 16
MAX_GOLOMB = 1 << 20


@dataclass(frozen=True)
class MaskCode:
    codec: str  # a registered mask codec's name (tensor/variants/)
    length: int
    data: np.ndarray  # uint8
    block: int = 0  # entropy, ctx: positions per block (a multiple of 64)
    offsets: np.ndarray | None = None  # entropy, ctx: uint32 end offset of each block's bytes
    params: np.ndarray | None = None  # entropy: uint32 Golomb parameter m of each block
    model: Any = None  # ctx: maskctx.CtxModel

    @property
    def nbits(self) -> int:
        """Bits the mask costs: payload plus whatever tables it stores (block table, model)."""
        n = self.data.size * 8
        for table in (self.offsets, self.params):
            if table is not None:
                n += table.size * 32
        if self.model is not None:
            n += self.model.data.size * 8
        return n


def binary_entropy(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


@njit(inline="always", cache=True)
def _code_len(g, m, b, u):
    r = g % m
    extra = 0 if m == 1 else (b - 1 if r < u else b)
    return g // m + 1 + extra


@njit(cache=True, nogil=True)
def _gaps(keep):
    """Gaps before each kept position, plus the gap to the end of the block (the terminator)."""
    n = 0
    for v in keep:
        n += v
    gaps = np.empty(n + 1, dtype=np.int64)
    prev = -1
    k = 0
    for i in range(keep.shape[0]):
        if keep[i]:
            gaps[k] = i - prev - 1
            prev = i
            k += 1
    gaps[k] = keep.shape[0] - prev - 1
    return gaps


@njit(cache=True)
def _golomb_shape(m):
    b = 0
    while (1 << b) < m:
        b += 1
    return b, (1 << b) - m


@njit(cache=True, nogil=True)
def _best_param(gaps, length):
    """The Golomb parameter with the fewest bits for these gaps, searched near the optimum."""
    n = gaps.shape[0]
    p = (n - 1) / length if length else 0.5
    if p <= 0.0:
        m0 = MAX_GOLOMB
    elif p >= 0.5:
        m0 = 1
    else:
        m0 = int(np.ceil(np.log(2.0 - p) / -np.log(1.0 - p)))
    best_m = 1
    best = -1
    lo = max(1, m0 // 2)
    hi = min(MAX_GOLOMB, 2 * m0 + 1)
    m = lo
    while m <= hi:
        b, u = _golomb_shape(m)
        total = 0
        for g in gaps:
            total += _code_len(g, m, b, u)
        if best < 0 or total < best:
            best = total
            best_m = m
        m = m + 1 if m < 64 else m + max(1, m // 32)
    return best_m, best


@njit(cache=True)
def _put(out, pos, bit):
    if bit:
        out[pos >> 3] |= np.uint8(1 << (pos & 7))


@njit(cache=True, nogil=True)
def _golomb_encode(gaps, m, out):
    b, u = _golomb_shape(m)
    pos = 0
    for g in gaps:
        q = g // m
        r = g % m
        for _ in range(q):
            _put(out, pos, 1)
            pos += 1
        pos += 1  # the 0 that ends the unary part
        if m > 1:
            if r < u:
                nb, v = b - 1, r
            else:
                nb, v = b, r + u
            for i in range(nb - 1, -1, -1):  # most significant bit first
                _put(out, pos, (v >> i) & 1)
                pos += 1
    return pos


@njit(cache=True, nogil=True)
def _encode_blocks(keep, block, params, scratch, sizes):
    nb = params.shape[0]
    for i in range(nb):
        s = i * block
        e = min(keep.shape[0], s + block)
        gaps = _gaps(keep[s:e])
        m, _ = _best_param(gaps, e - s)
        params[i] = m
        nbits = _golomb_encode(gaps, m, scratch[i])
        sizes[i] = (nbits + 7) // 8


_REV8 = np.array([int(f"{v:08b}"[::-1], 2) for v in range(256)], dtype=np.uint64)


@njit(inline="always", cache=True)
def _rev(x, n):
    """The low n (<= 32) bits of x in reverse order (Golomb remainders are MSB first)."""
    r = (_REV8[x & U64(255)] << U64(24)) | (_REV8[(x >> U64(8)) & U64(255)] << U64(16)) \
        | (_REV8[(x >> U64(16)) & U64(255)] << U64(8)) | _REV8[(x >> U64(24)) & U64(255)]
    return r >> U64(32 - n)


@njit(inline="always", cache=True)
def _golomb_one(data, pos, limit, m, b, u, length):
    """One Golomb code from bit pos, a word at a time: (gap, new pos), gap -1 if corrupt."""
    q = 0
    while True:
        avail = limit - pos
        if avail <= 0:
            return -1, pos
        ones = ctz64(~read_bits(data, pos, 64))
        if ones < 64:
            if ones >= avail:
                return -1, pos
            q += ones
            pos += ones + 1
            break
        q += 64
        pos += 64
        if q > length:
            return -1, pos
    if q > length:
        return -1, pos
    r = 0
    if m > 1:
        nb = b - 1
        if pos + nb > limit:
            return -1, pos
        if nb > 0:
            r = np.int64(_rev(read_bits(data, pos, nb), nb))
            pos += nb
        if r >= u:
            if pos >= limit:
                return -1, pos
            r = ((r << 1) | np.int64((data[pos >> 6] >> U64(pos & 63)) & U64(1))) - u
            pos += 1
    return q * m + r, pos


GOLOMB_LOOKAHEAD = 11  # bits per table look-up
GOLOMB_SYMBOLS = 4  # codes decoded per look-up at most
GOLOMB_DIST_BITS = 15  # table field of one cumulative distance (at most K * m < 2^15 for m < 2^(K-1))
GOLOMB_BATCH = 5  # look-ups per 64-bit read: 5 * K <= 57 bits
MAX_GOLOMB_TABLES = 8


@njit(cache=True)
def golomb_table(m):
    """For every K-bit lookahead (stream order, first bit = LSB), one uint64: the bits used by
    the whole codes it holds (up to GOLOMB_SYMBOLS; 0 if none) in bits 0-3, then for each
    code, in GOLOMB_DIST_BITS bits from bit 4, the distance from the previous kept position
    to its own (gap + 1, summed); slots past the last code repeat the last distance, so a
    decoder can set all slots' bits without a data-dependent branch. One word per entry:
    16 KiB a table, which stays in the L1 cache."""
    k = GOLOMB_LOOKAHEAD
    b = 0
    while (1 << b) < m:
        b += 1
    u = (1 << b) - m
    tab = np.zeros(1 << k, dtype=np.uint64)
    for v in range(1 << k):
        pos = 0
        used = 0
        n = 0
        dist = 0
        d = np.zeros(GOLOMB_SYMBOLS, dtype=np.int64)
        while n < GOLOMB_SYMBOLS:
            q = 0
            while pos < k and (v >> pos) & 1:
                q += 1
                pos += 1
            if pos >= k:
                break
            pos += 1
            r = 0
            if m > 1:
                if pos + b - 1 > k:
                    break
                for _ in range(b - 1):
                    r = (r << 1) | ((v >> pos) & 1)
                    pos += 1
                if r >= u:
                    if pos >= k:
                        break
                    r = ((r << 1) | ((v >> pos) & 1)) - u
                    pos += 1
            dist += q * m + r + 1
            d[n] = dist
            n += 1
            used = pos
        for j in range(n, GOLOMB_SYMBOLS):
            d[j] = dist
        e = U64(used)
        for j in range(GOLOMB_SYMBOLS):
            e |= U64(d[j]) << U64(4 + GOLOMB_DIST_BITS * j)
        tab[v] = e
    return tab


@njit(inline="always", cache=True)
def _table_lookups(data, pos, prev, length, table, out, w0, cur, acc):
    """Up to GOLOMB_BATCH table look-ups from one 64-bit read at bit pos (the caller checks
    that pos + GOLOMB_BATCH * K bits lie in the block). Kept bits go to out from word w0:
    acc holds the bits of word cur so far and is stored whole after each code (a plain
    store: an OR into memory, one per kept position, would wait on the previous one),
    so no branch depends on where a word ends. Stops early (done = False) at a look-up
    that holds no whole code or reaches the block's end: the caller decodes that code
    one at a time. (pos, prev, cur, acc, done)."""
    bb = read_bits(data, pos, 64)
    kmask = U64((1 << GOLOMB_LOOKAHEAD) - 1)
    dmask = U64((1 << GOLOMB_DIST_BITS) - 1)
    uw0 = U64(w0)
    cur = U64(cur)  # unsigned, as the positions below (prev + 1 >= 0 wraps to the right value)
    for _ in range(GOLOMB_BATCH):
        e = table[bb & kmask]
        used = np.int64(e & U64(15))
        last = prev + np.int64(e >> U64(4 + GOLOMB_DIST_BITS * (GOLOMB_SYMBOLS - 1)))
        if used == 0 or last >= length:
            return pos, prev, np.int64(cur), acc, False
        for s in range(GOLOMB_SYMBOLS):
            p = U64(prev) + ((e >> U64(4 + GOLOMB_DIST_BITS * s)) & dmask)
            w = p >> U64(6)
            # no branch: slots cross words at random
            acc = (acc & (U64(0) - U64(w == cur))) | (U64(1) << (p & U64(63)))
            out[uw0 + w] = acc  # unsigned indices: no negative-index fix-up
            cur = w
        prev = last
        pos += used
        bb >>= U64(used)
    return pos, prev, np.int64(cur), acc, True


@njit(cache=True, nogil=True)
def golomb_block(data, start, end, m, length, out, w0, table, use_table):
    """Decode one Golomb-coded mask block into out (kept bits set from word w0; the words
    it covers must be zero).

    With a table for m (use_table), each look-up of the next K bits decodes every whole
    code they hold, GOLOMB_BATCH look-ups per read of the stream; codes longer than K
    bits, and the block's last bits, go one at a time (unary part by counting trailing
    ones of a 64-bit word). False if corrupt.
    """
    b = 0
    while (1 << b) < m:
        b += 1
    u = (1 << b) - m
    pos = start * 8
    limit = end * 8
    prev = -1
    batch = GOLOMB_BATCH * GOLOMB_LOOKAHEAD
    cur = np.int64(0)
    acc = U64(0)
    while True:
        if use_table:
            done = True
            while done and pos + batch <= limit:
                pos, prev, cur, acc, done = _table_lookups(data, pos, prev, length, table, out, w0, cur, acc)
        g, pos = _golomb_one(data, pos, limit, m, b, u, length)
        if g < 0:
            return False
        p = prev + 1 + g
        if p >= length:
            return p == length
        w = p >> 6
        if w != cur:
            acc = U64(0)
            cur = w
        acc |= U64(1) << U64(p & 63)
        out[w0 + w] = acc
        prev = p


def golomb_tables(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Look-up tables for the most used Golomb parameters (at most MAX_GOLOMB_TABLES, each
    small enough that a code fits the lookahead); (tables, table index per block or -1).
    There is always at least one table, so kernels can index it whatever the index says."""
    vals, counts = np.unique(params, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    chosen = [int(vals[i]) for i in order if vals[i] < (1 << (GOLOMB_LOOKAHEAD - 1))][:MAX_GOLOMB_TABLES]
    tables = np.zeros((max(len(chosen), 1), 1 << GOLOMB_LOOKAHEAD), dtype=np.uint64)
    index = np.full(params.size, -1, dtype=np.int64)
    for t, m in enumerate(chosen):
        tables[t] = golomb_table(m)
        index[params == m] = t
    return tables, index


@njit(parallel=True, cache=True, nogil=True)
def _decode_blocks(data, offsets, params, block, length, words, ok, tables, tindex):
    nb = params.shape[0]
    for i in prange(nb):
        s = i * block
        e = min(length, s + block)
        start = offsets[i - 1] if i > 0 else 0
        t = tindex[i]
        ok[i] = golomb_block(data, np.int64(start), np.int64(offsets[i]), params[i], e - s, words, s >> 6,
                             tables[max(t, 0)], t >= 0)


def encode_entropy(keep: np.ndarray, block: int = DEFAULT_BLOCK) -> MaskCode:
    if block <= 0 or block % 64:
        raise ValueError(f"mask block must be a positive multiple of 64, got {block}")
    k = np.ascontiguousarray(np.asarray(keep, dtype=bool).ravel()).view(np.uint8)
    nb = -(-k.size // block)
    params = np.zeros(nb, dtype=np.uint32)
    # worst case: m = 1 and every position kept, one bit each, plus the terminator
    scratch = np.zeros((max(nb, 1), min(block, max(k.size, 1)) // 8 + 16), dtype=np.uint8)
    sizes = np.zeros(max(nb, 1), dtype=np.int64)
    if nb:
        _encode_blocks(k, block, params, scratch, sizes)
    sizes = sizes[:nb]
    offsets = np.cumsum(sizes).astype(np.uint32)
    data = np.concatenate([scratch[i, : sizes[i]] for i in range(nb)]) if nb else np.zeros(0, np.uint8)
    return MaskCode("entropy", k.size, data, block, offsets, params)


def encode_bitmask(keep: np.ndarray) -> MaskCode:
    k = np.asarray(keep, dtype=bool).ravel()
    return MaskCode("bitmask", k.size, np.packbits(k, bitorder="little"))


def check_entropy_tables(code: MaskCode) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, params) as int64 after checking they fit the payload (kernels do not bounds-check)."""
    n = code.length
    if code.block <= 0 or code.block % 64:
        raise ValueError(f"mask block size {code.block} is not a positive multiple of 64")
    nb = -(-n // code.block)
    if code.offsets.size != nb or code.params.size != nb:
        raise ValueError(f"mask block table has {code.offsets.size} entries, expected {nb}")
    offs = code.offsets.astype(np.int64)
    if nb and (offs[-1] != code.data.size or np.any(np.diff(offs) < 0)):
        raise ValueError("mask block offsets do not match the mask data")
    if np.any(code.params == 0):
        raise ValueError("mask Golomb parameter of 0 is invalid")
    return offs, code.params.astype(np.int64)


def padded_bytes_as_words(data: np.ndarray, pad_words: int = 2) -> np.ndarray:
    """uint8 bytes -> little-endian uint64 words, zero-padded (word-at-a-time readers overrun)."""
    nw = -(-data.size // 8) + pad_words
    buf = np.zeros(nw * 8, dtype=np.uint8)
    buf[: data.size] = data
    return buf.view("<u8")


def decode_bitmask_words(code: MaskCode) -> np.ndarray:
    """A `bitmask` mask as little-endian packed bits in uint64 words (ceil(length/64) + 1 words)."""
    n = code.length
    nw = -(-n // 64) + 1
    if code.data.size != -(-n // 8):
        raise ValueError(f"bitmask holds {code.data.size} bytes, expected {-(-n // 8)}")
    out = np.zeros(nw * 8, dtype=np.uint8)
    out[: code.data.size] = code.data
    words = out.view("<u8")
    if n % 64:
        words[n // 64] &= U64((1 << (n % 64)) - 1)
    return words


def decode_entropy_words(code: MaskCode) -> np.ndarray:
    """An `entropy` mask as little-endian packed bits in uint64 words (ceil(length/64) + 1 words)."""
    n = code.length
    nw = -(-n // 64) + 1
    offs, params = check_entropy_tables(code)
    nb = offs.size
    words = np.zeros(nw, dtype=np.uint64)
    ok = np.ones(max(nb, 1), dtype=np.bool_)
    if nb:
        tables, tindex = golomb_tables(params)
        _decode_blocks(padded_bytes_as_words(code.data), offs, params, code.block, n, words, ok, tables, tindex)
    if not ok[:nb].all():
        raise ValueError(f"mask block {int(np.argmin(ok[:nb]))} is corrupt or truncated")
    return words

