"""`codebook` (format version 2): 2^q fitted levels per group of rows times a scale
(docs/FORMAT.md section 4.2). The fitting stays in tensor/codebook.py."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..codebook import (
    CODEBOOK_MAX_BITS,
    codebook_levels,
    fit_codebook_range,
    quantize_codebook,
)
from ..quant import LEVEL_LIMIT, Quantized
from .base import Part, Quantizer, finite_scales, register_quantizer


@register_quantizer
class Codebook(Quantizer):
    name = "codebook"
    rank = 2
    max_bits = CODEBOOK_MAX_BITS
    min_version = 2
    help = "codebook: 2^q fitted levels times a per-row scale"
    fields = ("codebook_rows",)

    def levels_table(self, qz: Any) -> np.ndarray:
        return codebook_levels(qz.scale_values(), qz.codebook, qz.scale_rows, qz.codebook_rows, qz.rows)

    def check_quantized(self, qz: Quantized) -> None:
        super().check_quantized(qz)
        if not 1 <= qz.codebook_rows <= max(qz.rows, 1):
            raise ValueError(f"codebook_rows {qz.codebook_rows} outside 1..{max(qz.rows, 1)}")
        books = (-(-qz.rows // qz.codebook_rows), 1 << qz.bits)
        if qz.codebook is None or tuple(qz.codebook.shape) != books:
            got = None if qz.codebook is None else tuple(qz.codebook.shape)
            raise ValueError(f"codebook has shape {got}, expected {books}")

    def quantize(self, w: np.ndarray, keep: np.ndarray, bits: int, symmetric: bool, group_size: int | None,
                 iters: int, scale_rows: int, codebook_rows: int | None,
                 importance: np.ndarray | None) -> Quantized:
        return quantize_codebook(w, keep, bits, group_size, scale_rows, codebook_rows, importance, iters)

    def fit_range(self, qz: Quantized, w: np.ndarray, keep: np.ndarray, dtype: str) -> Quantized:
        """Any layout: the codebook and scales fitted so that no level overflows `dtype`."""
        return fit_codebook_range(qz, w, keep, LEVEL_LIMIT.get(dtype, LEVEL_LIMIT["float32"]))

    def stored_parts(self, qz: Any) -> list[tuple[str, np.ndarray]]:
        return [("codebook", qz.codebook)]

    def describe(self, qz: Any) -> dict[str, Any]:
        return {"codebook_rows": qz.codebook_rows}

    def check(self, w: Any, t: dict) -> None:
        if t["symmetric"] is not True:
            raise w.error("symmetric", "must be true for codebook")
        w.int_field(t, "codebook_rows", "", 1, max(t["rows"], 1))

    def part_specs(self, t: dict, rows: int, groups: int) -> dict[str, Part]:
        return {**super().part_specs(t, rows, groups),
                "codebook": Part(("F16", "F32"), (-(-rows // t["codebook_rows"]), 1 << t["bits"]))}

    def check_data(self, w: Any, spec: Any, arrays: dict[str, np.ndarray], codes: dict[str, str]) -> None:
        finite_scales(w, arrays, codes)
        if arrays["codebook"].size and not np.all(np.isfinite(arrays["codebook"])):
            raise w.error("codebook", "holds a value that is NaN or infinite")
