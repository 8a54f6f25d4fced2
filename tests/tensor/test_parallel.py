import numpy as np
import pytest

from xorsparse.codec import rates
from xorsparse.tensor import CompressConfig, decompress_tensor, reference_prune_quantize
from xorsparse.tensor.parallel import compress_many


def tensors():
    rng = np.random.default_rng(0)
    shapes = [(64, 300), (128, 200), (7, 9), (300,), (96, 256)]
    return [(f"t{i}", rng.standard_normal(s).astype(np.float32)) for i, s in enumerate(shapes)]


def signature(ct):
    return (ct.total_bits, [(p.n_in, p.n_out, p.n_s, p.stream.tobytes(), p.patches.tobytes()) for p in ct.planes],
            ct.mask.data.tobytes())


@pytest.mark.parametrize("cfg", [CompressConfig(0.9, 2), CompressConfig(0.5, 3, "uniform", group_size=32)])
def test_same_bytes_whatever_the_thread_count(cfg):
    ts = tensors()
    one = {n: signature(ct) for n, ct, _ in compress_many([(n, w, None) for n, w in ts], cfg, threads=1)}
    rates._bucket_choice.cache_clear()  # a fresh process state must not change anything either
    out = list(compress_many([(n, (lambda w=w: w), None) for n, w in reversed(ts)], cfg, threads=3))
    assert [n for n, _, _ in out] == [n for n, _ in reversed(ts)]  # input order
    for n, ct, secs in out:
        assert signature(ct) == one[n] and secs >= 0
        w = dict(ts)[n]
        assert decompress_tensor(ct).tobytes() == reference_prune_quantize(w, cfg).tobytes()
    with pytest.raises(ValueError, match="threads"):
        list(compress_many([], cfg, threads=0))


def test_rate_choice_is_a_function_of_density_and_spread():
    rng = np.random.default_rng(1)
    care = rng.random(1 << 16) < 0.1
    bits = rng.integers(0, 2, care.size).astype(np.uint8)
    a = rates.choose(bits, care)
    rates._bucket_choice.cache_clear()
    other = rng.integers(0, 2, care.size).astype(np.uint8)
    b = rates.choose(other, care)  # the bits do not enter the choice, the cache state neither
    assert (a.n_in, a.n_out, a.n_s) == (b.n_in, b.n_out, b.n_s)
    assert rates.dispersion_bucket(care) == 0
    rows = np.repeat(rng.random(1 << 10) < 0.3, 64)  # whole blocks dense or empty
    assert rates.dispersion_bucket(rows & (rng.random(rows.size) < 0.5)) > 3
