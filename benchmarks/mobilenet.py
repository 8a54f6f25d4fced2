"""A MobileNetV2-shaped conv net (depthwise layers, short rows, small tensors) through the codec.

Per-row float16 scales cost 16q bits per row: nothing on a 4096-wide row, but a depthwise
3x3 convolution has rows of 9 weights, and the expansion 1x1 convolutions rows of 16-160.
This builds MobileNetV2's 52 weight tensors from its configuration (Sandler et al. 2018:
width 1.0, 1000 classes) with random weights, nothing downloaded: Kaiming-normal per layer
times a log-normal scale per output channel (what folding batch norm into a trained
convolution leaves), and compares total bits per weight with H(S) + (1-S)q under several
configurations, all scales included.

    python -m benchmarks mobilenet --sparsity 0.8 --bits 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.pipeline import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize

from ._report import markdown_table, print_table, write_json, write_text

# (expansion t, output channels c, repeats n, stride s) of MobileNetV2's inverted residual blocks
INVERTED_RESIDUAL = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1)]


def mobilenet_v2_shapes(classes: int = 1000, width: float = 1.0) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, weight shape, fan_in) of every conv and linear weight, in model order."""

    def ch(c: float) -> int:  # torchvision's _make_divisible(c, 8)
        v = max(8, int(c + 4) // 8 * 8)
        return v + 8 if v < 0.9 * c else v

    out = []
    cin = ch(32 * width)
    out.append(("features.0.conv", (cin, 3, 3, 3), 27))
    i = 1
    for t, c, n, _ in INVERTED_RESIDUAL:
        cout = ch(c * width)
        for _ in range(n):
            hidden = cin * t
            if t != 1:
                out.append((f"features.{i}.expand", (hidden, cin, 1, 1), cin))
            out.append((f"features.{i}.depthwise", (hidden, 1, 3, 3), 9))
            out.append((f"features.{i}.project", (cout, hidden, 1, 1), hidden))
            cin = cout
            i += 1
    last = ch(1280 * max(1.0, width))
    out.append((f"features.{i}.conv", (last, cin, 1, 1), cin))
    out.append(("classifier", (classes, last), last))
    return out


def random_weights(seed: int = 0, channel_spread: float = 0.5, width: float = 1.0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, shape, fan_in in mobilenet_v2_shapes(width=width):
        w = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        scale = rng.lognormal(0.0, channel_spread, (shape[0],) + (1,) * (len(shape) - 1)).astype(np.float32)
        out.append((name, w * scale))
    return out


PER_ROW_F16 = dict(scale_rows=1, scale_format="float16")  # the layout before the defaults became auto
CONFIGS = {  # short name: (label, CompressConfig options)
    "defaults": ("defaults (only sparsity and bits given)", {}),
    "v1": ("bcq, version-1 layout (per-row fp16 scales, Golomb mask, XOR planes)",
           dict(mask_codec="entropy", packed_below=0, **PER_ROW_F16)),
    "ctx": ("bcq + ctx mask", dict(mask_codec="ctx", packed_below=0, **PER_ROW_F16)),
    "scales": ("bcq + ctx + scale_rows auto",
               dict(mask_codec="ctx", scale_rows="auto", scale_format="float16", packed_below=0)),
    "packed": ("bcq + ctx + scale_rows auto + packed below 65536",
               dict(mask_codec="ctx", scale_rows="auto", scale_format="float16", packed_below=1 << 16)),
    "bcq_auto": ("bcq + scale_rows and scale_format auto", dict(scale_rows="auto", scale_format="auto")),
    "codebook": ("codebook + ctx + scale_rows auto + packed below 65536",
                 dict(quantizer="codebook", mask_codec="ctx", scale_rows="auto", scale_format="float16",
                      packed_below=1 << 16)),
    "log8": ("codebook + ctx + scale_rows and scale_format auto + packed below 65536",
             dict(quantizer="codebook", mask_codec="ctx", scale_rows="auto", scale_format="auto",
                  packed_below=1 << 16)),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sparsity", type=float, default=0.8)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--error-budget", type=float, default=0.01, help="for scale_rows auto (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier (default 1.0)")
    p.add_argument("--channel-spread", type=float, default=0.5,
                   help="sigma of the log-normal per-output-channel scale (0: plain Kaiming init)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS),
                   help="which configurations to run (default: all)")
    p.add_argument("--per-tensor", action="store_true", help="also print every tensor of the last configuration")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    tensors = random_weights(args.seed, args.channel_spread, args.width)
    n = sum(w.size for _, w in tensors)
    norm2 = sum(float(np.sum(w.astype(np.float64) ** 2)) for _, w in tensors)
    print(f"MobileNetV2 shapes: {len(tensors)} weight tensors, {n} weights "
          f"({sum(1 for k, _ in tensors if 'depthwise' in k)} depthwise); S={args.sparsity}, q={args.bits}, "
          f"channel spread {args.channel_spread}, error budget {args.error_budget}")
    rows, per_tensor = [], []
    ok = True
    for key in args.configs:
        label, kw = CONFIGS[key]
        cfg = CompressConfig(args.sparsity, args.bits, error_budget=args.error_budget, **kw)
        tot = dict(total=0, value=0, scale=0, mask=0, kept=0, err2=0.0, dw_total=0, dw_n=0)
        per_tensor = []
        for name, w in tensors:
            ct = compress_tensor(w, cfg)
            ref = reference_prune_quantize(w, cfg)
            ok &= decompress_tensor(ct).tobytes() == ref.tobytes()
            tot["total"] += ct.total_bits
            tot["value"] += ct.value_bits
            tot["scale"] += ct.scale_bits
            tot["mask"] += ct.mask.nbits
            tot["kept"] += ct.kept if ct.kept >= 0 else int((ref != 0).sum())
            tot["err2"] += float(np.sum((ref.astype(np.float64) - w) ** 2))
            if "depthwise" in name:
                tot["dw_total"] += ct.total_bits
                tot["dw_n"] += w.size
            per_tensor.append({"tensor": name, "shape": "x".join(map(str, w.shape)),
                               "scale_rows": ct.quant.scale_rows, "mask": ct.mask.codec,
                               "planes": "packed" if ct.planes and getattr(ct.planes[0], "kind", "") == "packed"
                               else "xor", "total_bits_per_weight": ct.total_bits / w.size,
                               "scale_bits_per_weight": ct.scale_bits / w.size, "efficiency": ct.efficiency})
        s = 1 - tot["kept"] / n
        bound = binary_entropy(s) + (1 - s) * args.bits
        rows.append({"config": label, "quantizer": cfg.quantizer, "sparsity": s,
                     "total_bits_per_weight": tot["total"] / n, "bound": bound,
                     "over_bound": tot["total"] / n / bound - 1,
                     "scale_bits_per_weight": tot["scale"] / n, "mask_bits_per_weight": tot["mask"] / n,
                     "depthwise_bits_per_weight": tot["dw_total"] / max(tot["dw_n"], 1),
                     "rel_error": float(np.sqrt(tot["err2"] / norm2)), "lossless": ok})
    columns = [("config", "configuration", "s"), ("total_bits_per_weight", "total b/w", ".4f"),
               ("bound", "H(S)+(1-S)q", ".4f"), ("over_bound", "vs bound", "+.1%"),
               ("scale_bits_per_weight", "scales b/w", ".4f"), ("mask_bits_per_weight", "mask b/w", ".4f"),
               ("depthwise_bits_per_weight", "depthwise b/w", ".3f"), ("rel_error", "rel. error", ".4f"),
               ("lossless", "lossless", "")]
    print_table(rows, columns)
    if args.per_tensor:
        print()
        print_table(per_tensor, [("tensor", "tensor", "s"), ("shape", "shape", "s"), ("scale_rows", "scale_rows", "d"),
                                 ("mask", "mask", "s"), ("planes", "planes", "s"),
                                 ("total_bits_per_weight", "total b/w", ".3f"),
                                 ("scale_bits_per_weight", "scales b/w", ".3f"), ("efficiency", "eff", ".3f")])
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, columns))
    if args.json:
        write_json(args.json, {"configs": rows, "per_tensor_last": per_tensor})
    print(f"({time.perf_counter() - t0:.0f}s)")
    return 0 if ok else 1
