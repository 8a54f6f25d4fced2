""".xsp files: a safetensors file of compressed tensors (and untouched ones), with JSON metadata.

Standard safetensors tools list every entry; the JSON under the metadata key "xorsparse"
says how the entries of each compressed tensor fit together (docs/FORMAT.md, section 2).
Every entry carries a CRC-32 so corruption is reported with the tensor it hit, and (version
2) one more CRC-32 covers the whole description: the JSON and every header entry's name,
dtype, shape and offsets. Everything read goes through io/validate.py first.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import safetensors_io as st
from . import validate
from .validate import SEP, XspError, _q, meta_crc  # noqa: F401  (re-exported)
from ..codec.patches import decode_patches
from ..codec.plane import EncodedPlane
from ..tensor.maskcode import MaskCode
from ..tensor.quant import Quantized
from ..tensor.pipeline import CompressConfig, CompressedTensor, decompress_tensor

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


def _compressed_entries(name: str, ct: CompressedTensor) -> tuple[list[st.Entry], dict]:
    q = ct.quant
    parts: list[tuple[str, np.ndarray]] = [("scales", q.scales)]
    m = ct.mask
    parts.append(("mask", m.data))
    if m.codec == "entropy":
        parts += [("mask_offsets", m.offsets.astype("<u4")), ("mask_params", m.params.astype("<u4"))]
    planes = []
    for i, p in enumerate(ct.planes):
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
        "mask": {"codec": m.codec, "length": m.length, "block": m.block},
        "planes": planes,
        "crc32": {part: _crc(memoryview(np.ascontiguousarray(a)).cast("B")) for part, a in parts},
    }
    return entries, meta


def write_xsp(path: str | os.PathLike, compressed: Mapping[str, CompressedTensor],
              raw: Mapping[str, RawTensor], config: CompressConfig | None = None,
              info: Mapping[str, Any] | None = None, progress: Callable[[str], None] | None = None, *,
              inputs: Iterable[str | os.PathLike] = (), force: bool = True) -> int:
    """Write a version-2 file atomically; returns its size in bytes.

    inputs: files the output must not replace; force=False also refuses an existing output
    or a symlink (io/output.py).
    """
    clash = set(compressed) & set(raw)
    if clash:
        raise ValueError(f"tensor {sorted(clash)[0]!r} given both compressed and raw")
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
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tensors": tmeta, "raw": rmeta,
            "config": config.to_dict() if config else None, "info": dict(info or {})}

    # checksums must be in the header, which precedes the data: compute them first
    for name, r in raw.items():
        data = st.Entry(name, r.dtype, tuple(r.shape), r.data).payload()
        rmeta[name] = {"crc32": _crc(data)}
    metadata = {META_KEY: json.dumps(meta, separators=(",", ":"))}
    metadata[CHECKSUM_KEY] = validate.format_crc(validate.description_crc(metadata, st.plan(entries)))
    return st.write(path, entries, metadata, progress, inputs=inputs, force=force)


class XspFile:
    """Lazy access to an .xsp file: the validated description at open, tensors one at a time.

    Opening checks the whole description (io/validate.py); `compressed` and `raw` check
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
                self.config = CompressConfig.from_dict(cfg) if cfg else None
            except (ValueError, TypeError) as e:
                raise XspError(f"{self.path}: config: {e}") from None
        except BaseException:
            self.close()
            raise
        self.meta = self.desc.doc
        self.version = self.desc.version
        self.tensors: dict[str, dict] = {n: s.meta for n, s in self.desc.tensors.items()}
        self.raw_tensors: dict[str, dict] = self.meta["raw"]

    def names(self) -> list[str]:
        """Every tensor the file holds, in the order of info.order when the file gives one."""
        return list(self.desc.order)

    def _part(self, name: str, part: str) -> np.ndarray:
        entry = name + SEP + part
        data = self._r.read_bytes(entry)
        if _crc(data) != self.desc.tensors[name].crc[part]:
            raise XspError(f"{self.path}: tensor {_q(name)}: checksum mismatch in {part}")
        info = self._r.infos[entry]
        return np.frombuffer(data, dtype=st.DTYPES[info.dtype]).reshape(info.shape).copy()

    def compressed(self, name: str) -> CompressedTensor:
        """The tensor's parts, checksummed and checked, as the decoder takes them."""
        spec = self.desc.tensors.get(name)
        if spec is None:
            raise XspError(f"{self.path}: no compressed tensor {_q(name)}")
        arrays = {part: self._part(name, part) for part in spec.parts}
        validate.check_tensor_data(self.path, spec, arrays)
        n = spec.length
        mk = spec.mask
        mask = MaskCode(mk["codec"], n, arrays["mask"], mk.get("block", 0),
                        arrays.get("mask_offsets"), arrays.get("mask_params"))
        planes = []
        for i, p in enumerate(spec.planes):
            try:
                pos = decode_patches(arrays[f"plane{i}.patches"].tobytes(), p.patches, p.rice_k, p.patch_nbits)
            except ValueError as e:
                raise XspError(f"{self.path}: tensor {_q(name)}: plane{i}.patches: {e}") from None
            validate.check_patch_list(self.path, spec, i, pos)
            planes.append(EncodedPlane(length=n, n_in=p.n_in, n_out=p.n_out, n_s=p.n_s, seed=p.seed,
                                       chunk_slices=p.chunk_slices, stream=arrays[f"plane{i}.stream"],
                                       patches=pos, care_bits=p.care_bits, _rice_k=p.rice_k))
        q = Quantized(spec.quantizer, spec.bits, np.zeros((0, 0), np.uint8), arrays["scales"], spec.rows,
                      spec.cols, spec.group_size, spec.symmetric)
        ct = CompressedTensor(spec.shape, spec.dtype, q, mask, planes, spec.step)
        try:
            ct.validate()  # the validator's guarantees, checked once more where the decoder relies on them
        except ValueError as e:
            raise XspError(f"{self.path}: tensor {_q(name)}: {e}") from None
        return ct

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
            from .torchconv import st_to_torch

            return st_to_torch(a, dt)
        return a

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> "XspFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
