"""Codec benchmark: efficiency against the information bound, and speed against memcpy.

Masks are Bernoulli (every position kept with probability 1 - S) and bits are fair
coins, so the information bound is exactly the care density.
"""

from __future__ import annotations

import argparse

import numpy as np

from xorsparse.codec.plane import decode_plane, decode_plane_packed, encode_plane
from xorsparse.codec.rates import choose

from ._report import best_time, markdown_table, print_table, write_json, write_text

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
PAPER_SPARSITY = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positions", type=int, default=1 << 22, help="plane length (default 4194304)")
    p.add_argument("--sparsity", type=float, nargs="*", default=list(SPARSITIES))
    p.add_argument("--threads", type=int, default=1,
                   help="numba threads (default 1, so speeds read per core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-paper", action="store_true", help="skip the n_s = 0 rows")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.set_defaults(run=run)


def measure(bits: np.ndarray, care: np.ndarray, sparsity: float, method: str, label: str,
            decoder) -> dict:
    n = bits.size
    enc = encode_plane(bits, care, decoder, method=method)
    t_enc = best_time(lambda: encode_plane(bits, care, decoder, method=method), repeat=3)
    t_dec = best_time(lambda: decode_plane_packed(enc))
    t_dec_u8 = best_time(lambda: decode_plane(enc))
    out = decode_plane(enc)
    dst = np.empty_like(out)
    t_copy = best_time(lambda: np.copyto(dst, out))
    care_bits = int(care.sum())
    return {
        "sparsity": sparsity,
        "method": label,
        "n_in": enc.n_in,
        "n_out": enc.n_out,
        "n_s": enc.n_s,
        "positions": n,
        "bound_bits_per_weight": care_bits / n,
        "value_bits_per_weight": enc.value_bits / n,
        "stream_bits_per_weight": enc.stream_bits / n,
        "patch_bits_per_weight": enc.patch_bits / n,
        "efficiency": enc.efficiency,
        "patches": int(enc.patches.size),
        "patch_fraction": enc.patches.size / max(1, care_bits),
        "encode_mbit_s": n / t_enc / 1e6,
        "decode_mbit_s": n / t_dec / 1e6,
        "decode_u8_mbit_s": n / t_dec_u8 / 1e6,
        "copy_mbit_s": n / t_copy / 1e6,
        "decode_ratio_to_copy": t_dec_u8 / t_copy,
        "lossless": bool(np.array_equal(out[care.view(bool)], bits[care.view(bool)])),
    }


def run(args: argparse.Namespace) -> int:
    import numba

    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
    rng = np.random.default_rng(args.seed)
    n = args.positions
    rows = []
    plan = [(s, "auto") for s in args.sparsity]
    if not args.no_paper:
        plan += [(PAPER_SPARSITY, "elimination"), (PAPER_SPARSITY, "exhaustive")]
    for s, label in plan:
        care = rng.random(n) >= s
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        if label == "auto":
            dec = choose(bits, care)
            method = "elimination"
        else:
            method = label
            dec = choose(bits, care, method=label, max_n_s=0)
        row = measure(bits, care, s, method, label, dec)
        row["threads"] = numba.get_num_threads()
        rows.append(row)
        print(f"  measured S={s} {label}: efficiency {row['efficiency']:.4f}", flush=True)
    print()
    print(f"codec on random planes of {n} positions, {numba.get_num_threads()} thread(s); "
          "bound = care bits per position;\n"
          "dec = decode to packed bits; dec u8 = decode to one byte per position (decode_plane); "
          "copy = numpy copying that uint8 plane; dec/copy = dec u8 time over copy time")
    columns = [
        ("sparsity", "S", ".2f"), ("method", "method", "s"), ("n_in", "n_in", "d"),
        ("n_out", "n_out", "d"), ("n_s", "n_s", "d"), ("bound_bits_per_weight", "bound", ".4f"),
        ("value_bits_per_weight", "bits/pos", ".4f"), ("efficiency", "eff", ".4f"),
        ("patch_fraction", "patch frac", ".2e"), ("encode_mbit_s", "enc Mpos/s", ".1f"),
        ("decode_mbit_s", "dec Mpos/s", ".0f"), ("decode_u8_mbit_s", "dec u8", ".0f"),
        ("copy_mbit_s", "copy Mpos/s", ".0f"),
        ("decode_ratio_to_copy", "dec/copy", ".1f"), ("lossless", "lossless", ""),
    ]
    print_table(rows, columns)
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, columns))
        print(f"wrote {args.markdown}")
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0 if all(r["lossless"] for r in rows) else 1
