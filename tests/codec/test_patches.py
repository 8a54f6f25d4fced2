import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xorsparse.codec.patches import decode_patches, encode_patches, rice_bits

from .. import reference


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**9), unique=True, max_size=200))
def test_rice_round_trip(values):
    pos = np.array(sorted(values), dtype=np.int64)
    data, k, nbits = encode_patches(pos)
    assert nbits == rice_bits(pos, k)
    assert len(data) == -(-nbits // 8)
    assert np.array_equal(decode_patches(data, pos.size, k, nbits), pos)
    assert reference.rice_positions(data, pos.size, k) == pos.tolist()


def test_rice_rejects_bad_input():
    with pytest.raises(ValueError, match="increasing"):
        encode_patches(np.array([3, 3]))
    data, k, nbits = encode_patches(np.array([5, 100, 1000]))
    with pytest.raises(ValueError, match="ends before"):
        decode_patches(data, 10, k, nbits)
