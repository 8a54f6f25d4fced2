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
