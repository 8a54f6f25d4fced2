"""The mask alone: bits per weight of each mask coder against the binary entropy H(S).

Magnitude masks of real weights are not i.i.d.: rows and columns differ in density, which
the `ctx` codec's row x column model exploits. Here every mask coder codes the same masks:
`entropy` (Golomb-coded gaps per block), `ctx` (range coding with the row x column model,
model and block table counted), and zstd level 19 and lzma (preset 9) over the packed
bitmask. Decode speeds are millions of positions per second of CPU time by default
(--clock cpu; with NUMBA_NUM_THREADS=1 that is per core); both codecs decode blocks in
parallel when given threads.

    python -m benchmarks masks
"""

from __future__ import annotations

import argparse
import lzma
import time

import numpy as np

from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.variants import decode_mask_words, encode_mask

from ._report import best_time, clock, markdown_table, print_table, write_json, write_text
from .formats import alexnet_tensors, minilm_tensors


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sets", nargs="*", default=["minilm", "alexnet-fc"], choices=["minilm", "alexnet-fc"])
    p.add_argument("--sparsity", type=float, nargs="*", default=[0.5, 0.7, 0.9])
    p.add_argument("--alexnet-sparsity", type=float, nargs="*", default=[0.91])
    p.add_argument("--scale", type=float, default=1.0, help="shrink the AlexNet shapes per side")
    p.add_argument("--masks", metavar="FILE.npz", nargs="*", default=[],
                   help="more masks to measure: .npz files of boolean arrays (e.g. from calibrated pruning)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                   help="time decodes by wall clock or by this process's CPU time (robust on a loaded "
                        "machine; give numba one thread: NUMBA_NUM_THREADS=1)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.set_defaults(run=run)


def measure(set_name: str, masks: list[np.ndarray], sparsity: float | str, timer=best_time) -> dict:
    import zstandard

    n = sum(m.size for m in masks)
    bits = {"H(S)": 0.0, "entropy (Golomb)": 0, "ctx": 0, "zstd-19": 0, "lzma": 0}
    t = {"entropy (Golomb)": 0.0, "ctx": 0.0}
    kept = 0
    for m in masks:
        m = np.asarray(m, dtype=bool)
        m2 = m.reshape(m.shape[0], -1) if m.ndim >= 2 else m.reshape(1, -1)
        kept += int(m.sum())
        bits["H(S)"] += m.size * binary_entropy(m.mean()) if m.size else 0.0
        for label, codec in (("entropy (Golomb)", "entropy"), ("ctx", "ctx")):
            code = encode_mask(m2.ravel(), codec, cols=m2.shape[1])
            words = decode_mask_words(code)
            if not np.array_equal(np.unpackbits(words.view(np.uint8), bitorder="little", count=m.size).view(bool),
                                  m2.ravel()):
                raise AssertionError(f"{codec} mask decode differs")
            bits[label] += code.nbits
            t[label] += timer(lambda: decode_mask_words(code), repeat=3)
        packed = np.packbits(m2.ravel(), bitorder="little").tobytes()
        bits["zstd-19"] += 8 * len(zstandard.ZstdCompressor(level=19).compress(packed))
        bits["lzma"] += 8 * len(lzma.compress(packed, preset=9))
    h = bits["H(S)"]
    row = {"set": set_name, "sparsity": sparsity if isinstance(sparsity, str) else float(sparsity),
           "density": kept / n, "weights": n}
    for k, v in bits.items():
        row[k] = v / n
    row["ctx_vs_H"] = bits["ctx"] / h - 1 if h else 0.0
    row["golomb_Mpos_s"] = n / t["entropy (Golomb)"] / 1e6
    row["ctx_Mpos_s"] = n / t["ctx"] / 1e6
    return row


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rows = []
    sets = []
    if "minilm" in args.sets:
        sets.append(("minilm", minilm_tensors(), args.sparsity))
    if "alexnet-fc" in args.sets:
        sets.append(("alexnet-fc", alexnet_tensors(args.scale), args.alexnet_sparsity))
    for name, tensors, sparsities in sets:
        for s in sparsities:
            rows.append(measure(name, [magnitude_mask(w, s) for _, w in tensors], s, clock(args.clock)))
            print(f"  {name} S={s} done", flush=True)
    for path in args.masks:
        with np.load(path) as z:
            masks = [z[k] for k in z.files]
        rows.append(measure(path, masks, "given", clock(args.clock)))
    columns = [("set", "masks", "s"), ("sparsity", "S", ""), ("H(S)", "H(S)", ".4f"),
               ("entropy (Golomb)", "Golomb", ".4f"), ("ctx", "ctx", ".4f"), ("ctx_vs_H", "ctx vs H(S)", "+.1%"),
               ("zstd-19", "zstd-19", ".4f"), ("lzma", "lzma", ".4f"),
               ("golomb_Mpos_s", "Golomb dec Mpos/s", ".0f"), ("ctx_Mpos_s", "ctx dec Mpos/s", ".0f")]
    print("mask bits per weight (block tables and the ctx model counted)")
    print_table(rows, columns)
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, columns))
    if args.json:
        write_json(args.json, rows)
    print(f"({time.perf_counter() - t0:.0f}s)")
    return 0
