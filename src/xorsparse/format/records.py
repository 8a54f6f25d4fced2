"""The informative records of a version-2 .xsp file: `calibration` (how the codes were
chosen) and `quality` (how the compressed model compares with the original).

Both are attacker-controlled once in a file, so the reader checks every field against the
schema below (type, range) and rejects keys it does not know, with a one-line error naming
the file and the field; the writer applies the same checks, so it never writes a file the
reader would refuse. Layout: docs/FORMAT.md section 8.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import XorsparseError

QUALITY_KINDS = ("sentence-transformers", "causal-lm", "layer-error")
METHODS = ("magnitude", "wanda", "sparsegpt")
MAX_NAME = 4096
MAX_ITEMS = 1 << 16


class RecordError(XorsparseError):
    """A record field of the wrong type or range; the message names the field."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _int(lo: int = 0, hi: int = 1 << 62) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and lo <= v <= hi


def _num(lo: float = -math.inf, hi: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: _is_num(v) and lo <= v <= hi


def _str(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_NAME


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_ITEMS and all(_str(x) for x in v)


def _sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _num_map(v: Any) -> bool:
    return isinstance(v, dict) and len(v) <= MAX_ITEMS and all(_str(k) and _is_num(x) for k, x in v.items())


HELD_OUT = {
    "source": _str, "file": _opt(_str), "sha256": _opt(_sha256), "samples": _int(), "selection": _str,
    "domain": _one_of("in-domain", "out-of-domain", "user"),
}

QUALITY = {
    "kind": _one_of(*QUALITY_KINDS), "held_out": None,  # checked against HELD_OUT
    "mean_cosine": _num(-1.0, 1.0), "min_cosine": _num(-1.0, 1.0), "nn_agreement": _num(0.0, 1.0),
    "perplexity_original": _num(0.0), "perplexity_compressed": _num(0.0), "perplexity_ratio": _num(0.0),
    "layers": _num_map, "mean_relative_error": _num(0.0), "max_relative_error": _num(0.0),
    "output_relative_error": _num(0.0),
}
# the same figures on other held-out sets: out-of-domain text, the user's --eval file
SUB_QUALITY = {k: v for k, v in QUALITY.items() if k not in ("kind", "layers")}
QUALITY["out_of_domain"] = "sub"
QUALITY["eval"] = "sub"

CALIBRATION = {
    "method": _one_of(*METHODS), "model_kind": _str, "source": _one_of("builtin", "file", "python"),
    "file": _opt(_str), "sha256": _opt(_sha256), "samples": _int(), "held_out": _int(), "selection": _str,
    "max_length": _int(1), "batch_size": _int(1), "seed": _int(0), "sequential": _bool, "blocks": _opt(_str),
    "calibrated_tensors": _int(), "notes": _str_list, "recover_steps": _int(0), "recover_lr": _num(0.0),
    "recover_scale_lr": _num(0.0), "recover_seed": _int(0), "torch": _str, "seconds": _num_map,
}


def _check(record: Any, schema: dict, what: str) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"{what} must be a JSON object, got {type(record).__name__}")
    for k, v in record.items():
        if k not in schema:
            raise RecordError(f"{what}: unknown field {k!r}")
        check = schema[k]
        if check is None:
            _check(v, HELD_OUT, f"{what}.{k}")
        elif check == "sub":
            _check(v, SUB_QUALITY, f"{what}.{k}")
        elif not check(v):
            raise RecordError(f"{what}.{k}: invalid value {str(v)[:60]!r}")


def _allocation_layers(v: Any) -> bool:
    return isinstance(v, dict) and 0 < len(v) <= MAX_ITEMS and all(
        _str(k) and isinstance(c, list) and len(c) == 2 and _num(0.0, 0.999999)(c[0]) and _int(1, 8)(c[1])
        for k, c in v.items())


ALLOCATION = {
    "target_bits": _num(1e-9, 16.0), "estimated_bits": _num(0.0, 64.0), "proxy_error": _num(0.0),
    "layers": _allocation_layers,  # tensor name -> [sparsity, bits]
}


def check_allocation(record: Any) -> None:
    _check(record, ALLOCATION, "allocation")
    for k in ("target_bits", "layers"):
        if k not in record:
            raise RecordError(f"allocation.{k}: missing")


def check_quality(record: Any) -> None:
    _check(record, QUALITY, "quality")
    if "kind" not in record:
        raise RecordError("quality.kind: missing")


def check_calibration(record: Any) -> None:
    _check(record, CALIBRATION, "calibration")
    if "method" not in record:
        raise RecordError("calibration.method: missing")


CHECKS = {"quality": check_quality, "calibration": check_calibration, "allocation": check_allocation}


def needs_recomputation(record: dict | None) -> bool:
    """True when a file's codes depend on calibration data or training (not on weights alone)."""
    return bool(record) and (record.get("method") != "magnitude" or bool(record.get("recover_steps")))


__all__ = ["CHECKS", "QUALITY_KINDS", "RecordError", "check_allocation", "check_calibration", "check_quality", "needs_recomputation"]
