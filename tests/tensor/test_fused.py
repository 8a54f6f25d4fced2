"""The fused decoder against the plane-by-plane decoder, the reference path and tests/reference.py."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import reference
from xorsparse.codec.plane import encode_plane, get_decoder
from xorsparse.format.container import write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize
from xorsparse.tensor.fused import MASK_WORDS, OUT_F32, decode_dense, decode_into, prepare
from xorsparse.tensor.interleave import to_coded
from xorsparse.tensor.maskcode import encode_entropy, golomb_tables
from xorsparse.tensor.pipeline import decompress_tensor_unfused
from xorsparse.tensor.variants import decode_mask, decode_mask_words


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        a = a.view(torch.int16).numpy() if a.dtype == torch.bfloat16 else a.numpy()
    if isinstance(b, torch.Tensor):
        b = b.view(torch.int16).numpy() if b.dtype == torch.bfloat16 else b.numpy()
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def weights(shape, dtype, seed):
    w = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return w.to(getattr(torch, dtype))


CONFIGS = [
    CompressConfig(0.9, 2),
    CompressConfig(0.5, 3, "uniform"),
    CompressConfig(0.7, 4, "uniform", symmetric=False, group_size=5),
    CompressConfig(0.8, 1, max_n_s=0),
    CompressConfig(0.6, 2, max_window=256, mask_codec="bitmask"),
    CompressConfig(0.95, 4, group_size=64, mask_codec="entropy"),
    CompressConfig(0.0, 8, "uniform", mask_codec="bitmask"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("shape", [(0,), (1,), (63,), (3, 0), (5, 13), (64, 64), (37, 129), (2, 3, 3, 3)])
def test_fused_equals_reference_and_unfused(cfg, dtype, shape):
    w = weights(shape, dtype, sum(shape) + len(shape))
    ct = compress_tensor(w, cfg)
    fused = decompress_tensor(ct, framework="torch")
    assert same(fused, reference_prune_quantize(w, cfg, framework="torch"))
    assert same(fused, decompress_tensor_unfused(ct, framework="torch"))
    serial = decompress_tensor(ct, framework="torch", parallel=False)
    assert same(serial, fused)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 70), min_size=1, max_size=3),
    st.floats(0, 0.99),
    st.sampled_from([("bcq", 1), ("bcq", 2), ("bcq", 4), ("uniform", 1), ("uniform", 3), ("uniform", 8)]),
    st.booleans(),
    st.sampled_from([None, 1, 3, 64]),
    st.sampled_from(["auto", "bitmask", "entropy"]),
    st.sampled_from([128, 256]),
    st.sampled_from(["float32", "float16", "bfloat16", "float64"]),
    st.integers(0, 2**31),
)
def test_fused_property(shape, sparsity, qb, symmetric, group, codec, window, dtype, seed):
    w = weights(shape, dtype, seed)
    cfg = CompressConfig(sparsity, qb[1], qb[0], symmetric=symmetric, group_size=group, mask_codec=codec,
                         max_window=window, max_n_s=None if seed % 3 else 0)
    ct = compress_tensor(w, cfg)
    assert same(decompress_tensor(ct, framework="torch"), reference_prune_quantize(w, cfg, framework="torch"))


def test_fused_equals_spec_decoder(tmp_path):
    """tests/reference.py decodes from the file alone; the fused path must agree bit for bit."""
    rng = np.random.default_rng(5)
    tensors = {
        "a": rng.standard_normal((20, 70)).astype(np.float32),
        "b": rng.standard_normal((9, 33)).astype(np.float32),
        "c": rng.standard_normal(200).astype(np.float32),
    }
    cfgs = {"a": CompressConfig(0.8, 2), "b": CompressConfig(0.5, 3, "uniform", symmetric=False, group_size=4),
            "c": CompressConfig(0.9, 2, max_window=256, mask_codec="bitmask")}
    cts = {k: compress_tensor(v, cfgs[k]) for k, v in tensors.items()}
    path = str(tmp_path / "t.xsp")
    write_xsp(path, cts, {})
    for k, ct in cts.items():
        want = np.array(reference.decode_tensor(path, k), dtype=np.float32)
        assert decompress_tensor(ct).ravel().tobytes() == want.tobytes()


def test_mixed_plane_decoders_and_patches():
    """Planes with different decoders (the format allows it) take the general kernel."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((50, 90)).astype(np.float32)
    cfg = CompressConfig(0.7, 3)
    ct = compress_tensor(w, cfg)
    from xorsparse.tensor.pipeline import prune_quantize

    keep, qz, _ = prune_quantize(w, cfg)
    flat = keep.ravel()
    care = to_coded(flat, ct.block_step)
    decs = [get_decoder(4, 9, 3), get_decoder(16, 40, 0), get_decoder(9, 30, 20)]  # last: window 189 bits
    # a too-low rate forces patches, in several planes at shared positions
    planes = [encode_plane(to_coded(p, ct.block_step), care, d, chunk_slices=64) for p, d in zip(qz.planes, decs)]
    assert sum(p.patches.size for p in planes) > 10
    mixed = dataclasses.replace(ct, planes=planes)
    assert not prepare(mixed).fast_shared
    assert same(decompress_tensor(mixed), reference_prune_quantize(w, cfg))


@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("length", [1, 64, 1000, 70001])
def test_golomb_table_decoder(density, length):
    keep = np.random.default_rng(int(density * 1000) + length).random(length) < density
    code = encode_entropy(keep, block=4096)
    assert np.array_equal(decode_mask(code), keep)


def test_golomb_without_tables_and_large_parameters():
    keep = np.zeros(300_000, bool)
    keep[[5, 140_000, 299_999]] = True
    code = encode_entropy(keep, block=1 << 18)
    assert code.params.max() >= 1 << 10  # no table: the word-at-a-time path
    _, index = golomb_tables(code.params.astype(np.int64))
    assert np.all(index == -1)
    assert np.array_equal(decode_mask(code), keep)


def test_corrupt_golomb_block_is_an_error():
    w = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    ct = compress_tensor(w, CompressConfig(0.9, 2, mask_codec="entropy"))
    data = ct.mask.data.copy()
    data[: data.size // 2] = 0xFF  # long unary runs: positions beyond the block
    bad = dataclasses.replace(ct, mask=dataclasses.replace(ct.mask, data=data))
    with pytest.raises(ValueError, match="corrupt"):
        decompress_tensor(bad)
    with pytest.raises(ValueError, match="corrupt"):
        decode_mask_words(bad.mask)


def test_bitmask_plan_equals_golomb_plan():
    w = np.random.default_rng(3).standard_normal((300, 301)).astype(np.float32)
    ct = compress_tensor(w, CompressConfig(0.9, 2, mask_codec="entropy"))
    plan = prepare(ct)
    words = dataclasses.replace(plan, mask_kind=MASK_WORDS, mask_words=decode_mask_words(ct.mask), mask_block=64 * 7)
    a = decode_into(plan, np.empty(ct.numel, np.float32), OUT_F32)
    b = decode_into(words, np.empty(ct.numel, np.float32), OUT_F32)
    assert a.tobytes() == b.tobytes() == decode_dense(ct).tobytes()


def test_inconsistent_planes_are_rejected_before_any_kernel():
    from xorsparse.torch import XorWeight

    w = np.random.default_rng(4).standard_normal((30, 40)).astype(np.float32)
    ct = compress_tensor(w, CompressConfig(0.8, 2))
    short = dataclasses.replace(ct.planes[0], stream=ct.planes[0].stream[:-1])
    bad = dataclasses.replace(ct, planes=[short] + ct.planes[1:])
    for fn in (decompress_tensor, prepare, XorWeight):
        with pytest.raises(ValueError, match="stream"):
            fn(bad)
    far = dataclasses.replace(ct.planes[0], patches=np.array([w.size + 5]))
    with pytest.raises(ValueError, match="patch"):
        decompress_tensor(dataclasses.replace(ct, planes=[far] + ct.planes[1:]))


ROW_CONFIGS = CONFIGS + [
    CompressConfig(0.8, 2, scale_rows=4, scale_format="log8", mask_codec="ctx"),
    CompressConfig(0.7, 3, "codebook", scale_rows="auto", scale_format="auto"),
]


@pytest.mark.parametrize("cfg", ROW_CONFIGS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 13), (64, 64), (37, 129), (50, 7, 3)])
def test_row_decode_equals_whole_tensor(cfg, dtype, shape):
    """decode_rows_into (the embedding path) gives the rows of the whole-tensor decode bit for bit,
    for any row order and repeats; the word straddling two rows is split correctly."""
    from xorsparse.tensor.fused import OUT_DTYPES, OUT_KINDS, decode_rows_into
    from xorsparse.tensor.maskcode import MaskCode

    w = weights(shape, dtype, sum(shape) + 3)
    ct = compress_tensor(w, cfg)
    whole = reference_prune_quantize(w, cfg, framework="torch").reshape(shape[0], -1)
    words = decode_mask_words(ct.mask)
    as_bits = dataclasses.replace(ct, mask=MaskCode("bitmask", ct.numel, words.view(np.uint8)[: -(-ct.numel // 8)]
                                                    .copy()))
    plan = prepare(as_bits)
    assert plan.mask_kind == MASK_WORDS
    rows = np.random.default_rng(1).integers(0, shape[0], 2 * shape[0] + 1)
    out = np.empty(rows.size * (ct.numel // shape[0]), OUT_DTYPES[dtype])
    decode_rows_into(plan, rows, out, OUT_KINDS[dtype])
    got = torch.from_numpy(out.view(np.int16) if dtype in ("float16", "bfloat16") else out)
    if dtype in ("float16", "bfloat16"):
        got = got.view(getattr(torch, dtype))
    assert same(got.reshape(rows.size, -1), whole[torch.from_numpy(rows)])
    with pytest.raises(IndexError):
        decode_rows_into(plan, np.array([shape[0]]), out[: ct.numel // shape[0]], OUT_KINDS[dtype])


def test_row_decode_equals_spec_decoder(tmp_path):
    from xorsparse.tensor.fused import OUT_F32, decode_rows_into

    w = np.random.default_rng(9).standard_normal((300, 45)).astype(np.float32)
    ct = compress_tensor(w, CompressConfig(0.9, 2, mask_codec="bitmask"))
    path = str(tmp_path / "e.xsp")
    write_xsp(path, {"e": ct}, {})
    want = np.array(reference.decode_tensor(path, "e"), dtype=np.float32).reshape(300, 45)
    rows = np.array([299, 0, 17, 17, 150])
    out = np.empty(rows.size * 45, np.float32)
    decode_rows_into(prepare(ct), rows, out, OUT_F32)
    assert out.reshape(rows.size, 45).tobytes() == want[rows].tobytes()


def test_parallel_false_runs_every_step_on_one_thread(monkeypatch):
    """decompress_tensor(parallel=False): the mask decode in prepare (parallel numba loops for
    ctx and bitmask masks) also sees one thread; the caller's thread count comes back."""
    import numba

    from xorsparse.tensor.variants.ctx import Ctx

    seen = []
    real = Ctx.decode_words

    def spy(self, code):
        seen.append(numba.get_num_threads())
        return real(self, code)

    monkeypatch.setattr(Ctx, "decode_words", spy)
    w = np.random.default_rng(0).standard_normal((40, 70)).astype(np.float32)
    ct = compress_tensor(w, CompressConfig(0.9, 2, mask_codec="ctx"))
    before = numba.get_num_threads()
    serial = decompress_tensor(ct, parallel=False)
    assert seen == [1] and numba.get_num_threads() == before
    assert serial.tobytes() == decompress_tensor(ct).tobytes() == reference_prune_quantize(
        w, CompressConfig(0.9, 2, mask_codec="ctx")).tobytes()


def _shared_decoder_ct(shape, sparsity, bits, n_in, n_out, n_s, chunk_slices, codec, seed):
    """A tensor whose planes share one explicit decoder (the fast kernel), at a rate that may
    force patches."""
    from xorsparse.tensor.pipeline import prune_quantize

    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    cfg = CompressConfig(sparsity, bits, mask_codec=codec)
    ct = compress_tensor(w, cfg)
    keep, qz, _ = prune_quantize(w, cfg)
    care = to_coded(keep.ravel(), ct.block_step)
    dec = get_decoder(n_in, n_out, n_s, seed % 7)
    planes = [encode_plane(to_coded(p, ct.block_step), care, dec, chunk_slices=chunk_slices) for p in qz.planes]
    return dataclasses.replace(ct, planes=planes), reference_prune_quantize(w, cfg)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(7, 300), (40, 64), (33, 129), (3, 1000), (1, 5000), (130, 41), (64 * 9 + 5,), (100, 700)]),
    st.sampled_from([0.0, 0.5, 0.9, 0.97]),
    st.integers(1, 4),
    st.sampled_from([(16, 159, 7), (8, 64, 3), (12, 63, 2), (6, 20, 4), (3, 9, 10), (20, 200, 5), (40, 70, 2),
                     (2, 1, 1)]),
    st.sampled_from([64, 128, 6592]),
    st.sampled_from(["bitmask", "entropy"]),
    st.sampled_from([1, 2, 64, 1024]),
    st.integers(0, 2**31),
)
def test_fast_kernel_paths(shape, sparsity, bits, dec, chunk_slices, codec, tile_words, seed):
    """The fast kernel (one decoder for all planes) against the reference: n_out below, at and
    above 64 (one or two slices per word), chunk starts, patches (low rates force them), rows
    that end inside a word, tiles and sub-tiles of any fill, both mask kinds, every output
    dtype."""
    from xorsparse.tensor.fused import OUT_F16, OUT_F64, _fast_ok

    ct, want = _shared_decoder_ct(shape, sparsity, bits, *dec, chunk_slices, codec, seed)
    plan = prepare(ct, tile_words=tile_words)
    assert _fast_ok(plan) == (ct.quant.cols >= (1 << bits) // 4)
    for parallel in (False, True):
        got = decode_into(plan, np.empty(ct.numel, np.float32), OUT_F32, parallel)
        assert got.tobytes() == want.ravel().tobytes()
    words = dataclasses.replace(plan, mask_kind=MASK_WORDS, mask_words=decode_mask_words(ct.mask),
                                mask_block=64 * tile_words)
    assert decode_into(words, np.empty(ct.numel, np.float32), OUT_F32, False).tobytes() == want.ravel().tobytes()
    f64 = decode_into(plan, np.empty(ct.numel, np.float64), OUT_F64, False)
    assert f64.tobytes() == want.ravel().astype(np.float64).tobytes()
    f16 = decode_into(plan, np.empty(ct.numel, np.uint16), OUT_F16, False)
    assert f16.tobytes() == want.ravel().astype(np.float16).tobytes()


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(1,), (63, 65), (130, 41), (300, 257), (5000,)]),
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999]),
    st.sampled_from([("bcq", 2), ("uniform", 3), ("bcq", 1)]),
    st.sampled_from([64, 128, 4096]),
    st.sampled_from(["float32", "float16", "bfloat16", "float64"]),
    st.integers(0, 2**31),
)
def test_decode_dense_reads_the_prechecked_golomb_bitmask(shape, sparsity, qb, block, dtype, seed):
    """Above PRECHECK_POSITIONS, decode_dense decodes a Golomb mask whole (the corrupt-block
    check) and the kernels read that bitmask: the same bits as decoding it tile by tile."""
    import xorsparse.tensor.fused as fused
    from xorsparse.tensor.maskcode import encode_entropy
    from xorsparse.tensor.pipeline import prune_quantize

    w = weights(shape, dtype, seed)
    cfg = CompressConfig(sparsity, qb[1], qb[0], mask_codec="entropy")
    ct = compress_tensor(w, cfg)
    keep, _, _ = prune_quantize(w, cfg)
    ct = dataclasses.replace(ct, mask=encode_entropy(keep.ravel(), block=block))
    want = reference_prune_quantize(w, cfg, framework="torch")
    tiled = decompress_tensor(ct, framework="torch", parallel=False)
    saved = fused.PRECHECK_POSITIONS
    fused.PRECHECK_POSITIONS = 0
    try:
        assert fused.check_mask_blocks(prepare(ct)).mask_kind == MASK_WORDS
        for parallel in (False, True):
            assert same(decompress_tensor(ct, framework="torch", parallel=parallel), want)
    finally:
        fused.PRECHECK_POSITIONS = saved
    assert same(tiled, want)


def test_fast_div_equals_integer_division():
    from numba import njit

    from xorsparse.codec._bits import div_magic, fast_div

    @njit
    def divide(a, d, c):
        out = np.empty(a.size, np.int64)
        for i in range(a.size):
            out[i] = fast_div(a[i], d, c)
        return out

    rng = np.random.default_rng(0)
    for d in [1, 2, 3, 7, 63, 64, 159, 1000, 1023, 6592, 99991, (1 << 32) - 1, 1 << 32]:
        a = np.concatenate([rng.integers(0, 1 << 32, 20000), np.arange(min(3 * d + 2, 5000)),
                            (1 << 32) - 1 - np.arange(5000), d * rng.integers(0, (1 << 32) // d, 5000)]).astype(np.int64)
        c = np.uint64(div_magic(d, 1 << 32))
        assert (c != 0) == (2 <= d <= 1 << 32)
        assert np.array_equal(divide(a, d, c), a // d)
    assert div_magic(159, (1 << 32) + 1) == 0
