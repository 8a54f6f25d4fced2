import copy

import pytest
import torch
from torch import nn

from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize
from xorsparse.torch import (
    ModelConfig,
    XorConv2d,
    XorEmbedding,
    XorLinear,
    XorWeight,
    compress_model,
    load_compressed,
    reference_model_,
    resident_bytes,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 12)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 10, bias=False)
        self.norm = nn.LayerNorm(10)

    def forward(self, x, ids):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.norm(self.fc2(torch.relu(self.fc1(h)))) + self.emb(ids).mean((1, 2))[:, None]


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 4, 4, generator=g), torch.randint(0, 50, (5, 3), generator=g)


@pytest.mark.parametrize("cfg", [CompressConfig(0.9, 2), CompressConfig(0.5, 3, "uniform", symmetric=False),
                                 CompressConfig(0.7, 1, max_n_s=0), CompressConfig(0.8, 4, group_size=7),
                                 CompressConfig(0.9, 2, max_window=256),
                                 CompressConfig(0.8, 2, "codebook", codebook_rows=3, scale_rows=2, mask_codec="ctx"),
                                 CompressConfig(0.6, 3, "bcq", scale_rows=4, packed_below=1 << 20, group_size=5),
                                 CompressConfig(0.7, 2, "uniform", symmetric=False, scale_format="log8")])
@pytest.mark.parametrize("shape,dtype", [((40, 128), torch.float32), ((8, 3, 3, 3), torch.float16),
                                         ((3, 1000), torch.bfloat16), ((1,), torch.float32), ((0, 4), torch.float32)])
def test_torch_decoder_matches_numba_bit_for_bit(cfg, shape, dtype):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    ct = compress_tensor(w, cfg)
    ref = reference_prune_quantize(w, cfg, framework="torch")
    a = decompress_tensor(ct, framework="torch")
    xw = XorWeight(ct)
    for b in (xw.dense(), xw.dense(backend="numba"), xw.dense(backend="torch")):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        assert bits(a) == bits(b) == bits(ref)


def bits(t: torch.Tensor) -> bytes:
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes()


PEAK_SCRIPT = r"""
import sys, torch
from xorsparse.tensor import CompressConfig, compress_tensor
from xorsparse.torch import XorWeight

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

dtype = getattr(torch, sys.argv[1])
w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0)).to(dtype)
xw = XorWeight(compress_tensor(w, CompressConfig(float(sys.argv[2]), int(sys.argv[3]))))
xw.dense(backend="torch")  # warm-up: tables, lazy initialisation
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
before = status("VmRSS")
out = xw.dense(backend="torch")
print((status("VmHWM") - before) / (w.numel() * w.element_size()))
"""


@pytest.mark.parametrize("dtype,sparsity,q", [("float32", 0.9, 2), ("bfloat16", 0.5, 3)])
def test_torch_path_peak_memory_below_twice_the_dense_weight(dtype, sparsity, q):
    """Measured, not timed: the resident-set peak of one torch-path decode, output included.

    Large allocations are forced onto their own mappings (MALLOC_MMAP_THRESHOLD_) so a
    freed temporary leaves the resident set and the next one shows up again.
    """
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident size")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, dtype, str(sparsity), str(q)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ratio = float(res.stdout.strip().splitlines()[-1])
    assert 0.9 < ratio <= 2.0, f"peak {ratio:.2f}x the dense weight"


def test_workspace_and_prefetch_forward_equal_reference(net, tmp_path):
    cfg = ModelConfig(0.8, 2, module_types=("Linear", "Conv2d", "Embedding"))
    path = str(tmp_path / "net.xsp")
    compress_model(net, cfg).save(path)
    ref = reference_model_(copy.deepcopy(net), cfg)
    x, ids = inputs()
    for prefetch in (False, True):
        loaded = load_compressed(copy.deepcopy(net), path, mode="ondemand", prefetch=prefetch)
        ws = loaded.xorsparse_workspace
        with torch.no_grad():
            for _ in range(3):  # the first pass learns the order, later ones decode ahead
                assert torch.equal(ref(x, ids), loaded(x, ids))
        twin = copy.deepcopy(loaded)  # copies get a workspace of their own
        assert twin.xorsparse_workspace is not ws and twin.fc1.xw.workspace is twin.xorsparse_workspace
        with torch.no_grad():
            assert torch.equal(twin(x, ids), ref(x, ids))
        assert 0 < ws.buffer_bytes() <= 2 * max(m.weight.numel() for m in net.modules() if hasattr(m, "weight")
                                                 and m.weight is not None) * 4
        # under autograd the weight must not be a reused buffer: gradients stay right
        xg = x.clone().requires_grad_(True)
        out = loaded(xg, ids).sum()
        out.backward()
        xr = x.clone().requires_grad_(True)
        ref(xr, ids).sum().backward()
        assert torch.equal(xg.grad, xr.grad)
        ws.close()


def test_weight_property_is_not_a_workspace_buffer(net, tmp_path):
    path = str(tmp_path / "net.xsp")
    compress_model(net, ModelConfig(0.8, 2)).save(path)
    loaded = load_compressed(copy.deepcopy(net), path, mode="ondemand")
    w = loaded.fc1.weight.clone()
    x, ids = inputs()
    with torch.no_grad():
        loaded(x, ids)
    assert torch.equal(w, loaded.fc1.weight)
    with pytest.raises(ValueError, match="backend"):
        loaded.fc1.xw.dense(backend="cuda")


@pytest.mark.parametrize("mode", ["decode", "ondemand"])
def test_load_compressed_equals_reference(net, tmp_path, mode):
    cfg = ModelConfig(0.8, 2, module_types=("Linear", "Conv2d", "Embedding"))
    cm = compress_model(net, cfg)
    assert set(cm.tensors) == {"emb.weight", "conv.weight", "fc1.weight", "fc2.weight"}
    path = str(tmp_path / "net.xsp")
    cm.save(path)
    ref = reference_model_(copy.deepcopy(net), cfg)
    loaded = load_compressed(copy.deepcopy(net), path, mode=mode, cache=mode == "ondemand")
    if mode == "ondemand":
        assert isinstance(loaded.fc1, XorLinear) and isinstance(loaded.conv, XorConv2d)
        assert isinstance(loaded.emb, XorEmbedding)
        assert resident_bytes(loaded) < 0.3 * resident_bytes(net)
    x, ids = inputs()
    with torch.no_grad():
        assert torch.equal(ref(x, ids), loaded(x, ids))
        assert torch.equal(ref(x, ids), loaded(x, ids))  # cached path too
        assert not torch.equal(net(x, ids), loaded(x, ids))


def test_given_masks_and_global(net, tmp_path):
    masks = {n: (torch.rand_like(m.weight) < 0.3) for n, m in [("fc1", net.fc1), ("fc2", net.fc2), ("conv", net.conv)]}
    cfg = ModelConfig(0.5, 2)
    cm = compress_model(net, cfg, masks=masks)
    for n, m in masks.items():
        assert cm.tensors[f"{n}.weight"].kept == int(m.sum())
    with pytest.raises(ValueError, match="no mask given"):
        compress_model(net, cfg, masks={"fc1": masks["fc1"]})
    g = compress_model(net, ModelConfig(0.5, 2, global_sparsity=True))
    kept = sum(ct.kept for ct in g.tensors.values())
    assert kept == round(0.5 * g.weights)


def test_load_rejects_other_architecture(net, tmp_path):
    path = str(tmp_path / "net.xsp")
    compress_model(net).save(path)
    with pytest.raises(ValueError, match="has no place in this model"):
        load_compressed(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(ValueError, match="mode"):
        load_compressed(net, path, mode="lazy")


def test_model_config_validation():
    with pytest.raises(ValueError, match="module_types"):
        ModelConfig(module_types=("LSTM",))


def test_loading_refuses_what_does_not_fit(tmp_path, monkeypatch):
    from torch import nn

    from xorsparse.format.container import XspError
    from xorsparse.torch import ModelConfig, compress_model, load_compressed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    p = str(tmp_path / "m.xsp")
    compress_model(model, ModelConfig(sparsity=0.8, bits=2)).save(p)
    other = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 9))
    with pytest.raises(ValueError, match=r"tensor '2.bias': shape \[8\] does not fit the model's \[9\]"):
        load_compressed(other, p)
    monkeypatch.setenv("XORSPARSE_MAX_TENSOR_BYTES", "4k")
    with pytest.raises(XspError, match=r"tensor '0.weight': decoding needs about"):
        load_compressed(model, p, mode="ondemand")


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("group", [32, 64])  # grouped (general kernel) and per row (fast kernel)
def test_ondemand_affine_weight_matches_reference_decoder(symmetric, scale_dtype, group):
    """Given codes, scales and zero points (compressed-tensors' int4) decode the same in the fused
    numba kernels, the torch path and the plane-by-plane reference."""
    import numpy as np

    from xorsparse.tensor import compress_quantized
    from xorsparse.tensor.pipeline import decompress_tensor_unfused
    from xorsparse.tensor.quant import given_keep, quantize_given

    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-8, 8, (24, 64), generator=g, dtype=torch.int8)
    codes[torch.rand(24, 64, generator=g) < 0.6] = 0
    ng = 64 // group
    scales = (torch.rand(24, ng, generator=g) * 0.1).to(getattr(torch, scale_dtype)).float().numpy()
    zp = None if symmetric else torch.randint(-2, 3, (24, ng), generator=g, dtype=torch.int8).numpy()
    qz = quantize_given(codes.numpy(), scales, zp, 4, group, scale_dtype)
    ct = compress_quantized(given_keep(codes.numpy(), qz.scales, qz.zero_points, group), qz, "bfloat16",
                            CompressConfig())
    want = decompress_tensor_unfused(ct, "torch")
    assert torch.equal(decompress_tensor(ct, "torch").view(torch.int16), want.view(torch.int16))
    for backend in ("numba", "torch"):
        got = XorWeight(ct).dense(backend=backend)
        assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), want.view(torch.int16))
    lin = XorLinear(ct, None)
    x = torch.randn(3, 64, dtype=torch.bfloat16, generator=g)
    assert torch.equal(lin(x), torch.nn.functional.linear(x, want))
    assert np.isfinite(scales).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_embedding_decodes_only_the_rows_looked_up(tmp_path, dtype):
    """A lookup of a few ids decodes those rows (XorWeight.decode_rows), equal bit for bit to
    the whole-table decode; out-of-range ids raise as nn.Embedding does."""
    emb = nn.Embedding(1000, 48).to(dtype)
    model = nn.Sequential(emb)
    cfg = ModelConfig(0.8, 2, module_types=("Embedding",))
    path = str(tmp_path / "emb.xsp")
    compress_model(model, cfg).save(path)
    ref = load_compressed(copy.deepcopy(model), path, mode="decode")
    lazy = load_compressed(copy.deepcopy(model), path, mode="ondemand")
    xe = lazy[0]
    assert isinstance(xe, XorEmbedding)
    calls = []
    whole = xe.xw.for_compute
    xe.xw.for_compute = lambda x: calls.append(1) or whole(x)
    ids = torch.tensor([[3, 999, 3, 0], [512, 7, 7, 42]])
    with torch.no_grad():
        got = lazy(ids)
        assert torch.equal(got.view(torch.int16) if dtype != torch.float32 else got,
                           ref(ids).view(torch.int16) if dtype != torch.float32 else ref(ids))
        assert not calls  # the whole table was never decoded
        with pytest.raises(IndexError):
            lazy(torch.tensor([1000]))
        many = torch.arange(1000)
        assert torch.equal(lazy(many).float(), ref(many).float())
        assert calls  # most of the table looked up: decoded whole
