"""Streaming safetensors reading and writing on raw bytes.

The safetensors package loads numpy arrays but numpy has no bfloat16, and its writers
need every tensor in memory at once. The format is small (an 8-byte header length, a JSON
header, one contiguous data buffer), so this module reads and writes it directly: entries
are read one at a time on request, written one at a time into a temporary file that is
renamed into place at the end. Files written here open with the safetensors package and
the tests check that.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}
NUMPY_TO_ST = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
               "float16": "F16", "uint32": "U32", "int32": "I32", "float32": "F32",
               "uint64": "U64", "int64": "I64", "float64": "F64"}
MAX_HEADER = 100 * 1024 * 1024


class FormatError(ValueError):
    """A file that is not what it claims to be; the message names the file and entry."""


@dataclass(frozen=True)
class Entry:
    """One tensor to write: `data` is bytes, an array, or a callable producing either."""

    name: str
    dtype: str  # safetensors dtype code, e.g. "F32", "BF16", "U8"
    shape: tuple[int, ...]
    data: object

    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize

    def payload(self) -> bytes | memoryview:
        d = self.data() if callable(self.data) else self.data
        if isinstance(d, np.ndarray):
            return memoryview(np.asarray(d, order="C").reshape(-1)).cast("B")
        return d


def array_entry(name: str, a: np.ndarray) -> Entry:
    a = np.asarray(a, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
    code = NUMPY_TO_ST.get(a.dtype.name)
    if code is None:
        raise TypeError(f"entry {name!r}: dtype {a.dtype} has no safetensors code")
    return Entry(name, code, tuple(int(s) for s in a.shape), a.astype(DTYPES[code], copy=False))


def write(path: str | os.PathLike, entries: Iterable[Entry], metadata: dict[str, str] | None = None,
          progress: Callable[[str], None] | None = None) -> int:
    """Write atomically (temporary file, then rename); returns the file size."""
    entries = list(entries)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    seen = set()
    for e in entries:
        if e.name in seen or e.name == "__metadata__":
            raise ValueError(f"duplicate or reserved entry name {e.name!r}")
        seen.add(e.name)
        n = e.nbytes()
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for e in entries:
                payload = e.payload()
                if len(payload) != e.nbytes():
                    raise ValueError(f"entry {e.name!r}: {len(payload)} bytes for {e.nbytes()} expected")
                f.write(payload)
                if progress:
                    progress(e.name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 8 + len(raw) + off


class Reader:
    """Lazy reader: the header at open, each entry's bytes only when asked for."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot open ({e.strerror})") from None
        size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(8)
        if len(head) < 8:
            self.close()
            raise FormatError(f"{self.path}: truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            self.close()
            raise FormatError(f"{self.path}: truncated or not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(self._f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.close()
            raise FormatError(f"{self.path}: corrupt safetensors header (not JSON)") from None
        if not isinstance(header, dict):
            self.close()
            raise FormatError(f"{self.path}: corrupt safetensors header")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self.entries: dict[str, dict] = {}
        for name, info in header.items():
            try:
                dt, shape, (b, e) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
                ok = dt in DTYPES and e - b == int(np.prod(shape, dtype=np.int64)) * DTYPES[dt].itemsize
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                self.close()
                raise FormatError(f"{self.path}: tensor {name!r}: invalid header entry")
            if self._base + e > size:
                self.close()
                raise FormatError(f"{self.path}: truncated: tensor {name!r} ends at byte "
                                  f"{self._base + e}, file has {size}")
            self.entries[name] = {"dtype": dt, "shape": shape, "offsets": (b, e)}

    def read_bytes(self, name: str) -> bytes:
        if name not in self.entries:
            raise FormatError(f"{self.path}: missing entry {name!r}")
        b, e = self.entries[name]["offsets"]
        self._f.seek(self._base + b)
        data = self._f.read(e - b)
        if len(data) != e - b:
            raise FormatError(f"{self.path}: truncated while reading tensor {name!r}")
        return data

    def read(self, name: str) -> np.ndarray:
        """The entry as a numpy array (BF16 comes back as its raw uint16 bit patterns)."""
        info = self.entries.get(name)
        if info is None:
            raise FormatError(f"{self.path}: missing entry {name!r}")
        a = np.frombuffer(self.read_bytes(name), dtype=DTYPES[info["dtype"]])
        return a.reshape(info["shape"]).copy()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
