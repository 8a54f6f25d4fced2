import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.variants import decode_mask, encode_mask


def structured_masks():
    n = 200_000
    yield np.zeros(n, bool)
    yield np.ones(n, bool)
    m = np.zeros(n, bool)
    m[: n // 3] = True
    yield m
    yield (np.arange(n) % 384) < 40  # whole columns kept
    yield np.repeat(np.random.default_rng(0).random(n // 1000) < 0.2, 1000)  # whole rows


@pytest.mark.parametrize("codec", ["bitmask", "entropy", "ctx", "auto"])
def test_round_trip_structured(codec):
    for m in structured_masks():
        assert np.array_equal(decode_mask(encode_mask(m, codec)), m)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.floats(0, 1), st.integers(0, 2**32 - 1), st.sampled_from([64, 1024, 65536]))
def test_round_trip_random(n, p, seed, block):
    m = np.random.default_rng(seed).random(n) < p
    for codec in ("bitmask", "entropy", "ctx"):
        code = encode_mask(m, codec, block=block)
        assert np.array_equal(decode_mask(code), m)


@pytest.mark.parametrize("s", [0.5, 0.7, 0.9, 0.95, 0.98])
def test_entropy_codec_near_binary_entropy(s):
    m = np.random.default_rng(3).random(1 << 21) >= s
    code = encode_mask(m, "entropy")
    assert code.nbits / m.size <= 1.03 * binary_entropy(m.mean())


def test_auto_picks_smaller():
    m = np.random.default_rng(4).random(100_000) < 0.5
    auto = encode_mask(m)
    assert auto.nbits == min(encode_mask(m, c).nbits for c in ("bitmask", "entropy", "ctx"))
    sparse = np.random.default_rng(4).random(100_000) < 0.05
    assert encode_mask(sparse).codec in ("entropy", "ctx")


def test_corrupt_tables_rejected():
    m = np.random.default_rng(5).random(200_000) < 0.1
    code = encode_mask(m, "entropy")
    from dataclasses import replace

    with pytest.raises(ValueError, match="offsets"):
        decode_mask(replace(code, data=code.data[:-3]))
    with pytest.raises(ValueError, match="block table"):
        decode_mask(replace(code, offsets=code.offsets[:-1]))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        bad = code.data.copy()
        bad[:] = 0xFF
        decode_mask(replace(code, data=bad))
    with pytest.raises(ValueError, match="expected"):
        decode_mask(replace(encode_mask(m, "bitmask"), data=np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="codec"):
        encode_mask(m, "zip")
