import numpy as np
import pytest

from xorsparse.tensor.prune import given_mask, global_magnitude_masks, magnitude_mask


def test_magnitude_prunes_exact_count_of_smallest():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 41)).astype(np.float32)
    keep = magnitude_mask(w, 0.7)
    assert keep.sum() == w.size - round(0.7 * w.size)
    assert np.abs(w[keep]).min() >= np.abs(w[~keep]).max()


def test_existing_zeros_always_pruned():
    w = np.array([0.0, 0.0, 0.0, 1.0, -2.0, 3.0], np.float32)
    assert magnitude_mask(w, 0.0).tolist() == [False, False, False, True, True, True]
    assert magnitude_mask(w, 0.5).tolist() == [False, False, False, True, True, True]
    assert magnitude_mask(w, 0.67).tolist() == [False, False, False, False, True, True]


def test_ties_go_to_lower_indices():
    w = np.ones(10, np.float32)
    keep = magnitude_mask(w, 0.3)
    assert keep.tolist() == [False] * 3 + [True] * 7


def test_global_uses_one_threshold():
    a = np.full((4, 4), 0.1, np.float32)
    b = np.full((4, 4), 5.0, np.float32)
    m = global_magnitude_masks({"a": a, "b": b}, 0.5)
    assert not m["a"].any() and m["b"].all()
    per = magnitude_mask(a, 0.5)
    assert per.sum() == 8


def test_given_mask_used_as_is():
    w = np.zeros((2, 3), np.float32)
    m = np.array([[1, 0, 1], [0, 1, 1]])
    assert given_mask(w, m).tolist() == m.astype(bool).tolist()
    with pytest.raises(ValueError, match="shape"):
        given_mask(w, np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="boolean"):
        given_mask(w, np.full((2, 3), 2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(np.ones(4, np.float32), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        magnitude_mask(np.array([1.0, np.nan], np.float32), 0.5, name="w")
    with pytest.raises(ValueError, match="floating"):
        magnitude_mask(np.ones(4, np.int32), 0.5)


@pytest.mark.parametrize("n", [0, 1, 2, 17])
def test_tiny_tensors(n):
    w = np.arange(n, dtype=np.float32) + 1
    keep = magnitude_mask(w, 0.5)
    assert keep.shape == (n,) and keep.sum() == n - round(0.5 * n)


# --- global pruning without holding every tensor: the streaming exact quantile ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hst

from xorsparse.tensor.prune import PruneRule, streaming_global_rules  # noqa: E402


def _tensors(seed: int, ties: bool, zeros: bool, dtype) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(int(rng.integers(1, 5))):
        shape = tuple(int(s) for s in rng.integers(1, 30, size=int(rng.integers(1, 3))))
        a = rng.standard_normal(shape).astype(np.float32)
        if ties:
            a = np.round(a * 2) / 2  # few distinct magnitudes: ties across tensors
        if zeros:
            a[rng.random(shape) < 0.3] = 0
            a[rng.random(shape) < 0.05] = -0.0
        out[f"t{i}"] = a.astype(dtype)
    return out


@settings(max_examples=150, deadline=None)
@given(seed=hst.integers(0, 2**31), ties=hst.booleans(), zeros=hst.booleans(),
       dtype=hst.sampled_from([np.float32, np.float16, np.float64]),
       sparsity=hst.one_of(hst.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999]), hst.floats(0, 0.999)))
def test_streaming_global_rules_give_the_in_memory_masks(seed, ties, zeros, dtype, sparsity):
    ts = _tensors(seed, ties, zeros, dtype)
    ref = global_magnitude_masks(ts, sparsity)
    reads = []
    rules = streaming_global_rules(list(ts), lambda n: reads.append(n) or ts[n], sparsity)
    for name, a in ts.items():
        got = rules[name].keep(a, name)
        assert got.shape == ref[name].shape
        assert np.array_equal(got, ref[name]), (name, rules[name])
    assert len(reads) <= 2 * len(ts)  # two passes at most, one tensor at a time


def test_streaming_threshold_is_exact_in_the_low_bits():
    # magnitudes that share their high 16 bits: only the second pass can tell them apart
    base = np.float32(1.0).view(np.uint32)
    vals = (base + np.arange(1000, dtype=np.uint32)).view(np.float32)
    rng = np.random.default_rng(3)
    ts = {"a": rng.permutation(vals[:500]), "b": -rng.permutation(vals[500:])}
    for s in (0.1, 0.5, 0.731, 0.9):
        ref = global_magnitude_masks(ts, s)
        rules = streaming_global_rules(["a", "b"], ts.__getitem__, s)
        for k in ts:
            assert np.array_equal(rules[k].keep(ts[k]), ref[k])


def test_ties_go_to_earlier_tensors_first():
    ts = {"a": np.ones(10, np.float32), "b": np.ones(10, np.float32)}
    rules = streaming_global_rules(["a", "b"], ts.__getitem__, 0.75)
    assert rules["a"] == PruneRule(np.float32(1).view(np.uint32).item(), 10)
    assert rules["b"].ties == 5
    assert rules["b"].keep(ts["b"]).tolist() == [False] * 5 + [True] * 5


def test_streaming_rules_refuse_non_finite():
    with pytest.raises(ValueError, match="NaN"):
        streaming_global_rules(["x"], lambda n: np.array([1.0, np.nan], np.float32), 0.5)
