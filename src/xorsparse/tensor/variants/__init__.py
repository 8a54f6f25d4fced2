"""The registry of the format's variants: mask codecs and quantizers (base.py says why).

This is the one place variants are registered: every module of this package but base.py and
layout.py is a variant, imported below, and importing it registers it. So a new mask codec
or quantizer is one new module here (plus its tests and its FORMAT.md section), nothing
else. Each variant's `rank` orders the registry (`auto` keeps the smallest code, ties going
to the lowest rank), so the order of the imports does not matter.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np

from ..maskcode import DEFAULT_BLOCK, MaskCode
from ..quant import Quantized, check_scale_rows
from .base import (
    MASK_CODECS,
    MASK_GOLOMB,
    MASK_WORDS,
    Q_AFFINE_BF16,
    Q_AFFINE_F16,
    Q_AFFINE_F32,
    Q_BCQ,
    Q_TABLE,
    Q_UNIFORM_ASYM,
    Q_UNIFORM_SYM,
    QUANTIZERS,
    KernelMask,
    MaskCodec,
    Part,
    Quantizer,
    finite_scales,
    mask_codec,
    quantizer,
    register_mask_codec,
    register_quantizer,
)
from .layout import fit_output_range, fit_range, requantize_log8

AUTO = "auto"
NOT_VARIANTS = ("base", "layout")

for _module in pkgutil.iter_modules(__path__):  # every variant module registers itself on import
    if _module.name not in NOT_VARIANTS:
        importlib.import_module(f"{__name__}.{_module.name}")


def mask_codec_choices() -> list[str]:
    """What --mask-codec and CompressConfig.mask_codec accept: auto, then every registered codec."""
    return [AUTO, *MASK_CODECS]


def quantizer_choices() -> list[str]:
    """What --quantizer and CompressConfig.quantizer accept: the quantizers that quantize."""
    return [name for name, q in QUANTIZERS.items() if q.quantizes]


def quantize(w: np.ndarray, keep: np.ndarray, quantizer: str = "bcq", bits: int = 2,
             symmetric: bool = True, group_size: int | None = None, iters: int = 15,
             scale_rows: int = 1, codebook_rows: int | None = None,
             importance: np.ndarray | None = None) -> Quantized:
    """Quantize the kept weights. scale_rows: consecutive rows sharing one scale set;
    codebook_rows (codebook only): rows per codebook (None: one for the tensor);
    importance (codebook only): per-weight weights of the k-means fit (e.g. from calibration)."""
    scale_rows = check_scale_rows(scale_rows)
    q = QUANTIZERS.get(quantizer)
    if q is None or not q.quantizes:
        raise ValueError(f"quantizer must be one of {', '.join(quantizer_choices())}, got {quantizer!r}")
    return q.quantize(w, keep, bits, symmetric, group_size, iters, scale_rows, codebook_rows, importance)


def levels_table(qz: Quantized) -> np.ndarray:
    """Value of every code in every (row, group): (rows, groups, 2^q) float32.

    All arithmetic is float32 in the order docs/FORMAT.md section 4 gives, so every decoder
    (the reference path, the fused kernel, the torch modules) gets the same bits."""
    return quantizer(qz.quantizer).levels_table(qz)


def encode_mask(keep: np.ndarray, codec: str = AUTO, block: int = DEFAULT_BLOCK,
                cols: int | None = None) -> MaskCode:
    """cols: row length of the row-major mask, for models by row and column (default: keep's last axis).
    codec "auto": the smallest of the codecs that decode fast (ties: the lowest rank), and a codec
    with a costly decode (ctx) instead only where it saves at least its min_saving of those bits."""
    if codec == AUTO:
        return encode_auto(keep, cols, block)
    if codec not in MASK_CODECS:
        raise ValueError(f"mask codec must be one of {', '.join(mask_codec_choices())}, got {codec!r}")
    return MASK_CODECS[codec].encode(keep, cols, block)


def encode_auto(keep: np.ndarray, cols: int | None = None, block: int = DEFAULT_BLOCK) -> MaskCode:
    """The `auto` mask codec (see encode_mask)."""
    codecs = sorted(MASK_CODECS.values(), key=lambda c: c.rank)
    best = min((c.encode(keep, cols, block) for c in codecs if not c.costly_decode), key=lambda m: m.nbits)
    for c in codecs:
        if c.costly_decode:
            code = c.encode_if_saving(keep, cols, block, (1.0 - c.min_saving) * best.nbits)
            if code is not None and code.nbits < best.nbits:
                best = code
    return best


def decode_mask_words(code: MaskCode) -> np.ndarray:
    """The mask as little-endian packed bits in uint64 words (ceil(length/64) + 1 words)."""
    return mask_codec(code.codec).decode_words(code)


def decode_mask(code: MaskCode) -> np.ndarray:
    """Flat boolean keep mask of code.length; ValueError if the data are inconsistent."""
    words = decode_mask_words(code)
    return np.unpackbits(words.view(np.uint8), bitorder="little", count=code.length).view(bool)


__all__ = [
    "AUTO",
    "encode_auto",
    "MASK_CODECS",
    "MASK_GOLOMB",
    "MASK_WORDS",
    "QUANTIZERS",
    "Q_AFFINE_BF16",
    "Q_AFFINE_F16",
    "Q_AFFINE_F32",
    "Q_BCQ",
    "Q_TABLE",
    "Q_UNIFORM_ASYM",
    "Q_UNIFORM_SYM",
    "KernelMask",
    "MaskCodec",
    "Part",
    "Quantizer",
    "decode_mask",
    "decode_mask_words",
    "encode_mask",
    "finite_scales",
    "fit_output_range",
    "fit_range",
    "levels_table",
    "mask_codec",
    "mask_codec_choices",
    "quantize",
    "quantizer",
    "quantizer_choices",
    "register_mask_codec",
    "register_quantizer",
    "requantize_log8",
]
