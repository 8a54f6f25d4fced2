"""The codebook quantizer, scale row groups and packed planes (format version 2)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize
from xorsparse.tensor.dequant import dequantize, squared_error
from xorsparse.tensor.packed import PackedPlane
from xorsparse.tensor.pipeline import quantize_with_scale_layout
from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.quant import from_row_groups, to_row_groups
from xorsparse.tensor.variants import quantize


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 300)) * rng.lognormal(0, 0.5, (64, 1))).astype(np.float32)
    return w, magnitude_mask(w, 0.7)


@pytest.mark.parametrize("q", [1, 2, 3, 4])
def test_codebook_beats_uniform_and_costs_one_scale_per_row(weights, q):
    w, keep = weights
    cb = quantize(w, keep, "codebook", q)
    assert cb.scales.shape == (64, 1, 1) and cb.codebook.shape == (1, 1 << q)
    assert cb.scale_bits == 16 * 64 + 16 * (1 << q)
    assert squared_error(w, keep, cb) < squared_error(w, keep, quantize(w, keep, "uniform", q))
    bcq = squared_error(w, keep, quantize(w, keep, "bcq", q))
    # one scale per row against q: a little worse at q = 2, 3 (rows of different shape share
    # the levels), better at q = 4
    assert squared_error(w, keep, cb) < (1.0 if q == 4 else 1.15) * bcq + 1e-6
    v = dequantize(cb, keep)
    assert np.all(v[~keep] == 0)


def test_codebook_rows_and_importance(weights):
    w, keep = weights
    per_row = quantize(w, keep, "codebook", 2, codebook_rows=1)
    assert per_row.codebook.shape == (64, 4) and per_row.codebook_rows == 1
    shared = quantize(w, keep, "codebook", 2)
    assert squared_error(w, keep, per_row) <= squared_error(w, keep, shared) * 1.01
    assert per_row.scale_bits == 16 * 64 + 16 * 4 * 64
    imp = np.ones_like(w)
    imp[:, :10] = 100.0  # the fit follows the important columns
    a = quantize(w, keep, "codebook", 2, importance=imp)
    d_imp = ((dequantize(a, keep) - w)[:, :10][keep[:, :10]] ** 2).sum()
    d_flat = ((dequantize(shared, keep) - w)[:, :10][keep[:, :10]] ** 2).sum()
    assert d_imp <= d_flat * 1.001
    with pytest.raises(ValueError, match="importance"):
        quantize(w, keep, "codebook", 2, importance=-imp)


@pytest.mark.parametrize("rows,cols,rs,g", [(7, 13, 3, 13), (7, 13, 3, 5), (8, 8, 8, 3), (1, 10, 1, 4), (5, 0, 2, 1)])
def test_row_groups_round_trip(rows, cols, rs, g):
    a = np.arange(rows * cols).reshape(rows, cols)
    assert np.array_equal(from_row_groups(to_row_groups(a, rs, g, -1), rows, cols, rs, g), a)


@pytest.mark.parametrize("quantizer", ["bcq", "uniform", "codebook"])
def test_scale_rows_share_scales(weights, quantizer):
    w, keep = weights
    q = quantize(w, keep, quantizer, 2, scale_rows=16)
    k = {"bcq": 2, "uniform": 1, "codebook": 1}[quantizer]
    assert q.scales.shape == (4, 1, k) and q.scale_rows == 16
    one = quantize(w, keep, quantizer, 2, scale_rows=64)
    assert one.scales.shape == (1, 1, k)
    per_row = quantize(w, keep, quantizer, 2)
    assert squared_error(w, keep, per_row) <= squared_error(w, keep, q) * 1.02


def test_auto_scale_rows_respects_the_error_budget():
    rng = np.random.default_rng(0)
    same = rng.standard_normal((96, 9)).astype(np.float32)  # depthwise-like: rows of 9, one scale fits all
    varied = same * np.geomspace(0.01, 100, 96, dtype=np.float32)[:, None]
    for w, coarse in ((same, True), (varied, False)):
        keep = magnitude_mask(w, 0.8)
        for quantizer in ("bcq", "codebook"):
            cfg = CompressConfig(0.8, 2, quantizer, scale_rows="auto", error_budget=0.05)
            qz = quantize_with_scale_layout(w, keep, cfg)
            base = quantize(w, keep, quantizer, 2)
            flat = lambda z: float(np.sum((dequantize(z, keep) - w) ** 2))  # noqa: E731
            assert flat(qz) <= flat(base) * 1.05**2 * (1 + 1e-9)
            assert (qz.scale_rows > 1) == coarse, (quantizer, qz.scale_rows)


def test_packed_planes_cost_the_care_bits():
    w = np.random.default_rng(3).standard_normal((32, 27)).astype(np.float32)
    cfg = CompressConfig(0.8, 2, packed_below=10_000)
    ct = compress_tensor(w, cfg)
    assert all(isinstance(p, PackedPlane) for p in ct.planes)
    kept = int(magnitude_mask(w, 0.8).sum())
    assert ct.value_bits == 2 * kept + ct.scale_bits and ct.efficiency == 1.0
    assert decompress_tensor(ct).tobytes() == reference_prune_quantize(w, cfg).tobytes()
    xor = compress_tensor(w, CompressConfig(0.8, 2, packed_below=0))
    assert ct.value_bits < xor.value_bits


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=3),
    st.floats(0, 0.99),
    st.sampled_from([("codebook", 1), ("codebook", 2), ("codebook", 4), ("bcq", 2), ("uniform", 3), ("bcq", 4)]),
    st.sampled_from([1, 2, 5, "auto"]),
    st.sampled_from([None, 1, 4]),
    st.sampled_from([None, 3]),
    st.booleans(),
    st.sampled_from(["auto", "ctx"]),
    st.sampled_from(["float16", "log8", "auto"]),
    st.integers(0, 2**31),
)
def test_bit_exact_property_version_2(shape, sparsity, qb, scale_rows, codebook_rows, group, packed, mask, fmt, seed):
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    cfg = CompressConfig(sparsity, qb[1], qb[0], symmetric=seed % 2 == 0, group_size=group, scale_rows=scale_rows,
                         codebook_rows=codebook_rows, packed_below=1 << 20 if packed else 0, mask_codec=mask,
                         error_budget=0.1, scale_format=fmt)
    ct = compress_tensor(w, cfg, verify=True)
    out = decompress_tensor(ct)
    ref = reference_prune_quantize(w, cfg)
    assert out.tobytes() == ref.tobytes() and out.shape == w.shape


def test_config_rejects_bad_layout_values():
    for kw in ({"scale_rows": 0}, {"scale_rows": "some"}, {"scale_rows": True}, {"error_budget": -1},
               {"codebook_rows": 0}, {"packed_below": -1}, {"quantizer": "codebook", "bits": 5},
               {"scale_format": "log4"}):
        with pytest.raises(ValueError):
            CompressConfig(**kw)


def test_log8_scales_round_trip_and_nearest():
    from xorsparse.tensor.logscale import decode_log8, encode_log8

    rng = np.random.default_rng(5)
    s = (rng.lognormal(0, 2, (50, 3, 2)) * rng.choice([-1, 1], (50, 3, 2))).astype(np.float32)
    s[0, 0, 0] = 0.0
    codes, ref = encode_log8(s)
    v = decode_log8(codes, ref)
    assert v.dtype == np.float32 and v[0, 0, 0] == 0 and np.all(np.sign(v) == np.sign(s))
    big = np.abs(s) > ref * 2.0**-15  # inside the 16 octaves: within half a step
    assert np.all(np.abs(np.log2(np.abs(v[big]) / np.abs(s[big]))) <= 1 / 16 + 0.01)  # nearest in value
    assert np.all(codes[s == 0] == 0)


@pytest.mark.parametrize("quantizer", ["bcq", "uniform", "codebook"])
def test_log8_halves_scale_bits_at_little_error(weights, quantizer, monkeypatch):
    from xorsparse.tensor import pipeline

    monkeypatch.setattr(pipeline, "AUTO_SCALE_MIN_SHARE", 0.0)  # search whatever the scales' share
    w, keep = weights
    f16 = CompressConfig(0.7, 2, quantizer, scale_rows=1, scale_format="float16")
    l8 = CompressConfig(0.7, 2, quantizer, scale_rows=1, scale_format="log8")
    a, b = compress_tensor(w, f16, keep=keep), compress_tensor(w, l8, keep=keep)
    assert b.quant.scale_format == "log8" and b.quant.scales.dtype == np.uint8
    assert b.scale_bits == a.scale_bits - 8 * a.quant.scales.size + 32 * a.quant.scales.shape[-1] \
        if quantizer != "codebook" else b.scale_bits < a.scale_bits
    ea = np.linalg.norm(decompress_tensor(a) - w)
    eb = np.linalg.norm(decompress_tensor(b) - w)
    assert eb <= 1.02 * ea
    assert decompress_tensor(b).tobytes() == reference_prune_quantize(w, l8, keep=keep).tobytes()
    auto = compress_tensor(w, CompressConfig(0.7, 2, quantizer, scale_rows=1, scale_format="auto", error_budget=0.05),
                           keep=keep)
    assert auto.quant.scale_format == "log8"
    strict = compress_tensor(w, CompressConfig(0.7, 2, quantizer, scale_rows=1, scale_format="auto", error_budget=0.0),
                             keep=keep)
    assert np.linalg.norm(decompress_tensor(strict) - w) <= ea * (1 + 1e-9)


def test_auto_searches_scale_layouts_only_where_scales_matter():
    """Default (auto) layouts: per-row float16 where per-row scales are a small share of the
    bits (long rows), searched where they are not (short rows, as in depthwise convolutions)."""
    from xorsparse.tensor.pipeline import per_row_scales_matter, prune_quantize

    rng = np.random.default_rng(3)
    long_rows = rng.standard_normal((64, 4096)).astype(np.float32)
    short_rows = rng.standard_normal((4096, 9)).astype(np.float32)
    cfg = CompressConfig(0.8, 2)
    k, qz, _ = prune_quantize(long_rows, cfg)
    assert not per_row_scales_matter(k, cfg) and qz.scale_rows == 1 and qz.scale_format != "log8"
    k, qz, _ = prune_quantize(short_rows, cfg)
    assert per_row_scales_matter(k, cfg) and (qz.scale_rows > 1 or qz.scale_format == "log8")
    ct = compress_tensor(short_rows, cfg)
    assert decompress_tensor(ct).tobytes() == reference_prune_quantize(short_rows, cfg).tobytes()
    assert ct.scale_bits < compress_tensor(short_rows, CompressConfig(0.8, 2, scale_rows=1,
                                                                      scale_format="float16")).scale_bits
