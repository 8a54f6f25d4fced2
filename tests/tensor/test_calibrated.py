import numpy as np
import pytest
import torch

from xorsparse.format.container import write_xsp
from xorsparse.tensor import CompressConfig, compress_quantized, decompress_tensor
from xorsparse.tensor.calibrated import (
    calibrated_prune_quantize,
    damped_hessian,
    decoded_levels,
    inverse_cholesky,
    obs_pass,
    output_error,
    refit_scales,
    requantize,
    wanda_mask,
)
from xorsparse.tensor.dequant import dequantize
from xorsparse.tensor.pipeline import prune_quantize


def planted(rows=48, cols=96, n=600, seed=0):
    """Inputs with strongly correlated features of very different scales: what makes the
    output error differ from the weight error (and what calibration is for)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((cols, 8))
    x = (rng.standard_normal((n, 8)) @ basis.T + 0.2 * rng.standard_normal((n, cols)))
    x *= np.exp(1.5 * rng.standard_normal(cols))[None, :]
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    return w, x.T @ x


def err(w, keep, qz, xtx):
    return output_error(w, dequantize(qz, keep), xtx)


def test_inverse_cholesky():
    _, h = planted()
    hd = damped_hessian(h, 0.01)
    u = inverse_cholesky(hd)
    assert np.allclose(u, np.triu(u))
    assert np.allclose(u.T @ u, np.linalg.inv(hd), rtol=1e-8, atol=1e-12 * np.abs(np.linalg.inv(hd)).max())


def test_damped_hessian_handles_dead_inputs():
    _, h = planted(cols=16)
    h[3, :] = h[:, 3] = 0.0
    hd = damped_hessian(h, 0.01)
    assert hd[3, 3] > 0 and np.all(hd[3, np.arange(16) != 3] == 0)
    inverse_cholesky(hd)


def test_wanda_mask_per_row_exact_and_zeros_pruned():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 37)).astype(np.float32)
    norms = np.exp(rng.standard_normal(37))
    keep = wanda_mask(w, norms, 0.6)
    assert keep.shape == w.shape and np.all(keep.sum(1) == 37 - round(0.6 * 37))
    score = np.abs(w) * norms
    for r in range(10):  # the kept ones are the largest scores of their row
        assert score[r][keep[r]].min() >= score[r][~keep[r]].max()
    w[0, :30] = 0
    assert wanda_mask(w, norms, 0.1)[0, :30].sum() == 0
    # equal norms: per-row magnitude pruning, ties to lower columns
    eq = wanda_mask(np.ones((2, 8), np.float32), np.ones(8), 0.5)
    assert eq.tolist() == [[False] * 4 + [True] * 4] * 2


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.9])
def test_sparsegpt_mask_hits_the_sparsity_exactly(sparsity):
    w, h = planted(rows=20, cols=300)
    keep, qz = calibrated_prune_quantize(w, h, CompressConfig(sparsity, 2, method="sparsegpt", calib_block=64))
    assert np.all(keep.sum(1) == 300 - round(sparsity * 300))
    keep2, _, values = obs_pass(w.astype(np.float64), inverse_cholesky(damped_hessian(h, 0.01)), None, sparsity,
                                block=64, per_row=False)
    assert (~keep2).sum() == round(sparsity * w.size)
    assert np.all(values[~keep2] == 0)


@pytest.mark.parametrize("sparsity,bits,quantizer", [(0.5, 4, "bcq"), (0.7, 3, "bcq"), (0.9, 2, "bcq"),
                                                      (0.5, 4, "uniform"), (0.7, 3, "uniform")])
def test_calibration_beats_data_free_on_planted_correlations(sparsity, bits, quantizer):
    w, h = planted()
    cfg = CompressConfig(sparsity, bits, quantizer)
    k0, q0, _ = prune_quantize(w, cfg)
    rtn = err(w, k0, q0, h)
    gptq = err(w, *calibrated_prune_quantize(w, h, CompressConfig(sparsity, bits, quantizer, method="magnitude"),
                                             keep=k0), h)
    wanda = err(w, *calibrated_prune_quantize(w, h, CompressConfig(sparsity, bits, quantizer, method="wanda")), h)
    sgpt = err(w, *calibrated_prune_quantize(w, h, CompressConfig(sparsity, bits, quantizer, method="sparsegpt")), h)
    assert gptq < rtn  # same mask: error feedback alone
    assert wanda < 0.5 * rtn and sgpt < 0.5 * rtn


def test_refit_never_increases_the_output_error():
    w, h = planted()
    rng = np.random.default_rng(3)
    for quantizer, sym, gs in [("bcq", True, None), ("uniform", True, None), ("uniform", False, 32), ("bcq", True, 40)]:
        keep = rng.random(w.shape) > 0.5
        from xorsparse.tensor.variants import quantize

        qz = quantize(w, keep, quantizer, 3, sym, gs)
        before = err(w, keep, qz, h)
        after = err(w, keep, refit_scales(w, h, keep, qz), h)
        assert after <= before + 1e-12


@pytest.mark.parametrize("cfg", [CompressConfig(0.5, 4, method="sparsegpt"), CompressConfig(0.7, 3, method="wanda"),
                                 CompressConfig(0.6, 2, "uniform", symmetric=False, method="sparsegpt", group_size=24),
                                 CompressConfig(0.8, 1, method="sparsegpt", calib_passes=1, calib_block=16)])
def test_calibrated_output_is_stored_bit_exactly(tmp_path, cfg):
    from .. import reference

    w, h = planted(rows=23, cols=61 + 35)
    keep, qz = calibrated_prune_quantize(w, h, cfg)
    ct = compress_quantized(keep, qz, "float32", cfg, verify=True)
    dense = dequantize(qz, keep)
    assert decompress_tensor(ct).tobytes() == dense.tobytes()
    p = tmp_path / "c.xsp"
    write_xsp(p, {"w": ct}, {}, cfg)
    assert np.array(reference.decode_tensor(str(p), "w"), dtype=np.float32).tobytes() == dense.ravel().tobytes()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_error_feedback_uses_the_levels_the_decoder_produces(dtype):
    w, h = planted(rows=16, cols=64)
    wt = torch.from_numpy(w).to(dtype)
    name = str(dtype).replace("torch.", "")
    cfg = CompressConfig(0.5, 3, method="sparsegpt")
    keep, qz = calibrated_prune_quantize(wt.float().numpy(), h, cfg, dtype=name)
    ct = compress_quantized(keep, qz, name, cfg)
    out = decompress_tensor(ct, framework="torch")
    lv = decoded_levels(qz, name)
    assert out.dtype == dtype
    assert np.all(np.isin(out.float().numpy()[keep], lv.ravel()))


def test_deterministic():
    w, h = planted()
    cfg = CompressConfig(0.6, 3, method="sparsegpt")
    a = calibrated_prune_quantize(w, h, cfg)
    b = calibrated_prune_quantize(w.copy(), h.copy(), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1].planes, b[1].planes)
    assert a[1].scales.tobytes() == b[1].scales.tobytes()


def test_requantize_rounds_to_nearest_decoded_level():
    w, h = planted(rows=8, cols=40)
    keep, qz = calibrated_prune_quantize(w, h, CompressConfig(0.5, 2, method="wanda"))
    again = requantize(dequantize(qz, keep), keep, qz)
    assert np.array_equal(dequantize(again, keep), dequantize(qz, keep))
    lv = decoded_levels(qz)
    moved = requantize(w, keep, qz)
    vals = dequantize(moved, keep)
    for r in range(8):
        for c in np.flatnonzero(keep[r]):
            assert abs(vals[r, c] - w[r, c]) <= np.abs(lv[r, 0] - w[r, c]).min() + 1e-6


def test_bad_statistics_are_errors():
    w, h = planted(rows=4, cols=8)
    with pytest.raises(ValueError, match="X\\^T X has shape"):
        calibrated_prune_quantize(w, h[:4, :4], CompressConfig(0.5, 2, method="wanda"))
    h[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calibrated_prune_quantize(w, h, CompressConfig(0.5, 2, method="wanda"))
    with pytest.raises(ValueError, match="method"):
        CompressConfig(0.5, 2, method="obs")


def test_quantizers_without_error_feedback_are_refused():
    """A quantizer the error-feedback pass cannot drive (e.g. a codebook) is a clear error."""
    from types import SimpleNamespace

    from xorsparse.tensor.calibrated import calibrated_prune_quantize

    w = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    cfg = SimpleNamespace(method="sparsegpt", quantizer="codebook", sparsity=0.5, bits=2, calib_damp=0.01,
                          calib_block=128, calib_passes=1, group_size=None, symmetric=True, bcq_iters=5)
    with pytest.raises(ValueError, match="support the quantizers bcq and uniform, not 'codebook'"):
        calibrated_prune_quantize(w, np.eye(16), cfg)


@pytest.mark.parametrize("layout,msg", [(dict(scale_rows=4), "scale_rows=4"), (dict(scale_format="log8"), "log8"),
                                        (dict(scale_rows=16), "scale_rows=16")])
def test_scale_layouts_the_pass_does_not_refit_are_refused(layout, msg):
    from xorsparse.tensor.calibrated import calibrated_prune_quantize

    w = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(ValueError, match=msg):
        calibrated_prune_quantize(w, np.eye(16), CompressConfig(0.5, 2, method="sparsegpt", **layout))


def test_default_auto_layout_means_per_row_float16_scales_for_the_pass():
    from xorsparse.tensor.calibrated import calibrated_prune_quantize

    w = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    cfg = CompressConfig(0.5, 2, method="sparsegpt")
    assert (cfg.scale_rows, cfg.scale_format) == ("auto", "auto")
    explicit = CompressConfig(0.5, 2, method="sparsegpt", scale_rows=1, scale_format="float16")
    a = calibrated_prune_quantize(w, np.eye(16), cfg)
    b = calibrated_prune_quantize(w, np.eye(16), explicit)
    assert a[1].scale_rows == 1 and a[1].scale_format != "log8"
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1].scales, b[1].scales)
