"""Running compressed weights in PyTorch: load an .xsp file into a model, or keep the
weights compressed in Xor* modules that decode in forward.

    load_compressed(model, "model.xsp", mode="ondemand")   # Xor* modules decode in forward

On CPU the modules call the fused numba decoder (tensor/fused.py) on numpy views of their
own buffers, into a workspace shared by the model's modules: no copy of the compressed
data, no allocation per forward, and optionally the next layer decodes on a background
thread while this one computes. On a CUDA device, when Triton is installed, they run the
kernels of xorsparse.gpu: moving a module there (`.to("cuda")`) builds the kernels' resident
layout once, and forward calls the fused decode + matmul (XorLinear), decodes only the
looked-up rows (XorEmbedding) or decodes to dense (XorConv2d). On other devices, or CUDA
without Triton, they decode with torch operations, chunk by chunk so that the temporaries
stay below the size of the dense weight. Every path equals the reference bit for bit in
the decoded weights (tests check it).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..codec.plane import _tables
from ..format.container import XspFile
from ..tensor import fused
from ..tensor.packed import PackedPlane
from ..tensor.pipeline import CompressedTensor, decompress_tensor
from ..tensor.variants import decode_mask_words
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


# ---------------------------------------------------------------------------------------
# Chunked decoding with torch operations (devices other than the CPU)

TORCH_CHUNK_MIN_WORDS = 64  # coded words per chunk, at least


def _slice_bits_torch(stream: torch.Tensor, t_a: int, t_b: int, n_in: int, n_out: int, n_s: int, cs: int,
                      table: torch.Tensor) -> torch.Tensor:
    """Decoder outputs of slices t_a .. t_b - 1 (FORMAT.md 1.3, before patches), uint8 0/1."""
    dev = stream.device
    window = n_in * (n_s + 1)
    lo = (t_a - n_s) * n_in
    first = max(lo, 0)
    nbits = t_b * n_in - first
    b0 = first >> 3
    raw = stream[b0 : (t_b * n_in + 7) // 8 + 1]
    bits = unpack_bits(raw, raw.numel() * 8)[first - 8 * b0 : first - 8 * b0 + nbits]
    if first > lo:
        bits = torch.cat([torch.zeros(first - lo, dtype=torch.uint8, device=dev), bits])
    win = bits.unfold(0, window, n_in)  # row: x_{t-n_s} .. x_t, oldest first
    t = torch.arange(t_a, t_b, device=dev)
    first_valid = ((t - (t // cs) * cs - n_s).neg().clamp(min=0) * n_in)[:, None]
    nbytes = table.shape[0]
    keep = torch.arange(nbytes * 8, device=dev)[None, :] >= first_valid
    win = F.pad(win, (0, nbytes * 8 - window))
    byte = ((win * keep).reshape(t_b - t_a, nbytes, 8).to(torch.int64) << torch.arange(8, device=dev)).sum(-1)
    acc = table[0][byte[:, 0]]
    for m in range(1, nbytes):
        acc = acc ^ table[m][byte[:, m]]
    nwords = table.shape[2]
    out = torch.empty(t_b - t_a, nwords * 64, dtype=torch.uint8, device=dev)
    for k in range(64):
        out[:, k::64] = ((acc >> k) & 1).to(torch.uint8)
    return out[:, :n_out].reshape(-1)


def dense_torch(xw: "XorWeight", out: torch.Tensor | None = None) -> torch.Tensor:
    """The dense weight with torch operations only, in chunks of coded words.

    Each chunk decodes its slices of every plane, applies the patches, maps its positions
    to row-major order (FORMAT.md section 5) and writes the levels of its kept weights.
    Temporaries are bounded by the chunk, which is sized so that they stay below the
    dense weight's bytes: peak memory is under twice the dense weight.
    """
    dev = xw.scales.device
    dtype = getattr(torch, xw.dtype_name)
    n = xw.length
    if xw.packed_dense is not None:  # small tensors stored bit for bit are kept decoded
        w = xw.packed_dense.to(dtype)
        return (w.clone() if out is None else out.reshape(-1).copy_(w)).reshape(xw.shape)
    if out is None:
        out = torch.zeros(n, dtype=dtype, device=dev)
    else:
        out = out.reshape(-1)
        out.zero_()
    if n == 0:
        return out.reshape(xw.shape)
    rows, cols, gsize = xw.meta["rows"], xw.meta["cols"], xw.meta["group_size"]
    ngroups = max(1, -(-cols // gsize))
    scales = xw.scales.reshape(-1).to(torch.float32)
    k = xw.scale_k
    q = len(xw.planes)
    nfull = n // 64
    nwords = -(-n // 64)
    inv = pow(xw.block_step, -1, nfull) if nfull > 1 else 0
    # patches in coded order: natural position p -> coded position
    ppos = xw.patch_pos[:-1]
    pxor = xw.patch_xor[:-1]
    pj = ppos >> 6
    pk = torch.where(pj < nfull, (pj * xw.block_step) % max(nfull, 1), pj)
    pcoded, order = torch.sort(pk * 64 + (ppos & 63))
    pxor = pxor[order]
    chunk = max(TORCH_CHUNK_MIN_WORDS, -(-n * out.element_size() // (64 * 96)))
    tables = [decoder_table(n_in, n_out, n_s, seed).to(dev) for n_in, n_out, n_s, seed, _ in xw.planes]
    lane = torch.arange(64, device=dev)
    for k0 in range(0, nwords, chunk):
        k1 = min(nwords, k0 + chunk)
        pc0, pc1 = 64 * k0, min(n, 64 * k1)
        code = torch.zeros(pc1 - pc0, dtype=torch.uint8, device=dev)
        for i, (n_in, n_out, n_s, seed, cs) in enumerate(xw.planes):
            t_a, t_b = pc0 // n_out, (pc1 - 1) // n_out + 1
            bits = _slice_bits_torch(xw.streams[i].view(torch.uint8), t_a, t_b, n_in, n_out, n_s, cs, tables[i])
            code |= bits[pc0 - t_a * n_out : pc1 - t_a * n_out] << i
        lo, hi = torch.searchsorted(pcoded, torch.tensor([pc0, pc1], device=dev)).tolist()
        if hi > lo:
            code[pcoded[lo:hi] - pc0] ^= pxor[lo:hi].to(torch.uint8)
        kw = torch.arange(k0, k1, device=dev)
        nat = torch.where(kw < nfull, (kw * inv) % max(nfull, 1), kw)
        p = (nat[:, None] * 64 + lane).reshape(-1)[: pc1 - pc0]
        kept = ((xw.mask_bits[p >> 3] >> (p & 7).to(torch.uint8)) & 1).bool()
        p = p[kept]
        code = code[kept].to(torch.int64)
        r = p // cols
        sidx = (r * ngroups + (p - r * cols) // gsize) * k
        del r, kept
        out[p] = _levels_at(scales, sidx, code, q, xw.quant_kind).to(dtype)
    return out.reshape(xw.shape)


def _levels_at(scales: torch.Tensor, sidx: torch.Tensor, code: torch.Tensor, q: int, kind: int) -> torch.Tensor:
    """FORMAT.md section 4 for each (scale index, code), float32, operation for operation
    (the kernels' `fused._level`; `kind` is a fused.Q_* quantizer kind)."""
    if kind == fused.Q_TABLE:  # codebook, scale row groups, log8: the level of every code, per row
        return scales[sidx + code]
    if kind == fused.Q_BCQ:
        w = torch.zeros(code.shape, dtype=torch.float32, device=code.device)
        for i in range(q):
            s = scales[sidx + i]
            w = w + torch.where(((code >> i) & 1).bool(), s, -s)
        return w
    c = code.to(torch.float32)
    if kind == fused.Q_UNIFORM_SYM:
        return scales[sidx] * (c - torch.tensor(((1 << q) - 1) / 2, dtype=torch.float32, device=code.device))
    if kind == fused.Q_UNIFORM_ASYM:
        return scales[sidx + 1] + scales[sidx] * c
    # affine: (c - z) is an exact integer, one float32 product, rounded once to the scale dtype
    w = (code - (1 << (q - 1)) - scales[sidx + 1].to(torch.int64)).to(torch.float32) * scales[sidx]
    if kind == fused.Q_AFFINE_F16:
        return w.to(torch.float16).to(torch.float32)
    if kind == fused.Q_AFFINE_BF16:
        return w.to(torch.bfloat16).to(torch.float32)
    return w


# ---------------------------------------------------------------------------------------
# The Triton path: CUDA devices, or CPU tensors under the Triton interpreter when forced

TRITON_ON_CPU_ENV = "XORSPARSE_TRITON_ON_CPU"
_triton_on_cpu: bool | None = None  # set_triton_on_cpu; None: the environment variable decides


def set_triton_on_cpu(enabled: bool | None) -> None:
    """Route the Xor* modules' CPU tensors through the Triton kernels (True), through the
    numba kernel (False), or let XORSPARSE_TRITON_ON_CPU decide (None, the default).

    For tests and CI without a GPU: the kernels then run in Triton's interpreter, which
    needs TRITON_INTERPRET=1 in the environment before triton is first imported.
    """
    global _triton_on_cpu
    _triton_on_cpu = None if enabled is None else bool(enabled)


def triton_on_cpu() -> bool:
    """Whether CPU tensors go through the Triton kernels (see set_triton_on_cpu)."""
    if _triton_on_cpu is not None:
        return _triton_on_cpu
    return os.environ.get(TRITON_ON_CPU_ENV, "") not in ("", "0")


@functools.cache
def _gpu_or_none():
    """The xorsparse.gpu package, or None where it or triton cannot be imported."""
    try:
        from .. import gpu
    except ImportError:
        return None
    return gpu


def _gpu():
    gpu = _gpu_or_none()
    if gpu is None:
        raise RuntimeError("the Triton path needs triton and xorsparse.gpu: pip install 'xorsparse[gpu]'")
    return gpu


@functools.cache
def _cuda_has_triton() -> bool:
    gpu = _gpu_or_none()
    return gpu is not None and gpu.is_available()


def triton_device(device: torch.device) -> bool:
    """Whether weights on `device` decode with the Triton kernels: a CUDA device when triton
    is installed, or the CPU when forced (set_triton_on_cpu) under TRITON_INTERPRET=1."""
    if device.type == "cuda":
        return _cuda_has_triton()
    if device.type == "cpu" and triton_on_cpu():
        if os.environ.get("TRITON_INTERPRET", "") in ("", "0"):
            raise RuntimeError(f"{TRITON_ON_CPU_ENV}=1 needs TRITON_INTERPRET=1 (set before triton is imported) "
                               "to run the Triton kernels on CPU tensors")
        _gpu()
        return True
    return False


# ---------------------------------------------------------------------------------------
# The workspace: reusable output buffers and decoding ahead on CPU


class DecodeWorkspace:
    """Output buffers shared by the on-demand modules of a model, and the decode-ahead thread.

    Forward passes decode into one of two buffers per dtype (grown to the largest weight)
    instead of allocating a dense weight each time. With prefetch=True the workspace
    learns the order in which modules ask for their weights and, while module i computes
    with buffer A, decodes module i + 1 into buffer B on a background thread (the numba
    kernel releases the GIL). A guess that turns out wrong costs one wasted decode.
    Buffers are only lent to computations that keep no reference to the weight (no
    autograd graph); anything else gets a fresh tensor.
    """

    def __init__(self, prefetch: bool = False):
        self.prefetch = prefetch
        self._buffers: dict[torch.dtype, list[torch.Tensor]] = {}
        self._order: list[XorWeight] = []
        self._index: dict[int, int] = {}
        self._slot = 0
        self._pending: tuple[XorWeight, int, Future] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="xorsparse-prefetch") if prefetch else None
        self._lock = threading.Lock()

    def buffer_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for bs in self._buffers.values() for b in bs)

    def _buffer(self, dtype: torch.dtype, slot: int, numel: int) -> torch.Tensor:
        bufs = self._buffers.setdefault(dtype, [torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype)])
        if bufs[slot].numel() < numel:
            bufs[slot] = torch.empty(numel, dtype=dtype)
        return bufs[slot][:numel]

    def _settle(self) -> tuple["XorWeight", int] | None:
        """Wait for the background decode, if any; returns what it decoded and where."""
        if self._pending is None:
            return None
        xw, slot, fut = self._pending
        self._pending = None
        fut.result()
        return xw, slot

    def weight(self, xw: "XorWeight") -> torch.Tensor:
        """xw's dense weight in a workspace buffer, valid until the next call after the next."""
        with self._lock:
            done = self._settle()
            if done is not None and done[0] is xw:
                slot = done[1]
                w = self._buffer(xw.torch_dtype, slot, xw.length)
            else:
                slot = self._slot
                w = self._buffer(xw.torch_dtype, slot, xw.length)
                xw.decode_cpu_into(w, parallel=True)
            self._slot = 1 - slot
            if id(xw) not in self._index:
                self._index[id(xw)] = len(self._order)
                self._order.append(xw)
            if self._pool is not None and len(self._order) > 1:
                nxt = self._order[(self._index[id(xw)] + 1) % len(self._order)]
                if nxt is not xw:
                    buf = self._buffer(nxt.torch_dtype, self._slot, nxt.length)
                    self._pending = (nxt, self._slot, self._pool.submit(nxt.decode_cpu_into, buf, False))
            return w.view(xw.shape)

    def __deepcopy__(self, memo):  # a copied model gets its own, empty workspace
        new = DecodeWorkspace(self.prefetch)
        memo[id(self)] = new
        return new

    def __getstate__(self):  # pickled models (torch.save) keep the setting, not the buffers
        return {"prefetch": self.prefetch}

    def __setstate__(self, state):
        self.__init__(state["prefetch"])

    def close(self) -> None:
        with self._lock:
            self._settle()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def __del__(self):  # a pending decode must not outlive its buffer
        try:
            self.close()
        except Exception:
            pass


class XorWeight(nn.Module):
    """Holds one compressed weight as buffers and rebuilds the dense tensor on request.

    Buffers: `mask_bits` (the mask as a bitmask, padded to whole 64-bit words), `streams`
    (every plane's stream as int64 words, padded for the kernels' window reads), the merged
    row-major patch list `patch_pos`/`patch_xor`, and float32 `scales`.

    On a Triton device (see triton_device) the buffers stay in host memory, where state_dict
    and `.cpu()` find them, and the device holds only the kernels' ResidentWeight, built
    once from these (validated) buffers when the module moves there, or at first use.
    Moving the module keeps the buffers' dtypes: `model.half()` cannot round the scales.
    """

    def __init__(self, ct: CompressedTensor, cache: bool = False, workspace: DecodeWorkspace | None = None):
        super().__init__()
        ct.validate()
        packed = any(isinstance(p, PackedPlane) for p in ct.planes)
        if packed:  # a small tensor stored bit for bit (FORMAT.md 1.8): kept decoded, no XOR streams

            dense = decompress_tensor(ct, framework="torch").reshape(-1).clone()
            ct = replace(ct, planes=[])
        else:
            dense = None
        fused.check_planes(ct)  # the kernels read these buffers without bounds checks
        self.shape = tuple(ct.shape)
        self.dtype_name = ct.dtype
        self.torch_dtype = getattr(torch, ct.dtype)
        q = ct.quant
        self.meta = dict(quantizer=q.quantizer, symmetric=q.symmetric, rows=q.rows, cols=q.cols,
                         group_size=q.group_size, scale_dtype=q.scale_storage_dtype)
        scales, self.scale_k, self.quant_kind = fused.kernel_scales(q)
        self.block_step = ct.block_step
        self.length = ct.numel
        mask = decode_mask_words(ct.mask)  # Golomb blocks decode sequentially: kept as a bitmask
        self.register_buffer("mask_bits", torch.from_numpy(mask.view(np.uint8).copy()))
        # float32, scale_k per (row, group): the scales (affine: scale, then zero point)
        self.register_buffer("scales", torch.from_numpy(scales.reshape(-1, max(1, -(-q.cols // q.group_size)),
                                                                       self.scale_k)))
        self.register_buffer("packed_dense", dense)
        streams, params, g, wide = fused.plane_arrays(ct.planes)
        self.register_buffer("streams", torch.from_numpy(streams.view(np.int64)))
        ppos, pxor = fused.natural_patches(ct.planes, ct.numel, ct.block_step)
        self.register_buffer("patch_pos", torch.from_numpy(ppos))
        self.register_buffer("patch_xor", torch.from_numpy(pxor))
        self.planes = [(p.n_in, p.n_out, p.n_s, p.seed, p.chunk_slices) for p in ct.planes]
        self._plane_params, self._g, self._wide = params, g, wide
        self._shared = len(set(self.planes)) == 1
        self.cache = cache
        self.workspace = workspace
        self._cached: torch.Tensor | None = None
        # the Triton path: whether it applies, the device the module lives on, the kernels' copy
        self._tritonable = dense is None and ct.numel > 0
        self._device = torch.device("cpu")
        self._resident = None
        self._summary = (f"shape={tuple(ct.shape)}, dtype={ct.dtype}, {q.quantizer} q={q.bits}, "
                         f"{ct.total_bits / max(ct.numel, 1):.3f} bits/weight, cache={cache}")

    def extra_repr(self) -> str:
        return self._summary

    @property
    def device(self) -> torch.device:
        """Where the module computes (its buffers stay on the CPU on a Triton device)."""
        return self._device

    def _apply(self, fn, recurse: bool = True):
        target = fn(torch.zeros(0, device=self._device)).device
        if target != self._device:
            self._cached = None
        if self._tritonable and triton_device(target):
            if self._resident is None or self._resident.device != target:
                self._resident = None  # the old copy goes before the new one is built
                self._resident = _gpu().ResidentWeight.from_xor_weight(self, device=target)
            if self.scales.device.type != "cpu":
                super()._apply(lambda t: t.cpu(), recurse)
            self._device = target
            return self
        self._resident = None
        super()._apply(lambda t: fn(t).to(dtype=t.dtype), recurse)
        self._device = target
        return self

    def resident(self):
        """The kernels' ResidentWeight when this weight runs through Triton here, else None.

        Built on first use where the module was not moved (a CPU module forced onto Triton)."""
        if not self._tritonable or (self._device.type == "cpu" and not triton_on_cpu()):
            return None
        if self._resident is None or self._resident.device != self._device:
            if not triton_device(self._device):
                return None
            self._resident = _gpu().ResidentWeight.from_xor_weight(self, device=self._device)
        return self._resident

    def device_nbytes(self) -> int:
        """Bytes this weight holds on its device: the ResidentWeight on the Triton path, the
        buffers otherwise (decoder tables shared by the modules and caches not included)."""
        rw = self.resident()
        if rw is not None:
            return int(rw.nbytes)
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def __getstate__(self):  # copies and pickles rebuild the kernels' copy where they are used
        state = self.__dict__.copy()
        state["_resident"] = None
        return state

    def _plan(self) -> fused.DecodePlan:
        """A decode plan over numpy views of this module's CPU buffers (no copies)."""
        mask = self.mask_bits.numpy().view(np.uint64)
        return fused.DecodePlan(
            self.length, self.meta["rows"], self.meta["cols"], self.meta["group_size"], self.length // 64,
            self.block_step, fused.MASK_WORDS, mask, _EMPTY_I64, _EMPTY_I64, 64 * fused.TILE_WORDS, _NO_TABLES,
            _EMPTY_I64, self.streams.numpy().view(np.uint64), self._plane_params, self._g, self.patch_pos.numpy(),
            self.patch_xor.numpy(), self.scales.numpy().reshape(-1), self.quant_kind, len(self.planes),
            self.scale_k, self._wide, self._shared)

    def decode_cpu_into(self, out: torch.Tensor, parallel: bool = True) -> torch.Tensor:
        """Fused numba decode of the weight into out (a flat CPU tensor of the weight's dtype)."""
        if self.packed_dense is not None:
            return out.copy_(self.packed_dense)
        if self.dtype_name == "bfloat16":
            view, kind = out.view(torch.int16).numpy().view(np.uint16), fused.OUT_BF16
        elif self.dtype_name == "float16":
            view, kind = out.view(torch.int16).numpy().view(np.uint16), fused.OUT_F16
        else:
            view, kind = out.numpy(), fused.OUT_KINDS[self.dtype_name]
        fused.decode_into(self._plan(), view, kind, parallel)
        return out

    def decode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` (int64, dim 0 of the weight) as a (len(rows), rest) CPU tensor, decoded
        on the calling thread by the fused row kernel; IndexError for rows out of range."""
        cols = self.length // self.shape[0] if self.shape and self.shape[0] else 0
        out = torch.empty(rows.numel() * cols, dtype=self.torch_dtype)
        if self.dtype_name in ("bfloat16", "float16"):
            view = out.view(torch.int16).numpy().view(np.uint16)
            kind = fused.OUT_BF16 if self.dtype_name == "bfloat16" else fused.OUT_F16
        else:
            view, kind = out.numpy(), fused.OUT_KINDS[self.dtype_name]
        fused.decode_rows_into(self._plan(), rows.numpy(), view, kind)
        return out.view(rows.numel(), *self.shape[1:])

    def dense(self, backend: str = "auto") -> torch.Tensor:
        """A fresh dense weight (the cached one if cache=True). backend: auto, numba, torch or
        triton. On a Triton device, numba and torch decode the host buffers, on the CPU."""
        if self._cached is not None:
            return self._cached
        on_cpu = self.scales.device.type == "cpu"
        if backend not in ("auto", "numba", "torch", "triton"):
            raise ValueError(f"backend must be auto, numba, torch or triton, got {backend!r}")
        if backend == "numba" and not on_cpu:
            raise ValueError("the numba decoder runs on CPU tensors only")
        rw = self.resident() if backend in ("auto", "triton") else None
        if backend == "triton" and rw is None:
            raise ValueError("the Triton decoder runs on CUDA devices, or on CPU tensors with "
                             f"{TRITON_ON_CPU_ENV}=1 and TRITON_INTERPRET=1")
        if rw is not None:
            w = _gpu().decode_dense(rw).view(self.shape)
        elif self.packed_dense is not None:
            w = self.packed_dense.clone().view(self.shape)
        elif backend == "torch" or not on_cpu:
            w = dense_torch(self)
        else:
            w = self.decode_cpu_into(torch.empty(self.length, dtype=self.torch_dtype)).view(self.shape)
        if self.cache:
            self._cached = w
        return w

    def for_compute(self, x: torch.Tensor) -> torch.Tensor:
        """The weight for one forward: a workspace buffer when nothing can keep a reference."""
        if self._cached is not None or self.cache:
            return self.dense()
        if (self.workspace is not None and self.scales.device.type == "cpu" and self.resident() is None
                and not (torch.is_grad_enabled() and x.requires_grad)):
            return self.workspace.weight(self)
        return self.dense()


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_NO_TABLES = np.zeros((1, 1), dtype=np.uint64)  # the shape and dtype of maskcode.golomb_tables


class XorLinear(nn.Module):
    """nn.Linear whose weight stays compressed and is decoded in forward."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def __init__(self, ct: CompressedTensor, bias: torch.Tensor | None, cache: bool = False,
                 workspace: DecodeWorkspace | None = None):
        super().__init__()
        self.xw = XorWeight(ct, cache, workspace)
        self.out_features, self.in_features = ct.shape
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return self.xw.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rw = self.xw.resident()
        if rw is not None and not self.xw.cache and not (torch.is_grad_enabled() and x.requires_grad):
            # fused decode + matmul: the dense weight is never written (small batches)
            y = _gpu().linear(x.reshape(-1, self.in_features), rw, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.xw.for_compute(x), self.bias)


class XorConv2d(nn.Module):
    """nn.Conv2d whose weight stays compressed and is decoded in forward."""

    def __init__(self, ct: CompressedTensor, conv: nn.Conv2d, cache: bool = False,
                 workspace: DecodeWorkspace | None = None):
        super().__init__()
        self.xw = XorWeight(ct, cache, workspace)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.padding_mode = conv.padding_mode
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None
        if conv.padding_mode != "zeros":
            raise ValueError(f"XorConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")

    @property
    def weight(self) -> torch.Tensor:
        return self.xw.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.xw.for_compute(x), self.bias, self.stride, self.padding, self.dilation, self.groups)


class XorEmbedding(nn.Module):
    """nn.Embedding whose table stays compressed and is decoded in forward."""

    def __init__(self, ct: CompressedTensor, emb: nn.Embedding, cache: bool = False,
                 workspace: DecodeWorkspace | None = None):
        super().__init__()
        self.xw = XorWeight(ct, cache, workspace)
        self.padding_idx, self.max_norm = emb.padding_idx, emb.max_norm
        self.norm_type, self.scale_grad_by_freq, self.sparse = emb.norm_type, emb.scale_grad_by_freq, emb.sparse
        if emb.max_norm is not None:
            raise ValueError("XorEmbedding cannot renormalise a compressed table (max_norm is set)")

    @property
    def weight(self) -> torch.Tensor:
        return self.xw.dense()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rw = self.xw.resident()
        if rw is not None and not self.xw.cache:  # only the looked-up rows are decoded
            return _gpu().embedding(ids, rw)
        xw = self.xw
        if (xw._cached is None and not xw.cache and xw.packed_dense is None and xw.scales.device.type == "cpu"
                and ids.device.type == "cpu" and not torch.is_grad_enabled()):
            # CPU: decode only the rows looked up (the table's other rows cost nothing)
            rows, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
            if rows.numel() * 2 <= xw.shape[0]:
                table = xw.decode_rows(rows)
                return F.embedding(inverse.reshape(ids.shape), table)
        return F.embedding(ids, xw.for_compute(ids), self.padding_idx)


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parts = name.split(".")
    mod = model
    for p in parts[:-1]:
        mod = getattr(mod, p)
    return mod, parts[-1]


@torch.no_grad()
def load_compressed(model: nn.Module, path: str, mode: str = "decode", cache: bool = False,
                    prefetch: bool = False) -> nn.Module:
    """Load an .xsp file into `model` (same architecture as when it was compressed).

    mode="decode" writes the decoded weights into the existing modules once;
    mode="ondemand" replaces them by Xor* modules that keep only compressed buffers and
    decode in every forward, into two buffers shared by the model's modules (the
    workspace, `model.xorsparse_workspace`). cache=True keeps each decoded weight after
    its first use instead (as much memory as the dense model). prefetch=True decodes the
    next module's weight on a background thread while the current one computes (CPU only).
    Then `model.to("cuda")` moves the Xor* modules onto the Triton kernels (XorWeight).
    """
    if mode not in ("decode", "ondemand"):
        raise ValueError(f"mode must be 'decode' or 'ondemand', got {mode!r}")
    workspace = DecodeWorkspace(prefetch) if mode == "ondemand" and not cache else None
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
            f.check_cost(name)  # the fused decode in forward needs what a dense decode needs
            ct = f.compressed(name)
            if isinstance(mod, nn.Linear):
                new = XorLinear(ct, mod.bias, cache, workspace)
            elif isinstance(mod, nn.Conv2d):
                new = XorConv2d(ct, mod, cache, workspace)
            else:
                new = XorEmbedding(ct, mod, cache, workspace)
            parent, attr = parent_of(model, mod_name)
            setattr(parent, attr, new)
    if workspace is not None:
        model.xorsparse_workspace = workspace
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
