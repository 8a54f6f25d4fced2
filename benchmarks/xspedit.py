""".xsp files taken apart and put back together, for tests and the fuzz harness.

`XspImage.load` splits a file into its header entries, its __metadata__, the parsed
xorsparse document and each entry's bytes; edit any of them (with values no valid file
holds), then `dumps(resign=True)` recomputes every checksum a careless (or malicious) tool
would: the part and raw CRC-32s, version 1's meta_crc32 and version 2's description
checksum. The reader must then catch the edit by validation alone.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from xorsparse.format import validate

SEP = validate.SEP


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass
class XspImage:
    entries: list[dict]  # {"name", "dtype", "shape"} and optionally "data_offsets" (kept as given)
    metadata: dict[str, Any]
    doc: Any
    blobs: dict[str, bytes]
    header_extra: dict[str, Any] = field(default_factory=dict)  # more top-level header members

    @classmethod
    def loads(cls, blob: bytes) -> "XspImage":
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        metadata = header.pop("__metadata__", None) or {}
        base = 8 + n
        entries, blobs = [], {}
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            b, e = info["data_offsets"]
            entries.append({"name": name, "dtype": info["dtype"], "shape": list(info["shape"])})
            blobs[name] = blob[base + b : base + e]
        doc = json.loads(metadata["xorsparse"]) if "xorsparse" in metadata else None
        return cls(entries, dict(metadata), doc, blobs)

    @classmethod
    def load(cls, path) -> "XspImage":
        with open(path, "rb") as f:
            return cls.loads(f.read())

    def entry(self, name: str) -> dict:
        for e in self.entries:
            if e["name"] == name:
                return e
        raise KeyError(name)

    @property
    def version(self) -> Any:
        return self.doc.get("version") if isinstance(self.doc, dict) else None

    def _header(self) -> dict:
        header: dict[str, Any] = {}
        if self.metadata is not None:
            header["__metadata__"] = self.metadata
        off = 0
        for e in self.entries:
            n = len(self.blobs.get(e["name"], b""))
            header[e["name"]] = {"dtype": e["dtype"], "shape": e["shape"],
                                 "data_offsets": e.get("data_offsets", [off, off + n])}
            off += n
        header.update(self.header_extra)
        return header

    def resign(self) -> None:
        """Recompute every checksum of the description from the current bytes and values."""
        doc = self.doc
        if isinstance(doc, dict):
            tensors = doc.get("tensors")
            if isinstance(tensors, dict):
                for name, t in tensors.items():
                    if not isinstance(t, dict):
                        continue
                    c = t.get("crc32")
                    if isinstance(c, dict):
                        for part in list(c):
                            blob = self.blobs.get(f"{name}{SEP}{part}")
                            if blob is not None:
                                c[part] = crc(blob)
                    if "meta_crc32" in t:
                        try:
                            t["meta_crc32"] = validate.meta_crc(t)
                        except (TypeError, ValueError):
                            pass
            raw = doc.get("raw")
            if isinstance(raw, dict):
                for name, r in raw.items():
                    if isinstance(r, dict) and name in self.blobs:
                        r["crc32"] = crc(self.blobs[name])

    def dumps(self, resign: bool = True, doc_edits=(), header_edit=None) -> bytes:
        """The file's bytes. doc_edits (text -> text) rewrite the serialized document and
        header_edit (header dict -> text) the serialized header, for edits json.dumps cannot
        make (duplicate keys, NaN tokens, deep nesting). With resign, every checksum is
        recomputed over what the document finally says (before header_edit)."""
        if resign:
            self.resign()
        if self.doc is not None and isinstance(self.metadata, dict):
            text = json.dumps(self.doc, separators=(",", ":"))
            for fn in doc_edits:
                text = fn(text)
            self.metadata["xorsparse"] = text
            if resign and self.version != 1:  # version 1 has no description checksum
                try:
                    entries = {k: v for k, v in self._header().items() if k != "__metadata__"}
                    self.metadata[validate.CHECKSUM_KEY] = validate.format_crc(
                        validate.description_crc(self.metadata, entries))
                except Exception:  # hostile values the checksum cannot be computed over
                    pass
        header = self._header()
        text = header_edit(header) if header_edit else json.dumps(header, separators=(",", ":"))
        raw = text.encode("utf-8", "surrogatepass")
        raw += b" " * (-(8 + len(raw)) % 8)
        data = b"".join(self.blobs.get(e["name"], b"") for e in self.entries)
        return struct.pack("<Q", len(raw)) + raw + data

    def save(self, path, **kw) -> None:
        with open(path, "wb") as f:
            f.write(self.dumps(**kw))


__all__ = ["XspImage", "crc"]
