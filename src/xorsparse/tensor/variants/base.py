"""What a variant of the format is: a mask codec or a quantizer, one class each, by name.

A variant's knowledge lives in its own module (bitmask.py, entropy.py, ctx.py; bcq.py,
uniform.py, affine.py, codebook.py): its name, the format version it needs, its command-line
help, the parts it stores, how it encodes and decodes, and the rule the validator applies to
its description and data. Everything else (the command line, CompressConfig, the validator,
the container, the fused kernels) asks the registry (`MASK_CODECS`, `QUANTIZERS`) instead of
comparing names. The modules are registered in one place, the package's __init__.py.

The validator's rules take `w`, the validator's error reporter (io/validate.py `Where`:
`w.error(field, message)`, `w.int_field(obj, key, prefix, lo, hi)`); passed in, so this
layer does not import the format layer above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..maskcode import MaskCode
from ..quant import Quantized, scale_groups

# how the fused kernels (tensor/fused.py) read a mask, tile by tile
MASK_WORDS = 0  # a bitmask of the whole tensor in uint64 words (any codec can be decoded to it)
MASK_GOLOMB = 1  # the `entropy` codec: Golomb-coded gaps per block, decoded in the kernel
# how the fused kernels turn (scales of a group, code) into a float32 level (fused._level)
Q_BCQ, Q_UNIFORM_SYM, Q_UNIFORM_ASYM = 0, 1, 2
Q_AFFINE_F32, Q_AFFINE_F16, Q_AFFINE_BF16 = 3, 4, 5  # `affine`, by scale dtype: [scale, zero point] per group
Q_TABLE = 6  # the level of every code per (row, group), precomputed (levels_table)


@dataclass(frozen=True)
class Part:
    """A stored part NAME.__xs__.PART: allowed safetensors dtypes and exact shape (None: 1-D)."""

    dtypes: tuple[str, ...]
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class KernelMask:
    """A mask as the fused kernels read it: `kind` (MASK_*), words, per-block tables."""

    kind: int
    words: np.ndarray  # uint64: the bitmask (MASK_WORDS) or the coded payload, padded
    offsets: np.ndarray  # int64 end byte of each block (empty for MASK_WORDS)
    params: np.ndarray  # int64 parameter of each block (empty for MASK_WORDS)
    block: int  # positions per block (MASK_WORDS: the kernels' tile)


class MaskCodec:
    """One way of storing the pruning mask (docs/FORMAT.md section 3)."""

    name: ClassVar[str]
    rank: ClassVar[int]  # listing order (help, choices), and `auto`'s: ties go to the lowest rank
    min_version: ClassVar[int] = 1  # the first format version that has it
    help: ClassVar[str] = ""  # one phrase for the command line's --mask-codec help
    fields: ClassVar[tuple[str, ...]] = ("block",)  # members of "mask" besides codec and length

    # --- encoding and decoding -------------------------------------------------------------
    def encode(self, keep: np.ndarray, cols: int | None, block: int) -> MaskCode:
        raise NotImplementedError

    # `auto`: a codec with costly_decode is taken only where it saves at least min_saving of the
    # bits of the best codec without it (see encode_if_saving)
    costly_decode: ClassVar[bool] = False
    min_saving: ClassVar[float] = 0.0

    def encode_if_saving(self, keep: np.ndarray, cols: int | None, block: int, limit: float) -> MaskCode | None:
        """The mask coded by this codec if it takes at most `limit` bits, else None (for `auto`)."""
        code = self.encode(keep, cols, block)
        return code if code.nbits <= limit else None

    def decode_words(self, code: MaskCode) -> np.ndarray:
        """The mask as little-endian packed bits in uint64 words (ceil(length/64) + 1 words);
        ValueError if the data are inconsistent."""
        raise NotImplementedError

    def kernel_mask(self, code: MaskCode, tile: int) -> KernelMask:
        """What the fused kernels read: by default the whole bitmask, in tiles of `tile` positions."""
        empty = np.zeros(0, np.int64)
        return KernelMask(MASK_WORDS, self.decode_words(code), empty, empty, tile)

    # --- the container -------------------------------------------------------------------------
    def describe(self, code: MaskCode) -> dict[str, Any]:
        """Members of the tensor's "mask" description besides codec and length."""
        return {"block": code.block}

    def stored_parts(self, code: MaskCode) -> list[tuple[str, np.ndarray]]:
        """The parts it stores besides `mask` (the payload), in the order they are written."""
        return []

    def from_parts(self, meta: dict, length: int, arrays: dict[str, np.ndarray]) -> MaskCode:
        """A MaskCode from a checked description and its checked parts."""
        return MaskCode(self.name, length, arrays["mask"], meta.get("block", 0))

    # --- the validator (docs/FORMAT.md 2.3) ----------------------------------------------------
    def check(self, w: Any, m: dict, length: int) -> None:
        """The description's members (types and ranges), before any part is read."""

    def part_specs(self, m: dict, length: int) -> dict[str, Part]:
        raise NotImplementedError

    def check_data(self, w: Any, m: dict, length: int, arrays: dict[str, np.ndarray]) -> None:
        """The parts' values, once their CRC-32s matched."""

    def model_bytes(self, m: dict) -> int:
        """Working memory its decoding needs besides the mask words (the reader's cost estimate)."""
        return 0


class Quantizer:
    """One way of turning codes into levels (docs/FORMAT.md section 4)."""

    name: ClassVar[str]
    rank: ClassVar[int]  # listing order (help, choices); the first that quantizes is the default
    max_bits: ClassVar[int]
    min_version: ClassVar[int] = 1
    help: ClassVar[str] = ""  # one phrase for the command line's --quantizer help
    quantizes: ClassVar[bool] = True  # chosen by CompressConfig (False: takes given codes, e.g. affine)
    scale_layout: ClassVar[bool] = True  # scales may be shared by row groups and stored as log8 (4.1, 4.3)
    fields: ClassVar[tuple[str, ...]] = ()  # extra TENSOR members it reads
    repairs_range: ClassVar[bool] = False  # per-row float scales shrunk where a level overflows (layout.py)
    # levels linear in per-row scales, refit by least squares: what calibration's error feedback
    # (tensor/calibrated.py) and recovery by distillation (torch/recover.py) know how to optimize
    refits_scales: ClassVar[bool] = False

    def quantize(self, w: np.ndarray, keep: np.ndarray, bits: int, symmetric: bool, group_size: int | None,
                 iters: int, scale_rows: int, codebook_rows: int | None,
                 importance: np.ndarray | None) -> Quantized:
        """Codes and scales for the kept weights (scale_rows already checked)."""
        raise ValueError(f"the {self.name} quantizer takes given codes; it does not quantize")

    def fit_range(self, qz: Quantized, w: np.ndarray, keep: np.ndarray, dtype: str) -> Quantized | None:
        """Its own overflow repair for any scale layout, or None for layout.fit_output_range's."""
        return None

    def scale_basis(self, codes: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
        """refits_scales: each weight as a linear form of its group's k scales, (rows, k, cols)
        float64 for codes (rows, cols): what a least-squares refit of the scales solves for."""
        raise NotImplementedError

    def shrink_group(self, s64: np.ndarray, bits: int, symmetric: bool, limit: float) -> tuple[np.ndarray, slice]:
        """repairs_range: a group's float64 scales brought under `limit`, and which of them
        the search may shrink further."""
        raise NotImplementedError

    def reassign_codes(self, qz: Quantized, w2: np.ndarray, k2: np.ndarray, scales: np.ndarray,
                       bad: np.ndarray, codes: np.ndarray) -> None:
        """repairs_range: codes chosen again (in place) for the repaired scales of the `bad` groups."""
        raise NotImplementedError

    def scale_count(self, symmetric: bool, bits: int) -> int:
        """k: scales per (row group, column group)."""
        return 1

    def levels(self, qz: Any, s: np.ndarray) -> np.ndarray:
        """Float32 level of every code for the float32 scale sets `s` (sets, groups, k):
        (sets, groups, 2^q), in the arithmetic order of FORMAT.md section 4."""
        raise NotImplementedError

    def levels_table(self, qz: Any) -> np.ndarray:
        """Value of every code in every (row, group): (rows, groups, 2^q) float32."""
        out = self.levels(qz, qz.scale_values())
        if qz.scale_rows > 1:  # scales shared by scale_rows rows: computed once, repeated per row
            out = np.ascontiguousarray(out[np.arange(qz.rows) // qz.scale_rows])
        return out

    def kernel_kind(self, qz: Any) -> int:
        """How the fused kernels compute its levels: a Q_* rule, or Q_TABLE (precomputed)."""
        return Q_TABLE

    def check_quantized(self, qz: Quantized) -> None:
        """ValueError unless the scales (and what else it keeps) fit the tensor's layout:
        what CompressedTensor.validate relies on before the kernels read them."""
        if not 1 <= qz.scale_rows <= max(qz.rows, 1):
            raise ValueError(f"scale_rows {qz.scale_rows} outside 1..{max(qz.rows, 1)}")
        k = self.scale_count(qz.symmetric, qz.bits)
        want = scale_groups(qz.rows, qz.cols, qz.group_size, qz.scale_rows) + (k,)
        if tuple(qz.scales.shape) != want:
            raise ValueError(f"scales have shape {tuple(qz.scales.shape)}, expected {want}")
        if qz.scale_format == "log8" and (qz.scale_ref is None or tuple(qz.scale_ref.shape) != (k,)):
            raise ValueError(f"log8 scales need {k} references")

    # --- the container -------------------------------------------------------------------------
    def stored_scales(self, qz: Any) -> tuple[np.ndarray, str | None]:
        """The `scales` part as written: (array, safetensors dtype, or None for the array's own)."""
        return qz.scales, None

    def stored_parts(self, qz: Any) -> list[tuple[str, np.ndarray]]:
        """Parts it stores besides scales, zero points and log8 references."""
        return []

    def describe(self, qz: Any) -> dict[str, Any]:
        """TENSOR members it adds (its `fields`)."""
        return {}

    def from_parts(self, spec: Any, arrays: dict[str, np.ndarray], codes: dict[str, str]) -> Quantized:
        """A Quantized (planes empty) from a checked description and its checked parts."""
        return Quantized(spec.quantizer, spec.bits, np.zeros((0, 0), np.uint8), arrays["scales"], spec.rows,
                         spec.cols, spec.group_size, spec.symmetric, scale_rows=spec.scale_rows,
                         codebook=arrays.get("codebook"), codebook_rows=spec.codebook_rows,
                         scale_ref=arrays.get("scale_ref"))

    # --- the validator -------------------------------------------------------------------------
    def check(self, w: Any, t: dict) -> None:
        """The tensor's members this quantizer constrains (after the common ones)."""

    def part_specs(self, t: dict, rows: int, groups: int) -> dict[str, Part]:
        """Its parts: `scales` always, others as it stores them."""
        return {"scales": Part(("F16", "F32"), (-(-rows // t.get("scale_rows", 1)), groups,
                                                  self.scale_count(t["symmetric"], t["bits"])))}

    def check_data(self, w: Any, spec: Any, arrays: dict[str, np.ndarray], codes: dict[str, str]) -> None:
        finite_scales(w, arrays, codes)


def finite_scales(w: Any, arrays: dict[str, np.ndarray], codes: dict[str, str]) -> None:
    """Scales (or log8 references) are finite: FORMAT.md 2.3 "Data"."""
    s = arrays["scales"]
    if "scale_ref" in arrays:  # log8: bytes, any value; their references finite
        ref = arrays["scale_ref"]
        if ref.size and not np.all(np.isfinite(ref)):
            raise w.error("scale_ref", "holds a value that is NaN or infinite")
        return
    if codes.get("scales") == "BF16":  # uint16 bit patterns: all-ones exponent is inf or NaN
        bad = (s.astype(np.uint16) & np.uint16(0x7F80)) == np.uint16(0x7F80)
    else:
        bad = ~np.isfinite(s)
    if s.size and bad.any():
        raise w.error("scales", "holds a value that is NaN or infinite")


MASK_CODECS: dict[str, MaskCodec] = {}
QUANTIZERS: dict[str, Quantizer] = {}


def _register(registry: dict, what: str, cls: type) -> type:
    if cls.name in registry or any(v.rank == cls.rank for v in registry.values()):
        raise ValueError(f"{what} {cls.name!r} (rank {cls.rank}) is registered twice")
    registry[cls.name] = cls()
    ordered = sorted(registry.items(), key=lambda kv: kv[1].rank)  # by rank, whatever the import order
    registry.clear()
    registry.update(ordered)
    return cls


def register_mask_codec(cls: type[MaskCodec]) -> type[MaskCodec]:
    return _register(MASK_CODECS, "mask codec", cls)


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    return _register(QUANTIZERS, "quantizer", cls)


def mask_codec(name: str) -> MaskCodec:
    codec = MASK_CODECS.get(name)
    if codec is None:
        raise ValueError(f"unknown mask codec {name!r} (known: {', '.join(MASK_CODECS)})")
    return codec


def quantizer(name: str) -> Quantizer:
    q = QUANTIZERS.get(name)
    if q is None:
        raise ValueError(f"unknown quantizer {name!r} (known: {', '.join(QUANTIZERS)})")
    return q
