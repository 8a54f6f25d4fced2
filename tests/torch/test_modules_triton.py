"""The Xor* modules on the Triton path (xorsparse.gpu), against the CPU path and the reference.

On a machine with CUDA the modules move to the GPU; without one, set_triton_on_cpu(True)
routes their CPU tensors through the same kernels in Triton's interpreter (TRITON_INTERPRET=1,
set here before triton is imported). Decoded weights must be bit-exact; the fused
decode + matmul sums in another order than cuBLAS / MKL, so its outputs get tight tolerances.
"""

import copy
import dataclasses
import os

import pytest
import torch
from torch import nn

from tests import reference
from tests.torch.test_modules import Net, inputs

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (the kernels read it then)

from xorsparse.tensor import CompressConfig, compress_tensor
from xorsparse.torch import (
    ModelConfig,
    compress_model,
    load_compressed,
    reference_model_,
)
from xorsparse.torch import modules as xm

DEVICE = torch.device("cuda" if CUDA else "cpu")


@pytest.fixture
def triton_path():
    """The Triton path on DEVICE, or a skip saying why it cannot run here."""
    pytest.importorskip("triton")
    gpu = pytest.importorskip("xorsparse.gpu")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (triton was imported before this module)")
    assert gpu.is_available()
    if not CUDA:
        xm.set_triton_on_cpu(True)
    yield gpu
    xm.set_triton_on_cpu(None)


def bits(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


CONFIGS = [ModelConfig(0.8, 2, module_types=("Linear", "Conv2d", "Embedding")),
           ModelConfig(0.6, 3, "uniform", symmetric=False, group_size=8,
                       module_types=("Linear", "Conv2d", "Embedding")),
           ModelConfig(0.7, 2, "codebook", mask_codec="ctx", module_types=("Linear", "Conv2d", "Embedding"))]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["bcq", "uniform-asym", "codebook-ctx"])
def test_modules_on_triton_equal_the_cpu_path(triton_path, net_and_file, cfg, tmp_path):
    net = net_and_file
    path = str(tmp_path / "net.xsp")
    compress_model(net, cfg).save(path)
    ref = reference_model_(copy.deepcopy(net), cfg)
    cpu = load_compressed(copy.deepcopy(net), path, mode="ondemand")
    xm.set_triton_on_cpu(False)  # the CPU path's outputs, with the numba kernel
    x, ids = inputs()
    with torch.no_grad():
        want = {"conv": cpu.conv(x), "emb": cpu.emb(ids), "fc1": cpu.fc1(torch.relu(cpu.conv(x)).flatten(1))}
        want_all = cpu(x, ids)
    assert torch.equal(want_all, ref(x, ids))
    if not CUDA:
        xm.set_triton_on_cpu(True)
    gpu_model = load_compressed(copy.deepcopy(net), path, mode="ondemand").to(DEVICE)
    for name in ("conv", "emb", "fc1", "fc2"):
        xw = getattr(gpu_model, name).xw
        assert xw.resident() is not None and xw.resident().device.type == DEVICE.type
        assert xw.scales.device.type == "cpu"  # the host keeps the buffers, the device the kernels' copy
        assert bits(xw.dense()) == bits(getattr(cpu, name).xw.dense(backend="numba"))
        want_w = torch.tensor(reference.decode_tensor(path, name + ".weight"), dtype=torch.float32)
        assert bits(xw.dense().reshape(-1)) == bits(want_w)
    xd, idd = x.to(DEVICE), ids.to(DEVICE)
    with torch.no_grad():
        assert torch.equal(gpu_model.conv(xd).cpu(), want["conv"])  # decoded dense, then the same conv
        assert torch.equal(gpu_model.emb(idd).cpu(), want["emb"])  # only the looked-up rows decode
        h = torch.relu(gpu_model.conv(xd)).flatten(1)
        torch.testing.assert_close(gpu_model.fc1(h).cpu(), want["fc1"], rtol=1e-5, atol=1e-5)  # fused, batch 5
        torch.testing.assert_close(gpu_model(xd, idd).cpu(), want_all, rtol=1e-5, atol=1e-5)


@pytest.fixture
def net_and_file():
    torch.manual_seed(0)
    return Net().eval()


def test_large_batch_and_cache_use_the_decoded_weight(triton_path, tmp_path):
    """Above the fused kernel's batch and with cache=True the weight decodes to dense and
    F.linear runs on it: outputs equal the CPU path's bit for bit."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 24)
    ct = compress_tensor(lin.weight.detach(), CompressConfig(0.9, 2))
    x = torch.randn(40, 96, generator=torch.Generator().manual_seed(1))
    xm.set_triton_on_cpu(False)
    want = xm.XorLinear(ct, lin.bias)(x)
    if not CUDA:
        xm.set_triton_on_cpu(True)
    for cache in (False, True):
        mod = xm.XorLinear(ct, lin.bias, cache=cache).to(DEVICE)
        with torch.no_grad():
            assert torch.equal(mod(x.to(DEVICE)).cpu(), want)
            assert torch.equal(mod(x.to(DEVICE)).cpu(), want)
        assert (mod.xw._cached is not None) == cache
    back = mod.to("cpu")  # and back: the CPU path again (forced here: still Triton, same result)
    assert torch.equal(back(x), want)


def test_to_cuda_without_triton_device_keeps_other_paths(tmp_path):
    """The Triton path applies only to a CUDA device or a forced CPU; model.half() keeps the
    compressed buffers' dtypes (the scales stay float32, the decode stays exact)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    ct = compress_tensor(lin.weight.detach().half(), CompressConfig(0.8, 3, "uniform"))
    mod = xm.XorLinear(ct, lin.bias.detach().half())
    before = bits(mod.weight)
    mod.half()
    assert mod.xw.scales.dtype == torch.float32 and mod.bias.dtype == torch.float16
    assert bits(mod.weight) == before
    assert mod.xw.resident() is None and mod.xw.device.type == "cpu"


def test_ondemand_then_to_device_equals_reference(triton_path, net_and_file, tmp_path):
    net = net_and_file
    cfg = CONFIGS[0]
    path = str(tmp_path / "net.xsp")
    compress_model(net, cfg).save(path)
    ref = reference_model_(copy.deepcopy(net), cfg)
    loaded = load_compressed(copy.deepcopy(net), path, mode="ondemand", prefetch=True).to(DEVICE)
    x, ids = inputs()
    with torch.no_grad():
        got = loaded(x.to(DEVICE), ids.to(DEVICE)).cpu()
    torch.testing.assert_close(got, ref(x, ids), rtol=1e-5, atol=1e-5)
    assert loaded.xorsparse_workspace.buffer_bytes() == 0  # the CPU workspace is not used on this path
    xw = loaded.fc1.xw
    assert 0 < xw.device_nbytes() == xw.resident().nbytes
    twin = copy.deepcopy(loaded)  # a copy rebuilds its own resident copy where it is used
    assert twin.fc1.xw._resident is None
    with torch.no_grad():
        assert torch.equal(twin(x.to(DEVICE), ids.to(DEVICE)).cpu(), got)
    loaded.xorsparse_workspace.close()


def test_a_file_failing_validation_never_builds_a_resident_weight(triton_path, net_and_file, tmp_path, monkeypatch):
    from xorsparse.format.validate import XspError

    built = []
    real = triton_path.ResidentWeight.from_xor_weight.__func__

    def counting(cls, xw, device=None):
        built.append(xw)
        return real(cls, xw, device)

    monkeypatch.setattr(triton_path.ResidentWeight, "from_xor_weight", classmethod(counting))
    net = net_and_file
    path = tmp_path / "net.xsp"
    compress_model(net, CONFIGS[0]).save(str(path))
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x10  # a byte of the last tensor's data: its checksum fails
    bad = tmp_path / "bad.xsp"
    bad.write_bytes(bytes(data))
    with pytest.raises((XspError, ValueError)):
        load_compressed(copy.deepcopy(net), str(bad), mode="ondemand").to(DEVICE)
    ct = compress_tensor(torch.randn(16, 64), CompressConfig(0.8, 2))
    broken = dataclasses.replace(ct, block_step=0)  # refused before any buffer (or kernel) sees it
    with pytest.raises(ValueError):
        xm.XorLinear(broken, None).to(DEVICE)
    assert built == []
    xm.XorLinear(ct, None).to(DEVICE)
    assert len(built) == 1


def test_transformers_ondemand_on_the_device(triton_path, tmp_path):
    """A Llama-architecture folder loads on demand onto DEVICE (device_map where accelerate,
    which transformers needs for it, is installed; else .to after loading): every compressed
    Linear is an XorLinear there, on the Triton kernels, and equals the decoded load."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from xorsparse.checkpoint.options import SelectOptions
    from xorsparse.integrations.hf import load_mode
    from xorsparse.jobs.folder import compress_folder

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    src, out = tmp_path / "tiny", tmp_path / "tiny-xsp"
    LlamaForCausalLM(cfg).eval().save_pretrained(str(src))
    compress_folder(str(src), str(out), CompressConfig(0.8, 2), SelectOptions(include=["model.layers.*"]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    decoded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    try:
        import accelerate  # noqa: F401

        kwargs = {"device_map": str(DEVICE)}
    except ImportError:
        kwargs = {}
    with load_mode("ondemand"):
        model = AutoModelForCausalLM.from_pretrained(str(out), **kwargs).eval().to(DEVICE)
    lin = model.model.layers[0].mlp.down_proj
    assert isinstance(lin, xm.XorLinear) and lin.xw.resident() is not None
    assert lin.xw.device.type == DEVICE.type and lin.xw.resident().device.type == DEVICE.type
    assert torch.equal(lin.weight.cpu(), decoded.model.layers[0].mlp.down_proj.weight)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        want = decoded(ids).logits
        got = model(ids.to(DEVICE)).logits.cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_quantizer_places_ondemand_modules_by_the_device_map():
    """transformers hands device_map to the quantizer before loading; the Xor* modules that
    replace the loaded placeholders (CPU tensors) go where the map puts their weight."""
    pytest.importorskip("transformers")
    from xorsparse.integrations.hf.quantizer import (
        XorsparseConfig,
        XorsparseHfQuantizer,
    )

    q = XorsparseHfQuantizer(XorsparseConfig(load_mode="ondemand"))
    assert q.module_device("model.layers.0.mlp.down_proj") is None  # no device_map: stays where built
    q._process_model_before_weight_loading(None, checkpoint_files=[],
                                           device_map={"model.layers.1": "meta", "lm_head": "disk", "": "cpu"})
    assert q.module_device("model.layers.0.mlp.down_proj") == torch.device("cpu")
    assert q.module_device("model.layers.1.mlp.down_proj") == torch.device("meta")
    assert q.module_device("lm_head") == torch.device("cpu")  # offloaded to disk: kept on the CPU
    q._process_model_before_weight_loading(None, checkpoint_files=[], device_map={"": 0})
    assert q.module_device("model.layers.0.mlp.down_proj") == torch.device("cuda", 0)


def test_forcing_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    xm.set_triton_on_cpu(True)
    try:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            xm.triton_device(torch.device("cpu"))
    finally:
        xm.set_triton_on_cpu(None)
    monkeypatch.setenv(xm.TRITON_ON_CPU_ENV, "1")
    assert xm.triton_on_cpu()
    monkeypatch.setenv(xm.TRITON_ON_CPU_ENV, "0")
    assert not xm.triton_on_cpu()
