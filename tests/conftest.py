import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernels (xorsparse.gpu) run under the interpreter on CPU. triton.jit reads
    # TRITON_INTERPRET when a kernel module is imported, and any test module collected before
    # tests/gpu may import one (benchmarks, modules), so it is set here, before all of them.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def make_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(50, 16, generator=g),
        "layer0.linear.weight": torch.randn(32, 16, generator=g),
        "layer0.linear.bias": torch.randn(32, generator=g),
        "layer0.norm.weight": torch.ones(32),
        "layer1.linear.weight": torch.randn(16, 32, generator=g).to(torch.bfloat16),
        "layer1.conv.weight": torch.randn(8, 4, 3, 3, generator=g).to(torch.float16),
        "head.weight": torch.randn(7, 16, generator=g),
        "step": torch.tensor(3, dtype=torch.int64),
    }


@pytest.fixture
def state():
    return make_state()


@pytest.fixture
def st_file(tmp_path, state):
    from safetensors.torch import save_file

    p = tmp_path / "model.safetensors"
    save_file(state, str(p))
    return str(p)


@pytest.fixture
def pt_file(tmp_path, state):
    p = tmp_path / "model.pt"
    torch.save({"state_dict": state}, str(p))
    return str(p)


def write_sharded(d, state, save, shard_names: list[str], index_name: str) -> str:
    """Split `state` in two shards saved with `save(dict, path)` and write their weight-map index."""
    d.mkdir()
    names = list(state)
    half = len(names) // 2
    weight_map = {}
    for f, ns in zip(shard_names, (names[:half], names[half:])):
        save({n: state[n] for n in ns}, str(d / f))
        weight_map.update({n: f for n in ns})
    (d / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text("{}")
    return str(d)


@pytest.fixture
def hf_dir(tmp_path, state):
    """A sharded Hugging Face folder: two safetensors files and their index."""
    from safetensors.torch import save_file

    return write_sharded(tmp_path / "hf", state, save_file,
                         ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
                         "model.safetensors.index.json")


@pytest.fixture
def hf_bin_dir(tmp_path, state):
    """A Hugging Face folder with a sharded PyTorch checkpoint and its index."""
    return write_sharded(tmp_path / "hfbin", state, torch.save,
                         ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
                         "pytorch_model.bin.index.json")


@pytest.fixture(autouse=True)
def _no_stray_files(tmp_path):
    yield
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert not leftovers, f"temporary files left behind: {leftovers}"



@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory):
    """A two-layer sentence-transformers BERT folder with random weights (built, not downloaded)."""
    from .torch.tiny_models import tiny_bert

    return tiny_bert(str(tmp_path_factory.mktemp("tiny") / "st"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from .torch.tiny_models import tiny_llama

    return tiny_llama(str(tmp_path_factory.mktemp("tiny") / "llama"))
