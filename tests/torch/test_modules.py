import copy

import pytest
import torch
from torch import nn

from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor
from xorsparse.torch import (ModelConfig, XorConv2d, XorEmbedding, XorLinear, XorWeight, compress_model,
                             load_compressed, reference_model_, resident_bytes)


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
                                 CompressConfig(0.9, 2, max_window=256)])
@pytest.mark.parametrize("shape,dtype", [((40, 128), torch.float32), ((8, 3, 3, 3), torch.float16),
                                         ((3, 1000), torch.bfloat16), ((1,), torch.float32), ((0, 4), torch.float32)])
def test_torch_decoder_matches_numba_bit_for_bit(cfg, shape, dtype):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    ct = compress_tensor(w, cfg)
    a = decompress_tensor(ct, framework="torch")
    b = XorWeight(ct).dense()
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    assert torch.equal(a.view(torch.int16) if dtype == torch.bfloat16 else a,
                       b.view(torch.int16) if dtype == torch.bfloat16 else b)


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

    from xorsparse.io.container import XspError
    from xorsparse.torch import ModelConfig, compress_model, load_compressed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    p = str(tmp_path / "m.xsp")
    compress_model(model, ModelConfig(sparsity=0.8, bits=2)).save(p)
    other = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 9))
    with pytest.raises(ValueError, match=r"tensor '2.bias': shape \[8\] does not fit the model's \[9\]"):
        load_compressed(other, p)
    monkeypatch.setenv("XORSPARSE_MAX_TENSOR_BYTES", "4k")
    with pytest.raises(XspError, match=r"tensor '0.weight': on-demand decoding needs about"):
        load_compressed(model, p, mode="ondemand")


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["bfloat16", "float16", "float32"])
def test_ondemand_affine_weight_matches_numba_decoder(symmetric, scale_dtype):
    """Given codes, scales and zero points (compressed-tensors' int4) decode the same in torch."""
    import numpy as np

    from xorsparse.tensor import compress_quantized
    from xorsparse.tensor.quant import given_keep, quantize_given

    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-8, 8, (24, 64), generator=g, dtype=torch.int8)
    codes[torch.rand(24, 64, generator=g) < 0.6] = 0
    scales = (torch.rand(24, 2, generator=g) * 0.1).to(getattr(torch, scale_dtype)).float().numpy()
    zp = None if symmetric else torch.randint(-2, 3, (24, 2), generator=g, dtype=torch.int8).numpy()
    qz = quantize_given(codes.numpy(), scales, zp, 4, 32, scale_dtype)
    ct = compress_quantized(given_keep(codes.numpy(), qz.scales, qz.zero_points, 32), qz, "bfloat16",
                            CompressConfig())
    want = decompress_tensor(ct, "torch")
    got = XorWeight(ct).dense()
    assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), want.view(torch.int16))
    lin = XorLinear(ct, None)
    x = torch.randn(3, 64, dtype=torch.bfloat16, generator=g)
    assert torch.equal(lin(x), torch.nn.functional.linear(x, want))
    assert np.isfinite(scales).all()
