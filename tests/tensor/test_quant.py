import numpy as np
import pytest

from xorsparse.tensor.dequant import dequantize, squared_error
from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.variants import quantize


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


# --- affine: given codes, scales and zero points --------------------------------------------

from xorsparse.tensor.quant import code_range, given_keep, quantize_given, round_to_bfloat16  # noqa: E402


def _given(rng, rows=12, cols=64, group=16, bits=4, symmetric=False, scale_dtype="bfloat16"):
    lo, hi = code_range(bits)
    codes = rng.integers(lo, hi + 1, (rows, cols)).astype(np.int8)
    scales = rng.random((rows, cols // group)).astype(np.float32) * 0.1
    if scale_dtype == "bfloat16":
        scales = round_to_bfloat16(scales)
    elif scale_dtype == "float16":
        scales = scales.astype(np.float16).astype(np.float32)
    zp = None if symmetric else rng.integers(lo, hi + 1, (rows, cols // group)).astype(np.int8)
    return codes, scales, zp


def test_bfloat16_rounding_ties_to_even():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9, -(1 + 2**-8), 3.4e38, np.inf], np.float32)
    got = round_to_bfloat16(x)
    assert got.tolist()[:5] == [1.0, 1.0, 1 + 4 * 2**-8, 1.0, -1.0]
    assert np.isinf(got[5]) and np.isinf(got[6])  # above bfloat16's largest finite value


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["bfloat16", "float16", "float32"])
def test_affine_levels_are_the_rounded_products(symmetric, scale_dtype):
    rng = np.random.default_rng(3)
    codes, scales, zp = _given(rng, symmetric=symmetric, scale_dtype=scale_dtype)
    qz = quantize_given(codes, scales, zp, 4, 16, scale_dtype)
    keep = given_keep(codes, qz.scales, qz.zero_points, 16)
    got = dequantize(qz, keep)
    z = 0 if zp is None else np.repeat(zp.astype(np.int64), 16, axis=1)
    exact = (codes.astype(np.float64) - z) * np.repeat(scales.astype(np.float64), 16, axis=1)
    want = {"bfloat16": lambda v: round_to_bfloat16(v.astype(np.float32)),  # exact product, one rounding
            "float16": lambda v: v.astype(np.float16).astype(np.float32),
            "float32": lambda v: v.astype(np.float32)}[scale_dtype](exact)
    assert got.tobytes() == np.where(keep, want, np.float32(0)).astype(np.float32).tobytes()
    assert np.all(got[~keep] == 0) and not np.any(np.signbit(got[~keep]))


def test_given_keep_prunes_only_zero_point_codes_with_positive_scale():
    codes = np.array([[0, 1, 0, -1], [0, 0, 2, 0]], np.int8)
    scales = np.array([[[0.5]], [[-0.5]]], np.float32)
    keep = given_keep(codes, scales, None, 4)
    # row 1 has a negative scale: 0 * -0.5 is -0.0, not +0.0, so its zero codes are kept
    assert keep.tolist() == [[False, True, False, True], [True, True, True, True]]
    zp = np.array([[1], [2]], np.int8)
    assert given_keep(codes, np.abs(scales), zp, 4).tolist() == [[True, False, True, True], [True, True, False, True]]


def test_affine_through_the_codec_is_lossless():
    from xorsparse.tensor import CompressConfig, compress_quantized, decompress_tensor

    rng = np.random.default_rng(5)
    codes, scales, zp = _given(rng, rows=40, cols=96, group=32, bits=4)
    codes[rng.random(codes.shape) < 0.6] = 0
    zp[:] = 0
    qz = quantize_given(codes, scales, zp, 4, 32, "bfloat16")
    keep = given_keep(codes, qz.scales, qz.zero_points, 32)
    ct = compress_quantized(keep, qz, "float32", CompressConfig())
    assert decompress_tensor(ct).tobytes() == dequantize(qz, keep).tobytes()
    assert ct.scale_bits == 40 * 3 * (16 + 8)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(bits=9), "bits must be in 1..8"),
    (dict(bits=True), "bits must be in 1..8"),
    (dict(scale_dtype="float64"), "scale dtype"),
    (dict(codes_shift=8), "codes outside"),
    (dict(scale_value=np.nan), "NaN or infinite"),
    (dict(scale_value=0.1), "not bfloat16 values"),
    (dict(zp_value=300), "zero points must be integers"),
])
def test_quantize_given_rejects(kwargs, msg):
    rng = np.random.default_rng(0)
    codes, scales, zp = _given(rng)
    codes = codes + np.int8(kwargs.pop("codes_shift", 0))
    if "scale_value" in kwargs:
        scales[0, 0] = kwargs.pop("scale_value")
    zp = zp.astype(np.int64)
    if "zp_value" in kwargs:
        zp[0, 0] = kwargs.pop("zp_value")
    args = dict(bits=4, scale_dtype="bfloat16") | kwargs
    with pytest.raises(ValueError, match=msg):
        quantize_given(codes, scales, zp, args["bits"], 16, args["scale_dtype"])
