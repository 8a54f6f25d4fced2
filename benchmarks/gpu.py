"""The Triton path on a GPU: decode, XorLinear against dense F.linear, and generation.

    python -m benchmarks gpu [--json PATH] [--markdown PATH] [--repeat N] [--no-e2e]
    python -m benchmarks gpu --interpret      # tiny shapes on CPU, Triton interpreter (CI)

For Llama-7B weight shapes (4096x4096, 4096x11008, 11008x4096, fp16) at 90%/2, 70%/3 and
50%/4 (bcq, the defaults otherwise), each weight through the public module, default options
(`XorLinear(ct, None).to("cuda")`):

- decode: `XorLinear.weight` (gpu.decode_dense into a fresh tensor), G weights/s and GB/s
  of output, against the dense device copy of the same weight (`copy_`, the memory floor);
- linear: `XorLinear(x)` against `F.linear(x, W)` on the same decoded weight, batch 1, 16
  and 128; the largest relative difference of the outputs (the fused kernel sums in
  another order than cuBLAS);
- resident bytes per weight (everything the ResidentWeight keeps on the device) and
  bit-exact: the GPU decode against the numba CPU decode, bit for bit.

End to end: a Llama-architecture model from a LlamaConfig with 7B layer shapes, 4 layers,
random weights, fp16 (no download); its Linear weights in the layers take the 90%/2
tensors above (one per shape), the dense model gets their decoded values; greedy generation
of 128 tokens at batch 1, tokens/s of the dense model against the same model loaded with
`load_compressed(..., mode="ondemand")` and moved to the GPU.

Timing: CUDA events around each call, after warm-up, with the L2 cache flushed between
calls (a 256 MiB write), median of --repeat samples; every ratio is to dense measured in
the same run. Compressing the 7B-shaped weights is CPU work (about 40-90 CPU-seconds
here for the 9 tensors): each (shape, config) is compressed once, on the library's thread
pool (tensor/parallel.py), and reused by the end-to-end model.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._report import markdown_table, print_table, write_json, write_text

SHAPES_7B = {"hidden": 4096, "intermediate": 11008}
SHAPES_TINY = {"hidden": 64, "intermediate": 160}
CONFIGS = {"90%/2": (0.9, 2), "70%/3": (0.7, 3), "50%/4": (0.5, 4)}
BATCHES = (1, 16, 128)
BATCHES_TINY = (1, 24)  # the fused kernel, then decode + matmul
E2E_LAYERS = 4
E2E_TOKENS = 128
E2E_CONFIG = "90%/2"
L2_FLUSH_BYTES = 256 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per figure, median (default 30; 1 "
                                                             "with --interpret)")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end generation row")
    p.add_argument("--e2e-tokens", type=int, default=None, help=f"tokens to generate (default {E2E_TOKENS}; "
                                                                 "4 with --interpret)")
    p.add_argument("--e2e-budget", type=float, default=180.0, metavar="SECONDS",
                   help="time allowed to the compressed model's generation: fewer repeats, then fewer "
                        "tokens, when a warm-up says it would take longer (default 180)")
    p.add_argument("--threads", type=int, default=None, help="compression threads (default: one per core)")
    p.add_argument("--interpret", action="store_true",
                   help="a tiny-shape smoke run on the CPU through Triton's interpreter (TRITON_INTERPRET=1): "
                        "checks the path end to end, measures nothing meaningful")
    p.set_defaults(run=run)


class Skip(Exception):
    """The bench cannot run here: one line for the user, non-zero exit."""


def _setup(interpret: bool):
    """(torch, the device, its name): CUDA, or the CPU under Triton's interpreter."""
    if interpret:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise Skip("--interpret needs TRITON_INTERPRET=1 before triton is imported; run it in a fresh process")
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not interpret and not torch.cuda.is_available():
        raise Skip("bench gpu: no CUDA device here (torch.cuda.is_available() is False); "
                   "--interpret runs a tiny smoke version on the CPU")
    try:
        from xorsparse import gpu
    except ImportError as e:
        raise Skip(f"bench gpu: xorsparse.gpu cannot be imported ({e}); pip install 'xorsparse[gpu]'") from None
    if not gpu.is_available():
        raise Skip("bench gpu: the Triton kernels cannot run here (triton missing?); pip install 'xorsparse[gpu]'")
    from xorsparse.torch import modules

    if interpret:
        modules.set_triton_on_cpu(True)
        return torch, torch.device("cpu"), f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"
    dev = torch.device("cuda")
    return torch, dev, torch.cuda.get_device_name(dev)


class Timer:
    """Median milliseconds of a call: CUDA events with the L2 cache flushed before each
    sample on a GPU; perf_counter on the CPU."""

    def __init__(self, torch, device, repeat: int, warmup: int):
        self.torch, self.device, self.repeat, self.warmup = torch, device, repeat, warmup
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if self.cuda else None

    def __call__(self, fn: Callable[[], Any]) -> float:
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeat):
            if self.cuda:
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t))
        return statistics.median(times)


def weight_shapes(dims: dict) -> list[tuple[int, int]]:
    """(out, in) of Llama's Linear weights: attention, MLP gate/up, MLP down."""
    h, i = dims["hidden"], dims["intermediate"]
    return [(h, h), (i, h), (h, i)]


def compress_all(shapes, configs, threads) -> tuple[dict, float]:
    """{(shape, config name): CompressedTensor} of seeded random fp16 weights, on the
    library's thread pool (one pool per config, the configs side by side); and the wall
    seconds it took."""
    import torch

    from xorsparse.tensor import CompressConfig
    from xorsparse.tensor.parallel import compress_many

    def loader(shape: tuple[int, int]) -> Callable[[], Any]:
        seed = 1000 * shape[0] + shape[1]  # the same weight for every config
        return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.float16)

    def one_config(name: str) -> dict:
        sparsity, bits = CONFIGS[name]
        jobs = [(f"{shape[0]}x{shape[1]}", loader(shape), None) for shape in shapes]
        got = compress_many(jobs, CompressConfig(sparsity, bits), threads=threads)
        return {(shape, name): ct for (_, ct, _), shape in zip(got, shapes)}

    out: dict = {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(configs)) as pool:  # every (shape, config) at once: one core each
        for part in pool.map(one_config, configs):
            out.update(part)
    return out, time.perf_counter() - t0


def bits_of(t) -> bytes:
    import torch

    t = t.detach().cpu().contiguous()
    return (t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t).numpy().tobytes()


def weight_row(torch, dev, timer, ct, shape, cfg_name, batches) -> dict:
    import torch.nn.functional as F

    from xorsparse.tensor import decompress_tensor
    from xorsparse.torch import XorLinear

    n = shape[0] * shape[1]
    ref = decompress_tensor(ct, "torch")  # the numba CPU decode
    t = time.perf_counter()
    mod = XorLinear(ct, None).to(dev)  # the public module, default options
    if dev.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t
    w = ref.to(dev)
    decoded = mod.weight
    row: dict[str, Any] = {"shape": f"{shape[0]}x{shape[1]}", "config": cfg_name, "weights": n,
                           "file_bits_per_weight": ct.total_bits / n, "build_s": build_s,
                           "resident_bytes_per_weight": mod.xw.device_nbytes() / n,
                           "bit_exact": bits_of(decoded) == bits_of(ref)}
    row["resident_bits_per_weight"] = 8 * row["resident_bytes_per_weight"]
    del decoded
    row["copy_ms"] = timer(functools.partial(torch.Tensor.copy_, torch.empty_like(w), w))
    row["decode_ms"] = timer(lambda: mod.weight)
    row["decode_gweights_s"] = n / row["decode_ms"] / 1e6
    row["decode_gb_s"] = 2 * n / row["decode_ms"] / 1e6
    row["decode_over_copy"] = row["decode_ms"] / row["copy_ms"]
    g = torch.Generator().manual_seed(7)
    for b in batches:
        x = torch.randn(b, shape[1], generator=g).to(torch.float16).to(dev)
        with torch.no_grad():
            want, got = F.linear(x, w), mod(x)
            row[f"rel_err_b{b}"] = float((got.float() - want.float()).abs().max() / want.float().abs().max())
            row[f"dense_ms_b{b}"] = timer(functools.partial(F.linear, x, w))
            row[f"xor_ms_b{b}"] = timer(functools.partial(mod, x))
        row[f"ratio_b{b}"] = row[f"xor_ms_b{b}"] / row[f"dense_ms_b{b}"]
    return row


def e2e_row(torch, dev, cts, dims, layers, tokens, repeat, budget) -> dict:
    """Greedy generation, dense fp16 against load_compressed(ondemand) on the device."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        return {"skipped": f"transformers is not installed ({e})"}
    from torch import nn

    from xorsparse.format.container import write_xsp
    from xorsparse.tensor import decompress_tensor
    from xorsparse.torch import load_compressed, resident_bytes

    h, i = dims["hidden"], dims["intermediate"]
    cfg = LlamaConfig(vocab_size=32000 if h >= 1024 else 128, hidden_size=h, intermediate_size=i,
                      num_hidden_layers=layers, num_attention_heads=32 if h >= 1024 else 4,
                      num_key_value_heads=32 if h >= 1024 else 4, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device(dev):
        dense = LlamaForCausalLM(cfg).to(torch.float16).eval()
    decoded = {shape: decompress_tensor(ct, "torch").to(dev) for (shape, name), ct in cts.items() if name == E2E_CONFIG}
    compressed = {}
    with torch.no_grad():
        for name, mod in dense.model.layers.named_modules():
            if isinstance(mod, nn.Linear):
                shape = tuple(mod.weight.shape)
                mod.weight.copy_(decoded[shape])
                compressed[f"model.layers.{name}.weight"] = cts[(shape, E2E_CONFIG)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "layers.xsp")
        write_xsp(path, compressed, {})
        t = time.perf_counter()
        xor = load_compressed(_clone(dense), path, mode="ondemand").to(dev)  # what a user runs
        if dev.type == "cuda":
            torch.cuda.synchronize()
        load_s = time.perf_counter() - t
    prompt = torch.tensor([[1, 450, 4996, 17354, 1701, 432, 17204, 975]], device=dev) % cfg.vocab_size

    def generate(model, n):
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    def tokens_per_s(model, n, runs):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            out = generate(model, n)
            times.append(time.perf_counter() - t)
        return n / statistics.median(times), out

    warm = min(8, tokens)
    with torch.no_grad():
        generate(dense, warm)
        for _ in range(2 if repeat > 1 else 1):  # the first compiles the kernels
            t = time.perf_counter()
            generate(xor, warm)
            per_token = (time.perf_counter() - t) / warm
        runs = max(1, min(repeat, int(budget / max(per_token * tokens, 1e-9))))
        n = tokens if per_token * tokens <= budget else max(warm, int(budget / per_token))
        dense_tps, dense_out = tokens_per_s(dense, n, runs)
        xor_tps, xor_out = tokens_per_s(xor, n, runs)
    same = int((dense_out == xor_out).all(0).long().cumprod(0).sum()) - prompt.shape[1]
    layer_bytes = sum(p.numel() * p.element_size() for p in dense.model.layers.parameters())
    xor_layer_bytes = sum(m.xw.device_nbytes() for m in xor.modules() if hasattr(m, "xw"))
    xor_layer_bytes += sum(p.numel() * p.element_size() for p in xor.model.layers.parameters())
    return {"model": f"Llama ({layers} layers, hidden {h}, intermediate {i}, fp16, random weights)",
            "config": E2E_CONFIG, "tokens": n, "runs": runs, "dense_tokens_s": dense_tps, "xor_tokens_s": xor_tps,
            "ratio": xor_tps / dense_tps, "load_s": load_s, "same_tokens": same,
            "layers_bytes_dense": layer_bytes, "layers_bytes_xor": xor_layer_bytes,
            "model_bytes_dense": resident_bytes(dense)}


def _clone(model):
    import copy

    return copy.deepcopy(model)


COLUMNS = [("shape", "shape", ""), ("config", "config", ""), ("resident_bits_per_weight", "res bits/w", ".3f"),
           ("decode_ms", "decode ms", ".3f"), ("decode_gweights_s", "G w/s", ".1f"), ("decode_gb_s", "GB/s", ".1f"),
           ("copy_ms", "copy ms", ".3f"), ("decode_over_copy", "dec/copy", ".2f")]


def linear_columns(batches) -> list[tuple[str, str, str]]:
    cols = [("shape", "shape", ""), ("config", "config", "")]
    for b in batches:
        cols += [(f"dense_ms_b{b}", f"dense b{b} ms", ".3f"), (f"xor_ms_b{b}", f"xor b{b} ms", ".3f"),
                 (f"ratio_b{b}", f"ratio b{b}", ".2f")]
    return cols + [("bit_exact", "bit-exact", "")]


E2E_COLUMNS = [("config", "config", ""), ("tokens", "tokens", "d"), ("dense_tokens_s", "dense tok/s", ".1f"),
               ("xor_tokens_s", "xor tok/s", ".1f"), ("ratio", "ratio", ".2f"), ("same_tokens", "same tokens", "d"),
               ("load_s", "load s", ".1f")]


def run(args: argparse.Namespace) -> int:
    try:
        torch, dev, device_name = _setup(args.interpret)
    except Skip as e:
        print(e, file=sys.stderr)
        return 2
    dims = SHAPES_TINY if args.interpret else SHAPES_7B
    batches = BATCHES_TINY if args.interpret else BATCHES
    repeat = args.repeat or (1 if args.interpret else 30)
    tokens = args.e2e_tokens or (4 if args.interpret else E2E_TOKENS)
    shapes = weight_shapes(dims)
    configs = list(args.configs)
    if args.e2e and E2E_CONFIG not in configs:
        configs.append(E2E_CONFIG)
    import triton

    print(f"device: {device_name}; torch {torch.__version__}, triton {triton.__version__}")
    cts, compress_s = compress_all(shapes, configs, args.threads)
    print(f"compressed {len(cts)} weights in {compress_s:.1f} s (CPU, thread pool)")
    timer = Timer(torch, dev, repeat, warmup=1 if args.interpret else 5)
    rows: list[dict] = []
    result = {"device": device_name, "interpret": args.interpret, "torch": torch.__version__,
              "triton": triton.__version__, "repeat": repeat, "compress_s": compress_s, "rows": rows, "e2e": None}
    for name in args.configs:
        for shape in shapes:
            rows.append(weight_row(torch, dev, timer, cts[(shape, name)], shape, name, batches))
            print(f"  {rows[-1]['shape']} {name}: decode {rows[-1]['decode_ms']:.3f} ms, "
                  f"batch {batches[0]} ratio {rows[-1][f'ratio_b{batches[0]}']:.2f}", flush=True)
            if args.json:  # a run cut short still leaves what it measured
                write_json(args.json, result)
    del timer
    e2e = None
    if args.e2e:
        e2e = e2e_row(torch, dev, cts, dims, 2 if args.interpret else E2E_LAYERS, tokens, 1 if args.interpret else 3,
                      args.e2e_budget)
        result["e2e"] = e2e
    print(f"\nDecode to dense on {device_name} (fp16; ratios to the dense device copy, same run)")
    print_table(rows, COLUMNS)
    print(f"\nXorLinear against dense F.linear on {device_name} (ratio = xor / dense time)")
    print_table(rows, linear_columns(batches))
    if e2e is not None:
        print(f"\nGreedy generation at batch 1 on {device_name}: {e2e.get('model', '')}")
        if "skipped" in e2e:
            print(f"  skipped: {e2e['skipped']}")
        else:
            print_table([e2e], E2E_COLUMNS)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        md = [f"Device: {device_name} (torch {torch.__version__}, triton {triton.__version__}); median of {repeat}.",
              "", "Decode to dense (fp16):", "", markdown_table(rows, COLUMNS),
              "XorLinear against dense F.linear (ratio = xor / dense time):", "",
              markdown_table(rows, linear_columns(batches))]
        if e2e is not None:
            md += ["Greedy generation at batch 1:", "",
                   f"skipped: {e2e['skipped']}\n" if "skipped" in e2e else markdown_table([e2e], E2E_COLUMNS)]
        write_text(args.markdown, "\n".join(md))
    ok = all(r["bit_exact"] for r in rows)
    if not ok:
        print("NOT bit-exact: some GPU decode differs from the numba decode", file=sys.stderr)
    return 0 if ok else 1
