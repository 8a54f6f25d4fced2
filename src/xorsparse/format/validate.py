"""The one gate between an .xsp file and everything that decodes it.

An .xsp file's header and JSON description are attacker-controlled until this module has
checked them, and the numba kernels downstream do not bounds-check. So every field is
checked here for type (a JSON integer is an int: not a float, not a boolean), range (the
limits docs/FORMAT.md states), consistency (counts against the bytes that back them, the
dtype and shape of every entry exactly as the specification fixes them, every byte of the
data section accounted for) and cost (declared sizes bounded by what the file's bytes can
encode, and the decoder's working memory by a stated limit) before anything allocates or
a kernel runs. Errors are `XspError`s of one line naming the file, the tensor and the field.

Three levels, each cheap compared with what it protects:

- `parse_header`: the safetensors framing (header JSON, entry dtypes, shapes, offsets tiling
  the data section exactly);
- `validate_description`: the xorsparse document, the version-2 description checksum, and
  every compressed tensor's description against the entries that back it (no data read);
- `check_tensor_data`: the values inside the small parts (mask block tables, padding bits,
  scales) once their CRC-32s matched, and `check_patch_list` before a patch list is decoded.

Quantizers and mask codecs bring their own rules (tensor/variants/: the members they read,
the parts they store, dtype and shape, and the checks of their data), read here through
the registry; coded orders slot in through the ORDERS table.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..codec.patches import rice_bits
from ..codec.xornet import MAX_N_IN, MAX_N_OUT, MAX_WINDOW
from ..errors import XorsparseError
from ..tensor.pipeline import FLOAT_DTYPES
from ..tensor.variants import MASK_CODECS, QUANTIZERS, Part
from .records import CHECKS as RECORD_CHECKS
from .records import RecordError

# ---------------------------------------------------------------------------------------
# Limits (docs/FORMAT.md, "Reader limits")

MAX_HEADER = 100 * 1024 * 1024  # bytes of safetensors header JSON
MAX_NDIM = 64
MAX_POSITIONS = 1 << 48  # weights in one compressed tensor
MAX_DIM = 1 << 62
MAX_CHUNK_SLICES = 1 << 32
MAX_RICE_K = 40
MAX_BCQ_ITERS = 1000
DEFAULT_MAX_TENSOR_BYTES = 16 << 30
MAX_TENSOR_BYTES_ENV = "XORSPARSE_MAX_TENSOR_BYTES"

SEP = ".__xs__."
CHECKSUM_KEY = "xorsparse_crc32"  # __metadata__ key of the version-2 description checksum
META_KEY = "xorsparse"
FORMAT_NAME = "xorsparse"
READ_VERSIONS = (1, 2)
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

ST_NUMPY = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
            "BF16": "uint16", "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}
ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


class XspError(XorsparseError):
    """Anything wrong with an .xsp file; the message names the file, the tensor and the field."""


# ---------------------------------------------------------------------------------------
# Strict JSON


class _Reject(XorsparseError):
    pass


def _no_constant(token: str):
    raise _Reject(f"{token} is not a JSON number")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Reject(f"number {text[:20]} is out of range")
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Reject(f"duplicate key {_show(k)}")
        out[k] = v
    return out


def load_json(text: bytes | str, what: str, path: str) -> Any:
    """json.loads without NaN/Infinity, out-of-range numbers or duplicate keys."""
    try:
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          object_pairs_hook=_no_duplicates)
    except _Reject as e:
        raise XspError(f"{path}: {what}: {e}") from None
    except RecursionError:
        raise XspError(f"{path}: {what}: nested too deeply") from None
    except UnicodeDecodeError:
        raise XspError(f"{path}: {what}: not UTF-8") from None
    except ValueError as e:  # JSONDecodeError, integers of too many digits
        raise XspError(f"{path}: {what}: not valid JSON ({str(e).splitlines()[0][:80]})") from None


def _show(v: Any) -> str:
    """A value for a one-line message: type-revealing and short."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        s = repr(v)
        return s if len(s) <= 24 else s[:20] + "..."
    if isinstance(v, str):
        s = json.dumps(v)
        return s if len(s) <= 40 else s[:36] + '..."'
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _q(name: str) -> str:
    """A name for a one-line message: quoted, escaped, at most about 80 characters."""
    r = repr(name)
    return r if len(r) <= 80 else r[:72] + "..." + r[0]


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject("is not valid Unicode (a lone surrogate)") from None


# ---------------------------------------------------------------------------------------
# Where an error is: file, tensor, field


@dataclass(frozen=True)
class Where:
    path: str
    tensor: str | None = None

    def error(self, fld: str | None, msg: str) -> XspError:
        parts = [self.path]
        if self.tensor is not None:
            parts.append(f"tensor {_q(self.tensor)}")
        if fld:
            parts.append(fld)
        return XspError(": ".join(parts) + ": " + msg)

    # typed field readers ------------------------------------------------------------

    def obj(self, d: Any, fld: str) -> dict:
        if not isinstance(d, dict):
            raise self.error(fld, f"must be an object, got {_show(d)}")
        return d

    def get(self, d: dict, key: str, fld: str) -> Any:
        if key not in d:
            raise self.error(fld, "missing")
        return d[key]

    def int_(self, v: Any, fld: str, lo: int, hi: int) -> int:
        if type(v) is not int:  # bool is an int subclass: excluded, as are floats
            raise self.error(fld, f"must be an integer, got {_show(v)}")
        if not lo <= v <= hi:
            raise self.error(fld, f"must be in {lo}..{hi}, got {_show(v)}")
        return v

    def int_field(self, d: dict, key: str, prefix: str, lo: int, hi: int) -> int:
        fld = prefix + key
        return self.int_(self.get(d, key, fld), fld, lo, hi)

    def str_field(self, d: dict, key: str, prefix: str, choices: Iterable[str] | None = None) -> str:
        fld = prefix + key
        v = self.get(d, key, fld)
        if not isinstance(v, str):
            raise self.error(fld, f"must be a string, got {_show(v)}")
        if choices is not None and v not in choices:
            raise self.error(fld, f"unknown value {_show(v)} (this xorsparse knows {', '.join(choices)})")
        return v

    def bool_field(self, d: dict, key: str, prefix: str) -> bool:
        fld = prefix + key
        v = self.get(d, key, fld)
        if not isinstance(v, bool):
            raise self.error(fld, f"must be true or false, got {_show(v)}")
        return v

    def members(self, d: dict, allowed: Iterable[str], fld: str) -> None:
        """Unknown members are errors: a reader must not ignore what may change the weights."""
        allowed = set(allowed)
        extra = sorted(k for k in d if k not in allowed)
        if extra:
            raise self.error(fld or None, f"unknown member {_show(extra[0])} (this xorsparse does not know "
                                          "what it means, so it refuses the file rather than ignore it)")


# ---------------------------------------------------------------------------------------
# The safetensors framing


@dataclass(frozen=True)
class EntryInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def parse_header(raw: bytes, file_size: int, path: str) -> tuple[dict[str, str], dict[str, EntryInfo]]:
    """(metadata, entries) of a safetensors header, its entries tiling the data section exactly."""
    w = Where(path)
    header = load_json(raw, "safetensors header", path)
    if not isinstance(header, dict):
        raise w.error(None, "corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise w.error("__metadata__", f"must be an object of strings, got {_show(meta)}")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise w.error(f"__metadata__[{_show(k)}]", f"must be a string, got {_show(v)}")
        try:
            _utf8(k), _utf8(v)
        except _Reject as e:
            raise w.error(f"__metadata__[{_show(k)}]", str(e)) from None
    entries: dict[str, EntryInfo] = {}
    for name, info in header.items():
        ew = Where(path, name)
        try:
            _utf8(name)
        except _Reject as e:
            raise w.error(f"entry {_show(name)}", f"name {e}") from None
        if not isinstance(info, dict):
            raise ew.error("header entry", f"must be an object, got {_show(info)}")
        ew.members(info, ("dtype", "shape", "data_offsets"), "header entry")
        dt = ew.str_field(info, "dtype", "header entry ", tuple(ST_ITEMSIZE))
        shape = ew.get(info, "shape", "header entry shape")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise ew.error("header entry shape", f"must be a list of at most {MAX_NDIM} integers, got {_show(shape)}")
        dims = tuple(ew.int_(d, f"header entry shape[{i}]", 0, MAX_DIM) for i, d in enumerate(shape))
        offs = ew.get(info, "data_offsets", "header entry data_offsets")
        if not isinstance(offs, list) or len(offs) != 2:
            raise ew.error("header entry data_offsets", f"must be [begin, end], got {_show(offs)}")
        b = ew.int_(offs[0], "header entry data_offsets[0]", 0, MAX_DIM)
        e = ew.int_(offs[1], "header entry data_offsets[1]", 0, MAX_DIM)
        want = math.prod(dims) * ST_ITEMSIZE[dt]
        if e - b != want:
            raise ew.error("header entry", f"data_offsets [{b}, {e}] hold {e - b} bytes, but dtype {dt} "
                                           f"and shape {list(dims)} need {want}")
        entries[name] = EntryInfo(dt, dims, b, e)
    base = 8 + len(raw)
    pos = 0
    for name, info in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end, kv[0])):
        if base + info.end > file_size:
            raise w.error(None, f"truncated: tensor {_q(name)} ends at byte {base + info.end}, file has {file_size}")
        if info.begin != pos:
            what = ("overlaps the entry before it" if info.begin < pos
                    else f"leaves {info.begin - pos} bytes unaccounted for before it")
            raise w.error(f"tensor {_q(name)}",
                          f"data_offsets begin at {info.begin}: {what} (entries must be contiguous)")
        pos = info.end
    if base + pos != file_size:
        raise w.error(None, f"{file_size - base - pos} bytes after the last tensor's data (trailing data)")
    return meta, entries


# ---------------------------------------------------------------------------------------
# The version-2 description checksum (docs/FORMAT.md, "Description checksum")


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _field(s: str) -> bytes:
    b = _utf8(s)
    return _u64(len(b)) + b


def description_crc(metadata: Mapping[str, str], entries: Mapping[str, Any]) -> int:
    """CRC-32 over every __metadata__ pair but the checksum's own and every header entry.

    `entries` maps names to EntryInfo or to safetensors header dicts.
    """
    crc = 0
    items = sorted((_utf8(k), _utf8(v)) for k, v in metadata.items() if k != CHECKSUM_KEY)
    crc = zlib.crc32(_u64(len(items)), crc)
    for k, v in items:
        crc = zlib.crc32(_u64(len(k)) + k + _u64(len(v)) + v, crc)
    rows = []
    for name, e in entries.items():
        if isinstance(e, EntryInfo):
            dt, shape, b, end = e.dtype, e.shape, e.begin, e.end
        else:
            dt, shape, (b, end) = e["dtype"], e["shape"], e["data_offsets"]
        rows.append((_utf8(name), dt, tuple(shape), b, end))
    rows.sort(key=lambda r: r[0])
    crc = zlib.crc32(_u64(len(rows)), crc)
    for name, dt, shape, b, end in rows:
        rec = _u64(len(name)) + name + _field(dt) + _u64(len(shape)) + b"".join(_u64(d) for d in shape)
        crc = zlib.crc32(rec + _u64(b) + _u64(end), crc)
    return crc & 0xFFFFFFFF


def format_crc(c: int) -> str:
    return f"{c:08x}"


def meta_crc(meta: dict) -> int:
    """Version 1: CRC-32 of a tensor's description, sorted keys, no spaces, without its checksums."""
    body = {k: v for k, v in meta.items() if k not in ("crc32", "meta_crc32")}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# Tensor descriptions: rules per quantizer, mask codec and coded order


PartSpec = Part  # an entry NAME.__xs__.PART: allowed dtypes and exact shape (None: 1-D of any length)


@dataclass(frozen=True)
class PlaneSpec:
    n_in: int
    n_out: int
    n_s: int
    seed: int
    chunk_slices: int
    patches: int
    rice_k: int
    patch_nbits: int
    care_bits: int
    kind: str = "xor"  # "packed" (version 2, FORMAT.md 1.8): care_bits bits at the kept positions

    def n_slices(self, length: int) -> int:
        return -(-length // self.n_out)

    def stream_bytes(self, length: int) -> int:
        return -(-self.n_slices(length) * self.n_in // 8)


@dataclass
class TensorSpec:
    """A compressed tensor's description once checked: what the decoder may rely on."""

    name: str
    meta: dict
    shape: tuple[int, ...]
    dtype: str
    quantizer: str
    bits: int
    symmetric: bool
    rows: int
    cols: int
    group_size: int
    groups: int
    order_kind: str
    step: int
    mask: dict
    planes: list[PlaneSpec]
    parts: dict[str, PartSpec]
    crc: dict[str, int]
    scale_rows: int = 1  # version 2 (FORMAT.md 4.1)
    codebook_rows: int = 0  # codebook quantizer (4.2)
    scale_format: str = "float"  # or "log8" (4.3)

    @property
    def length(self) -> int:
        return self.rows * self.cols

    def read_bytes(self) -> int:
        """Memory of reading the parts beyond their own bytes (which the file backs): the ctx
        mask's model indices, rows + cols of them, not bounded by the file's size."""
        return MASK_CODECS[self.mask["codec"]].model_bytes(self.mask)

    def decode_bytes(self) -> int:
        """Working memory of decoding this tensor (FORMAT.md, "Reader limits")."""
        n = self.length
        words = (-(-n // 64) + 2) * 8
        levels = self.rows * self.groups * (1 << self.bits) * 4
        model = MASK_CODECS[self.mask["codec"]].model_bytes(self.mask)
        return 4 * n + 2 * n * ITEMSIZE[self.dtype] + (self.bits + 2) * words + levels + model


# Quantizers and mask codecs: each variant's rule is in its own module (tensor/variants/),
# read here through the registry; a new variant needs no change in this file.
# quantizers whose scales may be shared by row groups and stored as log8 bytes (4.1, 4.3)
SCALE_LAYOUT_QUANTIZERS = tuple(name for name, q in QUANTIZERS.items() if q.scale_layout)
SCALE_LAYOUT_FIELDS = ("scale_rows", "scale_format")


@dataclass(frozen=True)
class OrderRule:
    fields: tuple[str, ...]
    check: Callable[[Where, dict, int], int]  # returns the step (or 0)


def _blocks64_check(w: Where, o: dict, length: int) -> int:
    nb = length // 64
    step = w.int_field(o, "step", "order.", 0, max(nb, 1) - 1)
    if nb > 1 and math.gcd(step, nb) != 1:
        raise w.error("order.step", f"{step} is not coprime with the {nb} blocks")
    return step


ORDERS: dict[str, OrderRule] = {"blocks64": OrderRule(("step",), _blocks64_check)}

PLANE_FIELDS = ("n_in", "n_out", "n_s", "seed", "chunk_slices", "patches", "rice_k", "patch_nbits", "care_bits")
TENSOR_FIELDS = ("shape", "dtype", "quantizer", "bits", "symmetric", "rows", "cols", "group_size", "order",
                 "mask", "planes", "crc32")
_SEED = re.compile(r"0|[1-9][0-9]{0,19}")


def _zero_padding(w: Where, part: str, data: np.ndarray, nbits: int) -> None:
    """Unused bits after the last of `nbits` bits must be zero (FORMAT.md conventions)."""
    if nbits % 8 and data.size and int(data[-1]) >> (nbits % 8):
        raise w.error(part, "unused bits after the end of the stream are not zero")


def _plane(w: Where, p: Any, i: int, length: int, version: int = 2) -> PlaneSpec:
    pre = f"planes[{i}]."
    p = w.obj(p, f"planes[{i}]")
    if "kind" in p:  # FORMAT.md 1.8 (version 2): the bits at the kept positions, as they are
        if version < 2:
            raise w.error(pre + "kind", "packed planes need format version 2, file is version 1")
        w.str_field(p, "kind", pre, ("packed",))
        w.members(p, ("kind", "care_bits"), f"planes[{i}]")
        care = w.int_field(p, "care_bits", pre, 0, length)
        return PlaneSpec(0, 0, 0, 0, 0, 0, 0, 0, care, "packed")
    w.members(p, PLANE_FIELDS, f"planes[{i}]")
    n_in = w.int_field(p, "n_in", pre, 1, MAX_N_IN)
    n_out = w.int_field(p, "n_out", pre, 1, MAX_N_OUT)
    n_s = w.int_field(p, "n_s", pre, 0, MAX_WINDOW - 1)
    if n_in * (n_s + 1) > MAX_WINDOW:
        raise w.error(pre + "n_s", f"n_in * (n_s + 1) = {n_in} * {n_s + 1} exceeds {MAX_WINDOW}")
    seed_s = w.str_field(p, "seed", pre)
    if not _SEED.fullmatch(seed_s) or int(seed_s) >= 1 << 64:
        raise w.error(pre + "seed", f"must be a decimal string of an integer in 0..2^64-1, got {_show(seed_s)}")
    cs = w.int_field(p, "chunk_slices", pre, 64, MAX_CHUNK_SLICES)
    if cs % 64:
        raise w.error(pre + "chunk_slices", f"must be a multiple of 64, got {cs}")
    count = w.int_field(p, "patches", pre, 0, length)
    k = w.int_field(p, "rice_k", pre, 0, MAX_RICE_K)
    nbits = w.int_field(p, "patch_nbits", pre, 0, 8 * MAX_DIM)
    care = w.int_(p.get("care_bits", -1), pre + "care_bits", -1, length)
    # each Rice code is at least k + 1 bits; the unary parts, worth 2^k each, fit in the length
    if count * (k + 1) > nbits or (count == 0 and nbits) or count + ((nbits - count * (k + 1)) << k) > length:
        raise w.error(pre + "patch_nbits", f"{nbits} bits cannot code {count} patches with rice_k = {k} "
                                           f"in a plane of {length} positions")
    return PlaneSpec(n_in, n_out, n_s, int(seed_s), cs, count, k, nbits, care)


def validate_tensor(path: str, name: str, t: Any, entries: Mapping[str, EntryInfo], version: int) -> TensorSpec:
    """Check one TENSOR description against the header entries that back it."""
    w = Where(path, name)
    t = w.obj(t, "description")
    if version == 1:
        mc = t.get("meta_crc32")
        if type(mc) is not int or mc != meta_crc(t):
            raise w.error(None, "checksum mismatch in its metadata")
    shape_v = w.get(t, "shape", "shape")
    if not isinstance(shape_v, list) or len(shape_v) > MAX_NDIM:
        raise w.error("shape", f"must be a list of at most {MAX_NDIM} integers, got {_show(shape_v)}")
    shape = tuple(w.int_(d, f"shape[{i}]", 0, MAX_POSITIONS) for i, d in enumerate(shape_v))
    length = math.prod(shape)
    if length > MAX_POSITIONS:
        raise w.error("shape", f"{length} weights exceed the limit of 2^48")
    dtype = w.str_field(t, "dtype", "", FLOAT_DTYPES)
    quantizer = w.str_field(t, "quantizer", "", tuple(QUANTIZERS))
    rule = QUANTIZERS[quantizer]
    if version < rule.min_version:
        raise w.error("quantizer", f"{quantizer!r} needs format version {rule.min_version}, file is version {version}")
    allowed = TENSOR_FIELDS + rule.fields + (("meta_crc32",) if version == 1 else ())
    if version >= 2 and quantizer in SCALE_LAYOUT_QUANTIZERS:
        allowed += SCALE_LAYOUT_FIELDS
    for key in SCALE_LAYOUT_FIELDS + rule.fields:
        if key in t and key not in allowed:
            why = "version 1" if version < 2 else f"quantizer {quantizer!r}"
            raise w.error(key, f"not allowed with {why} (FORMAT.md sections 4.1-4.3)")
    w.members(t, allowed, "")
    bits = w.int_field(t, "bits", "", 1, rule.max_bits)
    symmetric = w.bool_field(t, "symmetric", "")
    rows = w.int_field(t, "rows", "", 0, MAX_POSITIONS)
    cols = w.int_field(t, "cols", "", 0, MAX_POSITIONS)
    want = (shape[0], length // shape[0] if shape[0] else 0) if len(shape) >= 2 else (1, length)
    if (rows, cols) != want:
        raise w.error("rows", f"rows x cols = {rows} x {cols} does not match shape {list(shape)} "
                              f"(expected {want[0]} x {want[1]})")
    gsize = w.int_field(t, "group_size", "", 1, max(cols, 1))
    groups = max(1, -(-cols // gsize))
    scale_rows = w.int_field(t, "scale_rows", "", 1, max(rows, 1)) if "scale_rows" in t else 1
    scale_format = w.str_field(t, "scale_format", "", ("log8",)) if "scale_format" in t else "float"
    rule.check(w, t)

    order = w.obj(w.get(t, "order", "order"), "order")
    kind = w.str_field(order, "kind", "order.", tuple(ORDERS))
    w.members(order, ("kind",) + ORDERS[kind].fields, "order")
    step = ORDERS[kind].check(w, order, length)

    mask = w.obj(w.get(t, "mask", "mask"), "mask")
    codec = w.str_field(mask, "codec", "mask.", tuple(MASK_CODECS))
    mrule = MASK_CODECS[codec]
    if version < mrule.min_version:
        raise w.error("mask.codec", f"{codec!r} needs format version {mrule.min_version}, file is version {version}")
    w.members(mask, ("codec", "length") + mrule.fields, "mask")
    mlen = w.int_field(mask, "length", "mask.", 0, MAX_POSITIONS)
    if mlen != length:
        raise w.error("mask.length", f"{mlen} does not match the {length} weights of shape {list(shape)}")
    mrule.check(w, mask, length)

    planes_v = w.get(t, "planes", "planes")
    if not isinstance(planes_v, list):
        raise w.error("planes", f"must be a list, got {_show(planes_v)}")
    if len(planes_v) != bits:
        raise w.error("planes", f"{len(planes_v)} planes for {bits} bits")
    planes = [_plane(w, p, i, length, version) for i, p in enumerate(planes_v)]

    parts = dict(rule.part_specs(t, rows, groups))
    if scale_format == "log8":  # U8 scales and one float32 reference per scale index (4.3)
        sshape = parts["scales"].shape
        parts["scales"] = PartSpec(("U8",), sshape)
        parts["scale_ref"] = PartSpec(("F32",), (sshape[-1],))
    parts.update(mrule.part_specs(mask, length))
    for i, p in enumerate(planes):
        if p.kind == "packed":
            parts[f"plane{i}.stream"] = PartSpec(("U8",), (-(-p.care_bits // 8),))
            continue
        parts[f"plane{i}.stream"] = PartSpec(("U8",), (p.stream_bytes(length),))
        parts[f"plane{i}.patches"] = PartSpec(("U8",), (-(-p.patch_nbits // 8),))

    crc_v = w.obj(w.get(t, "crc32", "crc32"), "crc32")
    w.members(crc_v, parts, "crc32")
    crc = {part: w.int_field(crc_v, part, "crc32.", 0, 0xFFFFFFFF) for part in parts}
    for part, ps in parts.items():
        entry = name + SEP + part
        e = entries.get(entry)
        if e is None:
            raise w.error(None, f"missing entry {_q(entry)}")
        if e.dtype not in ps.dtypes:
            raise w.error(part, f"dtype {e.dtype} where the format has {' or '.join(ps.dtypes)}")
        if ps.shape is None:
            if len(e.shape) != 1:
                raise w.error(part, f"shape {list(e.shape)} where the format has one dimension")
        elif e.shape != ps.shape:
            raise w.error(part, f"shape {list(e.shape)} where the description needs {list(ps.shape)}")
    return TensorSpec(name, t, shape, dtype, quantizer, bits, symmetric, rows, cols, gsize, groups, kind, step,
                      mask, planes, parts, crc, scale_rows, t.get("codebook_rows", 0), scale_format)


# ---------------------------------------------------------------------------------------
# The whole description


@dataclass
class Description:
    """A checked xorsparse document: what XspFile serves."""

    version: int
    doc: dict
    tensors: dict[str, TensorSpec]
    raw: dict[str, int]  # name -> CRC-32
    order: list[str]
    config: dict | None
    entries: dict[str, EntryInfo] = field(repr=False, default_factory=dict)


CONFIG_RULES: dict[str, Callable[[Where, Any, str], None]] = {}


def _cfg(key: str):
    def deco(fn):
        CONFIG_RULES[key] = fn
        return fn
    return deco


def _cfg_int(lo: int, hi: int, nullable: bool = False):
    def check(w: Where, v: Any, fld: str) -> None:
        if v is None and nullable:
            return
        w.int_(v, fld, lo, hi)
    return check


def _cfg_bool(w: Where, v: Any, fld: str) -> None:
    if not isinstance(v, bool):
        raise w.error(fld, f"must be true or false, got {_show(v)}")


def _cfg_str(w: Where, v: Any, fld: str) -> None:
    if not isinstance(v, str):
        raise w.error(fld, f"must be a string, got {_show(v)}")


def _cfg_fraction(w: Where, v: Any, fld: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise w.error(fld, f"must be a number in [0, 1), got {_show(v)}")


CONFIG_RULES.update({
    "sparsity": _cfg_fraction, "bits": _cfg_int(1, 64), "quantizer": _cfg_str, "symmetric": _cfg_bool,
    "group_size": _cfg_int(1, MAX_POSITIONS, nullable=True), "global_sparsity": _cfg_bool,
    "mask_codec": _cfg_str, "max_n_s": _cfg_int(0, MAX_WINDOW - 1, nullable=True),
    "max_window": _cfg_int(1, MAX_WINDOW), "seed": _cfg_int(0, (1 << 64) - 1),
    "bcq_iters": _cfg_int(0, MAX_BCQ_ITERS),
})


def _check_config(w: Where, cfg: Any) -> dict | None:
    """The CompressConfig record (informative: read by verify --against); known keys typed."""
    if cfg is None:
        return None
    cfg = w.obj(cfg, "config")
    for k, v in cfg.items():
        rule = CONFIG_RULES.get(k)
        if rule is not None:
            rule(w, v, f"config.{k}")
    return cfg


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_info(w: Where, info: dict) -> None:
    """The informative `info` members that code acts on: typed, so what reads them may rely on it.

    info.shard = [i, N] (a model folder's shard i of N, FORMAT.md section 7); info.job =
    {"key": K, "input_sha256": H}, two SHA-256 digests in lowercase hex (section 7.4).
    """
    if "shard" in info:
        sh = info["shard"]
        if not isinstance(sh, list) or len(sh) != 2:
            raise w.error("info.shard", f"must be [i, N], got {_show(sh)}")
        i = w.int_(sh[0], "info.shard[0]", 1, MAX_CHUNK_SLICES)
        w.int_(sh[1], "info.shard[1]", i, MAX_CHUNK_SLICES)
    if "job" in info:
        job = w.obj(info["job"], "info.job")
        w.members(job, ("key", "input_sha256"), "info.job")
        for k in ("key", "input_sha256"):
            v = w.str_field(job, k, "info.job.")
            if not _SHA256.fullmatch(v):
                raise w.error(f"info.job.{k}", f"must be 64 lowercase hexadecimal digits, got {_show(v)}")


def _name(w: Where, n: str, what: str) -> str:
    try:
        _utf8(n)
    except _Reject as e:
        raise w.error(what, f"name {_show(n)} {e}") from None
    if not n or n == "__metadata__" or SEP in n:
        raise w.error(what, f"invalid tensor name {_show(n)}")
    return n


def validate_description(metadata: Mapping[str, str], entries: Mapping[str, EntryInfo],
                         path: str) -> Description:
    """The xorsparse document checked against the header, before any data is read."""
    w = Where(path)
    text = metadata.get(META_KEY)
    if text is None:
        raise w.error(None, f"not an xorsparse file (no {META_KEY!r} metadata)")
    doc = load_json(text, "xorsparse metadata", path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise w.error(None, f"not an xorsparse file (format {_show(fmt)})")
    version = doc.get("version")
    if type(version) is not int or version not in READ_VERSIONS:
        raise w.error("version", f"unsupported format version {_show(version)} (this xorsparse reads versions "
                                 f"{', '.join(map(str, READ_VERSIONS))})")
    stored = metadata.get(CHECKSUM_KEY)
    if version >= 2:
        if stored is None:
            raise w.error(None, f"description checksum missing (__metadata__ has no {CHECKSUM_KEY!r})")
        if not re.fullmatch(r"[0-9a-f]{8}", stored):
            raise w.error(CHECKSUM_KEY, f"must be 8 lowercase hexadecimal digits, got {_show(stored)}")
        got = description_crc(metadata, entries)
        if int(stored, 16) != got:
            raise w.error(None, "description checksum mismatch: the JSON description or the safetensors "
                                "header was changed or is corrupt")
    elif stored is not None:
        raise w.error(CHECKSUM_KEY, "present in a version-1 file (a damaged version-2 file?)")

    for key in ("tensors", "raw", "info", "config"):
        w.get(doc, key, key)
    tensors_v = w.obj(doc["tensors"], "tensors")
    raw_v = w.obj(doc["raw"], "raw")
    info = w.obj(doc["info"], "info")
    config = _check_config(w, doc["config"])

    for key, check in RECORD_CHECKS.items():  # calibration / quality (FORMAT.md section 8)
        if key not in doc:
            continue
        if version < 2:
            raise w.error(None, f"metadata field {key}: not part of format version {version}")
        try:
            check(doc[key])
        except RecordError as e:
            raise w.error(None, f"metadata field {e}") from None

    tensors = {}
    for name, t in tensors_v.items():
        _name(w, name, "tensors")
        tensors[name] = validate_tensor(path, name, t, entries, version)
    raw: dict[str, int] = {}
    for name, r in raw_v.items():
        _name(w, name, "raw")
        rw = Where(path, name)
        if name in tensors:
            raise rw.error(None, "described both as compressed and as stored")
        r = rw.obj(r, "raw entry")
        rw.members(r, ("crc32",), "raw entry")
        raw[name] = rw.int_field(r, "crc32", "raw.", 0, 0xFFFFFFFF)
        if name not in entries:
            raise rw.error(None, f"missing entry {_q(name)}")

    described = set(raw)
    for spec in tensors.values():
        described.update(spec.name + SEP + p for p in spec.parts)
    orphans = sorted(n for n in entries if n not in described)
    if orphans:
        raise w.error(None, f"entry {_q(orphans[0])} is not described by the xorsparse metadata")

    names = list(tensors) + list(raw)
    order = names
    if "order" in info:
        ov = info["order"]
        if not isinstance(ov, list) or not all(isinstance(n, str) for n in ov):
            raise w.error("info.order", f"must be a list of names, got {_show(ov)}")
        seen: set[str] = set()
        for n in ov:
            if n in seen:
                raise w.error("info.order", f"names {_q(n)} twice")
            if n not in tensors and n not in raw:
                raise w.error("info.order", f"names {_q(n)}, which the file does not hold")
            seen.add(n)
        missing = [n for n in names if n not in seen]
        if missing:
            raise w.error("info.order", f"does not name tensor {_q(missing[0])}")
        order = list(ov)
    if "pruning" in info and info["pruning"] not in ("per-tensor", "global"):
        raise w.error("info.pruning", f"must be \"per-tensor\" or \"global\", got {_show(info['pruning'])}")
    _check_info(w, info)
    return Description(version, doc, tensors, raw, order, config, dict(entries))


# ---------------------------------------------------------------------------------------
# Data of the parts, once their checksums matched


def check_tensor_data(path: str, spec: TensorSpec, arrays: dict[str, np.ndarray],
                      codes: dict[str, str] | None = None) -> None:
    """Values inside the parts that the decoders index with: before any kernel sees them.

    arrays: every part of the tensor (as numpy arrays, BF16 as uint16 bit patterns);
    codes: their safetensors dtype codes. Each part must have the dtype and shape the
    description fixes (the transformers loader hands parts over from its own reading, so
    this is checked here again, not only against the header), then its values are checked.
    """
    w = Where(path, spec.name)
    codes = codes or {}
    for part, ps in spec.parts.items():
        a = arrays.get(part)
        if a is None:
            raise w.error(None, f"missing part {part!r}")
        code = codes.get(part, ps.dtypes[0])
        if code not in ps.dtypes or a.dtype != np.dtype(ST_NUMPY[code]):
            raise w.error(part, f"dtype {code} where the format has {' or '.join(ps.dtypes)}")
        if (ps.shape is None and a.ndim != 1) or (ps.shape is not None and tuple(a.shape) != ps.shape):
            raise w.error(part, f"shape {list(a.shape)} where the description needs "
                                f"{list(ps.shape) if ps.shape is not None else 'one dimension'}")
    QUANTIZERS[spec.quantizer].check_data(w, spec, arrays, codes)
    MASK_CODECS[spec.mask["codec"]].check_data(w, spec.mask, spec.length, arrays)
    for i, p in enumerate(spec.planes):
        if p.kind == "packed":
            _zero_padding(w, f"plane{i}.stream", arrays[f"plane{i}.stream"], p.care_bits)
            continue
        _zero_padding(w, f"plane{i}.stream", arrays[f"plane{i}.stream"], p.n_slices(spec.length) * p.n_in)
        _zero_padding(w, f"plane{i}.patches", arrays[f"plane{i}.patches"], p.patch_nbits)


def check_patch_list(path: str, spec: TensorSpec, i: int, positions: np.ndarray) -> None:
    """A decoded patch list: strictly increasing, inside the plane, exactly patch_nbits long.

    (validate_tensor bounded every gap below 2^63, so a running sum that wrapped shows
    up here as a decrease.)
    """

    w = Where(path, spec.name)
    p = spec.planes[i]
    if positions.size and (positions[0] < 0 or positions[-1] >= spec.length
                           or np.any(positions[1:] <= positions[:-1])):
        raise w.error(f"plane{i}.patches", f"positions leave the plane of {spec.length} positions")
    used = rice_bits(positions, p.rice_k)
    if used != p.patch_nbits:
        raise w.error(f"plane{i}.patches", f"the list codes in {used} bits, patch_nbits says {p.patch_nbits}")


# ---------------------------------------------------------------------------------------
# Cost


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise ValueError(f"{MAX_TENSOR_BYTES_ENV}={text!r} is not a size (e.g. 17179869184, 512M, 16G)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def max_tensor_bytes() -> int:
    """The decode limit: XORSPARSE_MAX_TENSOR_BYTES if set, else 16 GiB."""
    v = os.environ.get(MAX_TENSOR_BYTES_ENV)
    return DEFAULT_MAX_TENSOR_BYTES if not v else _parse_size(v)


def check_decode_cost(path: str, spec: TensorSpec, limit: int | None = None, reading: bool = False) -> None:
    """Refuse a tensor whose decoding (reading=True: the reading of its parts) needs more
    memory than the limit (XORSPARSE_MAX_TENSOR_BYTES, default 16 GiB)."""
    limit = max_tensor_bytes() if limit is None else limit
    need = spec.read_bytes() if reading else spec.decode_bytes()
    if need > limit:
        raise Where(path, spec.name).error(
            None, f"decoding needs about {need / 2**20:.0f} MiB ({spec.length} weights of {spec.dtype}), above the "
                  f"limit of {limit / 2**20:.0f} MiB (set {MAX_TENSOR_BYTES_ENV} to allow it)")


__all__ = ["XspError", "EntryInfo", "TensorSpec", "PlaneSpec", "PartSpec", "Description", "OrderRule", "QUANTIZERS", "MASK_CODECS", "ORDERS", "CONFIG_RULES", "parse_header",
           "validate_description", "validate_tensor", "check_tensor_data", "check_patch_list",
           "description_crc", "format_crc", "meta_crc", "load_json", "max_tensor_bytes", "check_decode_cost"]
