""".xsp files: a safetensors file of compressed tensors (and untouched ones), with JSON metadata.

Standard safetensors tools list every entry; the JSON under the metadata key "xorsparse"
says how the entries of each compressed tensor fit together (docs/FORMAT.md, section 2).
Every entry carries a CRC-32 so corruption is reported with the tensor it hit, and (version
2) one more CRC-32 covers the whole description: the JSON and every header entry's name,
dtype, shape and offsets. Everything read goes through format/validate.py first.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..codec.patches import decode_patches
from ..codec.plane import EncodedPlane
from ..tensor.packed import PackedPlane
from ..tensor.pipeline import CompressConfig, CompressedTensor, decompress_tensor
from ..tensor.quant import Quantized
from ..tensor.variants import mask_codec, quantizer
from . import safetensors_io as st
from . import validate
from .output import check_output
from .records import CHECKS
from .torchconv import st_to_torch
from .validate import SEP, XspError, _q, meta_crc  # noqa: F401  (re-exported)

FORMAT_NAME = "xorsparse"
FORMAT_VERSION = 2
READ_VERSIONS = validate.READ_VERSIONS
META_KEY = validate.META_KEY
CHECKSUM_KEY = validate.CHECKSUM_KEY


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


def _scale_part(q: Quantized) -> np.ndarray | st.Entry:
    """Scales as stored: in the dtype their quantizer stores them in (tensor/variants/)."""
    a, code = quantizer(q.quantizer).stored_scales(q)
    return a if code is None else st.Entry("", code, a.shape, a)


def _compressed_entries(name: str, ct: CompressedTensor) -> tuple[list[st.Entry], dict]:
    q = ct.quant
    qv = quantizer(q.quantizer)
    parts: list[tuple[str, np.ndarray | st.Entry]] = [("scales", _scale_part(q))]
    if q.zero_points is not None:
        parts.append(("zero_points", q.zero_points.astype(np.int8)))
    parts += qv.stored_parts(q)
    if q.scale_format == "log8":
        parts.append(("scale_ref", q.scale_ref.astype("<f4")))
    m = ct.mask
    codec = mask_codec(m.codec)
    parts.append(("mask", m.data))
    parts += codec.stored_parts(m)
    mask_meta = {"codec": m.codec, "length": m.length, **codec.describe(m)}
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
        **qv.describe(q),
        **({"scale_format": "log8"} if q.scale_format == "log8" else {}),
        "planes": planes,
        "crc32": {e.name[len(name + SEP):]: _crc(e.payload()) for e in entries},
    }
    return entries, meta


def write_xsp(path: str | os.PathLike, compressed: Mapping[str, CompressedTensor],
              raw: Mapping[str, RawTensor], config: CompressConfig | None = None,
              info: Mapping[str, Any] | None = None, progress: Callable[[str], None] | None = None, *,
              inputs: Iterable[str | os.PathLike] = (), force: bool = True,
              extra: Mapping[str, Any] | None = None) -> int:
    """Write a version-2 file atomically; returns its size in bytes.

    inputs: files the output must not replace; force=False also refuses an existing output
    or a symlink (format/output.py). extra: the optional records `calibration` and `quality`
    (checked as the reader will, docs/FORMAT.md section 8).
    """
    clash = set(compressed) & set(raw)
    if clash:
        raise ValueError(f"tensor {sorted(clash)[0]!r} given both compressed and raw")
    check_records(extra)
    entries: list[st.Entry] = []
    tmeta: dict[str, Any] = {}
    for name in list(compressed) + list(raw):
        if not name or SEP in name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r} (empty, reserved, or contains {SEP!r})")
    for name, ct in compressed.items():
        e, m = _compressed_entries(name, ct)
        entries += e
        tmeta[name] = m
    rmeta: dict[str, Any] = {}
    for name, r in raw.items():
        entries.append(st.Entry(name, r.dtype, tuple(r.shape), r.data))
        # checksums must be in the header, which precedes the data: compute them first
        rmeta[name] = {"crc32": _crc(entries[-1].payload())}
    return _write_described(path, entries, tmeta, rmeta, config, info, progress, inputs, force, extra)


def check_records(extra: Mapping[str, Any] | None) -> None:
    """ValueError unless every record is one the reader knows and accepts (FORMAT.md section 8)."""
    for key, record in (extra or {}).items():
        if key not in CHECKS:
            raise ValueError(f"unknown record {key!r}; expected one of {', '.join(CHECKS)}")
        CHECKS[key](record)


def _write_described(path: str | os.PathLike, entries: list[st.Entry], tmeta: dict[str, Any],
                     rmeta: dict[str, Any], config: CompressConfig | None, info: Mapping[str, Any] | None,
                     progress: Callable[[str], None] | None, inputs: Iterable[str | os.PathLike] = (),
                     force: bool = True, extra: Mapping[str, Any] | None = None) -> int:
    """The one place the description is assembled: write_xsp and XspWriter give equal bytes."""
    check_records(extra)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tensors": tmeta, "raw": rmeta,
            "config": config.to_dict() if config else None, "info": dict(info or {})}
    meta.update({k: v for k, v in (extra or {}).items()})
    # "format": "pt" for loaders that check it (transformers 4.x refuses safetensors files without it)
    metadata = {"format": "pt", META_KEY: json.dumps(meta, separators=(",", ":"))}
    metadata[CHECKSUM_KEY] = validate.format_crc(validate.description_crc(metadata, st.plan(entries)))
    return st.write(path, entries, metadata, progress, inputs=inputs, force=force)


class XspWriter:
    """An .xsp file written tensor by tensor in bounded memory: the same bytes as write_xsp.

    Each tensor's parts go to an unnamed temporary file (the spool) in the output's folder
    as soon as they are added, so memory holds one tensor at a time plus the description;
    `finish` writes header and data (atomically, read back from the spool) in write_xsp's
    order: compressed tensors first, then stored ones, each in the order added. A killed
    process leaves no spool behind (it has no name). inputs and force are write_xsp's; the
    output is checked at once (before any work) and again when it is written.
    """

    def __init__(self, path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), force: bool = True):
        import tempfile


        self.path = os.fspath(path)
        self.inputs, self.force = list(inputs), force
        check_output(self.path, self.inputs, force)
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
        if not name or SEP in name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r} (empty, reserved, or contains {SEP!r})")

    def add_compressed(self, name: str, ct: CompressedTensor) -> None:
        self._check_name(name)
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
                                    config, info, progress, self.inputs, self.force, extra)
        finally:
            self.close()

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> "XspWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compressed_from_parts(spec: validate.TensorSpec, part: Callable[[str], tuple[np.ndarray, str]],
                          path: str) -> CompressedTensor:
    """A CompressedTensor from its checked description and its checksummed parts.

    `part(name)` returns (array, safetensors dtype code) of a part whose CRC-32 matched.
    Shared by XspFile and the transformers loader, which receives the parts from
    transformers' own safetensors reading: both go through the same checks of the parts'
    dtypes, shapes and values (format/validate.py) before anything decodes them.
    """
    where = validate.Where(path, spec.name)
    arrays, codes = {}, {}
    for name in spec.parts:
        try:
            arrays[name], codes[name] = part(name)
        except KeyError:
            raise where.error(None, f"missing part {name!r}") from None
    validate.check_tensor_data(path, spec, arrays, codes)  # dtypes, shapes and values of every part
    n = spec.length
    mk = spec.mask
    mask = mask_codec(mk["codec"]).from_parts(mk, n, arrays)
    planes: list = []
    for i, p in enumerate(spec.planes):
        if p.kind == "packed":  # FORMAT.md 1.8; the mask's kept count is checked when it is decoded
            planes.append(PackedPlane(n, p.care_bits, arrays[f"plane{i}.stream"]))
            continue
        try:
            pos = decode_patches(arrays[f"plane{i}.patches"].tobytes(), p.patches, p.rice_k, p.patch_nbits)
        except ValueError as e:
            raise where.error(f"plane{i}.patches", str(e)) from None
        validate.check_patch_list(path, spec, i, pos)
        planes.append(EncodedPlane(length=n, n_in=p.n_in, n_out=p.n_out, n_s=p.n_s, seed=p.seed,
                                   chunk_slices=p.chunk_slices, stream=arrays[f"plane{i}.stream"],
                                   patches=pos, care_bits=p.care_bits, _rice_k=p.rice_k))
    q = quantizer(spec.quantizer).from_parts(spec, arrays, codes)  # scale row groups, log8 (FORMAT.md 4.1-4.3)
    ct = CompressedTensor(spec.shape, spec.dtype, q, mask, planes, spec.step)
    try:
        ct.validate()  # the validator's guarantees, checked once more where the decoder relies on them
    except ValueError as e:
        raise where.error(None, str(e)) from None
    return ct


class XspFile:
    """Lazy access to an .xsp file: the validated description at open, tensors one at a time.

    Opening checks the whole description (format/validate.py); `compressed` and `raw` check
    each part's CRC-32 and values as they read it; `dense` refuses a tensor whose decoding
    would need more than max_tensor_bytes (default: XORSPARSE_MAX_TENSOR_BYTES or 16 GiB).
    """

    def __init__(self, path: str | os.PathLike, max_tensor_bytes: int | None = None):
        self.path = os.fspath(path)
        self.max_tensor_bytes = max_tensor_bytes
        self._r = st.Reader(self.path)
        try:
            self.desc = validate.validate_description(self._r.metadata, self._r.infos, self.path)
            cfg = self.desc.config
            try:
                self.config = CompressConfig.from_dict(cfg, unknown="ignore") if cfg else None
            except (ValueError, TypeError) as e:
                raise XspError(f"{self.path}: config: {e}") from None
        except BaseException:
            self.close()
            raise
        self.meta = self.desc.doc
        self.version = self.desc.version
        self.tensors: dict[str, dict] = {n: s.meta for n, s in self.desc.tensors.items()}
        self.raw_tensors: dict[str, dict] = self.meta["raw"]
        self.records: dict[str, Any] = {k: self.meta[k] for k in CHECKS if k in self.meta}  # validated

    def names(self) -> list[str]:
        """Every tensor the file holds, in the order of info.order when the file gives one."""
        return list(self.desc.order)

    def _part(self, name: str, part: str) -> tuple[np.ndarray, str]:
        """(array, safetensors dtype) of a part whose CRC-32 matched (shape and dtype as checked)."""
        entry = name + SEP + part
        data = self._r.read_bytes(entry)
        if _crc(data) != self.desc.tensors[name].crc[part]:
            raise XspError(f"{self.path}: tensor {_q(name)}: checksum mismatch in {part}")
        info = self._r.infos[entry]
        return np.frombuffer(data, dtype=st.DTYPES[info.dtype]).reshape(info.shape).copy(), info.dtype

    def compressed(self, name: str) -> CompressedTensor:
        """The tensor's parts, checksummed and checked, as the decoder takes them."""
        spec = self.desc.tensors.get(name)
        if spec is None:
            raise XspError(f"{self.path}: no compressed tensor {_q(name)}")
        # the parts are backed by the file's bytes, the ctx mask's model indices are not: bounded first
        validate.check_decode_cost(self.path, spec, self.max_tensor_bytes, reading=True)
        return compressed_from_parts(spec, lambda part: self._part(name, part), self.path)

    def raw(self, name: str) -> tuple[np.ndarray, str]:
        """(array, safetensors dtype); BF16 arrives as uint16 bit patterns."""
        if name not in self.desc.raw:
            raise XspError(f"{self.path}: no stored tensor {_q(name)}")
        data = self._r.read_bytes(name)
        if _crc(data) != self.desc.raw[name]:
            raise XspError(f"{self.path}: tensor {_q(name)}: checksum mismatch")
        info = self._r.infos[name]
        return np.frombuffer(data, dtype=st.DTYPES[info.dtype]).reshape(info.shape).copy(), info.dtype

    def check_cost(self, name: str) -> None:
        """Refuse (XspError) a tensor whose decoding would need more than the memory limit."""
        validate.check_decode_cost(self.path, self.desc.tensors[name], self.max_tensor_bytes)

    def dense(self, name: str, framework: str | None = None):
        """The tensor as a model uses it: decoded if compressed, as stored otherwise."""
        if name in self.desc.tensors:
            self.check_cost(name)
            ct = self.compressed(name)
            try:
                return decompress_tensor(ct, framework)
            except ValueError as e:
                raise XspError(f"{self.path}: tensor {_q(name)}: {e}") from None
        a, dt = self.raw(name)
        if dt == "BF16" or framework == "torch":
            return st_to_torch(a, dt)
        return a

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> "XspFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
