"""The same bytes from two source trees: every file the command line writes, for a set of
commands covering every option, compared byte for byte (a refactoring must not change one).

    python -m benchmarks.same_bytes OLD_SRC NEW_SRC [--work DIR] [--only NAME ...]

OLD_SRC and NEW_SRC are `src` folders (e.g. a `git worktree` of the commit before the change,
and this checkout's `src`). The inputs are made once, in this process (a safetensors state
dict of every dtype and shape class, the same as a .pt file, a small transformers model folder
in one and in three shards, a compressed-tensors folder); each command then runs once with
each tree on its PYTHONPATH, and every file written, plus the printed output of `inspect
--json` and `verify`, is compared. Calibrated methods are left out: their records carry
timings. Prints one line per command and exits non-zero if any output differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from ._report import subprocess_env

# (name, arguments; {in} = the inputs folder, {out} = this command's output folder, {prev:NAME}
# = the output folder of an earlier command of the same tree)
FILE = "{in}/state.safetensors"
CASES: list[tuple[str, list[str]]] = [
    ("default", ["compress", FILE, "{out}/x.xsp"]),
    ("pt-input", ["compress", "{in}/state.pt", "{out}/x.xsp"]),
    ("bcq-1bit", ["compress", FILE, "{out}/x.xsp", "--bits", "1", "--sparsity", "0.5"]),
    ("bcq-group", ["compress", FILE, "{out}/x.xsp", "--group-size", "32"]),
    ("uniform", ["compress", FILE, "{out}/x.xsp", "--quantizer", "uniform", "--bits", "3"]),
    ("uniform-asym", ["compress", FILE, "{out}/x.xsp", "--quantizer", "uniform", "--asymmetric",
                      "--group-size", "32"]),
    ("codebook", ["compress", FILE, "{out}/x.xsp", "--quantizer", "codebook"]),
    ("codebook-rows", ["compress", FILE, "{out}/x.xsp", "--quantizer", "codebook", "--codebook-rows", "16",
                       "--bits", "3"]),
    ("mask-bitmask", ["compress", FILE, "{out}/x.xsp", "--mask-codec", "bitmask"]),
    ("mask-entropy", ["compress", FILE, "{out}/x.xsp", "--mask-codec", "entropy"]),
    ("mask-ctx", ["compress", FILE, "{out}/x.xsp", "--mask-codec", "ctx", "--sparsity", "0.95"]),
    ("scale-rows", ["compress", FILE, "{out}/x.xsp", "--scale-rows", "4"]),
    ("scale-rows-auto", ["compress", FILE, "{out}/x.xsp", "--scale-rows", "auto", "--error-budget", "0.05"]),
    ("scale-log8", ["compress", FILE, "{out}/x.xsp", "--scale-format", "log8"]),
    ("scale-auto", ["compress", FILE, "{out}/x.xsp", "--scale-format", "auto", "--quantizer", "uniform"]),
    ("packed", ["compress", FILE, "{out}/x.xsp", "--packed-below", "5000"]),
    ("ns0", ["compress", FILE, "{out}/x.xsp", "--ns", "0"]),
    ("ns2-w256", ["compress", FILE, "{out}/x.xsp", "--ns", "2", "--window", "256"]),
    ("window64", ["compress", FILE, "{out}/x.xsp", "--window", "64"]),
    ("global", ["compress", FILE, "{out}/x.xsp", "--global", "--sparsity", "0.7"]),
    ("select", ["compress", FILE, "{out}/x.xsp", "--include", "a.*", "--include", "emb*",
                "--force-include", "a.bias", "--exclude", "b.*"]),
    ("no-emb-keep16", ["compress", FILE, "{out}/x.xsp", "--no-embeddings", "--keep-dtype", "float16"]),
    ("decompress-st", ["decompress", "{prev:default}/x.xsp", "{out}/d.safetensors"]),
    ("decompress-pt", ["decompress", "{prev:codebook}/x.xsp", "{out}/d.pt"]),
    ("decompress-packed", ["decompress", "{prev:packed}/x.xsp", "{out}/d.safetensors"]),
    ("inspect", ["inspect", "--json", "{prev:scale-auto}/x.xsp"]),
    ("verify", ["verify", "{prev:global}/x.xsp", "--against", FILE]),
    ("rtl", ["export-rtl", "{prev:default}/x.xsp", "-o", "{out}/rtl.v"]),
    ("folder", ["compress", "{in}/model", "{out}/m", "--method", "magnitude", "--workers", "1"]),
    # (--global on a model folder fails in both trees: KeyError in shard_settings, reported)
    ("folder-sharded", ["compress", "{in}/sharded", "{out}/m", "--method", "magnitude", "--workers", "2",
                        "--mask-codec", "ctx", "--load-mode", "ondemand"]),
    ("folder-decompress", ["decompress", "{prev:folder-sharded}/m", "{out}/plain", "--workers", "1"]),
    ("folder-verify", ["verify", "{prev:folder}/m", "--against", "{in}/model"]),
    ("ct-in", ["compress", "{in}/ct", "{out}/m", "--workers", "1"]),
    ("ct-in-pruned", ["compress", "{in}/ct", "{out}/m", "--workers", "1", "--sparsity", "0.6"]),
    ("ct-out", ["decompress", "{prev:ct-in}/m", "{out}/ct", "--format", "compressed-tensors"]),
    ("ct-plain", ["decompress", "{prev:ct-in-pruned}/m", "{out}/plain"]),
]
PRINTED = {"inspect", "verify", "folder-verify"}  # their printed output is compared too


def make_inputs(d: str) -> None:
    """Tensors of every kind the selection and the coders treat differently, and folders."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from .ct import TINY, llama, prune_, save_compressed_tensors

    g = torch.Generator().manual_seed(7)
    state = {
        "a.weight": torch.randn(96, 130, generator=g),
        "a.bias": torch.randn(96, generator=g),
        "b.weight": torch.randn(64, 64, generator=g).to(torch.bfloat16),
        "emb.weight": torch.randn(300, 48, generator=g).to(torch.float16),
        "small.weight": torch.randn(12, 10, generator=g),
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "norm.weight": torch.ones(64),
        "count": torch.arange(5, dtype=torch.int64),
    }
    save_file(state, os.path.join(d, "state.safetensors"))
    torch.save(state, os.path.join(d, "state.pt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    model = BertModel(cfg).eval()
    model.save_pretrained(os.path.join(d, "model"))
    model.save_pretrained(os.path.join(d, "sharded"), max_shard_size="150KB")
    m = llama(TINY, seed=1)
    prune_(m, 0.5)
    save_compressed_tensors(m, os.path.join(d, "ct"), strategy="group", fmt="pack-quantized", bits=4, group_size=32)


def run_tree(src: str, inputs: str, out: str, only: set[str] | None) -> dict[str, tuple[int, str]]:
    """Every command with `src` on the path; (exit status, printed text) by command name."""
    results = {}
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env["PYTHONPATH"]])
    env.update({"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    for name, args in CASES:
        if only and name not in only:
            continue
        d = os.path.join(out, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, exist_ok=True)
        argv = []
        for a in args:
            a = a.replace("{in}", inputs).replace("{out}", d)
            if a.startswith("{prev:"):
                ref, rest = a[6:].split("}", 1)
                a = os.path.join(out, ref) + rest
            argv.append(a)
        p = subprocess.run([sys.executable, "-c", "import sys; from xorsparse.cli import main; sys.exit(main())",
                            *argv], env=env, capture_output=True, text=True)
        text = p.stdout.replace(out, "<out>").replace(inputs, "<in>") if name in PRINTED else ""
        results[name] = (p.returncode, text if p.returncode == 0 else (p.stderr.strip().splitlines() or [""])[-1])
    return results


TIMINGS = ("seconds",)  # record fields that measure the run (FORMAT.md section 8), not the file's content


def _untimed(path: str) -> str:
    """A safetensors file's digest with the records' timing fields (and the description checksum
    over them) taken out; the tensor data and every other field stay in."""
    import json
    import struct

    with open(path, "rb") as fh:
        b = fh.read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    meta = head.get("__metadata__", {})
    meta.pop("xorsparse_crc32", None)
    if "xorsparse" in meta:
        desc = json.loads(meta["xorsparse"])
        for rec in (desc.get("calibration"), desc.get("quality")):
            for k in TIMINGS:
                if isinstance(rec, dict):
                    rec.pop(k, None)
        meta["xorsparse"] = json.dumps(desc, sort_keys=True)
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode() + b[8 + n:]).hexdigest()


def digests(root: str) -> dict[str, str]:
    out = {}
    for r, _, files in os.walk(root):
        for f in files:
            p = os.path.join(r, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.same_bytes", description=__doc__.split("\n\n")[0])
    ap.add_argument("old_src")
    ap.add_argument("new_src")
    ap.add_argument("--work", help="keep the inputs and outputs here (default: a temporary folder, removed)")
    ap.add_argument("--only", nargs="*", help="these commands only")
    ap.add_argument("--trees", choices=["both", "old", "new", "none"], default="both",
                    help="run the commands with these trees only; the other's results come from an earlier run "
                         "with the same --work")
    a = ap.parse_args(argv)
    work = a.work or tempfile.mkdtemp(prefix="xorsparse-same-bytes-")
    only = set(a.only) if a.only else None
    try:
        inputs = os.path.join(work, "inputs")
        if not os.path.exists(os.path.join(inputs, "state.pt")):
            os.makedirs(inputs, exist_ok=True)
            make_inputs(inputs)
        res = {}
        for label, src in (("old", a.old_src), ("new", a.new_src)):
            saved = os.path.join(work, f"{label}.json")
            res[label] = {}
            if os.path.exists(saved):
                with open(saved) as f:
                    res[label] = {k: tuple(v) for k, v in json.load(f).items()}
            if a.trees in ("both", label):
                res[label].update(run_tree(src, inputs, os.path.join(work, label), only))
                with open(saved, "w") as f:
                    json.dump(res[label], f)
        if a.trees != "both" and any(name not in res[x] for x in ("old", "new") for name, _ in CASES
                                     if not only or name in only):
            print(f"ran the {a.trees} tree; compare once both have run")
            return 0
        bad = 0
        for name, _ in CASES:
            if only and name not in only:
                continue
            (rc_o, t_o), (rc_n, t_n) = res["old"][name], res["new"][name]
            d_o, d_n = digests(os.path.join(work, "old", name)), digests(os.path.join(work, "new", name))
            same = rc_o == rc_n and t_o == t_n and d_o == d_n
            status = "identical" if same else "DIFFERENT"
            if not same and rc_o == rc_n and t_o == t_n and set(d_o) == set(d_n) and all(
                    d_o[k] == d_n[k] or (k.endswith(".safetensors") and _untimed(os.path.join(work, "old", name, k))
                                         == _untimed(os.path.join(work, "new", name, k))) for k in d_o):
                same, status = True, "identical but for the records' timings"
            if rc_o:
                status += f" (both failed: {t_o})" if same else f" (old failed: {t_o})"
            elif not same:
                diff = sorted(k for k in set(d_o) | set(d_n) if d_o.get(k) != d_n.get(k))
                status += f": exit {rc_o}/{rc_n}; files {diff[:4]}" + ("; printed text" if t_o != t_n else "")
            bad += not same or bool(rc_o)
            print(f"{name:20s} {len(d_o):3d} file(s)  {status}")
        total = sum(1 for name, _ in CASES if not only or name in only)
        print(f"{total - bad} of {total} commands wrote identical outputs with both trees")
        return 1 if bad else 0
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
