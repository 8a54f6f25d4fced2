"""The bytes a writer produces for a set of options, pinned: refactoring the configs, the
registries or the writer must not change what files contain (configs serialize into every
file's metadata). A deliberate format change updates these digests together with FORMAT.md.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from xorsparse.format.container import RawTensor, write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor

OPTIONS = {
    "default": {"scale_rows": 1, "scale_format": "float16"},  # the defaults before "auto"
    "bitmask-uniform-asym-groups": {"sparsity": 0.6, "bits": 3, "quantizer": "uniform", "symmetric": False, "group_size": 16,
                                        "mask_codec": "bitmask", "scale_rows": 1, "scale_format": "float16"},
    "entropy-bcq-ns0": {"sparsity": 0.8, "bits": 1, "max_n_s": 0, "mask_codec": "entropy", "scale_rows": 1,
                        "scale_format": "float16"},
    "ctx-codebook-rows": {"sparsity": 0.7, "bits": 3, "quantizer": "codebook", "codebook_rows": 4, "mask_codec": "ctx",
                          "scale_rows": 1, "scale_format": "float16"},
    "log8-scale-rows": {"sparsity": 0.85, "bits": 2, "scale_format": "log8", "scale_rows": 4, "group_size": 32},
    "auto-layout": {"sparsity": 0.9, "bits": 2, "scale_rows": "auto", "scale_format": "auto", "error_budget": 0.05},
    "packed": {"sparsity": 0.5, "bits": 2, "packed_below": 1 << 20, "scale_rows": 1,
               "scale_format": "float16"},
    "window-seed": {"sparsity": 0.9, "bits": 2, "max_window": 64, "seed": 7, "bcq_iters": 3, "scale_rows": 1,
                    "scale_format": "float16"},
    "global-wanda-fields": {"sparsity": 0.5, "bits": 4, "quantizer": "uniform", "global_sparsity": True,
                                "calib_damp": 0.1, "calib_block": 64, "calib_passes": 1, "scale_rows": 1,
                            "scale_format": "float16"},
}

# Changed by main's issue 21 (cpu-speed) and nothing else: default, log8-scale-rows and
# window-seed by the `auto` mask rule (ctx only where it saves CTX_MIN_SAVING; the old digests
# come back with the old rule), auto-layout by that and the auto scale search's new order.
PINNED = {
    "auto-layout": "6b3a76fc29fb1af1ee51d0362ba5b44552a7ad8940848272a4e882c9652f7f47",
    "bitmask-uniform-asym-groups": "3b41c33da95f18af254b43a3fb2621ba6806da648d36a862878dcef753b4f998",
    "ctx-codebook-rows": "97df3595aa2aab7782e72d057cb08d11d712521ef9cadf4688405efc321bcbb9",
    "default": "10ee1ef6e88732d86e47bbc71c43e78936c7823fbafec7b887f3b4f6a7233b30",
    "entropy-bcq-ns0": "ab264d9dc0ef57e0910e6160bca1ec1e082ada08c9ddfe4fe0aaa16ee8b8933a",
    "global-wanda-fields": "c19881454d6d9ade93e7716007b41d9d1eab0ec44ce7eeb6e4e9f4b4ba4453df",
    "log8-scale-rows": "d2e5c6d532925d6831cec54beb4dfd4c93b753a429e4bab749f051d061c1fe9a",
    "packed": "a85c24018e0285e31a4acf26fe320f78e6605003de3134c4f0aa4dbbe6ac1f02",
    "window-seed": "b1a80275474d1f1b80de26336786415724678b3e1a943957538508c69a9b24a0",
}


def _file_bytes(tmp_path, opts: dict) -> bytes:
    cfg = CompressConfig(**opts)
    w = np.random.default_rng(5).standard_normal((24, 96)).astype(np.float32)
    p = tmp_path / "x.xsp"
    write_xsp(p, {"w": compress_tensor(w, cfg)}, {"b": RawTensor.from_array(np.arange(3, dtype=np.float32))},
              cfg, {"order": ["w", "b"]})
    return p.read_bytes()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_written_bytes_are_pinned(tmp_path, name):
    digest = hashlib.sha256(_file_bytes(tmp_path, OPTIONS[name])).hexdigest()
    assert digest == PINNED[name], f"{name}: the bytes written changed"
