"""One tensor through the whole pipeline: prune, quantize, code the planes and the mask.

`decompress_tensor(compress_tensor(w, cfg))` equals `reference_prune_quantize(w, cfg)` bit
for bit: both end in the same `quant.dequantize`, and the codec is lossless on care bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..codec.plane import EncodedPlane, decode_plane_packed, encode_plane
from .interleave import block_step, to_coded, words_to_natural
from .maskcode import MaskCode, decode_mask_words, encode_mask
from .prune import given_mask, magnitude_mask
from .dequant import dequantize, dequantize_words
from .fused import decode_dense
from .quant import QUANTIZERS, Quantized, check_given_parameters, fit_output_range, quantize
from ..codec.rates import DEFAULT_WINDOW, choose
from ..codec.xornet import DEFAULT_SEED, MAX_WINDOW, check_params

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class CompressConfig:
    """How to compress: in the spirit of torchao's quantize_(model, config), one object.

    sparsity: fraction of weights to prune by magnitude (existing zeros count as pruned);
    global_sparsity: one threshold across all selected tensors instead of per tensor;
    bits / quantizer: q bit-planes from binary coding ('bcq', q <= 4) or integers
    ('uniform', q <= 8, symmetric or not); group_size: columns per scale (None = per row);
    max_n_s: longest decoder memory the rate search may use (0 = the paper's network);
    max_window: cap on n_in * (n_s + 1); 256 codes ~0.5% smaller, encodes ~3x slower.
    """

    sparsity: float = 0.9
    bits: int = 2
    quantizer: str = "bcq"
    symmetric: bool = True
    group_size: int | None = None
    global_sparsity: bool = False
    mask_codec: str = "auto"
    max_n_s: int | None = None
    max_window: int = DEFAULT_WINDOW
    seed: int = DEFAULT_SEED
    bcq_iters: int = 15

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.quantizer not in ("bcq", "uniform"):
            raise ValueError(f"quantizer must be 'bcq' or 'uniform', got {self.quantizer!r}")
        limit = 4 if self.quantizer == "bcq" else 8
        if not isinstance(self.bits, int) or not 1 <= self.bits <= limit:
            raise ValueError(f"bits must be in 1..{limit} for {self.quantizer}, got {self.bits}")
        if self.mask_codec not in ("auto", "bitmask", "entropy"):
            raise ValueError(f"mask_codec must be auto, bitmask or entropy, got {self.mask_codec!r}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.max_n_s is not None and not 0 <= self.max_n_s < MAX_WINDOW:
            raise ValueError(f"max_n_s must be in 0..{MAX_WINDOW - 1}, got {self.max_n_s}")
        if not 1 <= self.max_window <= MAX_WINDOW:
            raise ValueError(f"max_window must be in 1..{MAX_WINDOW}, got {self.max_window}")
        if self.bcq_iters < 0:
            raise ValueError(f"bcq_iters must be >= 0, got {self.bcq_iters}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CompressedTensor:
    shape: tuple[int, ...]
    dtype: str
    quant: Quantized  # scales and layout; its planes are empty here (they live in `planes`)
    mask: MaskCode
    planes: list[EncodedPlane] = field(default_factory=list)
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
        if q.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {q.quantizer!r}")
        groups = max(1, -(-q.cols // q.group_size))
        if q.quantizer == "affine":
            check_given_parameters(q.bits, q.scales, q.zero_points, q.scale_dtype, q.rows, groups)
            if q.symmetric != (q.zero_points is None):
                raise ValueError("an affine tensor has zero points exactly when it is not symmetric")
        else:
            k = q.bits if q.quantizer == "bcq" else (1 if q.symmetric else 2)
            want = (q.rows, groups, k)
            if tuple(q.scales.shape) != want:
                raise ValueError(f"scales have shape {tuple(q.scales.shape)}, expected {want}")
        if len(self.planes) != q.bits:
            raise ValueError(f"{len(self.planes)} planes for {q.bits} bits")
        for p in self.planes:
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
        """Scales in their stored dtype, and zero points (affine)."""
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
        qz = quantize(w32, k, cfg.quantizer, cfg.bits, cfg.symmetric, cfg.group_size, cfg.bcq_iters)
    return k, fit_output_range(qz, w32, k, dtype), dtype


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
    care = to_coded(flat, step)
    coded = [to_coded(p, step) for p in qz.planes]
    decoder = choose(coded[0], care, max_n_s=cfg.max_n_s, max_window=cfg.max_window, seed=cfg.seed)
    planes = [encode_plane(p, care, decoder, verify=verify) for p in coded]
    mask = encode_mask(flat, cfg.mask_codec)
    stripped = replace(qz, planes=np.zeros((0, 0), np.uint8))
    return CompressedTensor(tuple(int(s) for s in keep.shape), dtype, stripped, mask, planes, step)


def decompress_tensor(ct: CompressedTensor, framework: str | None = None, *, parallel: bool = True):
    """The dense pruned-and-quantized tensor in its original shape and dtype.

    One fused pass (tensor/fused.py) writes the output in its dtype; parallel=False keeps
    it on the calling thread (the kernel releases the GIL, for thread pools).
    """
    ct.validate()
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
        words_to_natural(decode_plane_packed(p), n, ct.block_step, out=words)
        bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:n]
        codes |= bits.astype(np.int64) << i
    codes[~keep] = 0
    return keep.reshape(ct.shape), codes.reshape(ct.shape)
