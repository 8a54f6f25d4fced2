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
import stat
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from . import validate
from .output import atomic_file

DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}
NUMPY_TO_ST = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
               "float16": "F16", "uint32": "U32", "int32": "I32", "float32": "F32",
               "uint64": "U64", "int64": "I64", "float64": "F64"}
MAX_HEADER = validate.MAX_HEADER

# A file that is not what it claims to be; the message names the file and entry.
FormatError = validate.XspError


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


def plan(entries: Iterable[Entry]) -> dict[str, dict]:
    """The header entries `write` gives these entries: contiguous, in order."""
    header: dict[str, dict] = {}
    off = 0
    for e in entries:
        if e.name in header or e.name == "__metadata__":
            raise ValueError(f"duplicate or reserved entry name {e.name!r}")
        n = e.nbytes()
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [off, off + n]}
        off += n
    return header


def write(path: str | os.PathLike, entries: Iterable[Entry], metadata: dict[str, str] | None = None,
          progress: Callable[[str], None] | None = None, *, inputs: Iterable[str | os.PathLike] = (),
          force: bool = True) -> int:
    """Write atomically (temporary file, then rename; format/output.py); returns the file size.

    inputs: files this output must not replace; force=False refuses an existing output
    or a symlink (the command line's default).
    """
    entries = list(entries)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    body = plan(entries)
    header.update(body)
    off = max((h["data_offsets"][1] for h in body.values()), default=0)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    with atomic_file(path, inputs=inputs, force=force) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            payload = e.payload()
            if len(payload) != e.nbytes():
                raise ValueError(f"entry {e.name!r}: {len(payload)} bytes for {e.nbytes()} expected")
            f.write(payload)
            if progress:
                progress(e.name)
    return 8 + len(raw) + off


class Reader:
    """Lazy reader: the header at open, each entry's bytes only when asked for."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise FormatError(f"{self.path}: cannot open ({e.strerror})") from None
        self._f = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{self.path}: not a regular file")
            size = st.st_size
            head = self._f.read(8)
            if len(head) < 8:
                raise FormatError(f"{self.path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise FormatError(f"{self.path}: truncated or not a safetensors file (header of {n} bytes)")
            raw = self._f.read(n)
            if len(raw) != n:
                raise FormatError(f"{self.path}: truncated while reading the header")
            self.metadata, infos = validate.parse_header(raw, size, self.path)
        except BaseException:
            self.close()
            raise
        self.size = size
        self._base = 8 + n
        self.infos = infos
        self.entries: dict[str, dict] = {k: {"dtype": i.dtype, "shape": i.shape, "offsets": (i.begin, i.end)}
                                         for k, i in infos.items()}

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
