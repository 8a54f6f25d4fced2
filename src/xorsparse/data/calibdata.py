"""Calibration data without downloads: the built-in English mix, or the user's file.

The built-in calibration mix (`xorsparse/data/`, sources and licenses in its README.md and
docs/CALIBRATION.md) joins several registers so that a calibrated model carries over to
text nobody here wrote: the project's own sentences (everyday topics, questions, dialogue,
instructions), narrative from the King James Bible, dictionary definitions with usage
examples from WordNet, and code comments and docstrings of the Python standard library.
Every source keeps one line in eight out of calibration: with `heldout_en.txt` they form
the in-domain held-out set. The out-of-domain held-out set (`ood_jargon.txt`, entries of
the Jargon File) comes from a source and a register that calibration never sees, so the
quality report can say what a user should expect on their own text.

A user's `--calibration FILE` is either text (UTF-8, one sample per line) or a tensor file
(.pt / .pth / .bin: a tensor or a dict of tensors; .safetensors: named tensors) whose
dimension 0 indexes samples. One sample in eight is held out of calibration for the
quality report. Empty, binary and too-short files are refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import XorsparseError

MIN_TEXTS = 32  # fewer lines than this cannot calibrate a layer of a few hundred inputs
MIN_SAMPLES = 16  # tensor files: samples along dimension 0
HOLD_OUT_EVERY = 8
SAMPLES = 512  # calibration samples used by default (a seeded subset of longer sets)
TENSOR_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
BUILTIN_CALIBRATION = "calibration_en.txt"
BUILTIN_HELDOUT = "heldout_en.txt"
# the calibration mix: (file, register); one line in HOLD_OUT_EVERY of each is in-domain held-out
BUILTIN_MIX = ((BUILTIN_CALIBRATION, "everyday sentences, questions, dialogue, instructions (project-written)"),
               ("mix_kjv_narrative.txt", "narrative and reported dialogue (King James Bible)"),
               ("mix_wordnet_usage.txt", "definitions and usage examples (WordNet 3.0)"),
               ("mix_python_comments.txt", "code comments and docstrings (Python standard library)"))
BUILTIN_OUT_OF_DOMAIN = "ood_jargon.txt"  # an informal technical lexicon (Jargon File): in no calibration source
MIN_EVAL_TEXTS = 8  # --eval FILE: fewer lines say nothing about a model
MIN_EVAL_CHARS = 16  # per line on average: single words are not text


class CalibrationFileError(XorsparseError):
    """A calibration file that cannot be used; the message names the file."""


@dataclass
class CalibrationSet:
    """Calibration samples and held-out samples (texts, or tensors along dim 0)."""

    kind: str  # "text" or "tensors"
    calibration: Any  # list[str] | dict[str, torch.Tensor]
    held_out: Any
    info: dict = field(default_factory=dict)  # source, file, sha256, samples, held_out, selection
    held_out_info: dict = field(default_factory=dict)
    out_of_domain: Any = None  # texts from sources and registers calibration never saw (or None)
    out_of_domain_info: dict = field(default_factory=dict)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _builtin_bytes(name: str) -> bytes:
    return resources.files("xorsparse.data").joinpath(name).read_bytes()


def _lines(data: bytes) -> list[str]:
    return [ln.strip() for ln in data.decode("utf-8").splitlines() if ln.strip()]


def builtin_texts(split: str = "calibration") -> list[str]:
    """The project-written corpus: split 'calibration' or 'heldout'; 'mix' for every
    calibration line of the built-in mix, 'out-of-domain' for the out-of-domain set."""
    if split == "mix":
        return [t for name, _ in BUILTIN_MIX for t in _lines(_builtin_bytes(name))]
    if split == "out-of-domain":
        return _lines(_builtin_bytes(BUILTIN_OUT_OF_DOMAIN))
    if split not in ("calibration", "heldout"):
        raise ValueError(f"split must be 'calibration', 'heldout', 'mix' or 'out-of-domain', got {split!r}")
    return _lines(_builtin_bytes(BUILTIN_CALIBRATION if split == "calibration" else BUILTIN_HELDOUT))


def out_of_domain_set() -> tuple[list[str], dict]:
    """The built-in out-of-domain held-out texts and their held_out record."""
    data = _builtin_bytes(BUILTIN_OUT_OF_DOMAIN)
    texts = _lines(data)
    return texts, {"source": "builtin", "file": BUILTIN_OUT_OF_DOMAIN, "sha256": _sha256(data), "samples": len(texts),
                   "selection": "all", "domain": "out-of-domain"}


def _subset(items: list, samples: int | None, seed: int) -> tuple[list, str]:
    if samples is None or samples >= len(items):
        return list(items), "all"
    idx = sorted(random.Random(seed).sample(range(len(items)), samples))
    return [items[i] for i in idx], f"{samples} of {len(items)} (seed {seed})"


def builtin_set(samples: int | None = SAMPLES, seed: int = 0) -> CalibrationSet:
    """The built-in mix: a seeded subset of its calibration lines, the in-domain held-out
    lines (heldout_en.txt and one line in eight of every other source) and the
    out-of-domain set. sha256 covers every mix file, in order."""
    digest = hashlib.sha256()
    pool: list[str] = []
    held_texts = _lines(_builtin_bytes(BUILTIN_HELDOUT))
    for name, _register in BUILTIN_MIX:
        data = _builtin_bytes(name)
        digest.update(data)
        lines = _lines(data)
        if name == BUILTIN_CALIBRATION:  # its held-out part is the separate heldout_en.txt
            pool += lines
            continue
        pool += [t for i, t in enumerate(lines) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
        held_texts += [t for i, t in enumerate(lines) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    texts, how = _subset(pool, samples, seed)
    mix = "+".join(name for name, _ in BUILTIN_MIX)
    info = {"source": "builtin", "file": mix, "sha256": digest.hexdigest(), "samples": len(texts),
            "held_out": len(held_texts), "selection": how}
    hinfo = {"source": "builtin", "file": BUILTIN_HELDOUT + f"+1/{HOLD_OUT_EVERY} of the mix",
             "sha256": _sha256("\n".join(held_texts).encode()), "samples": len(held_texts),
             "selection": "all", "domain": "in-domain"}
    ood, oinfo = out_of_domain_set()
    return CalibrationSet("text", texts, held_texts, info, hinfo, ood, oinfo)


def read_eval_file(path: str) -> tuple[list[str], dict]:
    """`--eval FILE`: the user's own held-out text, one sample per line, all of it scored."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise CalibrationFileError(f"{p}: is a folder; expected a UTF-8 text file (one sample per line)")
    if not os.path.exists(p):
        raise CalibrationFileError(f"{p}: no such evaluation file")
    with open(p, "rb") as f:
        data = f.read()
    if not data.strip():
        raise CalibrationFileError(f"{p}: empty evaluation file")
    if b"\x00" in data:
        raise CalibrationFileError(f"{p}: binary data; expected UTF-8 text, one sample per line")
    try:
        lines = _lines(data)
    except UnicodeDecodeError:
        raise CalibrationFileError(f"{p}: not UTF-8 text; expected one sample per line") from None
    if len(lines) < MIN_EVAL_TEXTS or sum(map(len, lines)) < MIN_EVAL_CHARS * len(lines):
        raise CalibrationFileError(f"{p}: too short to evaluate: {len(lines)} non-empty lines of "
                                   f"{sum(map(len, lines)) // max(len(lines), 1)} characters on average (need at "
                                   f"least {MIN_EVAL_TEXTS} lines of {MIN_EVAL_CHARS} characters on average)")
    return lines, {"source": "file", "file": os.path.abspath(p), "sha256": _sha256(data), "samples": len(lines),
                   "selection": "all", "domain": "user"}


def _read_tensors(path: str) -> dict:
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # both loaders raise their own error types for bad files
        raise CalibrationFileError(f"{path}: not a readable tensor file ({type(e).__name__}: {e})") from None
    if isinstance(obj, torch.Tensor):
        obj = {"": obj}
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        obj = {"": torch.cat([t if t.dim() else t[None] for t in obj])} if len({t.shape[1:] for t in obj}) == 1 \
            else None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CalibrationFileError(f"{path}: expected a tensor or a dict of tensors (samples along dimension 0)")
    sizes = {int(v.shape[0]) if v.dim() else 0 for v in obj.values()}
    if len(sizes) != 1:
        raise CalibrationFileError(f"{path}: tensors have different numbers of samples {sorted(sizes)}")
    return obj


def read_calibration_file(path: str, samples: int | None = SAMPLES, seed: int = 0) -> CalibrationSet:
    """A user's calibration file, split into calibration and held-out samples (1 in 8)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise CalibrationFileError(f"{p}: is a folder; expected a text file or a tensor file")
    if not os.path.exists(p):
        raise CalibrationFileError(f"{p}: no such calibration file")
    with open(p, "rb") as f:
        data = f.read()
    digest = _sha256(data)
    base = {"source": "file", "file": os.path.abspath(p), "sha256": digest}
    if not data.strip():
        raise CalibrationFileError(f"{p}: empty calibration file")
    if p.lower().endswith(TENSOR_SUFFIXES):
        tensors = _read_tensors(p)
        n = int(next(iter(tensors.values())).shape[0]) if next(iter(tensors.values())).dim() else 0
        if n < MIN_SAMPLES:
            raise CalibrationFileError(f"{p}: too short for calibration: {n} samples along dimension 0 "
                                       f"(need at least {MIN_SAMPLES})")
        held_idx = [i for i in range(n) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
        cal_idx, how = _subset([i for i in range(n) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1], samples, seed)
        pick = lambda idx: {k: v[idx] for k, v in tensors.items()}  # noqa: E731
        info = dict(base, samples=len(cal_idx), held_out=len(held_idx), selection=how)
        hinfo = dict(base, samples=len(held_idx), selection=f"every {HOLD_OUT_EVERY}th sample")
        return CalibrationSet("tensors", pick(cal_idx), pick(held_idx), info, hinfo)
    if b"\x00" in data:
        raise CalibrationFileError(f"{p}: binary data; expected UTF-8 text (one sample per line) or a tensor file "
                                   f"({', '.join(TENSOR_SUFFIXES)})")
    try:
        lines = _lines(data)
    except UnicodeDecodeError:
        raise CalibrationFileError(f"{p}: not UTF-8 text; expected one sample per line, or a tensor file "
                                   f"({', '.join(TENSOR_SUFFIXES)})") from None
    if len(lines) < MIN_TEXTS:
        raise CalibrationFileError(f"{p}: too short for calibration: {len(lines)} non-empty lines "
                                   f"(need at least {MIN_TEXTS}, one sample per line)")
    held = [t for i, t in enumerate(lines) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    cal, how = _subset([t for i, t in enumerate(lines) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1], samples, seed)
    info = dict(base, samples=len(cal), held_out=len(held), selection=how)
    hinfo = dict(base, samples=len(held), selection=f"every {HOLD_OUT_EVERY}th line", domain="in-domain")
    ood, oinfo = out_of_domain_set()  # English text of a register a user's file rarely holds
    return CalibrationSet("text", cal, held, info, hinfo, ood, oinfo)


__all__ = ["BUILTIN_MIX", "CalibrationFileError", "CalibrationSet", "MIN_EVAL_TEXTS", "MIN_SAMPLES", "MIN_TEXTS",
           "builtin_set", "builtin_texts", "out_of_domain_set", "read_calibration_file", "read_eval_file"]
