import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize
from xorsparse.tensor.maskcode import binary_entropy


def same_bits(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a, b.view(torch.int16) if b.dtype == torch.bfloat16 else b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


SHAPES = [(0,), (1,), (2,), (101,), (7, 13), (3, 0), (0, 5), (4, 3, 3, 3), (17, 1), (1, 257), (97, 89)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_bit_exact_numpy(shape, dtype):
    rng = np.random.default_rng(len(shape) * 100 + sum(shape))
    w = rng.standard_normal(shape).astype(dtype)
    for cfg in (CompressConfig(0.9, 2), CompressConfig(0.5, 3, "uniform"), CompressConfig(0.0, 1)):
        ct = compress_tensor(w, cfg, verify=True)
        out = decompress_tensor(ct)
        assert same_bits(out, reference_prune_quantize(w, cfg))
        assert out.shape == w.shape and out.dtype == w.dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bit_exact_torch(dtype):
    w = torch.randn(33, 70, generator=torch.Generator().manual_seed(0)).to(dtype)
    cfg = CompressConfig(0.8, 2)
    out = decompress_tensor(compress_tensor(w, cfg), framework="torch")
    ref = reference_prune_quantize(w, cfg, framework="torch")
    assert out.dtype == dtype and same_bits(out, ref)
    if dtype == torch.bfloat16:  # numpy has no bfloat16: torch is the default there
        assert isinstance(decompress_tensor(compress_tensor(w, cfg)), torch.Tensor)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=3),
    st.floats(0, 0.99),
    st.sampled_from([("bcq", 1), ("bcq", 2), ("bcq", 4), ("uniform", 1), ("uniform", 3), ("uniform", 8)]),
    st.booleans(),
    st.sampled_from([None, 1, 5]),
    st.integers(0, 2**31),
)
def test_bit_exact_property(shape, sparsity, qb, symmetric, group, seed):
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    cfg = CompressConfig(sparsity, qb[1], qb[0], symmetric=symmetric, group_size=group, max_n_s=seed % 3 * 7)
    ct = compress_tensor(w, cfg, verify=True)
    assert same_bits(decompress_tensor(ct), reference_prune_quantize(w, cfg))


def test_given_mask_and_zeros():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((40, 50)).astype(np.float32)
    w[:, :10] = 0  # pruned elsewhere
    keep = rng.random(w.shape) < 0.3
    cfg = CompressConfig(0.5, 2)
    ct = compress_tensor(w, cfg, keep=keep)
    out = decompress_tensor(ct)
    assert same_bits(out, reference_prune_quantize(w, cfg, keep=keep))
    assert np.all(out[~keep] == 0)
    auto = decompress_tensor(compress_tensor(w, cfg))
    assert np.all(auto[:, :10] == 0)


def test_bits_accounting_near_bound():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((512, 1024)).astype(np.float32)
    ct = compress_tensor(w, CompressConfig(0.9, 2, mask_codec="entropy"))
    n = w.size
    bound = binary_entropy(0.1) + 0.2
    assert ct.total_bits == ct.value_bits + ct.mask.nbits
    assert ct.value_bits == sum(p.stream_bits + p.patch_bits for p in ct.planes) + ct.scale_bits
    assert bound < ct.total_bits / n < 1.08 * bound


def test_config_rejects_bad_values():
    for kw in ({"sparsity": 1.0}, {"bits": 5}, {"quantizer": "x"}, {"mask_codec": "zip"},
               {"group_size": 0}, {"max_window": 300}, {"bits": 9, "quantizer": "uniform"}):
        with pytest.raises(ValueError):
            CompressConfig(**kw)
    with pytest.raises(ValueError, match="dtype"):
        compress_tensor(np.ones(4, np.int32))
