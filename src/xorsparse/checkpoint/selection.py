"""Which tensors of a checkpoint are compressed: weight matrices and embedding tables by
default, narrowed or widened by --include / --exclude / --force-include, and for every
other tensor the reason it is stored as it is."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..format.torchconv import torch_dtype_name
from ..tensor.pipeline import FLOAT_DTYPES
from .readers import Checkpoint

NORM_WORDS = ("norm", "ln_", ".ln")

EMBEDDING_WORDS = ("embed", "wte", "wpe")


def is_embedding(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in EMBEDDING_WORDS)


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


@dataclass
class Selection:
    """The tensors to compress, and for every other tensor why it stays as it is."""

    compressed: list[str]
    kept: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        emb = sum(is_embedding(n) for n in self.compressed)
        w = len(self.compressed) - emb
        parts = [f"{w} weight tensor{'s' * (w != 1)}"] + ([f"{emb} embedding table{'s' * (emb != 1)}"] if emb else [])
        reasons: dict[str, int] = {}
        for r in self.kept.values():
            reasons[r] = reasons.get(r, 0) + 1
        text = f"selected {' and '.join(parts)} of {len(self.compressed) + len(self.kept)} tensors"
        if reasons:
            text += "; stored as they are: " + ", ".join(f"{k} {v}" for v, k in
                                                         sorted(((v, k) for k, v in reasons.items()), reverse=True))
        return text


def select_tensors(ck: Checkpoint, include: Sequence[str] = (), exclude: Sequence[str] = (),
                   force_include: Sequence[str] = (), embeddings: bool = True,
                   default: Iterable[str] | None = None) -> Selection:
    """Weight matrices only: floating-point tensors of two or more dimensions that are not
    norms. `include` narrows that set and never widens it; only `force_include` can name
    1-D tensors, norms and biases. `default` replaces the default choice (without include)."""
    default_set = None if default is None else set(default)
    chosen, kept = [], {}
    for name in ck.names:
        dtype, shape = ck.info(name)
        if dtype not in FLOAT_DTYPES:
            kept[name] = "not floating point"
            continue
        if _matches(name, force_include):
            chosen.append(name)
            continue
        if _matches(name, exclude):
            kept[name] = "matched --exclude"
            continue
        low = name.lower()
        if len(shape) < 2:
            kept[name] = "1-D (biases, norms, vectors)"
        elif any(w in low for w in NORM_WORDS):
            kept[name] = "norm weights"
        elif include:
            if _matches(name, include):
                chosen.append(name)
            else:
                kept[name] = "not matched by --include"
        elif default_set is not None:
            if name in default_set:
                chosen.append(name)
            else:
                kept[name] = "not compressed-tensors quantized"
        elif not embeddings and is_embedding(name):
            kept[name] = "embeddings (--no-embeddings)"
        else:
            chosen.append(name)
    return Selection(chosen, kept)


def default_selected(name: str, t) -> bool:
    """The default rule for one tensor: floating-point, two or more dimensions, not a norm."""
    low = name.lower()
    return t.dim() >= 2 and torch_dtype_name(t) in FLOAT_DTYPES and not any(w in low for w in NORM_WORDS)


def is_selected(name: str, t, include: Sequence[str] = (), exclude: Sequence[str] = (),
                force_include: Sequence[str] = ()) -> bool:
    if torch_dtype_name(t) not in FLOAT_DTYPES:
        return False
    if _matches(name, force_include):
        return True
    if _matches(name, exclude) or not default_selected(name, t):
        return False
    return not include or _matches(name, include)
