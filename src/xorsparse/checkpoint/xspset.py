"""One .xsp file, or the shards of an .xsp model folder, read as one set of tensors."""

from __future__ import annotations

import os

import numpy as np

from ..format.container import XspError, XspFile
from ..tensor.pipeline import CompressedTensor
from .folder import xsp_files


class XspSet:
    """One .xsp file, or the shards of an .xsp model folder, read as one set of tensors."""

    def __init__(self, path: str):
        self.path = path
        self.files: list[XspFile] = []
        try:
            for p in xsp_files(path):
                self.files.append(XspFile(p))
            self.where: dict[str, XspFile] = {}
            for f in self.files:
                for n in f.names():
                    if n in self.where:  # two shards with one name: which is meant? refuse
                        raise XspError(f"{f.path}: tensor {n!r} is also in {self.where[n].path}")
                    self.where[n] = f
            if os.path.isdir(path):
                self._check_shards()
        except BaseException:
            self.close()
            raise
        self.tensors = {n: f for n, f in self.where.items() if n in f.tensors}
        self.raw_tensors = {n: f for n, f in self.where.items() if n not in f.tensors}
        first = self.files[0]
        self.config = first.config
        self.meta = first.meta
        self.records = first.records  # calibration, quality (the same in every shard)

    def _check_shards(self) -> None:
        """A folder's shards are all there: each says `"shard": [i, N]`, and i runs over 1..N
        (FORMAT.md 7.1; required of every shard of an indexed folder of several files)."""
        n = len(self.files)
        seen = {}
        for f in self.files:
            sh = f.meta["info"].get("shard")
            if sh is None:
                if n > 1:
                    raise XspError(f"{f.path}: info.shard: missing (every shard of a model folder says which "
                                   "it is, FORMAT.md 7.1)")
                continue
            if (not isinstance(sh, list) or len(sh) != 2 or any(type(v) is not int for v in sh)
                    or not 1 <= sh[0] <= sh[1]):
                raise XspError(f"{f.path}: info.shard: must be [i, N] with 1 <= i <= N, got {sh!r}")
            if sh[1] != n or sh[0] in seen:
                raise XspError(f"{f.path}: info.shard: shard {sh[0]} of {sh[1]}, but the folder's index "
                               f"lists {n} file(s){' and shard ' + str(sh[0]) + ' twice' if sh[0] in seen else ''}")
            seen[sh[0]] = f

    def check_cost(self) -> None:
        """Refuse (XspError) if any compressed tensor would need more memory than allowed."""
        for n, f in self.where.items():
            if n in f.tensors:
                f.check_cost(n)

    def weights(self) -> dict[str, int]:
        """Weights (elements) of every tensor, from the headers: nothing is decoded. Progress
        lines count them."""
        out = {}
        for name, f in self.where.items():
            shape = f.desc.tensors[name].shape if name in f.tensors else f._r.infos[name].shape
            out[name] = int(np.prod(shape, dtype=np.int64))
        return out

    def names(self) -> list[str]:
        order = [n for f in self.files for n in f.meta.get("info", {}).get("order", []) if n in self.where]
        rest = [n for n in self.where if n not in set(order)]
        return list(dict.fromkeys(order + rest))

    def dense(self, name: str, framework: str | None = None):
        return self.where[name].dense(name, framework)

    def compressed(self, name: str) -> CompressedTensor:
        return self.where[name].compressed(name)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "XspSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_xsp(path: str | os.PathLike) -> XspSet:
    """Open an .xsp file or an xorsparse model folder for reading: every tensor by name,
    decoded on demand (`dense`, `compressed`); use it as a context manager."""
    return XspSet(os.fspath(path))
