"""`affine` (format version 2): given integer codes, scales and zero points, kept exactly as
compressed-tensors made them (docs/FORMAT.md section 2.1); nothing is quantized again."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quant import Quantized, check_given_parameters, code_range, round_to_scale_dtype
from .base import (
    Q_AFFINE_BF16,
    Q_AFFINE_F16,
    Q_AFFINE_F32,
    Part,
    Quantizer,
    register_quantizer,
)

SCALE_CODES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}  # safetensors dtype -> scale dtype
KERNEL_KINDS = {"float32": Q_AFFINE_F32, "float16": Q_AFFINE_F16, "bfloat16": Q_AFFINE_BF16}


@register_quantizer
class Affine(Quantizer):
    name = "affine"
    rank = 3
    max_bits = 8
    min_version = 2
    help = "affine: given codes, scales and zero points (compressed-tensors int4/int8), kept as they are"
    quantizes = False
    scale_layout = False

    def levels(self, qz: Any, s: np.ndarray) -> np.ndarray:
        # signed code c = u - 2^(q-1); c - z is exact, one float32 multiply, one rounding to
        # the scale's dtype (exact products for float16/bfloat16 scales): compressed-tensors'
        # dequantization, bit for bit
        codes = np.arange(1 << qz.bits)
        signed = (codes + code_range(qz.bits)[0])[None, None, :]
        z = 0 if qz.zero_points is None else qz.zero_points.astype(np.int64)[:, :, None]
        with np.errstate(over="ignore"):
            out = round_to_scale_dtype((signed - z).astype(np.float32) * s[:, :, 0:1], qz.scale_dtype)
        return np.ascontiguousarray(out, dtype=np.float32)

    def check_quantized(self, qz: Quantized) -> None:
        if qz.scale_rows != 1:
            raise ValueError(f"scale_rows {qz.scale_rows} outside 1..1")
        check_given_parameters(qz.bits, qz.scales, qz.zero_points, qz.scale_dtype, qz.rows,
                               max(1, -(-qz.cols // qz.group_size)))
        if qz.symmetric != (qz.zero_points is None):
            raise ValueError("an affine tensor has zero points exactly when it is not symmetric")

    def kernel_kind(self, qz: Any) -> int:
        kind = KERNEL_KINDS.get(qz.scale_storage_dtype)
        if kind is None:
            raise ValueError(f"affine scales of dtype {qz.scale_storage_dtype!r} are not supported")
        return kind

    def stored_scales(self, qz: Any) -> tuple[np.ndarray, str | None]:
        """Scales in the tensor's scale dtype (bfloat16: the high half of their float32 bits)."""
        s = np.ascontiguousarray(qz.scales, dtype=np.float32)
        if qz.scale_dtype == "float16":
            return s.astype(np.float16), None
        if qz.scale_dtype == "bfloat16":
            return (s.view(np.uint32) >> np.uint32(16)).astype(np.uint16), "BF16"
        return s, None

    def from_parts(self, spec: Any, arrays: dict[str, np.ndarray], codes: dict[str, str]) -> Quantized:
        a, code = arrays["scales"], codes["scales"]
        scales = (a.astype(np.uint32) << np.uint32(16)).view(np.float32) if code == "BF16" else a.astype(np.float32)
        return Quantized(self.name, spec.bits, np.zeros((0, 0), np.uint8), scales, spec.rows, spec.cols,
                         spec.group_size, spec.symmetric, arrays.get("zero_points"), SCALE_CODES[code])

    def part_specs(self, t: dict, rows: int, groups: int) -> dict[str, Part]:
        parts = {"scales": Part(("F16", "BF16", "F32"), (rows, groups, 1))}
        if not t["symmetric"]:
            parts["zero_points"] = Part(("I8",), (rows, groups))
        return parts
