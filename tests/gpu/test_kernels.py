"""The Triton kernels against the numba decoder and tests/reference.py, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import reference
from xorsparse.codec.plane import encode_plane, get_decoder
from xorsparse.tensor import (
    CompressConfig,
    compress_quantized,
    compress_tensor,
    decompress_tensor,
)
from xorsparse.tensor.interleave import to_coded
from xorsparse.tensor.pipeline import prune_quantize
from xorsparse.tensor.quant import (
    code_range,
    given_keep,
    quantize_given,
    round_to_bfloat16,
)

gpu = pytest.importorskip("xorsparse.gpu")
ResidentWeight, decode_dense, linear, embedding = gpu.ResidentWeight, gpu.decode_dense, gpu.linear, gpu.embedding

DTYPES = ["float32", "float16", "bfloat16", "float64"]


def bits_of(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


def weights(shape, dtype, seed):
    w = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return w.to(getattr(torch, dtype))


def numba_dense(ct) -> torch.Tensor:
    return decompress_tensor(ct, framework="torch").reshape(ct.shape)


def check_same(ct, device) -> ResidentWeight:
    rw = ResidentWeight.from_compressed(ct, device)
    got = decode_dense(rw)
    want = numba_dense(ct)
    assert got.shape == want.shape and got.dtype == want.dtype and got.device.type == device.type
    assert bits_of(got) == bits_of(want)
    return rw


def with_patches(w, cfg):
    """A tensor whose planes use three decoders at a too-low rate: patches in several planes."""
    ct = compress_tensor(w, cfg)
    keep, qz, _ = prune_quantize(w, cfg)
    care = to_coded(keep.ravel(), ct.block_step)
    decs = [get_decoder(4, 9, 3), get_decoder(16, 40, 0), get_decoder(9, 30, 20)]  # last: a 189-bit window
    planes = [encode_plane(to_coded(p, ct.block_step), care, d, chunk_slices=64)
              for p, d in zip(qz.planes, decs)]
    assert sum(p.patches.size for p in planes) > 3
    return dataclasses.replace(ct, planes=planes)


def affine(symmetric: bool, scale_dtype: str, dtype: str, rows=24, cols=96, group=32):
    rng = np.random.default_rng(7)
    lo, hi = code_range(4)
    codes = rng.integers(lo, hi + 1, (rows, cols)).astype(np.int8)
    codes[rng.random(codes.shape) < 0.6] = 0
    scales = rng.random((rows, cols // group)).astype(np.float32) * 0.1
    scales = round_to_bfloat16(scales) if scale_dtype == "bfloat16" else scales.astype(scale_dtype).astype(np.float32)
    zp = None if symmetric else rng.integers(-3, 4, (rows, cols // group)).astype(np.int8)
    qz = quantize_given(codes, scales, zp, 4, group, scale_dtype)
    keep = given_keep(codes, qz.scales, qz.zero_points, group)
    return compress_quantized(keep, qz, dtype, CompressConfig())


# every quantizer, scale layout and mask codec; n_s = 0 and > 0; windows up to 256 bits
CONFIGS = {
    "bcq2-auto": CompressConfig(0.9, 2),
    "bcq1-ns0-bitmask": CompressConfig(0.8, 1, max_n_s=0, mask_codec="bitmask"),
    "bcq4-groups-entropy": CompressConfig(0.95, 4, group_size=64, mask_codec="entropy"),
    "bcq2-w256-ctx": CompressConfig(0.6, 2, max_window=256, mask_codec="ctx"),
    "uniform3-sym": CompressConfig(0.5, 3, "uniform", mask_codec="entropy"),
    "uniform4-asym-g5-ctx": CompressConfig(0.7, 4, "uniform", symmetric=False, group_size=5, mask_codec="ctx"),
    "uniform8-dense": CompressConfig(0.0, 8, "uniform", mask_codec="bitmask"),
    "codebook3": CompressConfig(0.7, 3, "codebook", codebook_rows=8),
    "bcq2-scale_rows4": CompressConfig(0.8, 2, scale_rows=4),
    "uniform3-log8-groups": CompressConfig(0.7, 3, "uniform", scale_format="log8", group_size=32),
    "bcq3-packed": CompressConfig(0.7, 3, packed_below=1 << 20),
    "uniform2-packed-groups": CompressConfig(0.5, 2, "uniform", symmetric=False, group_size=7,
                                             packed_below=1 << 20, mask_codec="entropy"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decode_dense_equals_numba(name, dtype, device):
    w = weights((37, 150), dtype, 3)
    ct = compress_tensor(w, CONFIGS[name])
    check_same(ct, device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_patches_and_mixed_decoders(dtype, device):
    ct = with_patches(weights((50, 90), dtype, 1), CompressConfig(0.7, 3))
    rw = check_same(ct, device)
    assert not rw.shared_decoder and rw.win_words == 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
def test_affine(symmetric, scale_dtype, dtype, device):
    check_same(affine(symmetric, scale_dtype, dtype), device)


@pytest.mark.parametrize("shape", [(0,), (1,), (63,), (200,), (3, 0), (5, 13), (1, 64), (64, 64), (2, 3, 3, 3),
                                   (300, 5)])
@pytest.mark.parametrize("cfg", [CompressConfig(0.7, 2), CompressConfig(0.6, 3, "uniform", symmetric=False,
                                                                      group_size=4, packed_below=1 << 20)])
def test_odd_shapes(shape, cfg, device):
    check_same(compress_tensor(weights(shape, "float16", sum(shape) + 1), cfg), device)


def test_equals_the_spec_decoder(tmp_path, device):
    """tests/reference.py decodes from the file alone (shares no code with xorsparse)."""
    from xorsparse.format.container import write_xsp

    rng = np.random.default_rng(5)
    cts = {
        "a": compress_tensor(rng.standard_normal((20, 70)).astype(np.float32), CompressConfig(0.8, 2)),
        "b": compress_tensor(rng.standard_normal((9, 33)).astype(np.float32),
                             CompressConfig(0.5, 3, "uniform", symmetric=False, group_size=4, mask_codec="ctx")),
        "c": compress_tensor(rng.standard_normal(200).astype(np.float32),
                             CompressConfig(0.9, 2, max_window=256, mask_codec="entropy")),
        "d": compress_tensor(rng.standard_normal((16, 40)).astype(np.float32),
                             CompressConfig(0.6, 3, "codebook", packed_below=1 << 20)),
        "e": with_patches(rng.standard_normal((12, 64)).astype(np.float32), CompressConfig(0.7, 3)),
    }
    path = str(tmp_path / "t.xsp")
    write_xsp(path, cts, {})
    for k, ct in cts.items():
        want = np.array(reference.decode_tensor(path, k), dtype=np.float32)
        got = decode_dense(ResidentWeight.from_compressed(ct, device))
        assert got.cpu().numpy().ravel().tobytes() == want.tobytes(), k


@pytest.mark.parametrize("name", ["bcq2-auto", "uniform4-asym-g5-ctx", "bcq3-packed", "codebook3"])
def test_from_xor_weight(name, device):
    from xorsparse.torch import XorWeight

    ct = compress_tensor(weights((21, 77), "bfloat16", 2), CONFIGS[name])
    rw = ResidentWeight.from_xor_weight(XorWeight(ct), device)
    assert bits_of(decode_dense(rw)) == bits_of(numba_dense(ct))
    assert rw.device.type == device.type and rw.shape == (21, 77) and rw.dtype == torch.bfloat16


def test_layout_properties_and_to(device):
    ct = compress_tensor(weights((64, 256), "float16", 4), CompressConfig(0.9, 2))
    rw = ResidentWeight.from_compressed(ct)
    assert rw.device.type == "cpu" and rw.to("cpu") is rw
    moved = rw.to(device)
    assert moved.device.type == device.type and moved.nbytes == rw.nbytes
    assert rw.nbytes == sum(rw.nbytes_by_part().values())
    assert rw.bits_per_weight == pytest.approx(8 * rw.nbytes / (64 * 256))
    assert rw.shared_decoder and rw.win_words >= 1
    out = torch.empty(rw.shape, dtype=torch.float16, device=device)
    assert decode_dense(moved, out).data_ptr() == out.data_ptr()
    assert bits_of(out) == bits_of(numba_dense(ct))
    with pytest.raises(ValueError, match="out must be"):
        decode_dense(moved, torch.empty(3, dtype=torch.float16, device=device))


def test_invalid_input_never_reaches_a_kernel():
    ct = compress_tensor(weights((30, 40), "float32", 5), CompressConfig(0.8, 2))
    p = ct.planes[0]
    short = dataclasses.replace(ct, planes=[dataclasses.replace(p, stream=p.stream[:-1])] + ct.planes[1:])
    with pytest.raises(gpu.ResidentLayoutError, match="stream holds"):
        ResidentWeight.from_compressed(short)
    bad_chunk = dataclasses.replace(ct, planes=[dataclasses.replace(p, chunk_slices=100)] + ct.planes[1:])
    with pytest.raises(ValueError, match="chunk_slices"):
        ResidentWeight.from_compressed(bad_chunk)
    bad_step = dataclasses.replace(ct, block_step=10**6)
    with pytest.raises(ValueError, match="block step"):
        ResidentWeight.from_compressed(bad_step)
    far = dataclasses.replace(ct, planes=[dataclasses.replace(p, patches=np.array([10**7]))] + ct.planes[1:])
    with pytest.raises(ValueError, match="patch positions"):
        ResidentWeight.from_compressed(far)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3, 16, 40])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(batch, with_bias, dtype, device):
    torch_dtype = getattr(torch, dtype)
    ct = compress_tensor(weights((70, 200), dtype, 6), CompressConfig(0.8, 3, "uniform", group_size=64))
    rw = ResidentWeight.from_compressed(ct, device)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 200, generator=g).to(device=device, dtype=torch_dtype)
    bias = torch.randn(70, generator=g).to(device=device, dtype=torch_dtype) if with_bias else None
    y = linear(x, rw, bias)
    w = decode_dense(rw)
    want = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    assert y.shape == (batch, 70) and y.dtype == torch_dtype
    tol = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}[dtype]
    torch.testing.assert_close(y.float(), want, atol=tol, rtol=tol)


def test_linear_shapes_and_errors(device):
    ct = compress_tensor(weights((33, 70), "float32", 8), CompressConfig(0.9, 2))
    rw = ResidentWeight.from_compressed(ct, device)
    x = torch.randn(2, 3, 70, device=device)
    y = linear(x, rw)
    torch.testing.assert_close(y, F.linear(x, decode_dense(rw)), atol=1e-4, rtol=1e-4)
    assert linear(x, rw, fused=False).shape == (2, 3, 33)
    with pytest.raises(ValueError, match="features"):
        linear(torch.randn(2, 71, device=device), rw)
    with pytest.raises(ValueError, match="is torch.float16"):
        linear(torch.randn(2, 70, device=device).half(), rw)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 4, 16])
@pytest.mark.parametrize("cfg", [CompressConfig(0.7, 3), CompressConfig(0.6, 3, "uniform", symmetric=False)])
def test_fused_tile_is_bit_exact(cfg, batch, dtype, device):
    """One-hot rows of x pick single columns of W out of the fused kernel: exact products."""
    torch_dtype = getattr(torch, dtype)
    ct = with_patches(weights((40, 90), dtype, 9), cfg)
    rw = ResidentWeight.from_compressed(ct, device)
    w = decode_dense(rw)
    for start in (0, 16, 74):
        x = torch.zeros(batch, 90, dtype=torch_dtype, device=device)
        x[torch.arange(batch), start + torch.arange(batch)] = 1
        y = linear(x, rw, fused=True)
        assert bits_of(y) == bits_of(w[:, start : start + batch].t().contiguous())


@pytest.mark.parametrize("name", ["bcq2-auto", "uniform4-asym-g5-ctx", "bcq3-packed"])
def test_embedding(name, device):
    ct = compress_tensor(weights((50, 24), "float16", 10), CONFIGS[name])
    rw = ResidentWeight.from_compressed(ct, device)
    idx = torch.tensor([[7, 3, 49, 3, 0], [0, 12, 12, 48, 7]], device=device)
    got = embedding(idx, rw)
    assert got.shape == (2, 5, 24)
    assert bits_of(got) == bits_of(numba_dense(ct)[idx.cpu()])
    assert embedding(torch.zeros(0, dtype=torch.int64, device=device), rw).shape == (0, 24)
    with pytest.raises(IndexError):
        embedding(torch.tensor([50], device=device), rw)


def test_import_without_triton():
    """xorsparse.gpu imports without triton (the kernels load at first use) and says so."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "import xorsparse, xorsparse.gpu as g\n"
            "assert not g.is_available()\n"
            "try:\n    g.linear(None, None)\nexcept g.GpuUnavailableError as e:\n    print('ok', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


def test_paths_for_huge_tensors(monkeypatch, device):
    """64-bit indices and the integer remainder of the interleave (chosen past 2^31
    positions or 2^53 products) decode the same bits, forced here on a small tensor."""
    import triton.language as tl

    from xorsparse.gpu import ops

    plain = ops._common_args

    def wide(rw):
        args, meta = plain(rw)
        return args, {**meta, "IDX": tl.int64, "MULMOD_F64": False}

    monkeypatch.setattr(ops, "_common_args", wide)
    check_same(with_patches(weights((40, 90), "float16", 11), CompressConfig(0.7, 3)), device)
    check_same(compress_tensor(weights((30, 50), "bfloat16", 12), CONFIGS["uniform2-packed-groups"]), device)


def test_packed_and_xor_planes_mixed(device):
    """The format allows a packed plane beside XOR planes; patch bits keep their plane index."""
    from xorsparse.tensor.packed import pack_plane

    w = weights((40, 90), "float32", 13)
    cfg = CompressConfig(0.7, 3)
    ct = with_patches(w, cfg)
    keep, qz, _ = prune_quantize(w, cfg)
    planes = list(ct.planes)
    planes[0] = pack_plane(qz.planes[0], keep.ravel())
    mixed = dataclasses.replace(ct, planes=planes)
    assert sum(p.patches.size for p in planes[1:]) > 0
    rw = check_same(mixed, device)
    assert rw.packed_planes == 1
