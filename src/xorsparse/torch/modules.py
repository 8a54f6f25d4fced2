"""Running compressed weights in PyTorch: load an .xsp file into a model, or keep the
weights compressed in Xor* modules that decode in forward.

    load_compressed(model, "model.xsp", mode="ondemand")   # Xor* modules decode in forward

The on-demand modules decode with torch tensor operations only (table look-ups, XOR,
shifts), so they run wherever the model runs; the result equals the numba decoder's bit
for bit (tests check it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..codec.plane import _tables
from ..io.container import XspFile, XspError
from ..io.validate import max_tensor_bytes
from ..tensor.maskcode import decode_mask
from ..tensor.pipeline import CompressedTensor
from .compress import MODULE_TYPES

# ---------------------------------------------------------------------------------------
# Decoding with torch operations


_TABLE_CACHE: dict[tuple[int, int, int, int], torch.Tensor] = {}


def decoder_table(n_in: int, n_out: int, n_s: int, seed: int) -> torch.Tensor:
    """Byte tables as int64 (bit patterns of the uint64 words), shared by every module."""
    key = (n_in, n_out, n_s, seed)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = torch.from_numpy(_tables(*key).view(np.int64).copy())
    return _TABLE_CACHE[key]


def shared_table_bytes() -> int:
    return sum(t.numel() * t.element_size() for t in _TABLE_CACHE.values())


def unpack_bits(data: torch.Tensor, count: int) -> torch.Tensor:
    """Little-endian bits of a uint8 tensor, as uint8 0/1."""
    shifts = torch.arange(8, device=data.device, dtype=torch.uint8)
    return ((data[:, None] >> shifts) & 1).reshape(-1)[:count]


def decode_plane_torch(stream: torch.Tensor, patches: torch.Tensor, length: int, n_in: int, n_out: int,
                       n_s: int, chunk_slices: int, table: torch.Tensor) -> torch.Tensor:
    """docs/FORMAT.md section 1 in tensor operations; returns uint8 0/1 bits of the plane."""
    dev = stream.device
    n_slices = -(-length // n_out)
    if n_slices == 0:
        return torch.zeros(0, dtype=torch.uint8, device=dev)
    window = n_in * (n_s + 1)
    bits = unpack_bits(stream, n_slices * n_in)
    padded = torch.cat([torch.zeros(n_s * n_in, dtype=torch.uint8, device=dev), bits])
    win = padded.unfold(0, window, n_in)  # row t: x_{t-n_s} .. x_t, oldest first
    local = torch.arange(n_slices, device=dev) % chunk_slices
    first_valid = ((n_s - local).clamp(min=0) * n_in)[:, None]
    win = win * (torch.arange(window, device=dev)[None, :] >= first_valid)
    nbytes = table.shape[0]
    win = F.pad(win, (0, nbytes * 8 - window)).reshape(n_slices, nbytes, 8).to(torch.int64)
    byte = (win << torch.arange(8, device=dev)).sum(-1)
    acc = table[0][byte[:, 0]]
    for m in range(1, nbytes):
        acc = acc ^ table[m][byte[:, m]]
    nwords = table.shape[2]
    out = torch.empty(n_slices, nwords * 64, dtype=torch.uint8, device=dev)
    for k in range(64):
        out[:, k::64] = ((acc >> k) & 1).to(torch.uint8)
    plane = out[:, :n_out].reshape(-1)[:length].clone()
    if patches.numel():
        plane[patches] ^= 1
    return plane


def to_natural_torch(coded: torch.Tensor, step: int) -> torch.Tensor:
    """Coded-order plane bits -> row-major order (FORMAT.md section 5): a gather of 64-blocks."""
    nfull = coded.numel() // 64
    if nfull == 0:
        return coded
    j = torch.arange(nfull, device=coded.device)
    blocks = coded[: nfull * 64].reshape(nfull, 64)[(j * step) % nfull]
    return torch.cat([blocks.reshape(-1), coded[nfull * 64:]])


def levels_torch(scales: torch.Tensor, q: int, quantizer: str, symmetric: bool,
                 zero_points: torch.Tensor | None = None, scale_dtype: str = "") -> torch.Tensor:
    """quant.levels_table in torch: the same float32 operations in the same order."""
    s = scales.to(torch.float32)
    dev = s.device
    codes = torch.arange(1 << q, device=dev)
    if quantizer == "affine":  # float32 (c - z) * s, rounded once to the scale's dtype
        signed = (codes - (1 << (q - 1)))[None, None, :]
        z = 0 if zero_points is None else zero_points.to(torch.int64)[:, :, None]
        out = (signed - z).to(torch.float32) * s[:, :, 0:1]
        return out.to(getattr(torch, scale_dtype)).to(torch.float32)
    if quantizer == "bcq":
        out = torch.zeros(s.shape[0], s.shape[1], 1 << q, dtype=torch.float32, device=dev)
        for i in range(q):
            sign = (((codes >> i) & 1) * 2 - 1).to(torch.float32)
            out = out + s[:, :, i : i + 1] * sign
        return out
    c = codes.to(torch.float32)
    if symmetric:
        return s[:, :, 0:1] * (c - torch.tensor(((1 << q) - 1) / 2, dtype=torch.float32, device=dev))
    return s[:, :, 1:2] + s[:, :, 0:1] * c


def dequantize_torch(planes: list[torch.Tensor], scales: torch.Tensor, keep: torch.Tensor,
                     quantizer: str, symmetric: bool, rows: int, cols: int, group_size: int,
                     zero_points: torch.Tensor | None = None, scale_dtype: str = "") -> torch.Tensor:
    """Row-major float32 weights from natural-order planes: a look-up in the levels table."""
    dev = scales.device
    code = torch.zeros(rows * cols, dtype=torch.int64, device=dev)
    for i, p in enumerate(planes):
        code |= p.to(torch.int64) << i
    levels = levels_torch(scales, len(planes), quantizer, symmetric, zero_points, scale_dtype)
    r = torch.arange(rows, device=dev)[:, None]
    g = (torch.arange(cols, device=dev) // group_size)[None, :]
    out = levels[r, g, code.reshape(rows, cols)]
    return torch.where(keep.reshape(rows, cols), out, torch.zeros((), dtype=torch.float32, device=dev))


def ondemand_decode_bytes(ct: CompressedTensor) -> int:
    """Peak working memory of XorWeight.dense: decode_plane_torch's window tensors (int64
    bytes of every slice's window) dominate, then the int64 codes and the levels table."""
    n = ct.numel
    plane = 0
    for p in ct.planes:
        n_slices = -(-n // p.n_out)
        nbytes = -(-(p.n_in * (p.n_s + 1)) // 8)
        plane = max(plane, n_slices * (136 * nbytes + 80 * -(-p.n_out // 64)))
    q = ct.quant
    return plane + 32 * n + 4 * q.scales.shape[0] * q.scales.shape[1] * (1 << q.bits)


class XorWeight(nn.Module):
    """Holds one compressed weight as buffers and rebuilds the dense tensor on request."""

    def __init__(self, ct: CompressedTensor, cache: bool = False):
        super().__init__()
        self.shape = tuple(ct.shape)
        self.dtype_name = ct.dtype
        q = ct.quant
        self.meta = dict(quantizer=q.quantizer, symmetric=q.symmetric, rows=q.rows, cols=q.cols,
                         group_size=q.group_size, scale_dtype=q.scale_dtype)
        self.block_step = ct.block_step
        self.length = ct.numel
        keep = decode_mask(ct.mask)  # the range-coded mask is sequential: kept as a bitmask
        self.register_buffer("mask_bits", torch.from_numpy(np.packbits(keep, bitorder="little")))
        self.register_buffer("scales", torch.from_numpy(q.scales.copy()))
        self.register_buffer("zero_points", None if q.zero_points is None else torch.from_numpy(q.zero_points.copy()))
        self.planes = []
        for i, p in enumerate(ct.planes):
            self.register_buffer(f"stream{i}", torch.from_numpy(p.stream.copy()))
            self.register_buffer(f"patches{i}", torch.from_numpy(p.patches.astype(np.int64)))
            self.planes.append((p.n_in, p.n_out, p.n_s, p.seed, p.chunk_slices))
        self.cache = cache
        self._cached: torch.Tensor | None = None
        self._summary = (f"shape={tuple(ct.shape)}, dtype={ct.dtype}, {q.quantizer} q={q.bits}, "
                         f"{ct.total_bits / max(ct.numel, 1):.3f} bits/weight, cache={cache}")

    def extra_repr(self) -> str:
        return self._summary

    def dense(self) -> torch.Tensor:
        if self._cached is not None:
            return self._cached
        dev = self.scales.device
        planes = []
        for i, (n_in, n_out, n_s, seed, cs) in enumerate(self.planes):
            table = decoder_table(n_in, n_out, n_s, seed).to(dev)
            coded = decode_plane_torch(getattr(self, f"stream{i}"), getattr(self, f"patches{i}"), self.length,
                                       n_in, n_out, n_s, cs, table)
            planes.append(to_natural_torch(coded, self.block_step))
        keep = unpack_bits(self.mask_bits, self.length).bool()
        w = dequantize_torch(planes, self.scales, keep, zero_points=self.zero_points, **self.meta)
        w = w.reshape(self.shape).to(getattr(torch, self.dtype_name))
        if self.cache:
            self._cached = w
        return w


class XorLinear(nn.Module):
    """nn.Linear whose weight stays compressed and is decoded in forward."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def __init__(self, ct: CompressedTensor, bias: torch.Tensor | None, cache: bool = False):
        super().__init__()
        self.xw = XorWeight(ct, cache)
        self.out_features, self.in_features = ct.shape
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return self.xw.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.xw.dense(), self.bias)


class XorConv2d(nn.Module):
    """nn.Conv2d whose weight stays compressed and is decoded in forward."""

    def __init__(self, ct: CompressedTensor, conv: nn.Conv2d, cache: bool = False):
        super().__init__()
        self.xw = XorWeight(ct, cache)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.padding_mode = conv.padding_mode
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None
        if conv.padding_mode != "zeros":
            raise ValueError(f"XorConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")

    @property
    def weight(self) -> torch.Tensor:
        return self.xw.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.xw.dense(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class XorEmbedding(nn.Module):
    """nn.Embedding whose table stays compressed and is decoded in forward."""

    def __init__(self, ct: CompressedTensor, emb: nn.Embedding, cache: bool = False):
        super().__init__()
        self.xw = XorWeight(ct, cache)
        self.padding_idx, self.max_norm = emb.padding_idx, emb.max_norm
        self.norm_type, self.scale_grad_by_freq, self.sparse = emb.norm_type, emb.scale_grad_by_freq, emb.sparse
        if emb.max_norm is not None:
            raise ValueError("XorEmbedding cannot renormalise a compressed table (max_norm is set)")

    @property
    def weight(self) -> torch.Tensor:
        return self.xw.dense()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.xw.dense(), self.padding_idx)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parts = name.split(".")
    mod = model
    for p in parts[:-1]:
        mod = getattr(mod, p)
    return mod, parts[-1]


@torch.no_grad()
def load_compressed(model: nn.Module, path: str, mode: str = "decode", cache: bool = False) -> nn.Module:
    """Load an .xsp file into `model` (same architecture as when it was compressed).

    mode="decode" writes the decoded weights into the existing modules once;
    mode="ondemand" replaces them by Xor* modules that keep only compressed buffers and
    decode in forward (cache=True keeps the decoded weight after the first call).
    """
    if mode not in ("decode", "ondemand"):
        raise ValueError(f"mode must be 'decode' or 'ondemand', got {mode!r}")
    with XspFile(path) as f:
        state = model.state_dict()
        unknown = [n for n in f.names() if n not in state]
        if unknown:
            raise ValueError(f"{path}: tensor {unknown[0]!r} has no place in this model")
        def fits(name: str, shape) -> None:
            if tuple(shape) != tuple(state[name].shape):
                raise ValueError(f"{path}: tensor {name!r}: shape {list(shape)} does not fit the model's "
                                 f"{list(state[name].shape)}")

        for name in f.raw_tensors:
            t = f.dense(name, framework="torch")
            fits(name, t.shape)
            state[name].copy_(t)
        for name in f.tensors:
            fits(name, f.desc.tensors[name].shape)
        modules = dict(model.named_modules())
        for name in f.tensors:
            mod_name = name[: -len(".weight")] if name.endswith(".weight") else None
            mod = modules.get(mod_name)
            if mod is None or not isinstance(mod, tuple(MODULE_TYPES.values())):
                raise ValueError(f"{path}: tensor {name!r} is not the weight of a Linear, Conv2d or Embedding")
            if mode == "decode":
                mod.weight.copy_(f.dense(name, framework="torch"))
                continue
            ct = f.compressed(name)
            limit = f.max_tensor_bytes if f.max_tensor_bytes is not None else max_tensor_bytes()
            need = ondemand_decode_bytes(ct)
            if need > limit:
                raise XspError(f"{path}: tensor {name!r}: on-demand decoding needs about {need / 2**20:.0f} MiB, "
                               f"above the limit of {limit / 2**20:.0f} MiB "
                               "(set XORSPARSE_MAX_TENSOR_BYTES to allow it)")
            if isinstance(mod, nn.Linear):
                new = XorLinear(ct, mod.bias, cache)
            elif isinstance(mod, nn.Conv2d):
                new = XorConv2d(ct, mod, cache)
            else:
                new = XorEmbedding(ct, mod, cache)
            parent, attr = _parent(model, mod_name)
            setattr(parent, attr, new)
    return model


def resident_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers the model holds (decoder tables, shared, not included)."""
    seen = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
