"""Sharded compression at scale: a synthetic checkpoint, several executors, a kill and resume.

    python -m benchmarks scale --gb 8 --json docs/bench-scale.json

Generates (never keeps) a sharded bf16 checkpoint of about `--gb` GB in a temporary
folder (`--shards` shards of `--rows x --cols` tensors plus a norm vector each), then
compresses it with each executor of `--runs` (`w1`: one process, `w2`: two local worker
processes, `ray`: local Ray with 2 CPUs), each run in its own process group. Reported per
run: wall time, weights/s overall and per worker (coded weights over the seconds the
workers spent in their shards), peak RSS of every worker process against the budget
2 x (largest tensor's float32 bytes) + 1 GiB, and whether the output bytes equal the first
run's. `--kill` also SIGKILLs a `w2` job once half of its shards exist, reruns the same
command and checks that it keeps exactly the finished shards, redoes the others and ends
with the same bytes. The data and outputs are deleted at the end (`--keep` keeps them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from ._report import print_table, subprocess_env, write_json

GIB = 1 << 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gb", type=float, default=8.0, help="checkpoint size in GB (1e9 bytes), default 8")
    p.add_argument("--shards", type=int, default=32, help="input shards (default 32)")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=11008)
    p.add_argument("--runs", nargs="+", default=["w2", "ray", "w1"],
                   help="executors in order: wN (N local workers) or ray (local Ray, 2 CPUs); the first is "
                        "the byte-identity baseline")
    p.add_argument("--kill", action="store_true", help="also SIGKILL a w2 job half-way and resume it")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--dir", default=None, help="where the temporary folder goes (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoint and outputs")
    p.add_argument("--reuse", metavar="DIR", help="the folder of an earlier run kept with --keep (or interrupted): "
                                                  "reuse its checkpoint, and its first output as the byte baseline")
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(run=run)


# ---------------------------------------------------------------------------------------
# The synthetic checkpoint


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even."""
    u = x.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def make_checkpoint(folder: str, gb: float, shards: int, rows: int, cols: int, seed: int = 0) -> dict:
    """Write the shards one tensor at a time; returns sizes. Tensor t is generated from
    seed (seed, t), so the checkpoint is the same on every run and machine."""
    from xorsparse.format import safetensors_io as st

    per_tensor = rows * cols * 2
    n_tensors = max(shards, int(round(gb * 1e9 / per_tensor)))
    counts = [n_tensors // shards + (i < n_tensors % shards) for i in range(shards)]
    weight_map, t, total = {}, 0, 0
    for i, c in enumerate(counts):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        entries = []
        for j in range(c):
            def data(t=t):
                x = np.random.default_rng([seed, t]).standard_normal((rows, cols), dtype=np.float32)
                x *= np.float32(0.02)
                return _bf16_bits(x)
            tname = f"model.layers.{t}.mlp.weight"
            entries.append(st.Entry(tname, "BF16", (rows, cols), data))
            weight_map[tname] = name
            t += 1
        norm = f"model.layers.{i}.norm.weight"
        entries.append(st.Entry(norm, "BF16", (cols,), np.full(cols, 0x3F80, np.uint16)))
        weight_map[norm] = name
        total += st.write(os.path.join(folder, name), entries, {"format": "pt"})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "hidden_size": cols}, f)
    return {"bytes": total, "tensors": n_tensors, "weights": n_tensors * rows * cols,
            "largest_fp32_bytes": rows * cols * 4}


# ---------------------------------------------------------------------------------------
# One job in its own process (group), as a user runs it


def job_main(argv: list[str]) -> int:
    """python -m benchmarks.scale SRC OUT STATS.json [--workers N] [--ray] ...:
    compress a folder and write per-worker statistics (the bench's child process)."""
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("stats")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--ray", action="store_true")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--bits", type=int, default=2)
    a = p.parse_args(argv)
    from xorsparse.checkpoint.options import RunOptions
    from xorsparse.jobs.executors import JobProgress, make_executor, peak_rss_bytes
    from xorsparse.jobs.folder import compress_folder
    from xorsparse.tensor.pipeline import CompressConfig

    cfg = CompressConfig(sparsity=a.sparsity, bits=a.bits)
    t0 = time.perf_counter()
    with make_executor(a.workers, "" if a.ray else None) as ex:
        bar = JobProgress("compress", where=ex.describe(), every=60)
        rep = compress_folder(a.src, a.out, cfg, run=RunOptions(executor=ex, on_event=bar))
    wall = time.perf_counter() - t0
    oc = rep.outcomes
    stats = {"wall_seconds": wall, "executor": ex.describe(),
             "weights": sum(o.weights for o in oc if not o.reused),
             "worker_seconds": sum(o.seconds for o in oc if not o.reused),
             "reused": sum(o.reused for o in oc), "written": sum(not o.reused for o in oc),
             "workers": {}, "driver_peak_rss": peak_rss_bytes()}
    for o in oc:
        if not o.reused:
            w = stats["workers"].setdefault(str(o.pid), {"peak_rss": 0, "shards": 0})
            w["peak_rss"] = max(w["peak_rss"], o.peak_rss)
            w["shards"] += 1
    with open(a.stats, "w") as f:
        json.dump(stats, f)
    return 0


def _job(src: str, out: str, stats: str, executor: str, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.scale", src, out, stats,
           "--sparsity", str(args.sparsity), "--bits", str(args.bits)]
    if executor == "ray":
        cmd += ["--ray", "--workers", "2"]
    else:
        cmd += ["--workers", executor[1:]]
    return subprocess.Popen(cmd, start_new_session=True, env=subprocess_env())


def _digests(folder: str) -> dict[str, str]:
    out = {}
    for f in sorted(os.listdir(folder)):
        p = os.path.join(folder, f)
        if os.path.isfile(p):
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for b in iter(lambda: fh.read(8 << 20), b""):
                    h.update(b)
            out[f] = h.hexdigest()
    return out


def _shards_done(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.startswith("model-") and f.endswith(".safetensors"))


def run(args: argparse.Namespace) -> int:
    base = args.reuse or tempfile.mkdtemp(prefix="xorsparse-scale-", dir=args.dir)
    need = (0 if args.reuse else args.gb * 1e9 * 1.1) + 0.2e9 * (len(args.runs) + 1)
    free = shutil.disk_usage(base).free
    if free < need:
        if not args.reuse:
            shutil.rmtree(base)
        print(f"not enough free disk in {os.path.dirname(base)}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB "
              "needed", file=sys.stderr)
        return 2
    rows, ok = [], True
    keep = args.keep or bool(args.reuse)
    try:
        src = os.path.join(base, "model")
        baseline = None
        if args.reuse:
            from xorsparse.checkpoint.readers import open_checkpoint

            ck = open_checkpoint(src)
            shapes = [ck.info(n)[1] for n in ck.names]
            big = max(int(np.prod(s)) for s in shapes)
            weights = sum(int(np.prod(s)) for s in shapes if len(s) >= 2)
            info = {"bytes": sum(os.path.getsize(f) for f in ck.files), "tensors": len(ck.names),
                    "weights": weights, "largest_fp32_bytes": 4 * big}
            args.shards = len(ck.shards)
            earlier = sorted(d for d in os.listdir(base) if d.startswith("out-0-") and os.path.isdir(
                os.path.join(base, d)))
            if earlier:
                baseline = _digests(os.path.join(base, earlier[0]))
                print(f"byte baseline: {earlier[0]} of the earlier run", flush=True)
            print(f"reusing the checkpoint in {src}: {info['bytes'] / 1e9:.2f} GB, {args.shards} shards", flush=True)
        else:
            os.makedirs(src)
            t0 = time.perf_counter()
            info = make_checkpoint(src, args.gb, args.shards, args.rows, args.cols)
            print(f"synthetic checkpoint: {info['bytes'] / 1e9:.2f} GB, {args.shards} shards, {info['tensors']} "
                  f"tensors of {args.rows}x{args.cols} bf16 ({info['weights'] / 1e9:.2f} G weights), written in "
                  f"{time.perf_counter() - t0:.0f}s to {src}", flush=True)
        budget = 2 * info["largest_fp32_bytes"] + GIB
        tag = "r" if args.reuse else ""
        for k, ex in enumerate(args.runs):
            out = os.path.join(base, f"out-{tag}{k}-{ex}")
            stats_path = out + ".json"
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            rc = _job(src, out, stats_path, ex, args).wait()
            wall = time.perf_counter() - t0
            if rc != 0:
                print(f"run {ex}: exit code {rc}", file=sys.stderr)
                ok = False
                continue
            with open(stats_path) as f:
                st = json.load(f)
            dig = _digests(out)
            baseline = baseline or dig
            peaks = [w["peak_rss"] for w in st["workers"].values()]
            row = {"run": ex, "executor": st["executor"], "wall_s": wall, "load_start": load0,
                   "load_end": os.getloadavg()[0], "weights_per_s": st["weights"] / wall,
                   "per_worker_weights_per_s": st["weights"] / st["worker_seconds"] if st["worker_seconds"] else 0,
                   "workers": len(peaks), "peak_rss_max_gb": max(peaks) / GIB, "budget_gb": budget / GIB,
                   "within_budget": max(peaks) <= budget, "identical": dig == baseline}
            rows.append(row)
            ok &= row["within_budget"] and row["identical"]
            print(f"run {ex}: {wall:.0f}s, {row['weights_per_s'] / 1e6:.2f} M weights/s, peak RSS "
                  f"{row['peak_rss_max_gb']:.2f} GiB per worker (budget {row['budget_gb']:.2f}), identical "
                  f"bytes: {row['identical']}", flush=True)
            if (k or args.reuse) and not keep:
                shutil.rmtree(out)
        if args.kill:
            row = _kill_and_resume(src, base, args, baseline)
            rows.append(row)
            ok &= row["identical"] and row["redid_only_unfinished"]
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(rows, [("run", "run", ""), ("executor", "executor", ""), ("wall_s", "wall s", ".0f"),
                       ("load_start", "load", ".1f"), ("weights_per_s", "weights/s", ".3g"),
                       ("per_worker_weights_per_s", "per worker w/s", ".3g"),
                       ("peak_rss_max_gb", "peak RSS GiB", ".2f"), ("budget_gb", "budget GiB", ".2f"),
                       ("identical", "same bytes", "")])
    measured = [r["per_worker_weights_per_s"] for r in rows if r.get("per_worker_weights_per_s")]
    proj = []
    if measured:
        r0 = min(measured)
        print(f"\nprojection for a 70B checkpoint ({LLAMA70B['weights'] / 1e9:.1f} G weights in "
              f"{LLAMA70B['shards']} shards) at the slowest measured per-worker rate, {r0 / 1e6:.2f} M weights/s:")
        proj = projection(r0, 2, (1, 2, 4, 8)) + projection(r0, 32, (1,))
        print_table(proj, [("machines", "machines", "d"), ("cores", "cores each", "d"), ("workers", "workers", "d"),
                           ("used", "busy (<= shards)", "d"), ("hours", "hours", ".1f")])
    if args.json:
        write_json(args.json, {"checkpoint": {"gb": args.gb, "shards": args.shards, "rows": args.rows,
                                              "cols": args.cols}, "runs": rows, "projection_70b": proj})
    return 0 if ok else 1


# A 70B checkpoint as published (Llama-2-70B: 80 layers, hidden 8192, MLP 28672, 8 KV heads,
# vocabulary 32000; 15 shards of ~9.2 GB bf16 in the Hugging Face release, ~4.6 G weights
# each). Items are input shards, so a job cannot use more workers than there are shards.
LLAMA70B = {"weights": 68.98e9, "shards": 15, "largest_tensor": 8192 * 28672}


def projection(per_worker: float, cores: int = 2, machines=(1, 2, 4, 8, 16), model=LLAMA70B) -> list[dict]:
    """Hours to compress `model` on N machines of `cores` workers each, from one worker's
    measured throughput (weights/s), assuming workers scale independently (measured here up
    to 2) and items = input shards (the slowest shard bounds the job)."""
    rows = []
    per_shard = model["weights"] / model["shards"]
    for m in machines:
        workers = m * cores
        busy = min(workers, model["shards"])
        rounds = -(-model["shards"] // busy)
        rows.append({"machines": m, "cores": cores, "workers": workers, "used": busy,
                     "hours": rounds * per_shard / per_worker / 3600})
    return rows


def _kill_and_resume(src: str, base: str, args, baseline) -> dict:
    out = os.path.join(base, "out-kill")
    shutil.rmtree(out, ignore_errors=True)
    half = args.shards // 2
    t0 = time.perf_counter()
    proc = _job(src, out, out + ".json", "w2", args)
    while proc.poll() is None and len(_shards_done(out)) < half:
        time.sleep(0.5)
    done_at_kill = _shards_done(out)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(1.0)
    done_at_kill = _shards_done(out)
    before = {f: os.stat(os.path.join(out, f)).st_ino for f in done_at_kill}
    killed_after = time.perf_counter() - t0
    print(f"killed (SIGKILL, whole process group) after {killed_after:.0f}s with {len(done_at_kill)} of "
          f"{args.shards} output shards written; rerunning", flush=True)
    t1 = time.perf_counter()
    rc = _job(src, out, out + ".json", "w2", args).wait()
    wall = time.perf_counter() - t1
    with open(out + ".json") as f:
        st = json.load(f)
    kept = all(os.path.exists(os.path.join(out, f)) and os.stat(os.path.join(out, f)).st_ino == ino
               for f, ino in before.items())
    dig = _digests(out) if rc == 0 else {}
    leftovers = [f for f in os.listdir(out) if f.startswith(".tmp-")]
    peaks = [w["peak_rss"] for w in st["workers"].values()] or [0]
    row = {"run": "kill+resume", "executor": st.get("executor", ""), "wall_s": wall,
           "load_start": os.getloadavg()[0], "weights_per_s": st["weights"] / wall if wall else 0,
           "per_worker_weights_per_s": st["weights"] / st["worker_seconds"] if st["worker_seconds"] else 0,
           "shards_at_kill": len(done_at_kill), "reused": st["reused"], "written": st["written"],
           "kept_untouched": kept, "temporaries_left": len(leftovers), "workers": len(peaks),
           "peak_rss_max_gb": max(peaks) / GIB,
           "redid_only_unfinished": rc == 0 and st["reused"] == len(done_at_kill) and kept
           and st["written"] == args.shards - len(done_at_kill),
           "identical": baseline is not None and dig == baseline}
    print(f"resumed: kept {st['reused']} shards, wrote {st['written']} in {wall:.0f}s; finished shards "
          f"untouched: {kept}; temporary files left: {len(leftovers)}; same bytes as the first run: "
          f"{row['identical']}", flush=True)
    return row


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]))
