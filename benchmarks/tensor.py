"""One random tensor through compress_tensor: bits against the bound, and decode time.

    python -m benchmarks tensor --shape 4096 4096 --sparsity 0.9 --bits 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.pipeline import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize

from ._report import best_time, print_table, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", type=int, nargs="+", default=[4096, 4096])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--quantizer", choices=["bcq", "uniform"], default="bcq")
    p.add_argument("--mask-codec", choices=["auto", "bitmask", "entropy", "ctx"], default="entropy")
    p.add_argument("--window", type=int, nargs="*", default=[128, 256], help="max_window values to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    w = np.random.default_rng(args.seed).standard_normal(tuple(args.shape), dtype=np.float32)
    rows = []
    for win in args.window:
        cfg = CompressConfig(args.sparsity, args.bits, args.quantizer, mask_codec=args.mask_codec, max_window=win)
        t0 = time.perf_counter()
        ct = compress_tensor(w, cfg)
        t_enc = time.perf_counter() - t0
        ref = reference_prune_quantize(w, cfg)
        t_dec = best_time(lambda: decompress_tensor(ct), repeat=3)
        dst = np.empty_like(w)
        t_floor = best_time(lambda: dst.fill(1.0), repeat=3)
        n = ct.numel
        s = 1 - ct.kept / n
        q = args.bits
        p0 = ct.planes[0]
        rows.append({
            "shape": "x".join(map(str, args.shape)), "sparsity": s, "q": q, "max_window": win,
            "n_in": p0.n_in, "n_out": p0.n_out, "n_s": p0.n_s,
            "value_bits_per_weight": ct.value_bits / n, "value_target": (1 - s) * q,
            "scale_bits_per_weight": ct.scale_bits / n, "mask_bits_per_weight": ct.mask.nbits / n,
            "total_bits_per_weight": ct.total_bits / n, "total_target": binary_entropy(s) + (1 - s) * q,
            "efficiency": ct.efficiency, "patches": ct.patches, "encode_seconds": t_enc,
            "decode_ratio_to_floor": t_dec / t_floor,
            "lossless": decompress_tensor(ct).tobytes() == ref.tobytes(),
        })
        r = rows[-1]
        r["value_over_target"] = r["value_bits_per_weight"] / r["value_target"] - 1
        r["total_over_target"] = r["total_bits_per_weight"] / r["total_target"] - 1
    print(f"random normal fp32 tensor {rows[0]['shape']}, S={args.sparsity}, q={args.bits} {args.quantizer}; "
          "targets: value (1-S)q, total H(S)+(1-S)q (scales are inside value and total)")
    print_table(rows, [
        ("max_window", "window", "d"), ("n_in", "n_in", "d"), ("n_out", "n_out", "d"), ("n_s", "n_s", "d"),
        ("value_bits_per_weight", "value b/w", ".4f"), ("value_over_target", "vs (1-S)q", "+.1%"),
        ("scale_bits_per_weight", "of which scales", ".4f"), ("mask_bits_per_weight", "mask b/w", ".4f"),
        ("total_bits_per_weight", "total b/w", ".4f"), ("total_over_target", "vs bound", "+.1%"),
        ("efficiency", "eff", ".4f"), ("patches", "patches", "d"), ("encode_seconds", "encode s", ".1f"),
        ("decode_ratio_to_floor", "decode/floor", ".1f"), ("lossless", "lossless", ""),
    ])
    if args.json:
        write_json(args.json, rows)
    return 0 if all(r["lossless"] for r in rows) else 1
