"""What an .xsp file or folder holds: per-tensor statistics and the tensors stored as they are."""

from __future__ import annotations

import os
from typing import Any

from .folder import xsp_files
from .stats import entry_bytes, tensor_stats, totals
from .xspset import XspSet


def inspect_file(src: str) -> dict[str, Any]:
    """Per-tensor statistics of an .xsp file or folder, and the tensors stored as they are."""
    with XspSet(src) as f:
        rows = [tensor_stats(n, f.compressed(n)) for n in f.tensors]
        sizes = {}
        for x in f.files:
            sizes.update(entry_bytes(x.path))
        stored = []
        for n, x in f.raw_tensors.items():
            e = x._r.entries[n]
            stored.append({"name": n, "dtype": e["dtype"], "shape": list(e["shape"]), "bytes": sizes.get(n, 0)})
        files = xsp_files(src)
        out = {"file": src, "files": files, "bytes": sum(os.path.getsize(p) for p in files),
               "tensors": rows, "total": totals(rows),
               "compressed_bytes": sum(sizes.get(n, 0) for n in f.tensors),
               "stored": stored, "stored_tensors": len(stored), "stored_bytes": sum(s["bytes"] for s in stored),
               "config": f.meta.get("config"), "version": f.meta.get("version")}
        out.update(f.records)  # calibration, quality (validated when the file was opened)
    return out
