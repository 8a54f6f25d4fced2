import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.maskctx import (
    P1,
    ZMAX,
    check_ctx_fields,
    ctx_model_from_parts,
    decode_ctx_words,
    encode_ctx,
    fit_model_estimate,
)
from xorsparse.tensor.variants import decode_mask, encode_mask
from xorsparse.tensor.variants.ctx import CTX_ESTIMATE_SLACK, CTX_MIN_SAVING

from .. import reference


def heterogeneous(rows, cols, density, seed):
    """Rows and columns of different densities, as magnitude pruning of real weights leaves."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * rng.lognormal(0, 0.6, (rows, 1)) * rng.lognormal(0, 0.4, (1, cols))
    if w.size == 0:
        return np.zeros((rows, cols), bool)
    thr = np.quantile(np.abs(w), 1 - density)
    return np.abs(w) > thr


def test_table_matches_reference_and_format_md():
    ref = reference.ctx_table()
    assert [int(P1[z + ZMAX]) for z in range(-255, 256)] == [ref[z] for z in range(-255, 256)]
    assert (ref[0], ref[16], ref[255], ref[-255]) == (32768, 47911, 65535, 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 40), st.integers(0, 90), st.floats(0, 1), st.integers(0, 2**32 - 1),
       st.sampled_from([64, 192, 65536]), st.booleans())
def test_round_trip_and_reference(rows, cols, density, seed, block, hetero):
    k = heterogeneous(rows, cols, density, seed) if hetero else np.random.default_rng(seed).random((rows, cols)) < density
    code = encode_mask(k, "ctx", block=block, cols=cols)
    assert code.codec == "ctx"
    assert np.array_equal(decode_mask(code), k.ravel())
    m = code.model
    mk = {"length": k.size, "block": block, "rows": m.rows, "cols": m.cols, "base": m.base,
          "row_step": m.row_step, "col_step": m.col_step}
    ref = reference.ctx_mask(mk, code.data.tobytes(), [int(x) for x in code.offsets], m.data.tobytes())
    assert ref == k.ravel().astype(int).tolist()


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (1, 1000), (1000, 1), (64, 64), (300, 257)])
@pytest.mark.parametrize("fill", ["none", "all", "half-rows", "one-column"])
def test_structured(shape, fill):
    k = np.zeros(shape, bool)
    if fill == "all":
        k[:] = True
    elif fill == "half-rows":
        k[: shape[0] // 2] = True
    elif fill == "one-column" and shape[1]:
        k[:, shape[1] // 2] = True
    code = encode_mask(k, "ctx", cols=shape[1])
    assert np.array_equal(decode_mask(code), k.ravel())
    if k.size >= 4096:
        assert code.nbits < 0.1 * k.size  # degenerate masks cost next to nothing


@pytest.mark.parametrize("density", [0.5, 0.3, 0.1])
def test_below_entropy_on_heterogeneous_masks(density):
    k = heterogeneous(768, 1024, density, 1)
    ctx = encode_mask(k, "ctx", cols=1024)
    assert ctx.model.row_step > 0 and ctx.model.col_step > 0
    assert ctx.nbits < 0.97 * binary_entropy(k.mean()) * k.size
    assert ctx.nbits < encode_mask(k, "entropy").nbits


def test_iid_mask_costs_about_the_entropy():
    k = np.random.default_rng(2).random((512, 2048)) < 0.1
    ctx = encode_mask(k, "ctx", cols=2048)
    assert ctx.nbits < 1.005 * binary_entropy(k.mean()) * k.size + 64 * 17


def test_auto_rule_weighs_ctx_decode_time():
    """auto: the smaller of Golomb and bitmask, and ctx only where it saves CTX_MIN_SAVING."""
    for k in (heterogeneous(300, 400, 0.1, 3), heterogeneous(300, 400, 0.1, 5),
              np.random.default_rng(4).random((300, 400)) < 0.5,
              np.random.default_rng(4).random((300, 400)) < 0.03, np.random.default_rng(5).random((300, 400)) < 0.1):
        sizes = {c: encode_mask(k, c, cols=400).nbits for c in ("bitmask", "entropy", "ctx")}
        plain = min(sizes["entropy"], sizes["bitmask"])
        want = "ctx" if sizes["ctx"] <= (1 - CTX_MIN_SAVING) * plain else min(("entropy", "bitmask"),
                                                                               key=lambda c: sizes[c])
        auto = encode_mask(k, cols=400)
        assert auto.codec == want
        assert auto.nbits == sizes[want]
        assert np.array_equal(decode_mask(auto), k.ravel())
    assert encode_mask(heterogeneous(300, 400, 0.1, 3), cols=400).codec == "ctx"
    assert encode_mask(np.random.default_rng(5).random((300, 400)) < 0.1, cols=400).codec == "entropy"


def test_estimate_is_close_to_the_coded_size():
    for k in (heterogeneous(300, 400, 0.1, 3), np.random.default_rng(6).random((200, 500)) < 0.2):
        model, est = fit_model_estimate(k)
        coded = encode_ctx(k, 400 if k.shape[1] == 400 else 500, model=model)
        assert abs(est / coded.nbits - 1) < CTX_ESTIMATE_SLACK


@pytest.mark.parametrize("field,value,msg", [
    ("block", 100, "block"), ("block", 0, "block"), ("block", 1 << 25, "block"), ("block", True, "integer"),
    ("rows", 7, "does not cover"), ("cols", -1, "does not cover"), ("base", 5000, "base"),
    ("base", 1.5, "integer"), ("row_step", 65, "row_step"), ("col_step", -1, "col_step"), ("rows", "3", "integer"),
])
def test_hostile_fields_rejected(field, value, msg):
    f = dict(length=12 * 40, block=64, rows=12, cols=40, base=-30, row_step=8, col_step=8)
    f[field] = value
    with pytest.raises(ValueError, match=msg):
        check_ctx_fields(**f)


def test_corrupt_bytes_decode_without_crashing():
    from dataclasses import replace

    k = heterogeneous(200, 300, 0.2, 5)
    code = encode_mask(k, "ctx", block=1024, cols=300)
    rng = np.random.default_rng(0)
    for _ in range(5):  # any bytes decode to some mask: the checksums catch corruption
        junk = rng.integers(0, 256, code.data.size, dtype=np.uint8)
        decode_ctx_words(replace(code, data=junk))
        m = code.model
        model = ctx_model_from_parts(m.rows, m.cols, m.base, m.row_step, m.col_step,
                                     rng.integers(0, 256, 50, dtype=np.uint8))
        assert np.abs(model.row_index).max() <= 255
    with pytest.raises(ValueError, match="offsets"):
        decode_mask(replace(code, data=code.data[:-1]))
    with pytest.raises(ValueError, match="block table"):
        decode_mask(replace(code, offsets=code.offsets[:-1]))
