"""compressed-tensors checkpoints through xorsparse and back: sizes against the bound.

    python -m benchmarks ct [--json PATH] [--markdown PATH]

Each configuration builds a Llama-shaped model from a config with random weights (nothing
is downloaded), prunes its Linear layers by magnitude, quantizes them with
compressed-tensors' own scales and compressors, and saves the checkpoint as llm-compressor
would. Then: `xorsparse compress` (codes, scales and zero points kept as they are),
`xorsparse decompress --format compressed-tensors`, and a bit-for-bit comparison of
compressed-tensors' dequantization of the original and of the round trip.

Sizes count the quantized Linear weights only (their compressed-tensors tensors against
their .xsp parts). The bound for xorsparse is H(S) + (1-S)q bits per weight plus the scales
and zero points as stored; the predicted factor is compressed-tensors' bytes over that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from ._report import markdown_table, print_table, write_json, write_text

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
BENCH = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=2048, max_position_embeddings=128)


def llama(shape: dict, seed: int = 0, dtype: str = "bfloat16"):
    """A Llama-shaped causal LM with random weights, from a config (offline)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, dtype=dtype, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()


def prune_(model, sparsity: float) -> None:
    """Magnitude pruning of every Linear but lm_head, zeros left in place (as SparseGPT and
    Wanda save their output)."""
    import torch

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and "lm_head" not in name:
                w = m.weight
                k = int(round(sparsity * w.numel()))
                if k:
                    thr = w.abs().float().flatten().kthvalue(k).values
                    w[w.abs().float() <= thr] = 0


def save_compressed_tensors(model, path: str, strategy: str = "group", fmt: str = "pack-quantized",
                            symmetric: bool = True, bits: int = 4, group_size: int = 32,
                            max_shard_size: str | None = None) -> None:
    """Quantize with compressed-tensors' own min-max scales, compress with its compressor for
    `fmt`, save as llm-compressor does (save_pretrained, then the compressor's config)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group_size if strategy == "group" else None)
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                            ignore=["lm_head"])
    apply_quantization_config(model, qc)
    for _, m in model.named_modules():
        scheme = getattr(m, "quantization_scheme", None)
        if scheme is None:
            continue
        w = m.weight.data
        if strategy == "group":
            g = w.unflatten(-1, (w.shape[-1] // group_size, group_size))
            lo, hi = g.amin(-1), g.amax(-1)
        elif strategy == "channel":
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        else:
            lo, hi = w.min().reshape(1), w.max().reshape(1)
        scale, zp = calculate_qparams(lo, hi, scheme.weights)
        m.weight_scale.data = scale.to(m.weight_scale.dtype).reshape(m.weight_scale.shape)
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data = zp.to(m.weight_zero_point.dtype).reshape(m.weight_zero_point.shape)
    comp = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    comp.compress_model(model)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kw)
    comp.update_config(path)


def save_legacy_bitmask(model, path: str) -> None:
    """The legacy `sparse-bitmask` layout (compressed-tensors <= 0.14 wrote it; 0.20 ships no
    compressor for it): for each pruned Linear weight M.weight, `M.shape`, `M.compressed` (the
    nonzero values, row-major), `M.bitmask` (numpy.packbits of each row, little bit order),
    `M.row_offsets` (index of each row's first value)."""
    import torch
    from safetensors.torch import save_file

    model.save_pretrained(path)
    tensors: dict[str, Any] = {}
    for name, p in model.state_dict().items():
        module = name[: -len(".weight")]
        if name.endswith(".weight") and p.dim() == 2 and "lm_head" not in name and "embed" not in name:
            mask = p != 0
            counts = mask.sum(dim=1)
            tensors[f"{module}.shape"] = torch.tensor(list(p.shape))
            tensors[f"{module}.compressed"] = p[mask].contiguous()
            tensors[f"{module}.bitmask"] = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
            tensors[f"{module}.row_offsets"] = torch.cumsum(counts, 0) - counts
        else:
            tensors[name] = p.contiguous()
    os.remove(os.path.join(path, "model.safetensors"))
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "dense",
                                  "sparsity_config": {"format": "sparse-bitmask", "global_sparsity": 0.0,
                                                      "sparsity_structure": "unstructured",
                                                      "targets": ["Linear"], "ignore": ["lm_head"]},
                                  "config_groups": {}}
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)


def ct_dequantized(path: str) -> dict:
    """compressed-tensors' own dequantization of a folder's quantized weights (model-free)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    from xorsparse.checkpoint.folder import xsp_files  # the same shard discovery for any safetensors folder

    with open(os.path.join(path, "config.json")) as f:
        qc = QuantizationConfig.model_validate(json.load(f)["quantization_config"])
    tensors = {}
    for f in xsp_files(path):
        tensors.update(load_file(f))
    out = {}
    for scheme in qc.config_groups.values():
        fmt = scheme.format or qc.format or infer_module_format(torch.nn.Linear, scheme)
        comp = BaseCompressor.get_value_from_registry(getattr(fmt, "value", fmt))
        params = comp.compression_param_names(scheme)
        modules = [n[: -len(params[0]) - 1] for n in tensors if n.endswith("." + params[0])
                   and n[: -len(params[0]) - 1] + ".weight_scale" in tensors]
        for m in modules:
            sd = {p: tensors[f"{m}.{p}"] for p in params if f"{m}.{p}" in tensors}
            out[m + ".weight"] = comp.decompress(sd, scheme)["weight"]
    return out


CONFIGS = [  # (sparsity, bits, strategy, format, symmetric)
    (0.5, 4, "group", "pack-quantized", True),
    (0.5, 4, "group", "pack-quantized", False),
    (0.7, 4, "group", "pack-quantized", True),
    (0.9, 4, "group", "pack-quantized", True),
    (0.5, 8, "channel", "int-quantized", True),
    (0.7, 8, "channel", "int-quantized", False),
    (0.9, 8, "channel", "int-quantized", True),
]


def _bytes_of(path: str) -> dict[str, int]:
    from xorsparse.checkpoint.folder import xsp_files
    from xorsparse.checkpoint.stats import entry_bytes

    out: dict[str, int] = {}
    for f in xsp_files(path):
        out.update(entry_bytes(f))
    return out


def run_config(work: str, shape: dict, sparsity: float, bits: int, strategy: str, fmt: str, symmetric: bool,
               group_size: int) -> dict:
    import torch

    from xorsparse.checkpoint.xspset import XspSet
    from xorsparse.jobs.checkpoint import compress_checkpoint
    from xorsparse.tensor.maskcode import binary_entropy
    from xorsparse.tensor.pipeline import CompressConfig

    src, xsp, back = (os.path.join(work, d) for d in ("ct", "xsp", "back"))
    for d in (src, xsp, back):
        shutil.rmtree(d, ignore_errors=True)
    model = llama(shape)
    prune_(model, sparsity)
    save_compressed_tensors(model, src, strategy, fmt, symmetric, bits, group_size)
    t0 = time.perf_counter()
    report = compress_checkpoint(src, xsp, CompressConfig(sparsity=0.0))
    t_compress = time.perf_counter() - t0
    from xorsparse.jobs.checkpoint import decompress_checkpoint

    decompress_checkpoint(xsp, back, output_format="compressed-tensors")
    ref, got = ct_dequantized(src), ct_dequantized(back)
    identical = list(ref) == list(got) and all(torch.equal(ref[k].view(torch.int16), got[k].view(torch.int16))
                                               for k in ref)
    with XspSet(xsp) as xs:
        ours = {k: xs.dense(k, "torch") for k in ref}
        cts = {k: xs.compressed(k) for k in ref}
    identical = identical and all(torch.equal(ref[k].view(torch.int16), ours[k].view(torch.int16)) for k in ref)
    ct_sizes = _bytes_of(src)
    xs_sizes = _bytes_of(xsp)
    ct_bytes = sum(v for k, v in ct_sizes.items() if k.rsplit(".", 1)[0] + ".weight" in ref)
    xsp_bytes = sum(xs_sizes[k] for k in ref)
    weights = sum(ct.numel for ct in cts.values())
    kept = sum(ct.kept for ct in cts.values())
    s = 1 - kept / weights
    params = sum(ct.scale_bits for ct in cts.values())
    bound_bits = (binary_entropy(s) + (1 - s) * bits) * weights + params
    return {
        "sparsity": sparsity, "bits": bits, "scheme": f"{strategy}{group_size if strategy == 'group' else ''} "
                                                     f"{'sym' if symmetric else 'asym'}",
        "format": fmt, "weights": weights, "measured_sparsity": s,
        "ct_bytes": ct_bytes, "xsp_bytes": xsp_bytes, "bound_bytes": bound_bits / 8,
        "ct_bits_per_weight": 8 * ct_bytes / weights, "xsp_bits_per_weight": 8 * xsp_bytes / weights,
        "bound_bits_per_weight": bound_bits / weights,
        "factor": ct_bytes / xsp_bytes, "predicted_factor": 8 * ct_bytes / bound_bits,
        "of_predicted": (ct_bytes / xsp_bytes) / (8 * ct_bytes / bound_bits),
        "whole_folder_ratio": report.total.ratio, "compress_seconds": t_compress, "bit_identical": identical,
    }


COLUMNS = [("sparsity", "S", ".2f"), ("bits", "q", "d"), ("scheme", "scheme", ""), ("format", "format", ""),
           ("ct_bits_per_weight", "CT b/w", ".3f"), ("xsp_bits_per_weight", "xsp b/w", ".3f"),
           ("bound_bits_per_weight", "bound b/w", ".3f"), ("factor", "CT/xsp", ".3f"),
           ("predicted_factor", "predicted", ".3f"), ("of_predicted", "of predicted", ".1%"),
           ("compress_seconds", "compress s", ".1f"), ("bit_identical", "bit-identical", "")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="a tiny model (a smoke test, seconds)")
    p.add_argument("--group-size", type=int, default=128, help="columns per scale for group schemes")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        from loguru import logger

        logger.disable("compressed_tensors")  # its format-inference warnings, once per module
    except ImportError:
        pass
    shape = TINY if args.tiny else BENCH
    group = 32 if args.tiny else args.group_size
    configs = CONFIGS[:2] if args.tiny else CONFIGS
    rows = []
    with tempfile.TemporaryDirectory(prefix="xorsparse-bench-ct-") as work:
        for sparsity, bits, strategy, fmt, symmetric in configs:
            rows.append(run_config(work, shape, sparsity, bits, strategy, fmt, symmetric, group))
    print(f"Llama-shaped model from a config, {rows[0]['weights']} quantized Linear weights; compressed-tensors "
          "bytes of those weights (packed codes, scales, zero points) against their .xsp parts")
    print_table(rows, COLUMNS)
    if args.json:
        write_json(args.json, rows)
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, COLUMNS))
    return 0 if all(r["bit_identical"] for r in rows) else 1
