"""One tensor through the whole pipeline: prune, quantize, code the planes and the mask.

`decompress_tensor(compress_tensor(w, cfg))` equals `reference_prune_quantize(w, cfg)` bit
for bit: both end in the same `quant.dequantize`, and the codec is lossless on care bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..codec.plane import EncodedPlane, decode_plane_packed, encode_plane
from ..codec.rates import choose
from ..codec.xornet import check_params
from .config import SCALE_FORMATS, CompressConfig  # noqa: F401  (SCALE_FORMATS re-exported)
from .dequant import dequantize, dequantize_words, levels_table
from .fused import decode_dense, numba_threads
from .interleave import block_step, to_coded, words_to_natural
from .maskcode import MaskCode, binary_entropy
from .packed import PackedPlane, pack_plane, unpack_plane_words
from .prune import given_mask, magnitude_mask
from .quant import Quantized, row_layout
from .variants import decode_mask_words, encode_mask, fit_range, quantize, quantizer, requantize_log8

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class Prepared:
    """A tensor pruned and quantized already (by calibration, by recovery, or read from
    another format): what `compress_quantized` stores, with where it came from."""

    keep: np.ndarray
    quant: Quantized
    dtype: str  # the original dtype name
    calibrated: bool = False  # codes chosen with calibration data (False: data-free)
    input_bytes: int | None = None  # bytes it took in its input (size tables); None: the checkpoint's

    def dense(self) -> np.ndarray:
        """Float32 values in the tensor's shape, exactly zero where pruned."""
        return dequantize(self.quant, self.keep).reshape(self.keep.shape)

    def torch_weight(self):
        """The dense weight as a torch tensor of the original dtype."""
        return from_float32(self.dense(), self.dtype, framework="torch")


@dataclass(frozen=True)
class CompressedTensor:
    shape: tuple[int, ...]
    dtype: str
    quant: Quantized  # scales and layout; its planes are empty here (they live in `planes`)
    mask: MaskCode
    planes: list[EncodedPlane | PackedPlane] = field(default_factory=list)
    block_step: int = 0  # coded order of the planes (interleave.py); the mask is row-major

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def validate(self) -> None:
        """Check that the parts fit together before any kernel indexes into them.

        The numba kernels do not bounds-check, so a file with consistent checksums but
        edited metadata must be stopped here, with a message, not by a crash.
        """
        q = self.quant
        n = self.numel
        if q.rows * q.cols != n or (len(self.shape) >= 2 and q.rows != self.shape[0]):
            raise ValueError(f"rows x cols = {q.rows} x {q.cols} does not match shape {self.shape}")
        if q.group_size < 1:
            raise ValueError(f"invalid group size {q.group_size}")
        quantizer(q.quantizer).check_quantized(q)  # ValueError for an unknown quantizer too
        if len(self.planes) != q.bits:
            raise ValueError(f"{len(self.planes)} planes for {q.bits} bits")
        for p in self.planes:
            if isinstance(p, PackedPlane):
                if p.care_bits < 0 or p.care_bits > n or p.stream.size != -(-p.care_bits // 8):
                    raise ValueError(f"packed plane of {p.care_bits} bits has {p.stream.size} bytes")
            else:
                check_params(p.n_in, p.n_out, p.n_s)
        if self.mask.length != n or any(p.length != n for p in self.planes):
            raise ValueError(f"mask or planes do not cover the tensor's {n} positions")
        nfull = n // 64
        if not 0 <= self.block_step < max(nfull, 1) or (nfull > 1 and np.gcd(self.block_step, nfull) != 1):
            raise ValueError(f"invalid block step {self.block_step} for {nfull} blocks")
        if self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}")

    @property
    def kept(self) -> int:
        return self.planes[0].care_bits if self.planes and self.planes[0].care_bits >= 0 else -1

    @property
    def scale_bits(self) -> int:
        """Scales in their stored dtype, zero points (affine) and codebook."""
        return self.quant.parameter_bits

    @property
    def value_bits(self) -> int:
        """Stream + patch bits of every plane, plus the scales."""
        return sum(p.value_bits for p in self.planes) + self.scale_bits

    @property
    def total_bits(self) -> int:
        return self.value_bits + self.mask.nbits

    @property
    def patches(self) -> int:
        return sum(int(p.patches.size) for p in self.planes)

    @property
    def efficiency(self) -> float:
        """Care bits over stream + patch bits, all planes (scales and mask excluded)."""
        coded = sum(p.value_bits for p in self.planes)
        care = sum(max(p.care_bits, 0) for p in self.planes)
        return care / coded if coded else 1.0


def to_float32(w: Any) -> tuple[np.ndarray, str]:
    """Accept numpy arrays or torch tensors; numpy has no bfloat16, so that goes via torch."""
    if hasattr(w, "detach") and hasattr(w, "dtype") and not isinstance(w, np.ndarray):
        name = str(w.dtype).replace("torch.", "")
        if name not in FLOAT_DTYPES:
            raise ValueError(f"unsupported tensor dtype {name}; expected one of {', '.join(FLOAT_DTYPES)}")
        return w.detach().to("cpu").float().contiguous().numpy(), name
    a = np.asarray(w)
    if a.dtype.name not in FLOAT_DTYPES:
        raise ValueError(f"unsupported tensor dtype {a.dtype}; expected one of {', '.join(FLOAT_DTYPES)}")
    return a.astype(np.float32), a.dtype.name


def from_float32(values: np.ndarray, dtype: str, framework: str | None = None):
    """Cast to the original dtype: a numpy array, or a torch tensor for bfloat16 (or on request)."""
    fw = framework or ("torch" if dtype == "bfloat16" else "numpy")
    if fw == "numpy":
        if dtype == "bfloat16":
            raise ValueError("numpy has no bfloat16; ask for framework='torch'")
        return values.astype(dtype, copy=False)
    import torch

    return torch.from_numpy(np.asarray(values, order="C")).to(getattr(torch, dtype))


def _keep_mask(w32: np.ndarray, config: CompressConfig, keep: Any, name: str) -> np.ndarray:
    if keep is not None:
        k = keep.detach().cpu().numpy() if hasattr(keep, "detach") else keep
        return given_mask(w32, k, name)
    return magnitude_mask(w32, config.sparsity, name)


def prune_quantize(w: Any, config: CompressConfig | None = None, *, keep: Any = None,
                   name: str = "tensor") -> tuple[np.ndarray, Quantized, str]:
    """(keep mask, quantized planes and scales, original dtype name)."""
    cfg = config or CompressConfig()
    w32, dtype = to_float32(w)
    k = _keep_mask(w32, cfg, keep, name)
    bad = int(np.count_nonzero(~np.isfinite(w32[k])))
    if bad:
        raise ValueError(f"tensor {name!r}: {bad} kept weights are NaN, infinite or beyond float32's range")
    with np.errstate(over="ignore", invalid="ignore"):  # near float32's limit: fit_output_range repairs
        qz = quantize_with_scale_layout(w32, k, cfg, dtype)
    return k, qz, dtype


AUTO_SCALE_ROWS = (1, 4, 16, 64)
AUTO_SCALE_MIN_SHARE = 0.05  # "auto" searches scale layouts only where per-row float16 scales cost this
# share of H(S) + (1-S)q bits or more: elsewhere the saving is small and each try is a quantization


def per_row_scales_matter(keep: np.ndarray, cfg: CompressConfig) -> bool:
    """Whether per-row float16 scales cost at least AUTO_SCALE_MIN_SHARE of the tensor's bound
    H(S) + (1-S)q bits (S its sparsity): true for short rows (depthwise and small 1x1
    convolutions, 384-wide transformer rows), false for LLM-sized rows."""
    rows, cols = row_layout(keep.shape)
    n = rows * cols
    if n == 0:
        return False
    s = 1.0 - float(np.count_nonzero(keep)) / n
    per_group = cfg.bits if cfg.quantizer == "bcq" else (1 if cfg.quantizer == "codebook" or cfg.symmetric else 2)
    groups = max(1, -(-cols // cfg.group_size)) if cfg.group_size else 1
    scale_bits = 16.0 * rows * groups * per_group
    return scale_bits >= AUTO_SCALE_MIN_SHARE * n * (binary_entropy(s) + (1.0 - s) * cfg.bits)


def quantize_with_scale_layout(w32: np.ndarray, keep: np.ndarray, cfg: CompressConfig,
                               dtype: str = "float32") -> Quantized:
    """Quantize with cfg.scale_rows and cfg.scale_format; where either is "auto", the layout
    with the fewest scale bits whose error ||W - Wq|| (pruned weights included) is at most
    (1 + error_budget) times that of float16 scales at the fixed (or per-row) row grouping.

    The search (layouts in order of scale bits, the first within the budget taken) runs
    only where per_row_scales_matter; elsewhere "auto" is per-row float16.

    Every level stays finite in `dtype` (no finite weight decodes to inf): per-row float
    scales of bcq and uniform are shrunk where needed (variants/layout.py); a layout
    whose levels overflow otherwise (shared or log8 scales, codebooks of huge weights) is
    not chosen: the per-row float layout takes its place.
    """
    def run(rows_per_scale: int, fmt: str) -> Quantized:
        qz = quantize(w32, keep, cfg.quantizer, cfg.bits, cfg.symmetric, cfg.group_size, cfg.bcq_iters,
                      scale_rows=rows_per_scale, codebook_rows=cfg.codebook_rows)
        if fmt == "log8":
            return requantize_log8(qz, w32, keep)
        return fit_range(qz, w32, keep, dtype, rows_per_scale)
        return qz

    def finite(qz: Quantized) -> bool:
        return levels_fit(qz, dtype)

    rows = row_layout(w32.shape)[0]
    search = "auto" in (cfg.scale_rows, cfg.scale_format) and per_row_scales_matter(keep, cfg)
    fmts = ["float16", "log8"] if cfg.scale_format == "auto" and search else \
        ["float16" if cfg.scale_format == "auto" else cfg.scale_format]
    if cfg.scale_rows == "auto" and search:
        groups = [1] + sorted({min(g, rows) for g in AUTO_SCALE_ROWS[1:] + (rows,) if min(g, rows) > 1})
    else:
        groups = [1 if cfg.scale_rows == "auto" else int(cfg.scale_rows)]
    if len(groups) * len(fmts) == 1:
        qz = run(groups[0], fmts[0])
        return qz if finite(qz) or (groups[0], fmts[0]) == (1, "float16") else run(1, "float16")
    flat = w32.reshape(-1).astype(np.float64)

    def err(qz: Quantized) -> float:
        return float(np.sum((dequantize(qz, keep).reshape(-1) - flat) ** 2))

    base = run(groups[0], "float16")
    if not finite(base):
        base = run(1, "float16")
    limit = err(base) * (1.0 + float(cfg.error_budget)) ** 2
    # layouts in order of their scale bits (a log8 scale is a byte, a float16 one two): the
    # first within the budget is the answer (most tensors stop at the first or second try)
    cands = sorted(((-(-rows // g)) * (8 if fmt == "log8" else 16), fmt != "float16", g, fmt)
                   for g in groups for fmt in fmts if (g, fmt) != (groups[0], "float16"))
    for _, _, g, fmt in cands:
        cand = run(g, fmt)
        if cand.scale_bits < base.scale_bits and finite(cand) and err(cand) <= limit:
            return cand
    return base


def levels_fit(qz: Quantized, dtype: str) -> bool:
    """Every level of every (row, group) finite and within the range of `dtype`."""
    from .quant import LEVEL_LIMIT

    if qz.scales.size == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        lv = levels_table(qz)
    return bool(np.all(np.abs(lv) <= np.float32(LEVEL_LIMIT.get(dtype, LEVEL_LIMIT["float32"]))))


def reference_prune_quantize(w: Any, config: CompressConfig | None = None, *, keep: Any = None,
                             name: str = "tensor", framework: str | None = None):
    """The dense pruned-and-quantized tensor, computed without the codec."""
    k, qz, dtype = prune_quantize(w, config, keep=keep, name=name)
    return from_float32(dequantize(qz, k).reshape(np.shape(k)), dtype, framework)


def compress_tensor(w: Any, config: CompressConfig | None = None, *, keep: Any = None,
                    name: str = "tensor", verify: bool = False) -> CompressedTensor:
    """Prune, quantize and code one tensor; keep= supplies a mask (True = kept) to use as is."""
    cfg = config or CompressConfig()
    k, qz, dtype = prune_quantize(w, cfg, keep=keep, name=name)
    return compress_quantized(k, qz, dtype, cfg, verify=verify)


def compress_quantized(keep: np.ndarray, qz: Quantized, dtype: str, cfg: CompressConfig,
                       verify: bool = False) -> CompressedTensor:
    flat = np.ascontiguousarray(keep.ravel())
    step = block_step(flat.size)
    if flat.size < cfg.packed_below:
        planes = [pack_plane(p, flat) for p in qz.planes]
    else:
        care = to_coded(flat, step)
        coded = [to_coded(p, step) for p in qz.planes]
        decoder = choose(coded[0], care, max_n_s=cfg.max_n_s, max_window=cfg.max_window, seed=cfg.seed)
        planes = [encode_plane(p, care, decoder, verify=verify) for p in coded]
    mask = encode_mask(flat, cfg.mask_codec, cols=qz.cols)
    stripped = replace(qz, planes=np.zeros((0, 0), np.uint8))
    return CompressedTensor(tuple(int(s) for s in keep.shape), dtype, stripped, mask, planes, step)


def decompress_tensor(ct: CompressedTensor, framework: str | None = None, *, parallel: bool = True):
    """The dense pruned-and-quantized tensor in its original shape and dtype.

    One fused pass (tensor/fused.py) writes the output in its dtype; parallel=False keeps
    every step on the calling thread, mask decoding included (the kernels release the GIL,
    for thread pools).
    """
    ct.validate()
    if any(isinstance(p, PackedPlane) for p in ct.planes):  # small tensors: no XOR streams to fuse
        with numba_threads(None if parallel else 1):
            return decompress_tensor_unfused(ct, framework)
    flat = decode_dense(ct, parallel=parallel)
    return wrap_dense(flat, ct.dtype, ct.shape, framework)


def wrap_dense(flat: np.ndarray, dtype: str, shape: tuple[int, ...], framework: str | None = None):
    """A fused decoder's flat output (bfloat16 as uint16 bits) as a numpy array or torch tensor."""
    fw = framework or ("torch" if dtype == "bfloat16" else "numpy")
    if fw == "numpy":
        if dtype == "bfloat16":
            raise ValueError("numpy has no bfloat16; ask for framework='torch'")
        return flat.reshape(shape)
    import torch

    t = torch.from_numpy(flat.view(np.int16) if dtype == "bfloat16" else flat)
    return (t.view(torch.bfloat16) if dtype == "bfloat16" else t).reshape(shape)


def decompress_tensor_unfused(ct: CompressedTensor, framework: str | None = None):
    """The decoder before the fused one (plane by plane, then a scatter): kept to check against."""
    ct.validate()
    n = ct.numel
    mask = decode_mask_words(ct.mask)
    nw = mask.size
    planes = np.zeros((len(ct.planes), nw), dtype=np.uint64)
    for i, p in enumerate(ct.planes):
        if isinstance(p, PackedPlane):
            unpack_plane_words(p, mask, planes[i])
        else:
            words_to_natural(decode_plane_packed(p), n, ct.block_step, out=planes[i])
    return from_float32(dequantize_words(ct.quant, mask, planes).reshape(ct.shape), ct.dtype, framework)


def decompress_codes(ct: CompressedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, unsigned codes) in the tensor's shape: the planes read back as integers
    (codes are 0 at pruned positions). What a writer of another integer format needs."""
    ct.validate()
    n = ct.numel
    mask = decode_mask_words(ct.mask)
    keep = np.unpackbits(mask.astype("<u8").view(np.uint8), bitorder="little")[:n].astype(bool)
    codes = np.zeros(n, dtype=np.int64)
    words = np.zeros(mask.size, dtype=np.uint64)
    for i, p in enumerate(ct.planes):
        if isinstance(p, PackedPlane):
            words[:] = 0
            unpack_plane_words(p, mask, words)
        else:
            words_to_natural(decode_plane_packed(p), n, ct.block_step, out=words)
        bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:n]
        codes |= bits.astype(np.int64) << i
    codes[~keep] = 0
    return keep.reshape(ct.shape), codes.reshape(ct.shape)
