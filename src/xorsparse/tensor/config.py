"""How to compress, as four small typed configs and the one object that holds them.

`CompressConfig` is what every entry point takes (in the spirit of torchao's
`quantize_(model, config)`), and what files record: its `to_dict` is written into every
file's description and model folder's config.json, so that dict's layout is fixed (version
`CONFIG_VERSION`; docs/FORMAT.md section 2 `config`). Its parts say which fields belong
together and check them: `pruning` (how much), `quantization` (codes and scales), `coding`
(mask codec and the XOR codes' search), `calibration` (how masks and codes are chosen).
Construct it flat, `CompressConfig(sparsity=0.9, bits=2)`, or from parts,
`CompressConfig.from_parts(PruningConfig(0.9), QuantizationConfig(bits=2))`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from ..codec.rates import DEFAULT_WINDOW
from ..codec.xornet import DEFAULT_SEED, MAX_WINDOW
from ..errors import XorsparseError
from .variants import mask_codec_choices, quantizer, quantizer_choices

CONFIG_VERSION = 1  # layout of CompressConfig.to_dict (flat, the field names below)
SCALE_FORMATS = ("float16", "log8", "auto")
METHODS = ("magnitude", "wanda", "sparsegpt")


class ConfigError(XorsparseError):
    """A configuration field of the wrong type or range, or an unknown one; names the field."""


@dataclass(frozen=True)
class PruningConfig:
    """sparsity: fraction of weights to prune (existing zeros count as pruned);
    global_sparsity: one threshold across all selected tensors instead of per tensor."""

    sparsity: float = 0.9
    global_sparsity: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")


@dataclass(frozen=True)
class QuantizationConfig:
    """bits / quantizer: q bit-planes of a registered quantizer (tensor/variants/);
    symmetric (uniform); group_size: columns per scale (None = per row); bcq_iters;
    scale_rows (int or "auto", the default: among 1, 4, 16, 64 and the whole tensor, the
    layout with the fewest scale bits whose weight error stays within error_budget of per-row
    float16 scales, searched only where per-row float16 scales cost at least
    pipeline.AUTO_SCALE_MIN_SHARE of the tensor's bits, elsewhere per-row), scale_format
    ("float16", "log8" or "auto", the default, chosen as above; the calibrated methods refit
    per-row float16 scales, which "auto" means there) and the error_budget that "auto" keeps
    to; codebook_rows (codebook; None = one per tensor)."""

    bits: int = 2
    quantizer: str = "bcq"
    symmetric: bool = True
    group_size: int | None = None
    bcq_iters: int = 15
    scale_rows: int | str = "auto"
    scale_format: str = "auto"
    error_budget: float = 0.01
    codebook_rows: int | None = None

    def __post_init__(self) -> None:
        if self.quantizer not in quantizer_choices():
            raise ConfigError(f"quantizer must be one of {', '.join(quantizer_choices())}, got {self.quantizer!r}")
        limit = quantizer(self.quantizer).max_bits
        if not isinstance(self.bits, int) or not 1 <= self.bits <= limit:
            raise ConfigError(f"bits must be in 1..{limit} for {self.quantizer}, got {self.bits}")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {self.group_size}")
        if self.bcq_iters < 0:
            raise ConfigError(f"bcq_iters must be >= 0, got {self.bcq_iters}")
        if self.scale_rows != "auto" and (isinstance(self.scale_rows, bool) or not isinstance(self.scale_rows, int)
                                          or self.scale_rows < 1):
            raise ConfigError(f"scale_rows must be a positive integer or 'auto', got {self.scale_rows!r}")
        if self.scale_format not in SCALE_FORMATS:
            raise ConfigError(f"scale_format must be one of {', '.join(SCALE_FORMATS)}, got {self.scale_format!r}")
        if not 0.0 <= float(self.error_budget) <= 10.0:
            raise ConfigError(f"error_budget must be in [0, 10], got {self.error_budget}")
        if self.codebook_rows is not None and (not isinstance(self.codebook_rows, int) or self.codebook_rows < 1):
            raise ConfigError(f"codebook_rows must be a positive integer or None, got {self.codebook_rows!r}")


@dataclass(frozen=True)
class CodingConfig:
    """mask_codec: a registered mask codec or "auto" (the smallest); max_n_s, max_window:
    bounds of the XOR decoder the rate search may use (0 = the paper's network; 256 codes
    ~0.5% smaller, encodes ~3x slower); seed of the XOR matrices; packed_below: tensors of
    fewer positions store their planes packed (one bit per kept weight; 0 = never)."""

    mask_codec: str = "auto"
    max_n_s: int | None = None
    max_window: int = DEFAULT_WINDOW
    seed: int = DEFAULT_SEED
    packed_below: int = 0

    def __post_init__(self) -> None:
        if self.mask_codec not in mask_codec_choices():
            raise ConfigError(f"mask_codec must be one of {', '.join(mask_codec_choices())}, "
                              f"got {self.mask_codec!r}")
        if self.max_n_s is not None and not 0 <= self.max_n_s < MAX_WINDOW:
            raise ConfigError(f"max_n_s must be in 0..{MAX_WINDOW - 1}, got {self.max_n_s}")
        if not 1 <= self.max_window <= MAX_WINDOW:
            raise ConfigError(f"max_window must be in 1..{MAX_WINDOW}, got {self.max_window}")
        if not isinstance(self.packed_below, int) or self.packed_below < 0:
            raise ConfigError(f"packed_below must be a non-negative integer, got {self.packed_below!r}")


@dataclass(frozen=True)
class CalibrationConfig:
    """method: 'magnitude' (data-free) or 'wanda' / 'sparsegpt' (calibrated on layer inputs);
    calib_damp (Hessian damping relative to its mean diagonal), calib_block (columns per
    block), calib_passes (quantization passes with the scales refit in between)."""

    method: str = "magnitude"
    calib_damp: float = 0.01
    calib_block: int = 128
    calib_passes: int = 2

    methods: ClassVar[tuple[str, ...]] = METHODS  # a subclass may accept more (torch's ModelConfig: "auto")

    def __post_init__(self) -> None:
        if self.method not in self.methods:
            raise ConfigError(f"method must be one of {', '.join(self.methods)}, got {self.method!r}")
        if isinstance(self.calib_damp, bool) or not isinstance(self.calib_damp, (int, float)) \
                or not 0.0 < float(self.calib_damp) <= 10.0:
            raise ConfigError(f"calib_damp must be in (0, 10], got {self.calib_damp!r}")
        for f, lo, hi in (("calib_block", 1, 1 << 16), ("calib_passes", 1, 16)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{f} must be an integer in {lo}..{hi}, got {v!r}")


PARTS = {"pruning": PruningConfig, "quantization": QuantizationConfig, "coding": CodingConfig,
         "calibration": CalibrationConfig}


@dataclass(frozen=True)
class CompressConfig:
    """How to compress: every field of the four parts, flat (the parts' docstrings say what
    each means); `pruning`, `quantization`, `coding` and `calibration` give them grouped.
    Checked on construction (ConfigError, a ValueError, naming the field)."""

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
    scale_rows: int | str = "auto"
    scale_format: str = "auto"
    error_budget: float = 0.01
    codebook_rows: int | None = None
    packed_below: int = 0
    method: str = "magnitude"
    calib_damp: float = 0.01
    calib_block: int = 128
    calib_passes: int = 2

    VERSION: ClassVar[int] = CONFIG_VERSION
    calibration_type: ClassVar[type] = CalibrationConfig  # what `calibration` is (a subclass may widen it)

    def __post_init__(self) -> None:
        for name in PARTS:  # each part checks its fields
            getattr(self, name)

    def _part(self, cls: type) -> Any:
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    @property
    def pruning(self) -> PruningConfig:
        return self._part(PruningConfig)

    @property
    def quantization(self) -> QuantizationConfig:
        return self._part(QuantizationConfig)

    @property
    def coding(self) -> CodingConfig:
        return self._part(CodingConfig)

    @property
    def calibration(self) -> CalibrationConfig:
        return self._part(self.calibration_type)

    @classmethod
    def from_parts(cls, pruning: PruningConfig | None = None, quantization: QuantizationConfig | None = None,
                   coding: CodingConfig | None = None, calibration: CalibrationConfig | None = None
                   ) -> CompressConfig:
        flat: dict[str, Any] = {}
        for part in (pruning, quantization, coding, calibration):
            if part is not None:
                flat.update(asdict(part))
        return cls(**flat)

    @property
    def calibrated(self) -> bool:
        """True when the codes depend on calibration data (not reproducible from the weights)."""
        return self.method != "magnitude"

    def to_dict(self) -> dict[str, Any]:
        """The flat dict files record (layout version CONFIG_VERSION; key order as declared)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], version: int = CONFIG_VERSION, unknown: str = "refuse") -> CompressConfig:
        """The config a to_dict of layout `version` describes. A key it does not know is an
        error (ConfigError naming it), unless unknown="ignore": a file's `config` is
        informative, and one written by a newer release may have more (FORMAT.md 2.3)."""
        if version != CONFIG_VERSION:
            raise ConfigError(f"config: layout version {version!r} is not supported (this release reads "
                              f"{CONFIG_VERSION})")
        if not isinstance(d, dict):
            raise ConfigError(f"config: must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = [k for k in d if k not in known]
        if extra and unknown != "ignore":
            raise ConfigError(f"config: unknown field {extra[0]!r}")
        return cls(**{k: v for k, v in d.items() if k in known})


__all__ = ["CONFIG_VERSION", "METHODS", "PARTS", "SCALE_FORMATS", "CalibrationConfig", "CodingConfig",
           "CompressConfig", "ConfigError", "PruningConfig", "QuantizationConfig"]
