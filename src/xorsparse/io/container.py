""".xsp files: a safetensors file of compressed tensors (and untouched ones), with JSON metadata.

Standard safetensors tools list every entry; the JSON under the metadata key "xorsparse"
says how the entries of each compressed tensor fit together (docs/FORMAT.md, section 2).
Every entry carries a CRC-32 so corruption is reported with the tensor it hit.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from . import safetensors_io as st
from .records import CHECKS, RecordError
from ..codec.plane import EncodedPlane
from ..tensor.maskcode import MaskCode
from ..tensor.packed import PackedPlane
from ..tensor.quant import MAX_BITS, QUANTIZERS, Quantized
from ..tensor.pipeline import CompressConfig, CompressedTensor, decompress_tensor

FORMAT_NAME = "xorsparse"
FORMAT_VERSION = 2  # written; READ_VERSIONS are read (docs/FORMAT.md: what version 2 adds)
READ_VERSIONS = (1, 2)
META_KEY = "xorsparse"
SEP = ".__xs__."  # compressed tensor NAME stores its parts as NAME.__xs__.<part>


class XspError(ValueError):
    """Anything wrong with an .xsp file; the message names the file and the tensor."""


@dataclass(frozen=True)
class RawTensor:
    """A tensor stored as it is (biases, norms, embeddings, anything excluded)."""

    dtype: str  # safetensors code: F32, F16, BF16, ...
    shape: tuple[int, ...]
    data: Any  # bytes, a numpy array, or a callable returning one (read lazily at write time)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "RawTensor":
        e = st.array_entry("_", a)
        return cls(e.dtype, e.shape, e.data)


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def meta_crc(meta: dict) -> int:
    """CRC-32 of a tensor's description: sorted keys, no spaces, without its checksums.

    The data checksums cannot see an edited parameter (a different n_out decodes valid
    data into wrong weights), so the description carries one of its own.
    """
    body = {k: v for k, v in meta.items() if k not in ("crc32", "meta_crc32")}
    return _crc(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _scale_part(q: Quantized) -> np.ndarray | st.Entry:
    """Scales as stored: their own dtype (bcq, uniform), or the affine tensor's scale dtype."""
    if q.quantizer != "affine":
        return q.scales
    s = np.ascontiguousarray(q.scales, dtype=np.float32)
    if q.scale_dtype == "float16":
        return s.astype(np.float16)
    if q.scale_dtype == "bfloat16":  # exact bfloat16 values: the high half of their float32 bits
        return st.Entry("", "BF16", s.shape, (s.view(np.uint32) >> np.uint32(16)).astype(np.uint16))
    return s


def _compressed_entries(name: str, ct: CompressedTensor) -> tuple[list[st.Entry], dict]:
    q = ct.quant
    parts: list[tuple[str, np.ndarray | st.Entry]] = [("scales", _scale_part(q))]
    if q.zero_points is not None:
        parts.append(("zero_points", q.zero_points.astype(np.int8)))
    if q.quantizer == "codebook":
        parts.append(("codebook", q.codebook))
    if q.scale_format == "log8":
        parts.append(("scale_ref", q.scale_ref.astype("<f4")))
    m = ct.mask
    parts.append(("mask", m.data))
    if m.codec == "entropy":
        parts += [("mask_offsets", m.offsets.astype("<u4")), ("mask_params", m.params.astype("<u4"))]
    mask_meta = {"codec": m.codec, "length": m.length, "block": m.block}
    if m.codec == "ctx":
        parts += [("mask_offsets", m.offsets.astype("<u4")), ("mask_model", m.model.data)]
        mask_meta.update(rows=m.model.rows, cols=m.model.cols, base=m.model.base,
                         row_step=m.model.row_step, col_step=m.model.col_step)
    planes = []
    for i, p in enumerate(ct.planes):
        if isinstance(p, PackedPlane):
            parts.append((f"plane{i}.stream", p.stream))
            planes.append({"kind": "packed", "care_bits": p.care_bits})
            continue
        data, k, nbits = p.patch_data()
        parts += [(f"plane{i}.stream", p.stream), (f"plane{i}.patches", np.frombuffer(data, np.uint8))]
        planes.append({"n_in": p.n_in, "n_out": p.n_out, "n_s": p.n_s, "seed": str(p.seed),
                       "chunk_slices": p.chunk_slices, "patches": int(p.patches.size),
                       "rice_k": k, "patch_nbits": nbits, "care_bits": p.care_bits})
    entries = [st.Entry(name + SEP + part, a.dtype, a.shape, a.data) if isinstance(a, st.Entry)
               else st.array_entry(name + SEP + part, a) for part, a in parts]
    meta = {
        "shape": list(ct.shape), "dtype": ct.dtype, "quantizer": q.quantizer, "bits": q.bits,
        "symmetric": q.symmetric, "rows": q.rows, "cols": q.cols, "group_size": q.group_size,
        "order": {"kind": "blocks64", "step": ct.block_step},
        "mask": mask_meta,
        **({"scale_rows": q.scale_rows} if q.scale_rows != 1 else {}),
        **({"codebook_rows": q.codebook_rows} if q.quantizer == "codebook" else {}),
        **({"scale_format": "log8"} if q.scale_format == "log8" else {}),
        "planes": planes,
        "crc32": {e.name[len(name + SEP):]: _crc(e.payload()) for e in entries},
    }
    meta["meta_crc32"] = meta_crc(meta)
    return entries, meta


def write_xsp(path: str | os.PathLike, compressed: Mapping[str, CompressedTensor],
              raw: Mapping[str, RawTensor], config: CompressConfig | None = None,
              info: Mapping[str, Any] | None = None, progress: Callable[[str], None] | None = None,
              extra: Mapping[str, Any] | None = None) -> int:
    """Write atomically; returns the file size in bytes.

    extra: the optional records `calibration` and `quality` (checked as the reader will).
    """
    clash = set(compressed) & set(raw)
    if clash:
        raise ValueError(f"tensor {sorted(clash)[0]!r} given both compressed and raw")
    check_records(extra)
    entries: list[st.Entry] = []
    tmeta: dict[str, Any] = {}
    for name, ct in compressed.items():
        if SEP in name:
            raise ValueError(f"tensor name {name!r} contains the reserved {SEP!r}")
        e, m = _compressed_entries(name, ct)
        entries += e
        tmeta[name] = m
    rmeta: dict[str, Any] = {}
    for name, r in raw.items():
        entries.append(st.Entry(name, r.dtype, tuple(r.shape), r.data))
        # checksums must be in the header, which precedes the data: compute them first
        rmeta[name] = {"crc32": _crc(entries[-1].payload())}
    return _write_described(path, entries, tmeta, rmeta, config, info, progress, extra)


def check_records(extra: Mapping[str, Any] | None) -> None:
    """ValueError unless every record is one the reader knows and accepts (FORMAT.md section 8)."""
    for key, record in (extra or {}).items():
        if key not in CHECKS:
            raise ValueError(f"unknown record {key!r}; expected one of {', '.join(CHECKS)}")
        CHECKS[key](record)


def _write_described(path: str | os.PathLike, entries: list[st.Entry], tmeta: dict[str, Any],
                     rmeta: dict[str, Any], config: CompressConfig | None, info: Mapping[str, Any] | None,
                     progress: Callable[[str], None] | None, extra: Mapping[str, Any] | None = None) -> int:
    """The one place the description is assembled: write_xsp and XspWriter give equal bytes."""
    check_records(extra)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tensors": tmeta, "raw": rmeta,
            "config": config.to_dict() if config else None, "info": dict(info or {})}
    meta.update({k: v for k, v in (extra or {}).items()})
    # "format": "pt" for loaders that check it (transformers 4.x refuses safetensors files without it)
    return st.write(path, entries, {"format": "pt", META_KEY: json.dumps(meta, separators=(",", ":"))}, progress)


class XspWriter:
    """An .xsp file written tensor by tensor in bounded memory: the same bytes as write_xsp.

    Each tensor's parts go to an unnamed temporary file (the spool) in the output's folder
    as soon as they are added, so memory holds one tensor at a time plus the description;
    `finish` writes header and data (atomically, read back from the spool) in write_xsp's
    order: compressed tensors first, then stored ones, each in the order added. A killed
    process leaves no spool behind (it has no name).
    """

    def __init__(self, path: str | os.PathLike):
        import tempfile

        self.path = os.fspath(path)
        self._spool = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(self.path)) or ".")
        self._compressed: list[st.Entry] = []
        self._raw: list[st.Entry] = []
        self._tmeta: dict[str, Any] = {}
        self._rmeta: dict[str, Any] = {}

    def _spooled(self, e: st.Entry) -> tuple[st.Entry, int]:
        """The entry with its data moved to the spool, and the CRC-32 of those bytes."""
        payload = e.payload()
        if len(payload) != e.nbytes():
            raise ValueError(f"entry {e.name!r}: {len(payload)} bytes for {e.nbytes()} expected")
        off = self._spool.seek(0, os.SEEK_END)
        self._spool.write(payload)
        crc = _crc(payload)
        return st.Entry(e.name, e.dtype, e.shape, lambda off=off, n=len(payload): self._read(off, n)), crc

    def _read(self, off: int, n: int) -> bytes:
        self._spool.seek(off)
        data = self._spool.read(n)
        if len(data) != n:
            raise OSError(f"{self.path}: temporary data truncated")
        return data

    def _check_name(self, name: str) -> None:
        if name in self._tmeta or name in self._rmeta:
            raise ValueError(f"tensor {name!r} added twice")

    def add_compressed(self, name: str, ct: CompressedTensor) -> None:
        self._check_name(name)
        if SEP in name:
            raise ValueError(f"tensor name {name!r} contains the reserved {SEP!r}")
        entries, meta = _compressed_entries(name, ct)
        self._compressed += [self._spooled(e)[0] for e in entries]
        self._tmeta[name] = meta

    def add_raw(self, name: str, r: RawTensor) -> None:
        self._check_name(name)
        e, crc = self._spooled(st.Entry(name, r.dtype, tuple(r.shape), r.data))
        self._raw.append(e)
        self._rmeta[name] = {"crc32": crc}

    def finish(self, config: CompressConfig | None = None, info: Mapping[str, Any] | None = None,
               progress: Callable[[str], None] | None = None, extra: Mapping[str, Any] | None = None) -> int:
        """Write the file (atomically); returns its size. The writer is closed afterwards.
        extra: the optional records `calibration` and `quality`, as for write_xsp."""
        try:
            self._spool.flush()
            return _write_described(self.path, self._compressed + self._raw, self._tmeta, self._rmeta,
                                    config, info, progress, extra)
        finally:
            self.close()

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> "XspWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SCALE_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def _scales_from_part(a: np.ndarray, code: str) -> np.ndarray:
    """Stored scales as float32 values (BF16 arrives as its uint16 bit patterns)."""
    if code == "BF16":
        return (a.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return a.astype(np.float32)


def compressed_from_parts(m: Any, part: Callable[[str], tuple[np.ndarray, str]], version: int,
                          where: str) -> CompressedTensor:
    """A CompressedTensor from its JSON description and its parts, validated.

    `part(name)` returns (array, safetensors dtype code) of a checksummed part; `where`
    names file and tensor in errors. Shared by XspFile and the transformers loader, which
    receives the parts from transformers' own safetensors reading.
    """
    if not isinstance(m, dict) or m.get("meta_crc32") != meta_crc(m):
        raise XspError(f"{where}: checksum mismatch in its metadata")
    try:
        quantizer = m["quantizer"]
        if quantizer not in QUANTIZERS:
            raise XspError(f"{where}: field 'quantizer': unknown quantizer {quantizer!r}")
        if quantizer in ("affine", "codebook") and version < 2:
            raise XspError(f"{where}: field 'quantizer': {quantizer!r} needs format version 2, "
                           f"file is version {version}")
        dims = [_int_field(where, "shape", d) for d in m["shape"]]
        if any(d < 0 for d in dims):
            raise XspError(f"{where}: field 'shape': {dims} has a negative size")
        mask = _mask_from_parts(m["mask"], part, version, where, int(np.prod(dims, dtype=object)) if dims else 1)
        planes = []
        for i, p in enumerate(m["planes"]):
            if isinstance(p, dict) and "kind" in p:
                planes.append(_packed_from_parts(p, i, part, version, where, mask.length))
                continue
            planes.append(EncodedPlane.from_patch_data(
                data=part(f"plane{i}.patches")[0].tobytes(), count=int(p["patches"]),
                k=int(p["rice_k"]), nbits=int(p["patch_nbits"]), length=mask.length,
                n_in=int(p["n_in"]), n_out=int(p["n_out"]), n_s=int(p["n_s"]), seed=int(p["seed"]),
                chunk_slices=int(p["chunk_slices"]), stream=part(f"plane{i}.stream")[0],
                care_bits=int(p.get("care_bits", -1))))
        scales, scode = part("scales")
        symmetric = m["symmetric"]
        if quantizer == "affine":
            if type(symmetric) is not bool:
                raise XspError(f"{where}: field 'symmetric' must be true or false, got {symmetric!r}")
            if scode not in _SCALE_DTYPES:
                raise XspError(f"{where}: field 'scales': dtype {scode} (affine scales are F16, BF16 or F32)")
            zero_points = None
            if symmetric and "zero_points" in m.get("crc32", {}):
                raise XspError(f"{where}: field 'zero_points': present for a symmetric tensor")
            if not symmetric:
                zero_points, zcode = part("zero_points")
                if zcode != "I8":
                    raise XspError(f"{where}: field 'zero_points': dtype {zcode}, expected I8")
            q = Quantized("affine", m["bits"], np.zeros((0, 0), np.uint8), _scales_from_part(scales, scode),
                          int(m["rows"]), int(m["cols"]), int(m["group_size"]), True if symmetric else False,
                          zero_points, _SCALE_DTYPES[scode])
        else:
            q = _quantized_from_parts(m, quantizer, scales, scode, part, version, where)
        shape = tuple(dims)
        dtype = str(m["dtype"])
        if m["order"]["kind"] != "blocks64":
            raise XspError(f"{where}: unknown order {m['order']['kind']!r}")
        step = int(m["order"]["step"])
    except (KeyError, TypeError) as e:
        raise XspError(f"{where}: metadata field {e} missing or invalid") from None
    except ValueError as e:
        if isinstance(e, XspError):
            raise
        raise XspError(f"{where}: {e}") from None
    ct = CompressedTensor(shape, dtype, q, mask, planes, step)
    try:
        ct.validate()
    except ValueError as e:
        raise XspError(f"{where}: {e}") from None
    return ct


def _int_field(where: str, field: str, v: Any) -> int:
    """A JSON integer (not a bool, float or string), or an error naming file, tensor and field."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise XspError(f"{where}: field {field} must be an integer, got {v!r}")
    return v


def _packed_from_parts(p: dict, i: int, part, version: int, where: str, length: int) -> PackedPlane:
    """A packed plane (docs/FORMAT.md 1.8, version 2)."""
    if version < 2:
        raise XspError(f"{where}: field planes[{i}].kind in a version 1 file")
    if p["kind"] != "packed":
        raise XspError(f"{where}: unknown plane kind {p['kind']!r}")
    care = _int_field(where, f"planes[{i}].care_bits", p["care_bits"])
    if not 0 <= care <= length:
        raise XspError(f"{where}: field planes[{i}].care_bits {care} outside 0..{length}")
    return PackedPlane(length, care, part(f"plane{i}.stream")[0])


def _quantized_from_parts(m: dict, quantizer: str, scales: np.ndarray, scode: str, part, version: int,
                          where: str) -> Quantized:
    """bcq, uniform and codebook, with the version-2 scale layouts (FORMAT.md 4.1-4.3)."""
    bits = _int_field(where, "bits", m["bits"])
    if not 1 <= bits <= MAX_BITS[quantizer]:
        raise XspError(f"{where}: field bits {bits} outside 1..{MAX_BITS[quantizer]}")
    scale_rows, book, book_rows, ref = 1, None, 0, None
    for key in ("scale_rows", "scale_format", "codebook_rows"):
        if version < 2 and key in m:
            raise XspError(f"{where}: field {key} in a version 1 file")
    if version >= 2:
        scale_rows = _int_field(where, "scale_rows", m.get("scale_rows", 1))
    if quantizer == "codebook":
        book_rows = _int_field(where, "codebook_rows", m["codebook_rows"])
        book, bcode = part("codebook")
        if bcode not in ("F16", "F32"):
            raise XspError(f"{where}: codebook must be F16 or F32, got {bcode}")
    fmt = m.get("scale_format", "float")
    if fmt == "log8":
        ref, rcode = part("scale_ref")
        if scode != "U8" or rcode != "F32" or ref.ndim != 1 or (scales.ndim and ref.shape[0] != scales.shape[-1]) \
                or not np.all(np.isfinite(ref)):
            raise XspError(f"{where}: log8 scales need U8 scales and one finite F32 scale_ref per scale, got "
                           f"{scode} {tuple(scales.shape)} and {rcode} {tuple(ref.shape)}")
    elif fmt != "float":
        raise XspError(f"{where}: unknown scale_format {fmt!r}")
    elif scode not in ("F16", "F32"):
        raise XspError(f"{where}: field 'scales': dtype {scode} ({quantizer} scales are F16 or F32)")
    return Quantized(quantizer, bits, np.zeros((0, 0), np.uint8), scales, int(m["rows"]), int(m["cols"]),
                     int(m["group_size"]), bool(m["symmetric"]), scale_rows=scale_rows, codebook=book,
                     codebook_rows=book_rows, scale_ref=ref)


def _mask_from_parts(mk: dict, part, version: int, where: str, numel: int) -> MaskCode:
    codec = mk["codec"]
    known = ("bitmask", "entropy") if version == 1 else ("bitmask", "entropy", "ctx")
    if codec not in known:
        raise XspError(f"{where}: unknown mask codec {codec!r} in a version {version} file")
    length = _int_field(where, "mask.length", mk["length"])
    if length != numel:  # before anything is sized by it
        raise XspError(f"{where}: field mask.length {length} is not the tensor's {numel} weights")
    block = _int_field(where, "mask.block", mk["block"])
    if codec != "ctx":
        return MaskCode(codec, length, part("mask")[0], block,
                        part("mask_offsets")[0] if codec == "entropy" else None,
                        part("mask_params")[0] if codec == "entropy" else None)
    from ..tensor.maskctx import check_ctx_fields, ctx_model_from_parts

    f = {k: _int_field(where, f"mask.{k}", mk[k]) for k in ("rows", "cols", "base", "row_step", "col_step")}
    check_ctx_fields(length, block, **f)  # before the model's indices are decoded
    model = ctx_model_from_parts(f["rows"], f["cols"], f["base"], f["row_step"], f["col_step"],
                                 part("mask_model")[0])
    return MaskCode("ctx", length, part("mask")[0], block, part("mask_offsets")[0], None, model)


class XspFile:
    """Lazy access to an .xsp file: metadata at open, tensors one at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._r = st.Reader(self.path)
        except st.FormatError as e:
            raise XspError(str(e)) from None
        raw_meta = self._r.metadata.get(META_KEY)
        if raw_meta is None:
            self.close()
            raise XspError(f"{self.path}: not an xorsparse file (no '{META_KEY}' metadata)")
        try:
            meta = json.loads(raw_meta)
        except json.JSONDecodeError:
            self.close()
            raise XspError(f"{self.path}: corrupt xorsparse metadata (not JSON)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            self.close()
            raise XspError(f"{self.path}: not an xorsparse file (format {meta.get('format')!r})")
        version = meta.get("version")
        if type(version) is not int or version not in READ_VERSIONS:
            self.close()
            raise XspError(f"{self.path}: unsupported format version {version!r} "
                           f"(this xorsparse reads versions {', '.join(map(str, READ_VERSIONS))})")
        self.meta = meta
        self.version = version
        self.tensors: dict[str, dict] = meta.get("tensors", {})
        self.raw_tensors: dict[str, dict] = meta.get("raw", {})
        self.records: dict[str, Any] = {}
        for key, check in CHECKS.items():
            if key not in meta:
                continue
            try:
                if version < 2:
                    raise RecordError(f"{key}: not part of format version {version}")
                check(meta[key])
            except RecordError as e:
                self.close()
                raise XspError(f"{self.path}: metadata field {e}") from None
            self.records[key] = meta[key]
        cfg = meta.get("config")
        try:
            if cfg is not None and not isinstance(cfg, dict):
                raise ValueError(f"expected a JSON object, got {type(cfg).__name__}")
            self.config = CompressConfig.from_dict(cfg) if cfg else None
        except (ValueError, TypeError) as e:
            self.close()
            raise XspError(f"{self.path}: metadata field config: {e}") from None
        for name in self.raw_tensors:
            if name not in self._r.entries:
                self.close()
                raise XspError(f"{self.path}: tensor {name!r}: missing entry")

    def names(self) -> list[str]:
        return list(self.tensors) + list(self.raw_tensors)

    def _part(self, name: str, part: str) -> np.ndarray:
        return self._part_with_dtype(name, part)[0]

    def _part_with_dtype(self, name: str, part: str) -> tuple[np.ndarray, str]:
        entry = name + SEP + part
        try:
            data = self._r.read_bytes(entry)
        except st.FormatError:
            raise XspError(f"{self.path}: tensor {name!r}: missing entry {entry!r}") from None
        want = self.tensors[name].get("crc32", {}).get(part)
        if want is None or _crc(data) != want:
            raise XspError(f"{self.path}: tensor {name!r}: checksum mismatch in {part}")
        info = self._r.entries[entry]
        return np.frombuffer(data, dtype=st.DTYPES[info["dtype"]]).reshape(info["shape"]).copy(), info["dtype"]

    def compressed(self, name: str) -> CompressedTensor:
        if name not in self.tensors:
            raise XspError(f"{self.path}: no compressed tensor {name!r}")
        return compressed_from_parts(self.tensors[name], lambda part: self._part_with_dtype(name, part),
                                     self.version, f"{self.path}: tensor {name!r}")

    def raw(self, name: str) -> tuple[np.ndarray, str]:
        """(array, safetensors dtype); BF16 arrives as uint16 bit patterns."""
        if name not in self.raw_tensors:
            raise XspError(f"{self.path}: no stored tensor {name!r}")
        data = self._r.read_bytes(name)
        if _crc(data) != self.raw_tensors[name].get("crc32"):
            raise XspError(f"{self.path}: tensor {name!r}: checksum mismatch")
        info = self._r.entries[name]
        return np.frombuffer(data, dtype=st.DTYPES[info["dtype"]]).reshape(info["shape"]).copy(), info["dtype"]

    def dense(self, name: str, framework: str | None = None):
        """The tensor as a model uses it: decoded if compressed, as stored otherwise."""
        if name in self.tensors:
            ct = self.compressed(name)
            try:
                return decompress_tensor(ct, framework)
            except ValueError as e:
                raise XspError(f"{self.path}: tensor {name!r}: {e}") from None
        a, dt = self.raw(name)
        if dt == "BF16" or framework == "torch":
            from .torchconv import st_to_torch

            return st_to_torch(a, dt)
        return a

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> "XspFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
