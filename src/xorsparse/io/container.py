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
from ..codec.plane import EncodedPlane
from ..tensor.maskcode import MaskCode
from ..tensor.packed import PackedPlane
from ..tensor.quant import MAX_BITS, Quantized
from ..tensor.pipeline import CompressConfig, CompressedTensor, decompress_tensor

FORMAT_NAME = "xorsparse"
FORMAT_VERSION = 2
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


def _compressed_entries(name: str, ct: CompressedTensor) -> tuple[list[st.Entry], dict]:
    q = ct.quant
    parts: list[tuple[str, np.ndarray]] = [("scales", q.scales)]
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
    entries = [st.array_entry(name + SEP + part, a) for part, a in parts]
    meta = {
        "shape": list(ct.shape), "dtype": ct.dtype, "quantizer": q.quantizer, "bits": q.bits,
        "symmetric": q.symmetric, "rows": q.rows, "cols": q.cols, "group_size": q.group_size,
        "order": {"kind": "blocks64", "step": ct.block_step},
        "mask": mask_meta,
        **({"scale_rows": q.scale_rows} if q.scale_rows != 1 else {}),
        **({"codebook_rows": q.codebook_rows} if q.quantizer == "codebook" else {}),
        **({"scale_format": "log8"} if q.scale_format == "log8" else {}),
        "planes": planes,
        "crc32": {part: _crc(memoryview(np.ascontiguousarray(a)).cast("B")) for part, a in parts},
    }
    meta["meta_crc32"] = meta_crc(meta)
    return entries, meta


def write_xsp(path: str | os.PathLike, compressed: Mapping[str, CompressedTensor],
              raw: Mapping[str, RawTensor], config: CompressConfig | None = None,
              info: Mapping[str, Any] | None = None, progress: Callable[[str], None] | None = None) -> int:
    """Write atomically; returns the file size in bytes."""
    clash = set(compressed) & set(raw)
    if clash:
        raise ValueError(f"tensor {sorted(clash)[0]!r} given both compressed and raw")
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
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tensors": tmeta, "raw": rmeta,
            "config": config.to_dict() if config else None, "info": dict(info or {})}

    if raw:
        # checksums must be in the header, which precedes the data: compute them first
        for name, r in raw.items():
            data = st.Entry(name, r.dtype, tuple(r.shape), r.data).payload()
            rmeta[name] = {"crc32": _crc(data)}
    return st.write(path, entries, {META_KEY: json.dumps(meta, separators=(",", ":"))}, progress)


def _int_field(path: str, name: str, field: str, v: Any) -> int:
    """A JSON integer (not a bool, float or string), or an error naming file, tensor and field."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise XspError(f"{path}: tensor {name!r}: field {field} must be an integer, got {v!r}")
    return v


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
        if isinstance(version, bool) or not isinstance(version, int) or version not in READ_VERSIONS:
            self.close()
            raise XspError(f"{self.path}: unsupported format version {version!r} "
                           f"(this xorsparse reads versions {', '.join(map(str, READ_VERSIONS))})")
        self.version = int(version)
        self.meta = meta
        self.tensors: dict[str, dict] = meta.get("tensors", {})
        self.raw_tensors: dict[str, dict] = meta.get("raw", {})
        cfg = meta.get("config")
        self.config = CompressConfig.from_dict(cfg) if cfg else None
        for name in self.raw_tensors:
            if name not in self._r.entries:
                self.close()
                raise XspError(f"{self.path}: tensor {name!r}: missing entry")

    def names(self) -> list[str]:
        return list(self.tensors) + list(self.raw_tensors)

    def _part(self, name: str, part: str) -> np.ndarray:
        entry = name + SEP + part
        try:
            data = self._r.read_bytes(entry)
        except st.FormatError:
            raise XspError(f"{self.path}: tensor {name!r}: missing entry {entry!r}") from None
        want = self.tensors[name].get("crc32", {}).get(part)
        if want is None or _crc(data) != want:
            raise XspError(f"{self.path}: tensor {name!r}: checksum mismatch in {part}")
        info = self._r.entries[entry]
        return np.frombuffer(data, dtype=st.DTYPES[info["dtype"]]).reshape(info["shape"]).copy()

    def compressed(self, name: str) -> CompressedTensor:
        if name not in self.tensors:
            raise XspError(f"{self.path}: no compressed tensor {name!r}")
        m = self.tensors[name]
        if not isinstance(m, dict) or m.get("meta_crc32") != meta_crc(m):
            raise XspError(f"{self.path}: tensor {name!r}: checksum mismatch in its metadata")
        try:
            dims = [_int_field(self.path, name, "shape", d) for d in m["shape"]]
            if any(d < 0 for d in dims):
                raise XspError(f"{self.path}: tensor {name!r}: field shape {dims} has a negative size")
            mask = self._mask(name, m["mask"], int(np.prod(dims, dtype=object)) if dims else 1)
            planes = []
            v2 = self.version >= 2
            for i, p in enumerate(m["planes"]):
                if not v2 and isinstance(p, dict) and "kind" in p:
                    raise XspError(f"{self.path}: tensor {name!r}: field planes[{i}].kind in a version 1 file")
                if v2 and isinstance(p, dict) and "kind" in p:
                    if p["kind"] != "packed":
                        raise XspError(f"{self.path}: tensor {name!r}: unknown plane kind {p['kind']!r}")
                    care = _int_field(self.path, name, f"planes[{i}].care_bits", p["care_bits"])
                    if not 0 <= care <= mask.length:
                        raise XspError(f"{self.path}: tensor {name!r}: field planes[{i}].care_bits {care} "
                                       f"outside 0..{mask.length}")
                    planes.append(PackedPlane(mask.length, care, self._part(name, f"plane{i}.stream")))
                    continue
                planes.append(EncodedPlane.from_patch_data(
                    data=self._part(name, f"plane{i}.patches").tobytes(), count=int(p["patches"]),
                    k=int(p["rice_k"]), nbits=int(p["patch_nbits"]), length=mask.length,
                    n_in=int(p["n_in"]), n_out=int(p["n_out"]), n_s=int(p["n_s"]), seed=int(p["seed"]),
                    chunk_slices=int(p["chunk_slices"]), stream=self._part(name, f"plane{i}.stream"),
                    care_bits=int(p.get("care_bits", -1))))
            q = self._quantized(name, m)
            shape = tuple(int(s) for s in m["shape"])
            dtype = str(m["dtype"])
            if m["order"]["kind"] != "blocks64":
                raise XspError(f"{self.path}: tensor {name!r}: unknown order {m['order']['kind']!r}")
            step = int(m["order"]["step"])
        except (KeyError, TypeError) as e:
            raise XspError(f"{self.path}: tensor {name!r}: metadata field {e} missing or invalid") from None
        except ValueError as e:
            if isinstance(e, XspError):
                raise
            raise XspError(f"{self.path}: tensor {name!r}: {e}") from None
        ct = CompressedTensor(shape, dtype, q, mask, planes, step)
        try:
            ct.validate()
        except ValueError as e:
            raise XspError(f"{self.path}: tensor {name!r}: {e}") from None
        return ct

    def _quantized(self, name: str, m: dict) -> Quantized:
        quantizer = m["quantizer"]
        known = ("bcq", "uniform") if self.version == 1 else ("bcq", "uniform", "codebook")
        if quantizer not in known:
            raise XspError(f"{self.path}: tensor {name!r}: unknown quantizer {quantizer!r} "
                           f"in a version {self.version} file")
        bits = _int_field(self.path, name, "bits", m["bits"])
        if not 1 <= bits <= MAX_BITS[quantizer]:
            raise XspError(f"{self.path}: tensor {name!r}: field bits {bits} outside 1..{MAX_BITS[quantizer]}")
        scale_rows, book_rows, book = 1, 0, None
        if self.version >= 2:
            scale_rows = _int_field(self.path, name, "scale_rows", m.get("scale_rows", 1))
        elif "scale_rows" in m:
            raise XspError(f"{self.path}: tensor {name!r}: field scale_rows in a version 1 file")
        if quantizer == "codebook":
            book_rows = _int_field(self.path, name, "codebook_rows", m["codebook_rows"])
            book = self._part(name, "codebook")
            if book.dtype not in (np.float16, np.float32):
                raise XspError(f"{self.path}: tensor {name!r}: codebook must be F16 or F32, got {book.dtype}")
        scales = self._part(name, "scales")
        fmt = m.get("scale_format", "float") if self.version >= 2 else "float"
        if self.version == 1 and "scale_format" in m:
            raise XspError(f"{self.path}: tensor {name!r}: field scale_format in a version 1 file")
        ref = None
        if fmt == "log8":
            ref = self._part(name, "scale_ref")
            if scales.dtype != np.uint8 or ref.dtype != np.float32 or ref.ndim != 1 or \
                    (scales.ndim and ref.shape[0] != scales.shape[-1]) or not np.all(np.isfinite(ref)):
                raise XspError(f"{self.path}: tensor {name!r}: log8 scales need U8 scales and one finite F32 "
                               f"scale_ref per scale, got {scales.dtype} {tuple(scales.shape)} and "
                               f"{ref.dtype} {tuple(ref.shape)}")
        elif fmt != "float":
            raise XspError(f"{self.path}: tensor {name!r}: unknown scale_format {fmt!r}")
        elif scales.dtype not in (np.float16, np.float32):
            raise XspError(f"{self.path}: tensor {name!r}: scales must be F16 or F32, got {scales.dtype}")
        return Quantized(quantizer, bits, np.zeros((0, 0), np.uint8), scales,
                         int(m["rows"]), int(m["cols"]), int(m["group_size"]), bool(m["symmetric"]),
                         scale_rows, book, book_rows, ref)

    def _mask(self, name: str, mk: dict, numel: int) -> MaskCode:
        codec = mk["codec"]
        known = ("bitmask", "entropy") if self.version == 1 else ("bitmask", "entropy", "ctx")
        if codec not in known:
            raise XspError(f"{self.path}: tensor {name!r}: unknown mask codec {codec!r} "
                           f"in a version {self.version} file")
        length = _int_field(self.path, name, "mask.length", mk["length"])
        if length != numel:  # before anything is sized by it
            raise XspError(f"{self.path}: tensor {name!r}: field mask.length {length} is not the "
                           f"tensor's {numel} weights")
        block = _int_field(self.path, name, "mask.block", mk["block"])
        if codec != "ctx":
            return MaskCode(codec, length, self._part(name, "mask"), block,
                            self._part(name, "mask_offsets") if codec == "entropy" else None,
                            self._part(name, "mask_params") if codec == "entropy" else None)
        from ..tensor.maskctx import check_ctx_fields, ctx_model_from_parts

        f = {k: _int_field(self.path, name, f"mask.{k}", mk[k])
             for k in ("rows", "cols", "base", "row_step", "col_step")}
        check_ctx_fields(length, block, **f)  # before the model's indices are decoded
        model = ctx_model_from_parts(f["rows"], f["cols"], f["base"], f["row_step"], f["col_step"],
                                     self._part(name, "mask_model"))
        return MaskCode("ctx", length, self._part(name, "mask"), block, self._part(name, "mask_offsets"),
                        None, model)

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
