"""How the golden files under tests/golden/data/ were made (run once, 2026-12-05, with the
code of commit 212c835; NOT run by the tests: the point of golden files is that they never
change). Each file exercises one version-2 feature; `<name>-expected.npz` holds every tensor
decoded (float32, or the stored dtype for stored tensors) by the code that wrote it.

    PYTHONPATH=src python tests/golden/make_golden.py tests/golden/data

(module paths as of that commit: io/ has since become format/, checkpoint/ and jobs/.)
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _weights(seed: int, shape=(24, 80), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _affine(rng, symmetric: bool, scale_dtype: str, shape=(16, 96), group=32, bits=4):
    from xorsparse.tensor import CompressConfig, compress_quantized
    from xorsparse.tensor.quant import given_keep, quantize_given, round_to_bfloat16

    codes = rng.integers(-(1 << bits - 1), 1 << bits - 1, shape).astype(np.int8)
    codes[rng.random(shape) < 0.7] = 0
    scales = (rng.random((shape[0], -(-shape[1] // group))) * 0.05).astype(np.float32)
    scales = {"bfloat16": round_to_bfloat16, "float16": lambda s: s.astype(np.float16).astype(np.float32),
              "float32": lambda s: s}[scale_dtype](scales)
    zp = None if symmetric else rng.integers(-2, 3, scales.shape).astype(np.int8)
    qz = quantize_given(codes, scales, zp, bits, group, scale_dtype)
    keep = given_keep(codes, qz.scales, qz.zero_points, group)
    return compress_quantized(keep, qz, "bfloat16", CompressConfig())


CALIBRATION = {"method": "wanda", "model_kind": "causal-lm", "source": "builtin", "samples": 8, "held_out": 2,
               "selection": "first", "max_length": 64, "batch_size": 2, "seed": 0, "sequential": True,
               "calibrated_tensors": 1, "notes": ["golden"], "torch": "2.x", "seconds": {"total": 1.5}}
QUALITY = {"kind": "layer-error", "mean_relative_error": 0.125, "max_relative_error": 0.25,
           "layers": {"w": 0.125}}


def single_files(out: str) -> None:
    from xorsparse.io.container import RawTensor, XspFile, write_xsp

    from xorsparse.tensor import CompressConfig, compress_tensor

    cases = {
        "v2-ctx": {"w": (_weights(1, (32, 96)), CompressConfig(0.85, 2, mask_codec="ctx"))},
        "v2-codebook": {"w": (_weights(2), CompressConfig(0.7, 3, "codebook", codebook_rows=8, mask_codec="bitmask")),
                        "v": (_weights(3, (8, 40)), CompressConfig(0.6, 2, "codebook", mask_codec="entropy"))},
        "v2-log8": {"w": (_weights(4), CompressConfig(0.8, 2, scale_format="log8", mask_codec="entropy")),
                    "u": (_weights(5, (12, 64)), CompressConfig(0.6, 3, "uniform", symmetric=False, group_size=16,
                                                              scale_format="log8", mask_codec="bitmask"))},
        "v2-scale-rows": {"w": (_weights(6), CompressConfig(0.8, 2, scale_rows=4, group_size=32)),
                          "u": (_weights(7, (20, 48), np.float16),
                                CompressConfig(0.7, 4, "uniform", scale_rows=8, mask_codec="bitmask"))},
        "v2-packed": {"w": (_weights(8, (10, 30)), CompressConfig(0.5, 2, packed_below=1 << 20)),
                      "u": (_weights(9, (6, 50)), CompressConfig(0.6, 3, "uniform", packed_below=1 << 20,
                                                               mask_codec="ctx"))},
        "v2-records": {"w": (_weights(10), CompressConfig(0.9, 1, max_n_s=0))},
    }
    for stem, tensors in cases.items():
        cts = {n: compress_tensor(w, cfg) for n, (w, cfg) in tensors.items()}
        first = next(iter(tensors.values()))[1]
        extra = {"calibration": CALIBRATION, "quality": QUALITY} if stem == "v2-records" else None
        raw = {"bias": RawTensor.from_array(np.arange(6, dtype=np.float32))} if stem == "v2-ctx" else {}
        _write(out, stem, lambda p: write_xsp(p, cts, raw, first, {"golden": stem}, extra=extra), XspFile)  # noqa: B023 (called at once)
    rng = np.random.default_rng(12)
    cts = {"sym_bf16": _affine(rng, True, "bfloat16"), "asym_f16": _affine(rng, False, "float16"),
           "asym_f32": _affine(rng, False, "float32", shape=(8, 100), group=24, bits=3)}
    _write(out, "v2-affine", lambda p: write_xsp(p, cts, {}, None, {"golden": "v2-affine"}), XspFile)


def as_f32(x) -> np.ndarray:
    """A decoded tensor (numpy, or torch for bfloat16) as float32 (exact for every stored dtype)."""
    return x.float().numpy() if hasattr(x, "float") and hasattr(x, "numpy") else np.asarray(x, dtype=np.float32)


def _write(out: str, stem: str, write, XspFile) -> None:
    p = os.path.join(out, stem + ".xsp")
    write(p)
    with XspFile(p) as f:
        arrays = {n: as_f32(f.dense(n)) for n in f.names()}
    np.savez_compressed(os.path.join(out, stem + "-expected.npz"), **arrays)


def sharded_folder(out: str) -> None:
    """A two-shard model folder, compressed shard by shard (io/folder.py)."""
    import tempfile

    import torch
    from safetensors.torch import save_file
    from xorsparse.io.checkpoint import XspSet
    from xorsparse.io.folder import compress_folder

    from xorsparse.tensor import CompressConfig

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model")
        os.mkdir(src)
        g = torch.Generator().manual_seed(0)
        weight_map = {}
        for i in range(2):
            sd = {f"layers.{i}.proj.weight": torch.randn(16, 48, generator=g).to(torch.bfloat16),
                  f"layers.{i}.norm.weight": torch.ones(48)}
            f = f"model-{i + 1:05d}-of-00002.safetensors"
            save_file(sd, os.path.join(src, f))
            weight_map.update({n: f for n in sd})
        with open(os.path.join(src, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": weight_map}, fh)
        with open(os.path.join(src, "config.json"), "w") as fh:
            fh.write("{}")
        dst = os.path.join(out, "v2-folder")
        compress_folder(src, dst, CompressConfig(0.75, 2), include=["*.proj.weight"])
    with XspSet(dst) as s:
        arrays = {n: as_f32(s.dense(n)) for n in s.names()}
    np.savez_compressed(os.path.join(out, "v2-folder-expected.npz"), **arrays)


if __name__ == "__main__":
    target = sys.argv[1]
    single_files(target)
    sharded_folder(target)
