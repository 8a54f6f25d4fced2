"""Host side of the Triton kernels: tile shapes, launches, the workspace for large batches."""

from __future__ import annotations

import os
import threading

import torch

from ..errors import XorsparseError
from ..tensor.fused import Q_UNIFORM_ASYM
from .resident import OUT_KINDS, ResidentWeight

FUSED_MAX_BATCH = 16  # rows of x up to which linear() runs the fused decode-multiply kernel
# Tiles and warps: compiled for sm_90 (ptxas, no spills: 80 registers for decode, about 110
# for the fused product); first guesses until timed on an H100
DECODE_TILE, DECODE_WARPS = 1024, 8
FUSED_BN, FUSED_BK, FUSED_WARPS = 32, 32, 8
_workspaces: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_workspace_lock = threading.Lock()


class GpuUnavailableError(XorsparseError):
    """The Triton kernels cannot run here (no triton, or no CUDA device and no interpreter)."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def is_available() -> bool:
    """True when triton imports and a CUDA device (or the Triton interpreter) is in use."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return interpreting() or torch.cuda.is_available()


def _kernels():
    if not is_available():
        raise GpuUnavailableError("the Triton kernels need triton and a CUDA device (or TRITON_INTERPRET=1)")
    from . import kernels

    return kernels


def _check_device(rw: ResidentWeight) -> None:
    if not is_available():
        raise GpuUnavailableError("the Triton kernels need triton and a CUDA device (or TRITON_INTERPRET=1)")
    if rw.device.type == "cpu" and not interpreting():
        raise GpuUnavailableError("this ResidentWeight is on the CPU: move it with .to('cuda') "
                                  "(or run the kernels under TRITON_INTERPRET=1)")


def _pow2_at_most(n: int, cap: int) -> int:
    p = 1
    while p < n and p < cap:
        p *= 2
    return p


def _common_args(rw: ResidentWeight) -> tuple[list, dict]:
    t = rw.tensors
    nfull = rw.numel // 64
    args = [t["mask"], t["streams"], t["g"], t["params"], t["patch_pos"], t["patch_xor"], t["patch_chunk"],
            t["word_rank"], t["scales"], t["inv_blocks"], rw.rows, rw.cols, nfull, max(nfull, 1), rw.step, rw.ngroups,
            rw.group_size]
    import triton.language as tl

    meta = {"Q": rw.bits, "WW": rw.win_words, "PACKED": rw.packed_planes, "SHARED": rw.shared_decoder,
            "KIND": rw.quant_kind, "SCALE_K": rw.scale_k, "GROUPED": rw.ngroups > 1,
            "IDX": tl.int64 if t["index64"] else tl.int32, "OUT": _out_kind(rw),
            "MULMOD_F64": max(nfull, 1) ** 2 < (1 << 53)}
    return args, meta


def _out_kind(rw: ResidentWeight) -> int:
    return OUT_KINDS[rw.dtype_name]


def _tile(rows: int, cols: int) -> tuple[int, int]:
    """(BN, BK): up to 256 columns, DECODE_TILE positions a program (16384 interpreted: the
    interpreter's cost is per program)."""
    budget = 16384 if interpreting() else DECODE_TILE
    bk = _pow2_at_most(max(cols, 1), 256)
    bn = _pow2_at_most(max(rows, 1), max(1, budget // bk))
    return bn, bk


def _decode_rows(rw: ResidentWeight, out: torch.Tensor, row_idx: torch.Tensor | None, nsel: int) -> None:
    k = _kernels()
    args, meta = _common_args(rw)
    bn, bk = _tile(nsel, rw.cols)
    col_tiles = -(-rw.cols // bk)
    grid = (-(-nsel // bn) * col_tiles,)
    dst = out.view(torch.int16) if rw.dtype_name == "bfloat16" else out
    idx = row_idx if row_idx is not None else rw.tensors["mask"]  # unused when GATHER is False
    k.decode_rows_kernel[grid](dst, idx, nsel, col_tiles, *args, **meta, GATHER=row_idx is not None, BN=bn, BK=bk,
                               num_warps=DECODE_WARPS, enable_fp_fusion=False)


def decode_dense(rw: ResidentWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """The whole weight, dense, on rw's device, in its dtype: bit-exact with the CPU decoders."""
    _check_device(rw)
    if out is None:
        out = torch.empty(rw.shape, dtype=rw.dtype, device=rw.device)
    elif out.numel() != rw.numel or out.dtype != rw.dtype or out.device != rw.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {rw.dtype} tensor of {rw.numel} elements on {rw.device}")
    if rw.is_dense:
        out.reshape(-1).copy_(rw.tensors["dense"].to(rw.dtype))
        return out.view(rw.shape)
    if rw.numel:
        _decode_rows(rw, out.reshape(-1), None, rw.rows)
    return out.view(rw.shape)


def embedding(indices: torch.Tensor, rw: ResidentWeight) -> torch.Tensor:
    """Rows `indices` (any shape, repeats and any order) of the weight: only those rows decode."""
    _check_device(rw)
    if len(rw.shape) != 2:
        raise ValueError(f"embedding needs a 2-D weight, got shape {rw.shape}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"embedding indices must be int32 or int64, got {indices.dtype}")
    flat = indices.reshape(-1).to(device=rw.device, dtype=torch.int64).contiguous()
    out = torch.empty((flat.numel(), rw.cols), dtype=rw.dtype, device=rw.device)
    if flat.numel():
        if bool(((flat < 0) | (flat >= rw.rows)).any()):  # the kernel does no bounds checks
            raise IndexError(f"embedding index out of range for {rw.rows} rows")
        if rw.is_dense:
            out.copy_(rw.tensors["dense"].to(rw.dtype).view(rw.shape)[flat])
        else:
            _decode_rows(rw, out.reshape(-1), flat, flat.numel())
    return out.view(*indices.shape, rw.cols)


def _workspace(rw: ResidentWeight) -> torch.Tensor:
    """A dense buffer for rw, shared by every weight of its device and dtype (grown as needed)."""
    key = (str(rw.device), rw.dtype)
    with _workspace_lock:
        buf = _workspaces.get(key)
        if buf is None or buf.numel() < rw.numel:
            buf = torch.empty(rw.numel, dtype=rw.dtype, device=rw.device)
            _workspaces[key] = buf
        return buf[: rw.numel]


def release_workspaces() -> None:
    """Drop the shared decode buffers of linear() (they are re-created on demand)."""
    with _workspace_lock:
        _workspaces.clear()


def _split_k(n_tiles: int, k_tiles: int, device: torch.device) -> int:
    """Splits over K so that about four programs per SM run at batch 1."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 1
    return max(1, min(k_tiles, -(-4 * sms // max(n_tiles, 1))))


def linear(x: torch.Tensor, rw: ResidentWeight, bias: torch.Tensor | None = None, *,
           fused: bool | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias), x of shape (..., in_features), W = decode_dense(rw).

    Up to FUSED_MAX_BATCH rows (or fused=True): one kernel decodes weight tiles in
    registers and multiplies them, split over K; the dense weight is never written. Larger
    batches decode into a shared workspace and call torch (cuBLAS on a GPU).
    """
    _check_device(rw)
    if len(rw.shape) != 2:
        raise ValueError(f"linear needs a 2-D weight, got shape {rw.shape}")
    if x.shape[-1] != rw.cols:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {rw.cols}")
    if x.dtype != rw.dtype:
        raise ValueError(f"x is {x.dtype}, the weight {rw.dtype}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, rw.cols)
    m = x2.shape[0]
    use_fused = (m <= FUSED_MAX_BATCH) if fused is None else fused
    if rw.is_dense or rw.dtype == torch.float64 or m == 0 or not use_fused or m > FUSED_MAX_BATCH:
        needs_own = torch.is_grad_enabled() and x.requires_grad  # autograd keeps the weight
        w = decode_dense(rw) if needs_own else decode_dense(rw, _workspace(rw))
        return torch.nn.functional.linear(x, w, bias)
    k = _kernels()
    x2 = x2.contiguous()
    args, meta = _common_args(rw)
    bm = _pow2_at_most(m, 16) if m <= 4 else 16  # up to 4 rows without tl.dot's 16-row padding
    bn, bk = (64, 128) if interpreting() else (FUSED_BN, FUSED_BK)
    n_tiles = -(-rw.rows // bn)
    split = _split_k(n_tiles, -(-rw.cols // bk), rw.device)
    part = torch.empty((split, m, rw.rows), dtype=torch.float32, device=rw.device)
    k.linear_fused_kernel[(n_tiles, split)](x2, part, m, x2.stride(0), split, *args, **meta, BM=bm, BN=bn, BK=bk,
                                            BF16_VIA_F32=interpreting(), num_warps=FUSED_WARPS,
                                            # levels a + b * c (asymmetric uniform) must not become an FMA
                                            enable_fp_fusion=rw.quant_kind != Q_UNIFORM_ASYM)
    y = part.sum(0) if split > 1 else part[0]
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(rw.dtype).view(*lead, rw.rows)
