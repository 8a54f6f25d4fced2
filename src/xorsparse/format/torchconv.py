"""Moving raw tensor bytes between torch and safetensors codes (numpy lacks bfloat16)."""

from __future__ import annotations

import numpy as np

TORCH_TO_ST = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
               "uint8": "U8", "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",
               "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64"}
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}


def torch_dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def raw_from_torch(t):
    """(safetensors code, shape, bytes) of a torch tensor, bit for bit."""
    import torch

    name = torch_dtype_name(t)
    code = TORCH_TO_ST.get(name)
    if code is None:
        raise TypeError(f"dtype {name} cannot be stored")
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return code, tuple(int(s) for s in t.shape), data


def st_to_torch(a: np.ndarray, code: str):
    """Torch tensor from a numpy array read with safetensors_io (BF16 as uint16 bits)."""
    import torch

    if code == "BF16":
        return torch.from_numpy(np.asarray(a, order="C").view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.asarray(a, order="C"))
