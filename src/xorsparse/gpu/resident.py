"""The GPU-resident layout of one compressed weight, built once at load from validated data.

The Triton kernels do no bounds checks, so everything they index is built here, and the
invariants they rely on are checked here (one-line `ResidentLayoutError`s). The layout
differs from the file where that serves the kernels:

- the mask is a plain bitmask in 64-bit words (Golomb and ctx blocks decode sequentially:
  decoded once here, never on the device);
- every plane's stream is stored as 64-bit words behind PREFIX_WORDS zero words, so a
  window that starts before bit 0 (slices t < n_s) is an ordinary read; the chunk reset
  zeroes the window bits before the chunk start in the kernel;
- the XOR network of each distinct decoder as its window-matrix rows G[j] (one word per 64
  window bits): a lane decodes one position as parity(G[j] & window_t), so a row is all it
  needs (byte tables pay off when one thread decodes a whole slice; see docs/GPU.md);
- patches merged over planes, in row-major order, with the index of the first patch of
  each PATCH_CHUNK positions, so a tile finds its own without a search;
- packed planes (FORMAT.md 1.8) with the number of kept positions before each mask word
  (the rank of a kept weight is its stream bit);
- scales as float32, ready for the kernels' level formulas (fused.kernel_scales: per-row
  level tables for codebook, scale_rows > 1 and log8);
- 1 / NB in float64 (`inv_blocks`): the interleave's quotient without a 64-bit remainder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..codec.plane import get_decoder
from ..codec.xornet import MAX_WINDOW, check_params
from ..errors import XorsparseError
from ..tensor import fused
from ..tensor.packed import PackedPlane
from ..tensor.quant import row_layout
from ..tensor.variants import decode_mask_words

PREFIX_WORDS = MAX_WINDOW // 64  # zero words before each stream: windows may start up to 256 bits early
PATCH_CHUNK_SHIFT = 10  # per-chunk patch offsets every 1024 positions (32 bits per 1024 weights)
PATCH_CHUNK = 1 << PATCH_CHUNK_SHIFT
INDEX32_LIMIT = (1 << 31) - (1 << 22)  # positions (and stream bits) beyond this need 64-bit indices
MAX_PLANES = 8
PLANE_FIELDS = 8  # n_in, n_out, n_s, chunk_slices, stream word offset, G offset, packed, unused
OUT_KINDS = {"float32": fused.OUT_F32, "float64": fused.OUT_F64, "float16": fused.OUT_F16,
             "bfloat16": fused.OUT_BF16}


class ResidentLayoutError(XorsparseError):
    """A compressed weight whose parts do not fit together (stopped before any kernel)."""


def _bytes_to_words(data: np.ndarray, pad_words: int) -> np.ndarray:
    """Little-endian bytes as int64 words behind PREFIX_WORDS zero words, pad_words after."""
    n = -(-data.size // 8)
    out = np.zeros((PREFIX_WORDS + n + pad_words) * 8, dtype=np.uint8)
    out[PREFIX_WORDS * 8 : PREFIX_WORDS * 8 + data.size] = data
    return out.view("<i8")


@dataclass(frozen=True)
class _PlaneSource:
    """One plane as the builder needs it (XOR-coded, or packed when n_out == 0)."""

    n_in: int
    n_out: int
    n_s: int
    seed: int
    chunk_slices: int
    stream: np.ndarray  # uint8
    care_bits: int = -1


@dataclass(frozen=True, eq=False)
class ResidentWeight:
    """One compressed weight laid out for the Triton kernels (see the module docstring).

    Build with `from_compressed` (a CompressedTensor) or `from_xor_weight` (what the Xor*
    modules keep); move with `.to(device)`. Tensors are read-only to the kernels.
    """

    shape: tuple[int, ...]
    dtype_name: str
    rows: int
    cols: int
    group_size: int
    ngroups: int
    bits: int
    quant_kind: int
    scale_k: int
    step: int
    win_words: int  # 64-bit words of the longest XOR window (1..4)
    packed_planes: int  # bit i set: plane i is packed
    shared_decoder: bool  # every plane is XOR-coded with one decoder (t, j and G computed once)
    tensors: dict[str, Any] = field(repr=False)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_compressed(cls, ct, device=None) -> ResidentWeight:
        """From a CompressedTensor: validated here (ct.validate()) before anything is built."""
        try:
            ct.validate()
        except ResidentLayoutError:
            raise
        except ValueError as e:
            raise ResidentLayoutError(f"invalid compressed tensor: {e}") from None
        q = ct.quant
        planes = []
        for p in ct.planes:
            if isinstance(p, PackedPlane):
                planes.append(_PlaneSource(0, 0, 0, 0, 0, np.asarray(p.stream, np.uint8), int(p.care_bits)))
            else:
                planes.append(_PlaneSource(int(p.n_in), int(p.n_out), int(p.n_s), int(p.seed), int(p.chunk_slices),
                                           np.asarray(p.stream, np.uint8)))
        xor_planes = [p for p in ct.planes if not isinstance(p, PackedPlane)]
        try:
            mask = decode_mask_words(ct.mask)
            ppos, pxor = fused.natural_patches(xor_planes, ct.numel, ct.block_step)
            if xor_planes and len(xor_planes) != len(ct.planes):  # patch bits are per plane index
                ppos, pxor = _patches_by_index(ct.planes, ct.numel, ct.block_step)
            scales, scale_k, kind = fused.kernel_scales(q)
        except ResidentLayoutError:
            raise
        except ValueError as e:
            raise ResidentLayoutError(f"invalid compressed tensor: {e}") from None
        return cls._build(tuple(int(s) for s in ct.shape), ct.dtype, q.rows, q.cols, q.group_size, q.bits,
                          ct.block_step, mask, planes, ppos, pxor, scales, scale_k, kind, device)

    @classmethod
    def from_xor_weight(cls, xw, device=None) -> ResidentWeight:
        """From an XorWeight (torch/modules.py): its buffers, as that module keeps them.

        A small tensor stored packed is kept decoded by XorWeight (`packed_dense`); it stays
        dense here too (decode_dense copies it).
        """
        import torch

        dev = device if device is not None else xw.scales.device
        if getattr(xw, "packed_dense", None) is not None:
            dense = xw.packed_dense.detach().reshape(-1)
            return cls(tuple(xw.shape), xw.dtype_name, *_rows_cols(xw.shape), 1, 1, 0, -1, 0, 0, 1, 0, False,
                       {"dense": dense.to(dev).clone()})
        n = int(xw.length)
        mask = xw.mask_bits.detach().cpu().numpy().view(np.uint8)
        nw = -(-n // 64) + 1
        if mask.size < 8 * (nw - 1):
            raise ResidentLayoutError(f"mask holds {mask.size} bytes for {n} positions")
        words = np.zeros(nw * 8, np.uint8)
        words[: min(mask.size, nw * 8)] = mask[: nw * 8]
        streams = xw.streams.detach().cpu().numpy().view(np.uint8)
        planes = []
        for i, (n_in, n_out, n_s, seed, cs) in enumerate(xw.planes):
            nbytes = -(-(-(-n // n_out) * n_in) // 8)
            if streams.ndim != 2 or streams.shape[1] < nbytes:
                raise ResidentLayoutError(f"plane {i} stream is shorter than its {nbytes} bytes")
            planes.append(_PlaneSource(int(n_in), int(n_out), int(n_s), int(seed), int(cs), streams[i, :nbytes]))
        ppos = xw.patch_pos.detach().cpu().numpy().astype(np.int64)
        pxor = xw.patch_xor.detach().cpu().numpy().astype(np.int64)
        scales = xw.scales.detach().cpu().to(torch.float32).numpy().reshape(-1)
        m = xw.meta
        return cls._build(tuple(xw.shape), xw.dtype_name, int(m["rows"]), int(m["cols"]), int(m["group_size"]),
                          len(xw.planes), int(xw.block_step), words.view("<u8"), planes, ppos, pxor, scales,
                          int(xw.scale_k), int(xw.quant_kind), dev)

    @classmethod
    def _build(cls, shape, dtype_name, rows, cols, group_size, bits, step, mask, planes, ppos, pxor, scales,
               scale_k, kind, device) -> ResidentWeight:
        import torch

        err = ResidentLayoutError
        n = int(np.prod(shape)) if shape else 1
        if dtype_name not in OUT_KINDS:
            raise err(f"unsupported dtype {dtype_name!r}")
        if rows * cols != n or rows < 1 and n:
            raise err(f"rows x cols = {rows} x {cols} does not match shape {shape}")
        if not 1 <= bits <= MAX_PLANES or len(planes) != bits:
            raise err(f"{len(planes)} planes for {bits} bits (1..{MAX_PLANES} supported)")
        if group_size < 1:
            raise err(f"invalid group size {group_size}")
        ngroups = max(1, -(-cols // group_size))
        want = rows * ngroups * scale_k
        if kind not in range(fused.Q_TABLE + 1) or scale_k < 1 or scales.size != want:
            raise err(f"{scales.size} scale values, expected {want} (kind {kind})")
        if kind == fused.Q_TABLE and scale_k != 1 << bits:
            raise err(f"level tables of {scale_k} entries for {bits} bits")
        if kind == fused.Q_BCQ and scale_k < bits or kind in (fused.Q_UNIFORM_ASYM, fused.Q_AFFINE_F32,
                                                              fused.Q_AFFINE_F16, fused.Q_AFFINE_BF16) and scale_k < 2:
            raise err(f"{scale_k} scale values per group are too few for quantizer kind {kind}")
        nfull = n // 64
        if not 0 <= step < max(nfull, 1) or (nfull > 1 and np.gcd(step, nfull) != 1):
            raise err(f"invalid block step {step} for {nfull} blocks")
        nwords = -(-n // 64)
        mask = np.ascontiguousarray(mask, dtype=np.uint64)
        if mask.size < nwords:
            raise err(f"mask holds {mask.size} words for {n} positions")
        mask_words = np.zeros(nwords + 1, np.uint64)
        mask_words[:nwords] = mask[:nwords]
        if n % 64:
            mask_words[nwords - 1] &= np.uint64((1 << (n % 64)) - 1)
        kept_per_word = _popcount_words(mask_words)

        # planes: streams, decoder rows, parameters
        win_words = 1
        for p in planes:
            if p.n_out:
                win_words = max(win_words, -(-p.n_in * (p.n_s + 1) // 64))
        g_cache: dict[tuple[int, int, int, int], int] = {}
        g_parts: list[np.ndarray] = []
        stream_parts: list[np.ndarray] = []
        params = np.zeros((bits, PLANE_FIELDS), np.int64)
        offset = goff = 0
        packed_bits = 0
        kept = int(kept_per_word.sum())
        for i, p in enumerate(planes):
            if p.n_out == 0:  # packed
                if p.care_bits != kept or p.stream.size != -(-kept // 8):
                    raise err(f"packed plane {i} holds {p.care_bits} bits in {p.stream.size} bytes for {kept} "
                              f"kept weights")
                words = _bytes_to_words(p.stream, 2)
                params[i] = (0, 0, 0, 0, offset, 0, 1, 0)
                packed_bits |= 1 << i
            else:
                try:
                    check_params(p.n_in, p.n_out, p.n_s)
                except (TypeError, ValueError) as e:
                    raise err(f"plane {i}: {e}") from None
                want_bytes = -(-(-(-n // p.n_out) * p.n_in) // 8)
                if p.stream.size != want_bytes:
                    raise err(f"plane {i} stream holds {p.stream.size} bytes, expected {want_bytes}")
                if p.chunk_slices <= 0 or p.chunk_slices % 64:
                    raise err(f"plane {i}: chunk_slices must be a positive multiple of 64, got {p.chunk_slices}")
                key = (p.n_in, p.n_out, p.n_s, p.seed)
                if key not in g_cache:
                    gw = get_decoder(*key).g_words  # (n_out, >= 2) uint64
                    rows_g = np.zeros((p.n_out, win_words), np.uint64)
                    wcols = min(win_words, gw.shape[1])
                    rows_g[:, :wcols] = gw[:, :wcols]
                    g_cache[key] = goff
                    g_parts.append(rows_g.reshape(-1))
                    goff += rows_g.size
                words = _bytes_to_words(p.stream, win_words + 2)
                params[i] = (p.n_in, p.n_out, p.n_s, p.chunk_slices, offset, g_cache[key], 0, 0)
            stream_parts.append(words)
            offset += words.size
        shared = packed_bits == 0 and len({(p.n_in, p.n_out, p.n_s, p.seed, p.chunk_slices) for p in planes}) == 1
        # patches (row-major, merged, sentinel last) and the first patch of every chunk
        ppos = np.asarray(ppos, np.int64)
        pxor = np.asarray(pxor, np.int64)
        if ppos.size == 0 or ppos[-1] != np.iinfo(np.int64).max or pxor.size != ppos.size:
            raise err("patch list must end with the sentinel and pair every position with its bits")
        body = ppos[:-1]
        if body.size and (body[0] < 0 or body[-1] >= n or np.any(np.diff(body) <= 0)):
            raise err(f"patch positions must be strictly increasing and below {n}")
        if np.any(pxor[:-1] < 0) or np.any(pxor[:-1] >> bits) or np.any(pxor[:-1] & packed_bits):
            raise err("patch bits name planes that do not exist or are packed")
        nchunks = -(-n // PATCH_CHUNK) if n else 0
        chunk_first = np.searchsorted(body, np.arange(nchunks + 1, dtype=np.int64) * PATCH_CHUNK).astype(np.int64)
        index64 = max(n, int(offset) * 64, int(scales.size)) >= INDEX32_LIMIT
        word_rank = np.zeros(1, np.int64)
        if packed_bits:
            word_rank = np.concatenate([[0], np.cumsum(kept_per_word[:-1], dtype=np.int64)])
        patch_dtype = np.int64 if index64 else np.int32
        t = {
            "mask": mask_words.view(np.int64),
            "streams": np.concatenate(stream_parts) if stream_parts else np.zeros(1, np.int64),
            "g": (np.concatenate(g_parts) if g_parts else np.zeros(1, np.uint64)).view(np.int64),
            "params": params.reshape(-1),
            "patch_pos": body.astype(patch_dtype) if body.size else np.zeros(1, patch_dtype),
            "patch_xor": pxor[:-1].astype(np.uint8) if body.size else np.zeros(1, np.uint8),  # bits <= 8 planes
            "patch_chunk": chunk_first.astype(np.int32 if body.size < (1 << 31) else np.int64),
            "scales": np.ascontiguousarray(scales, np.float32).reshape(-1),
            "inv_blocks": np.array([1.0 / max(nfull, 1)], np.float64),  # the interleave's reciprocal
            "word_rank": word_rank.astype(np.int32 if kept < (1 << 31) else np.int64),
        }
        dev = torch.device(device) if device is not None else torch.device("cpu")
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in t.items()}
        tensors["index64"] = index64
        return cls(tuple(shape), dtype_name, rows, cols, group_size if ngroups > 1 else max(cols, 1), ngroups, bits,
                   kind, scale_k, int(step), win_words, packed_bits, shared, tensors)

    # ------------------------------------------------------------------ properties

    @property
    def device(self):
        return next(v for v in self.tensors.values() if hasattr(v, "device")).device

    @property
    def dtype(self):
        """The output (weight) dtype, a torch.dtype."""
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def is_dense(self) -> bool:
        """A tensor kept decoded (XorWeight's packed small tensors): decode_dense copies it."""
        return "dense" in self.tensors

    @property
    def nbytes(self) -> int:
        """Bytes of everything this weight keeps on its device."""
        return sum(v.numel() * v.element_size() for v in self.tensors.values() if hasattr(v, "element_size"))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(self.numel, 1)

    def nbytes_by_part(self) -> dict[str, int]:
        """Bytes of each resident tensor (for the docs' accounting)."""
        return {k: v.numel() * v.element_size() for k, v in self.tensors.items() if hasattr(v, "element_size")}

    def to(self, device) -> ResidentWeight:
        """The same layout on another device (self if it is already there)."""
        import torch

        dev = torch.device(device)
        if dev == self.device:
            return self
        return replace(self, tensors={k: (v.to(dev) if hasattr(v, "to") else v) for k, v in self.tensors.items()})

    def __repr__(self) -> str:
        return (f"ResidentWeight(shape={self.shape}, dtype={self.dtype_name}, bits={self.bits}, "
                f"{self.bits_per_weight:.3f} bits/weight, device={self.device})")


def _rows_cols(shape) -> tuple[int, int]:
    return row_layout(tuple(shape))


def _popcount_words(words: np.ndarray) -> np.ndarray:
    b = words.view(np.uint8).reshape(-1, 8)
    return np.unpackbits(b, axis=1).sum(axis=1).astype(np.int64)


def _patches_by_index(planes, length: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """natural_patches over the XOR planes of a tensor that mixes packed and XOR planes,
    with each patch's bit at its plane's own index."""
    parts_pos, parts_xor = [], []
    for i, p in enumerate(planes):
        if isinstance(p, PackedPlane):
            continue
        pos, xor = fused.natural_patches([p], length, step)
        parts_pos.append(pos[:-1])
        parts_xor.append(np.where(xor[:-1] != 0, 1 << i, 0).astype(np.int64))
    pos = np.concatenate(parts_pos) if parts_pos else np.zeros(0, np.int64)
    xor = np.concatenate(parts_xor) if parts_xor else np.zeros(0, np.int64)
    order = np.argsort(pos, kind="stable")
    pos, xor = pos[order], xor[order]
    uniq, start = np.unique(pos, return_index=True)
    merged = np.bitwise_xor.reduceat(xor, start) if pos.size else xor
    return (np.concatenate([uniq, [np.iinfo(np.int64).max]]).astype(np.int64),
            np.concatenate([merged, [0]]).astype(np.int64))
