import numpy as np
import pytest

from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.dequant import dequantize, squared_error
from xorsparse.tensor.quant import quantize


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 200)).astype(np.float32)
    return w, magnitude_mask(w, 0.8)


@pytest.mark.parametrize("q", [1, 2, 3, 4])
def test_bcq_alternating_not_worse_than_greedy(weights, q):
    w, keep = weights
    greedy = squared_error(w, keep, quantize(w, keep, "bcq", q, iters=0))
    alt = squared_error(w, keep, quantize(w, keep, "bcq", q))
    assert alt <= greedy * (1 + 1e-6)
    if q >= 2:
        assert alt < 0.95 * greedy  # measurably better


def test_bcq_error_falls_with_bits(weights):
    w, keep = weights
    errs = [squared_error(w, keep, quantize(w, keep, "bcq", q)) for q in (1, 2, 3, 4)]
    assert errs == sorted(errs, reverse=True)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("q", [1, 2, 4, 8])
def test_uniform_levels_and_range(weights, sym, q):
    w, keep = weights
    qz = quantize(w, keep, "uniform", q, symmetric=sym)
    assert qz.planes.shape == (q, w.size)
    v = dequantize(qz, keep)
    assert np.all(v[~keep] == 0)
    rows_max = np.where(keep, np.abs(w), 0).max(axis=1)
    assert np.all(np.abs(v).max(axis=1) <= rows_max * (1 + 1e-2) + 1e-6)
    if q == 8:
        assert squared_error(w, keep, qz) < 1e-3 * float(np.sum(w[keep] ** 2))


def test_group_size_gives_more_scales(weights):
    w, keep = weights
    a = quantize(w, keep, "bcq", 2)
    b = quantize(w, keep, "bcq", 2, group_size=64)
    assert a.scales.shape == (64, 1, 2) and b.scales.shape == (64, 4, 2)
    assert squared_error(w, keep, b) <= squared_error(w, keep, a) * 1.01


def test_scales_fall_back_to_float32_outside_fp16_range():
    w = np.array([[1e6, -2e6, 3e6, 0.5]], np.float32)
    keep = np.ones_like(w, bool)
    assert quantize(w, keep, "bcq", 2).scales.dtype == np.float32
    assert quantize(w * 1e-9 / 1e6, keep, "uniform", 2).scales.dtype == np.float32  # below fp16 subnormals
    assert quantize(w * 1e-6 / 1e6, keep, "uniform", 2).scales.dtype == np.float16  # subnormal is fine
    assert quantize(np.ones((1, 4), np.float32), keep, "bcq", 2).scales.dtype == np.float16


def test_empty_rows_and_tensors():
    w = np.zeros((3, 0), np.float32)
    qz = quantize(w, np.zeros((3, 0), bool), "bcq", 2)
    assert dequantize(qz, np.zeros((3, 0), bool)).shape == (3, 0)
    w = np.ones((2, 5), np.float32)
    keep = np.zeros((2, 5), bool)
    keep[0, 1] = True
    v = dequantize(quantize(w, keep, "bcq", 3), keep)
    assert v[0, 1] != 0 and v.sum() == v[0, 1]


@pytest.mark.parametrize("quantizer,q", [("bcq", 0), ("bcq", 5), ("uniform", 9), ("other", 2)])
def test_invalid(quantizer, q):
    with pytest.raises(ValueError):
        quantize(np.ones((2, 2), np.float32), np.ones((2, 2), bool), quantizer, q)
