"""`check_backwards_compatibility`: a golden file decodes to its expected arrays on every backend.

In the spirit of numcodecs' helper of that name: golden files are written once by an older
release (tests/golden/make_golden.py says how) and never regenerated, so a change that alters
what a reader makes of existing bytes fails here, whichever decoder it touches.
"""

from __future__ import annotations

import os

import numpy as np

from xorsparse.format.container import XspFile
from xorsparse.tensor.pipeline import decompress_tensor, decompress_tensor_unfused

from .. import reference

DATA = os.path.join(os.path.dirname(__file__), "data")


def as_f32(x) -> np.ndarray:
    """numpy, or torch (bfloat16), as float32: exact for every dtype a tensor is stored in."""
    if hasattr(x, "detach"):
        return x.detach().float().numpy()
    return np.asarray(x, dtype=np.float32)


def backends(path: str, name: str) -> dict[str, np.ndarray]:
    """The compressed tensor `name` of `path` decoded by each decoder we have, as float32."""
    out: dict[str, np.ndarray] = {}
    with XspFile(path) as f:
        ct = f.compressed(name)
        out["container"] = as_f32(f.dense(name))
    out["fused"] = as_f32(decompress_tensor(ct, "torch" if ct.dtype == "bfloat16" else None))
    out["fused-serial"] = as_f32(decompress_tensor(ct, "torch" if ct.dtype == "bfloat16" else None, parallel=False))
    out["unfused"] = as_f32(decompress_tensor_unfused(ct, "torch" if ct.dtype == "bfloat16" else None))
    try:
        from xorsparse.torch.modules import XorWeight
    except ImportError:  # torch is optional
        pass
    else:
        import torch

        xw = XorWeight(ct)
        for backend in ("numba", "torch"):
            out[f"torch-{backend}"] = as_f32(xw.dense(backend=backend))
        if torch.cuda.is_available():  # the torch decoder on the GPU, where there is one
            out["torch-cuda"] = as_f32(XorWeight(ct).to("cuda").dense().cpu())
    code = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(ct.dtype, "F32")
    values = [reference.round_scale_dtype(v, code) for v in reference.decode_tensor(path, name)]  # section 4's last step
    out["reference"] = np.array(values, dtype=np.float32).reshape(ct.shape)
    return out


def check_backwards_compatibility(path: str, expected: dict[str, np.ndarray]) -> list[str]:
    """Every tensor of the file `path` equals `expected[name]` bit for bit on every backend
    (stored tensors through the container). Returns the names of the compressed tensors."""
    with XspFile(path) as f:
        compressed = [n for n in f.names() if n in f.desc.tensors]
        assert sorted(f.names()) == sorted(expected), path
        for n in f.names():
            if n not in f.desc.tensors:
                assert as_f32(f.dense(n)).tobytes() == expected[n].tobytes(), (path, n)
    for n in compressed:
        for backend, got in backends(path, n).items():
            assert got.shape == expected[n].shape, (path, n, backend)
            assert got.tobytes() == expected[n].tobytes(), f"{path}: {n}: {backend} differs from the golden array"
    return compressed
