"""Model folders (docs/FORMAT.md, "Model folders"): where a folder's weights live, which files
are other copies of the weights and which are carried over, transformers' shard names and
index, config.json's `quantization_config`, and finding the .xsp shards of an xorsparse folder.

Compressing and decompressing whole folders (work items on an executor) is one floor up, in
xorsparse.jobs.folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..format import safetensors_io as st
from ..format.container import FORMAT_VERSION, META_KEY
from ..format.output import OutputError, check_output, write_bytes
from ..tensor.pipeline import CompressConfig
from ..version import __version__
from .readers import SAFE_INDEX, TORCH_INDEX, Checkpoint, CheckpointError, index_shards, open_checkpoint

CONFIG = "config.json"

SINGLE = "model.safetensors"

QUANT_METHOD = "xorsparse"

LOAD_MODES = ("decode", "ondemand")


# Files and folders that hold the model's weights in other forms: never carried over, since
# they would put the uncompressed weights back into the folder (and into its size).
WEIGHT_FILE_PREFIXES = ("pytorch_model", "model-0", "tf_model", "flax_model", "rust_model")


WEIGHT_FILE_NAMES = {"model.safetensors", SAFE_INDEX, TORCH_INDEX, "model.pt", "model.pth",
                     "pytorch_model.bin", "rust_model.ot", "tf_model.h5", "flax_model.msgpack"}


WEIGHT_DIRS = {"onnx", "openvino"}

SKIP_DIRS = {".git", ".cache", "__pycache__"}


def shard_name(i: int, n: int) -> str:
    """transformers' names: model.safetensors alone, model-00001-of-00003.safetensors sharded."""
    return SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _is_weight_file(rel: str) -> bool:
    base = os.path.basename(rel)
    if base in WEIGHT_FILE_NAMES or base.endswith(".gguf"):
        return True
    return base.startswith(WEIGHT_FILE_PREFIXES) and base.endswith((".bin", ".safetensors", ".h5", ".msgpack",
                                                                      ".ot", ".json"))


def model_subfolder(src: str) -> str:
    """Where the transformer's weights live: the folder itself, or (older sentence-transformers
    layouts) the path of the Transformer module named in modules.json."""
    def has_weights(d: str) -> bool:
        return os.path.isdir(d) and any(_is_weight_file(f) and os.path.isfile(os.path.join(d, f))
                                        for f in os.listdir(d))

    if has_weights(src):
        return ""
    try:
        with open(os.path.join(src, "modules.json")) as f:
            modules = json.load(f)
        for m in modules:
            if str(m.get("type", "")).endswith("models.Transformer") and m.get("path"):
                sub = os.path.normpath(m["path"])
                if not sub.startswith("..") and not os.path.isabs(sub) and has_weights(os.path.join(src, sub)):
                    return sub
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return ""


@dataclass
class FolderPlan:
    """What a folder becomes: the weights to convert, the files to carry, the files left out."""

    src: str
    sub: str  # folder of the weights, relative to src ("" = src itself)
    checkpoint: Checkpoint
    carried: list[str] = field(default_factory=list)  # relative paths
    skipped: list[str] = field(default_factory=list)  # other forms of the weights, not carried


def plan_folder(src: str, ck: Checkpoint | None = None) -> FolderPlan:
    sub = model_subfolder(src)
    ck = ck or open_checkpoint(os.path.join(src, sub) if sub else src)
    read = {os.path.abspath(f) for f in ck.files}
    carried, skipped = [], []
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        keep_dirs = []
        for d in sorted(dirs):
            if d in SKIP_DIRS:
                continue
            if d in WEIGHT_DIRS:
                skipped.append(os.path.normpath(os.path.join(rel_root, d)) + "/")
                continue
            keep_dirs.append(d)
        dirs[:] = keep_dirs
        for f in sorted(files):
            path = os.path.join(root, f)
            rel = os.path.normpath(os.path.join(rel_root, f))
            if os.path.abspath(path) in read:
                continue
            if os.path.normpath(rel_root) == os.path.normpath(sub or ".") and _is_weight_file(f):
                skipped.append(rel)
                continue
            carried.append(rel)
    return FolderPlan(src, sub, ck, carried, skipped)


def _atomic_write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))  # temporary name, then rename; the usual mode (format/output.py)


def check_folder_output(src: str, out: str, force: bool) -> None:
    """A model folder output: never the input folder, inside it or around it; an existing,
    non-empty folder only with force (its files are then replaced)."""
    if os.path.realpath(out) == os.path.realpath(src) or os.path.realpath(out).startswith(
            os.path.realpath(src).rstrip(os.sep) + os.sep):
        raise OutputError(f"{out}: is the input folder {src} or inside it; refusing to write there")
    empty = os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out)
    check_output(out, [src], force or empty, directory=True)


def read_config(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return cfg


def quantization_config(config: CompressConfig, load_mode: str = "decode",
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `quantization_config` entry of an xorsparse folder's config.json."""
    if load_mode not in LOAD_MODES:
        raise ValueError(f"load mode must be 'decode' or 'ondemand', got {load_mode!r}")
    q = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "xorsparse_version": __version__,
         "load_mode": load_mode, "config": config.to_dict()}
    q.update(extra or {})
    return q


def copy_carried(plan: FolderPlan, out: str, config_text: dict[str, str]) -> tuple[int, int]:
    """Copy the carried files (config files replaced by `config_text`); (input, output) bytes."""
    n_in = n_out = 0
    for rel in plan.carried:
        src = os.path.join(plan.src, rel)
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        n_in += os.path.getsize(src)
        if rel in config_text:
            _atomic_write_text(dst, config_text[rel])
        else:
            shutil.copyfile(src, dst)
        n_out += os.path.getsize(dst)
    return n_in, n_out


def write_index(out_dir: str, shard_files: Sequence[str], metadata: Mapping[str, Any] | None = None) -> str:
    """model.safetensors.index.json over the entries of `shard_files`: written last."""
    weight_map, total = {}, 0
    for path in shard_files:
        with st.Reader(path) as r:
            for name, e in r.entries.items():
                weight_map[name] = os.path.basename(path)
                b, end = e["offsets"]
                total += end - b
    meta = {"total_size": total}
    meta.update(metadata or {})
    path = os.path.join(out_dir, SAFE_INDEX)
    _atomic_write_text(path, json.dumps({"metadata": meta, "weight_map": weight_map}, indent=2) + "\n")
    return path


def weights_dir(path: str) -> str:
    sub = model_subfolder(path)
    return os.path.join(path, sub) if sub else path


def xsp_files(path: str) -> list[str]:
    """The .xsp files of a file or an xorsparse model folder (index order, or model.safetensors)."""
    if not os.path.isdir(path):
        return [path]
    d = weights_dir(path)
    shards = index_shards(d, SAFE_INDEX)
    if shards is not None:
        listed = {os.path.basename(s) for s in shards}
        extra = sorted(f for f in os.listdir(d) if f.endswith(".safetensors") and f not in listed)
        if extra:  # a stray shard is no part of the model; copied along it would pass for a dense file
            raise CheckpointError(f"{os.path.join(d, extra[0])}: a weights file that {SAFE_INDEX} does not list "
                                  "(FORMAT.md 7.1); remove it or add it to the index")
        return shards
    if os.path.exists(os.path.join(d, SINGLE)):
        return [os.path.join(d, SINGLE)]
    raise CheckpointError(f"{path}: no {SINGLE} or {SAFE_INDEX} in this folder")


def may_hold_xsp(files: Sequence[str]) -> bool:
    """Whether some of these weight files are, or may be, .xsp files: one carries xorsparse's
    metadata or is not a readable safetensors file (a truncated shard). False for a folder of
    plain safetensors weights: a plain model folder, not a damaged compressed one."""
    for f in files:
        try:
            with st.Reader(f) as r:
                if META_KEY in r.metadata:
                    return True
        except (st.FormatError, OSError):
            return True
    return False


def is_xsp_folder(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    cfg = read_config(os.path.join(weights_dir(path), CONFIG))
    if cfg is not None and isinstance(cfg.get("quantization_config"), dict):
        return cfg["quantization_config"].get("quant_method") == QUANT_METHOD
    try:
        files = xsp_files(path)
    except CheckpointError:
        return False
    try:
        with st.Reader(files[0]) as r:
            return META_KEY in r.metadata
    except st.FormatError:
        return False


def carried_of_xsp_folder(src: str, files: Sequence[str]) -> list[str]:
    skip = {os.path.abspath(f) for f in files}
    idx = os.path.join(weights_dir(src), SAFE_INDEX)
    skip.add(os.path.abspath(idx))
    out = []
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for f in sorted(names):
            p = os.path.join(root, f)
            if os.path.abspath(p) not in skip and not f.startswith(".tmp-"):
                out.append(os.path.normpath(os.path.relpath(p, src)))
    return out
