"""Rate-distortion: total bits per weight against weight error, for every format on its best codes.

The formats benchmark compares formats storing the same codes. Users compare size at equal
quality: a variable-rate coder that squeezes 4-bit codes to 3.4 bits must be set against
what a better fixed-rate quantizer buys at the same bits. So here every format stores each
quantizer's codes (bcq, uniform, codebook; q = 1..4, per-row scales) and is placed by its
total bits per weight and the relative weight error ||W - Wq|| / ||W|| (pruned weights
included) over the tensor set; then, at the error of each point on xorsparse's frontier,
each format's fewest bits at that error or less. The real `zipnn` package compressing the
dense pruned-and-quantized float32 tensor is the lossless-compression anchor. Decode time
is to the dense float32 tensor, as a ratio to numpy filling a tensor of that size, in CPU
time of this process by default (--clock cpu; run with NUMBA_NUM_THREADS=1: every decoder on
one core, which a shared, loaded machine measures far better than wall time).

    python -m benchmarks rd --json docs/bench-rd.json --markdown docs/bench-rd.md --plot docs/bench-rd.png

Parts of the grid can run as separate processes (each with its own --json) and be joined
into one set of tables and one plot afterwards:

    python -m benchmarks rd --merge a.json b.json --json docs/bench-rd.json --markdown ... --plot ...
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from xorsparse.tensor.dequant import dequantize
from xorsparse.tensor.pipeline import CompressConfig, compress_quantized, decompress_tensor
from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.variants import quantize

from ._report import best_time, clock, markdown_table, print_table, write_json, write_text
from .formats import alexnet_tensors, minilm_tensors

FIXED_RATE = ("xorsparse", "csr-int32", "bitmask+int8")
VARIABLE_RATE = ("deep-compression", "zstd-19", "lzma", "zipnn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                   help="time decodes by wall clock or by this process's CPU time (robust on a loaded "
                        "machine; give numba one thread: NUMBA_NUM_THREADS=1)")
    p.add_argument("--json", metavar="PATH", help="also write every point as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown")
    p.add_argument("--plot", metavar="PATH.png", help="bits against error, and decode cost against bits")
    p.add_argument("--bits", type=int, nargs="*", default=[1, 2, 3, 4])
    p.add_argument("--quantizers", nargs="*", default=["bcq", "uniform", "codebook"],
                   choices=["bcq", "uniform", "codebook"])
    p.add_argument("--minilm-sparsity", type=float, nargs="*", default=[0.5, 0.7, 0.9])
    p.add_argument("--alexnet-sparsity", type=float, nargs="*", default=[0.91])
    p.add_argument("--sets", nargs="*", default=["alexnet-fc", "minilm"], choices=["alexnet-fc", "minilm"])
    p.add_argument("--scale", type=float, default=1.0,
                   help="shrink the AlexNet shapes by this factor per side (for quick runs)")
    p.add_argument("--repeat", type=int, default=2, help="timed decodes per format (best is kept)")
    p.add_argument("--merge", metavar="JSON", nargs="+",
                   help="measure nothing: join the points of earlier runs' --json files (e.g. tensor sets or "
                        "quantizers run as separate processes) into one set of tables and one plot")
    p.set_defaults(run=run)


def measure_points(set_name: str, tensors, sparsity: float, quantizer: str, q: int, repeat: int,
                   timer=best_time) -> list[dict]:
    """One point per format: total bits and decode time summed over the set, one error."""
    from .sparse_formats import FORMATS, from_quantized, zipnn_dense

    acc: dict[str, dict] = {}
    weights = 0
    err2 = 0.0
    norm2 = 0.0
    floor_t = 0.0

    def add(fmt: str, bits: float, t: float, ok: bool) -> None:
        a = acc.setdefault(fmt, {"bits": 0.0, "time": 0.0, "ok": True})
        a["bits"] += bits
        a["time"] += t
        a["ok"] = a["ok"] and ok

    for _, w in tensors:
        keep = magnitude_mask(w, sparsity)
        qz = quantize(w, keep, quantizer, q)
        ref = dequantize(qz, keep)
        weights += w.size
        err2 += float(np.sum((ref.astype(np.float64) - w) ** 2))
        norm2 += float(np.sum(w.astype(np.float64) ** 2))
        dst = np.empty_like(ref)
        floor_t += timer(lambda: dst.fill(1.0), repeat=repeat)
        ct = compress_quantized(keep, qz, "float32", CompressConfig(sparsity, q, quantizer))
        add("xorsparse", ct.total_bits, timer(lambda: decompress_tensor(ct), repeat=repeat),
            decompress_tensor(ct).tobytes() == ref.tobytes())
        sp = from_quantized(qz, keep)
        stores = {fmt: enc(sp) for fmt, enc in FORMATS.items()}
        stores["zipnn"] = zipnn_dense(ref, sp)
        for fmt, st in stores.items():
            add(fmt, st.total_bits, timer(st.decode, repeat=repeat), st.decode().tobytes() == ref.tobytes())
    rel = float(np.sqrt(err2 / norm2)) if norm2 else 0.0
    rows = []
    for fmt, a in acc.items():
        rows.append({
            "tensor_set": set_name, "sparsity": sparsity, "quantizer": quantizer, "q": q, "format": fmt,
            "fixed_rate": fmt in FIXED_RATE, "weights": weights,
            "total_bits_per_weight": a["bits"] / weights, "rel_error": rel,
            "decode_seconds": a["time"], "floor_seconds": floor_t, "decode_ratio_to_floor": a["time"] / floor_t,
            "lossless": a["ok"],
        })
    return rows


FRONTIER_MIN_GAIN = 1e-4


def frontier(points: list[dict]) -> list[dict]:
    """Pareto frontier: points no other point beats on both error and bits, by error. A point
    of larger error enters only if it saves more than FRONTIER_MIN_GAIN of the bits (relative):
    two quantizers' codes at the same q cost the same bits give or take a few patch bits, and
    a millionth of a bit is no reason to accept a larger error."""
    out = []
    for p in sorted(points, key=lambda r: (r["rel_error"], r["total_bits_per_weight"])):
        if not out or p["total_bits_per_weight"] < out[-1]["total_bits_per_weight"] * (1 - FRONTIER_MIN_GAIN):
            out.append(p)
    return out


def best_at(points: list[dict], error: float) -> dict | None:
    ok = [p for p in points if p["rel_error"] <= error * (1 + 1e-9)]
    return min(ok, key=lambda r: r["total_bits_per_weight"]) if ok else None


def equal_error_table(rows: list[dict]) -> list[dict]:
    """At the error of each point on xorsparse's frontier: each format's fewest bits there."""
    out = []
    for key in dict.fromkeys((r["tensor_set"], r["sparsity"]) for r in rows):
        sub = [r for r in rows if (r["tensor_set"], r["sparsity"]) == key]
        fmts = list(dict.fromkeys(r["format"] for r in sub))
        for x in frontier([r for r in sub if r["format"] == "xorsparse"]):
            e = x["rel_error"]
            row = {"tensor_set": key[0], "sparsity": key[1], "rel_error": e,
                   "xorsparse_codes": f"{x['quantizer']} q={x['q']}", "xorsparse": x["total_bits_per_weight"],
                   "xorsparse_decode": x["decode_ratio_to_floor"]}
            best_fixed, best_var = None, None
            for f in fmts:
                b = best_at([r for r in sub if r["format"] == f], e)
                row[f] = b["total_bits_per_weight"] if b else None
                if b and f != "xorsparse":
                    slot = "fixed" if f in FIXED_RATE else "var"
                    cur = best_fixed if slot == "fixed" else best_var
                    if cur is None or b["total_bits_per_weight"] < cur[1]["total_bits_per_weight"]:
                        if slot == "fixed":
                            best_fixed = (f, b)
                        else:
                            best_var = (f, b)
            for slot, best in (("fixed", best_fixed), ("variable", best_var)):
                row[f"best_{slot}"] = f"{best[0]} ({best[1]['quantizer']} q={best[1]['q']})" if best else None
                row[f"best_{slot}_bits"] = best[1]["total_bits_per_weight"] if best else None
                row[f"best_{slot}_decode"] = best[1]["decode_ratio_to_floor"] if best else None
            row["lowest_fixed_rate"] = best_fixed is None or x["total_bits_per_weight"] <= \
                best_fixed[1]["total_bits_per_weight"]
            out.append(row)
    return out


def load_points(paths: list[str]) -> list[dict]:
    """The points of earlier --json outputs, in order; a point measured twice is an error."""
    rows: list[dict] = []
    seen: dict[tuple, str] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise SystemExit(f"{path}: not a 'bench rd --json' output (no 'points' list)")
        for r in data["points"]:
            key = (r["tensor_set"], r["sparsity"], r["quantizer"], r["q"], r["format"])
            if key in seen:
                raise SystemExit(f"{path}: point {key} is also in {seen[key]}")
            seen[key] = path
            rows.append(r)
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    keys = list(dict.fromkeys((r["tensor_set"], r["sparsity"]) for r in rows))
    fig, axes = plt.subplots(2, len(keys), figsize=(max(4.6 * len(keys), 12), 8.5), squeeze=False)
    fmts = list(dict.fromkeys(r["format"] for r in rows))
    for col, key in enumerate(keys):
        sub = [r for r in rows if (r["tensor_set"], r["sparsity"]) == key]
        top, bot = axes[0][col], axes[1][col]
        # the error range of xorsparse's frontier; points far beyond it (e.g. 1-bit uniform codes) are left off
        own = [r for r in sub if r["format"] == "xorsparse"] or sub
        errs = [p["rel_error"] for p in frontier(own)]
        lo, hi = min(errs), max(errs)
        pad = 0.15 * (hi - lo) if hi > lo else 0.01 * hi
        for k, f in enumerate(fmts):
            pts = [r for r in sub if r["format"] == f]
            if not pts:
                continue
            color = f"C{k}"
            ls = "-" if f in FIXED_RATE else "--"
            lw = 2.5 if f == "xorsparse" else 1.2
            top.scatter([p["rel_error"] for p in pts], [p["total_bits_per_weight"] for p in pts], s=8, color=color,
                        alpha=0.35)
            fr = frontier(pts)
            top.plot([p["rel_error"] for p in fr], [p["total_bits_per_weight"] for p in fr], ls, color=color,
                     lw=lw, marker="o", ms=3, label=f + ("" if f in FIXED_RATE else " (variable rate)"))
            bot.plot([p["total_bits_per_weight"] for p in fr], [p["decode_ratio_to_floor"] for p in fr], ls,
                     color=color, lw=lw, marker="o", ms=3)
        top.set_xlim(lo - pad, hi + pad)
        top.set_title(f"{key[0]} S={key[1]:g}")
        top.set_xlabel("||W - Wq|| / ||W|| (pruning included)")
        top.set_ylabel("total bits per weight (log)")
        top.set_yscale("log")
        bot.set_xlabel("total bits per weight (frontier points)")
        bot.set_ylabel("decode time / numpy fill (log)")
        bot.set_xscale("log")
        bot.set_yscale("log")
        bot.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        bot.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        for ax in (top, bot):
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("solid: fixed-rate formats; dashed: variable-rate coders. Top: frontier of bits against error "
                 "(dots: every quantizer and q;\nthose beyond the error range of xorsparse's frontier are off the plot). Bottom: what the frontier "
                 "points cost to decode, per core.", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


POINT_COLUMNS = [("tensor_set", "set", "s"), ("sparsity", "S", "g"), ("quantizer", "codes", "s"), ("q", "q", "d"),
                 ("format", "format", "s"), ("total_bits_per_weight", "total b/w", ".4f"),
                 ("rel_error", "rel. error", ".4f"), ("decode_ratio_to_floor", "decode/floor", ".1f"),
                 ("lossless", "lossless", "")]
EQUAL_COLUMNS = [("tensor_set", "set", "s"), ("sparsity", "S", "g"), ("rel_error", "error <=", ".4f"),
                 ("xorsparse_codes", "xorsparse codes", "s"), ("xorsparse", "xorsparse b/w", ".4f"),
                 ("best_fixed", "best other fixed-rate", "s"), ("best_fixed_bits", "b/w", ".4f"),
                 ("best_variable", "best variable-rate", "s"), ("best_variable_bits", "b/w", ".4f"),
                 ("xorsparse_decode", "xorsparse dec/floor", ".1f"), ("best_variable_decode", "var. dec/floor", ".1f"),
                 ("zipnn", "zipnn b/w", ".3f"), ("lowest_fixed_rate", "lowest fixed-rate", "")]


def run(args: argparse.Namespace) -> int:
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    sets = []
    if not args.merge and "alexnet-fc" in args.sets:
        sets.append(("alexnet-fc", alexnet_tensors(args.scale), args.alexnet_sparsity))
    if not args.merge and "minilm" in args.sets:
        sets.append(("minilm", minilm_tensors(), args.minilm_sparsity))
    rows: list[dict] = load_points(args.merge) if args.merge else []
    for name, tensors, sparsities in sets:
        for s in sparsities:
            for quantizer in args.quantizers:
                for q in args.bits:
                    log(f"  {name} S={s} {quantizer} q={q} ({sum(t.size for _, t in tensors)} weights)")
                    rows += measure_points(name, tensors, s, quantizer, q, args.repeat, clock(args.clock))
    eq = equal_error_table(rows)
    print("\nevery point: total bits per weight (mask, values, patches, scales, codebooks) and relative weight error")
    print_table(rows, POINT_COLUMNS)
    print("\nat equal error: each format's fewest bits at the error of each xorsparse frontier point or less")
    print_table(eq, EQUAL_COLUMNS)
    verdict = all(r["lowest_fixed_rate"] for r in eq)
    print(f"\nxorsparse lowest among fixed-rate formats at every error: {'yes' if verdict else 'NO'}")
    if args.markdown:
        write_text(args.markdown, "### At equal error\n\n" + markdown_table(eq, EQUAL_COLUMNS)
                   + "\n### Every point\n\n" + markdown_table(rows, POINT_COLUMNS))
        print(f"wrote {args.markdown}")
    if args.json:
        write_json(args.json, {"points": rows, "equal_error": eq})
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    print(f"({time.perf_counter() - t0:.0f}s)")
    return 0 if all(r["lossless"] for r in rows) else 1
