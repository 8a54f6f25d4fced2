"""Encode and decode one bit-plane: the fixed-rate, lossless XOR-gate code.

A plane is a flat 0/1 array and a care mask. Encoding finds stream bits whose decoded
output matches every care bit it can, and records the rest as patches, so decoding is
lossless at every care position for any input. Positions outside the care mask decode
to whatever the XOR network gives: the pruning mask zeroes them later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from ..errors import XorsparseError
from . import _kernels
from .patches import best_rice_parameter, decode_patches, encode_patches, rice_bits
from .xornet import DEFAULT_SEED, MAX_N_IN, MAX_N_OUT, MAX_WINDOW, NARROW_WINDOW, XorDecoder

Method = Literal["elimination", "exhaustive"]
EXHAUSTIVE_MAX_N_IN = 24
CHUNK_TARGET_POSITIONS = 1 << 20
_force_wide = False  # tests set this to cross-check the wide kernels on narrow windows


class PlaneError(XorsparseError):
    """An EncodedPlane whose fields do not fit together; the message names the field."""


MAX_PLANE_LENGTH = 1 << 48  # positions: beyond anything a file can describe (validate.MAX_POSITIONS)


def _int_field(enc, name: str, lo: int, hi: int) -> int:
    v = getattr(enc, name)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise PlaneError(f"plane {name}: must be an integer, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise PlaneError(f"plane {name}: must be in {lo}..{hi}, got {int(v)}")
    return int(v)


def check_plane(enc: "EncodedPlane") -> None:
    """Refuse (PlaneError) an EncodedPlane the decoding kernels cannot take: they do not
    bounds-check, so every field is checked here against the others first."""
    n = _int_field(enc, "length", 0, MAX_PLANE_LENGTH)
    n_in = _int_field(enc, "n_in", 1, MAX_N_IN)
    _int_field(enc, "n_out", 1, MAX_N_OUT)
    n_s = _int_field(enc, "n_s", 0, MAX_WINDOW - 1)
    if n_in * (n_s + 1) > MAX_WINDOW:
        raise PlaneError(f"plane n_in * (n_s + 1) must be <= {MAX_WINDOW}, got {n_in * (n_s + 1)}")
    _int_field(enc, "seed", 0, (1 << 64) - 1)
    cs = _int_field(enc, "chunk_slices", 64, 1 << 62)
    if cs % 64:
        raise PlaneError(f"plane chunk_slices: must be a positive multiple of 64, got {cs}")
    for name, kinds in (("stream", "u"), ("patches", "iu")):
        a = getattr(enc, name)
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in kinds \
                or (name == "stream" and a.dtype.itemsize != 1):
            raise PlaneError(f"plane {name}: must be a flat numpy array of "
                             f"{'uint8' if name == 'stream' else 'integers'}")
    expected = -(-enc.n_slices * n_in // 8)
    if enc.stream.size != expected:
        raise PlaneError(f"plane stream holds {enc.stream.size} bytes, expected {expected}")
    p = enc.patches
    if p.size and (int(p.min()) < 0 or int(p.max()) >= n or np.any(np.diff(p.astype(np.int64)) <= 0)):
        raise PlaneError(f"plane patches: positions must be strictly increasing and in 0..{n - 1}")


@lru_cache(maxsize=64)
def get_decoder(n_in: int, n_out: int, n_s: int = 0, seed: int = DEFAULT_SEED) -> XorDecoder:
    """Decoders are pure functions of their parameters, so one per parameter set is enough."""
    return XorDecoder(n_in, n_out, n_s, seed)


@lru_cache(maxsize=64)
def _tables(n_in: int, n_out: int, n_s: int, seed: int) -> np.ndarray:
    return get_decoder(n_in, n_out, n_s, seed).byte_tables()


def default_chunk_slices(n_out: int) -> int:
    """About 2^18 positions per chunk, in whole multiples of 64 slices (word alignment)."""
    return max(64, (CHUNK_TARGET_POSITIONS // n_out) // 64 * 64)


@dataclass(frozen=True)
class EncodedPlane:
    """Everything a decoder needs: parameters, the packed stream and the patch positions."""

    length: int
    n_in: int
    n_out: int
    n_s: int
    seed: int
    chunk_slices: int
    stream: np.ndarray  # uint8, ceil(n_slices * n_in / 8) bytes, bit order LSB first
    patches: np.ndarray  # int64 strictly increasing plane positions to flip after decoding
    care_bits: int = -1  # how many care bits the plane had (statistics only; -1 = unknown)
    _rice_k: int = field(default=-1, repr=False, compare=False)

    @property
    def n_slices(self) -> int:
        return -(-self.length // self.n_out)

    @property
    def stream_bits(self) -> int:
        return self.n_slices * self.n_in

    @property
    def rice_k(self) -> int:
        return self._rice_k if self._rice_k >= 0 else best_rice_parameter(self.patches)

    @property
    def patch_bits(self) -> int:
        """Exact size of the Rice-coded patch list."""
        return rice_bits(self.patches, self.rice_k)

    @property
    def value_bits(self) -> int:
        return self.stream_bits + self.patch_bits

    @property
    def efficiency(self) -> float:
        """Care bits per stored bit (1.0 is the information bound)."""
        if self.care_bits < 0:
            raise ValueError("care_bits unknown for this plane")
        if self.value_bits == 0:
            return 1.0
        return self.care_bits / self.value_bits

    @property
    def decoder(self) -> XorDecoder:
        return get_decoder(self.n_in, self.n_out, self.n_s, self.seed)

    def patch_data(self) -> tuple[bytes, int, int]:
        """(bytes, k, nbits) of the Rice-coded patch list, as the container stores it."""
        return encode_patches(self.patches)

    @classmethod
    def from_patch_data(cls, *, data: bytes, count: int, k: int, nbits: int, **kw) -> "EncodedPlane":
        return cls(patches=decode_patches(data, count, k, nbits), _rice_k=k, **kw)


def as_plane(bits, care) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(bits)
    c = np.asarray(care)
    if b.ndim != 1 or c.ndim != 1:
        raise ValueError(f"bits and care must be 1-D, got shapes {b.shape} and {c.shape}")
    if b.shape != c.shape:
        raise ValueError(f"bits and care differ in length: {b.size} vs {c.size}")
    if b.dtype == np.bool_:
        b = b.view(np.uint8)
    elif not (np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"bits must be an integer or bool array of 0/1, got dtype {b.dtype}")
    elif b.size and (b.min() < 0 or b.max() > 1):
        raise ValueError("bits must contain only 0 and 1")
    if c.dtype != np.bool_:
        if not np.issubdtype(c.dtype, np.integer) or (c.size and (c.min() < 0 or c.max() > 1)):
            raise ValueError(f"care must be a boolean mask (or 0/1), got dtype {c.dtype}")
        c = c.astype(bool)
    return np.ascontiguousarray(b, dtype=np.uint8), np.ascontiguousarray(c).view(np.uint8)


def encode_plane(
    bits,
    care,
    decoder: XorDecoder,
    *,
    method: Method = "elimination",
    chunk_slices: int | None = None,
    verify: bool = False,
) -> EncodedPlane:
    """Encode a flat 0/1 plane with `decoder` so that decode_plane reproduces every care bit.

    method="exhaustive" is the paper's search over all 2^n_in inputs (n_s = 0 only).
    (`xorsparse.encode_plane`, in rates.py, also takes decoder="auto": the rate chosen
    from the care density.)
    """
    b, c = as_plane(bits, care)
    if not isinstance(decoder, XorDecoder):
        raise TypeError(f"decoder must be an XorDecoder, got {type(decoder).__name__} (decoder='auto': "
                        "xorsparse.encode_plane)")
    d = decoder
    if method not in ("elimination", "exhaustive"):
        raise ValueError(f"method must be 'elimination' or 'exhaustive', got {method!r}")
    if method == "exhaustive" and (d.n_s != 0 or d.n_in > EXHAUSTIVE_MAX_N_IN):
        raise ValueError(
            f"exhaustive search needs n_s = 0 and n_in <= {EXHAUSTIVE_MAX_N_IN}, got n_s={d.n_s}, n_in={d.n_in}"
        )
    cs = default_chunk_slices(d.n_out) if chunk_slices is None else int(chunk_slices)
    if cs <= 0 or cs % 64:
        raise ValueError(f"chunk_slices must be a positive multiple of 64, got {chunk_slices}")

    length = b.size
    n_slices = -(-length // d.n_out)
    n_chunks = -(-n_slices // cs)
    # patches happen only at care positions: a chunk's care count bounds its patch count
    patch_off = np.zeros(n_chunks + 1, dtype=np.int64)
    _kernels.chunk_care_offsets(c, cs * d.n_out, patch_off)
    patch_buf = np.empty(max(1, int(patch_off[-1])), dtype=np.int64)
    patch_cnt = np.zeros(n_chunks, dtype=np.int64)
    stream = np.zeros(-(-n_slices * d.n_in // 64) + 1, dtype=np.uint64)

    if method == "elimination" and (d.window <= NARROW_WINDOW and not _force_wide):
        _kernels.encode_elimination(b, c, d.g_lo, d.g_hi, d.n_in, d.n_out, d.n_s, cs,
                                    stream, patch_off, patch_buf, patch_cnt)
    elif method == "elimination":
        _kernels.encode_elimination_wide(b, c, d.g_words, d.n_in, d.n_out, d.n_s, cs,
                                         stream, patch_off, patch_buf, patch_cnt)
    else:
        _kernels.encode_exhaustive(b, c, d.packed_columns(), d.n_in, d.n_out, cs,
                                   stream, patch_off, patch_buf, patch_cnt)
    patches = np.concatenate(
        [patch_buf[patch_off[i] : patch_off[i] + patch_cnt[i]] for i in range(n_chunks)]
    ) if n_chunks else np.empty(0, dtype=np.int64)
    nbytes = -(-n_slices * d.n_in // 8)
    enc = EncodedPlane(
        length=length, n_in=d.n_in, n_out=d.n_out, n_s=d.n_s, seed=int(d.seed), chunk_slices=cs,
        stream=stream.astype("<u8").view(np.uint8)[:nbytes].copy(), patches=patches.astype(np.int64),
        care_bits=int(patch_off[-1]),
    )
    if verify:
        out = decode_plane(enc)
        bad = np.flatnonzero((out != b) & (c != 0))
        if bad.size:
            raise AssertionError(f"encode_plane verify failed at {bad.size} care positions, first {bad[0]}")
    return enc


def decode_plane_packed(enc: EncodedPlane) -> np.ndarray:
    """Decoded plane as little-endian packed bits in uint64 words (ceil(length/64) words)."""
    check_plane(enc)
    n_slices = enc.n_slices
    nwords_stream = -(-n_slices * enc.n_in // 64) + 1
    stream = np.zeros(nwords_stream * 8, dtype=np.uint8)
    stream[: enc.stream.size] = enc.stream
    stream = stream.view("<u8")
    out = np.zeros(-(-n_slices * enc.n_out // 64) + 1, dtype=np.uint64)
    if n_slices:
        table = _tables(int(enc.n_in), int(enc.n_out), int(enc.n_s), int(enc.seed))
        kernel = _kernels.decode_tables if enc.n_in * (enc.n_s + 1) <= NARROW_WINDOW and not _force_wide \
            else _kernels.decode_tables_wide
        kernel(stream, n_slices, int(enc.n_in), int(enc.n_out), int(enc.n_s), int(enc.chunk_slices), table, out)
    if enc.patches.size:
        _kernels.flip_bits(out, enc.patches.astype(np.int64, copy=False))
    nw = -(-enc.length // 64)
    out = out[:nw]
    if enc.length % 64:
        out[-1] &= np.uint64((1 << (enc.length % 64)) - 1)
    return out


def decode_plane(enc: EncodedPlane) -> np.ndarray:
    """Decoded plane as a uint8 0/1 array of enc.length."""
    words = decode_plane_packed(enc)
    return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little", count=enc.length)
