import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xorsparse import XorDecoder, decode_plane, encode_plane
from xorsparse.codec import EncodedPlane, decode_plane_packed
from xorsparse.codec.xornet import MAX_WINDOW, splitmix64

from .. import reference

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def care_ok(enc: EncodedPlane, bits, care) -> bool:
    out = decode_plane(enc)
    return out.shape == (len(bits),) and bool(np.all(out[care] == np.asarray(bits)[care]))


@st.composite
def decoders(draw, max_n_in=12):
    n_in = draw(st.integers(1, max_n_in))
    n_out = draw(st.integers(1, 90))
    n_s = draw(st.integers(0, min(40, MAX_WINDOW // n_in - 1)))
    seed = draw(st.integers(0, 2**64 - 1))
    return XorDecoder(n_in, n_out, n_s, seed)


@st.composite
def planes(draw, max_len=3000):
    n = draw(st.integers(0, max_len))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.5, 0.9, 1.0]))
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, n).astype(np.uint8)
    care = rng.random(n) < density
    return bits, care


def test_splitmix64_known_vector():
    # published first outputs of SplitMix64 from state 0
    s, a = splitmix64(0)
    s, b = splitmix64(s)
    assert (a, b) == (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)


@FAST
@given(planes(), decoders(), st.sampled_from([64, 128]))
def test_round_trip_care_bits_always_equal(plane, dec, chunk):
    bits, care = plane
    enc = encode_plane(bits, care, dec, chunk_slices=chunk, verify=True)
    assert care_ok(enc, bits, care)
    assert enc.stream.size == -(-enc.n_slices * dec.n_in // 8)
    assert np.all(np.isin(enc.patches, np.flatnonzero(care)))


@settings(max_examples=25, deadline=None)
@given(planes(max_len=400), decoders(max_n_in=6), st.sampled_from([64, 128]))
def test_fast_decoder_matches_reference(plane, dec, chunk):
    bits, care = plane
    enc = encode_plane(bits, care, dec, chunk_slices=chunk)
    data, k, _ = enc.patch_data()
    patches = reference.rice_positions(data, enc.patches.size, k)
    ref = reference.decode(enc.length, enc.n_in, enc.n_out, enc.n_s, enc.seed, enc.chunk_slices,
                           enc.stream.tobytes(), patches)
    assert decode_plane(enc).tolist() == ref


def test_reference_matrices_match():
    # (1, 64, 0, s) and (2, 50, 1, 7): windows of a few bits, so rows are redrawn
    for n_in, n_out, n_s, seed in [(3, 7, 2, 1), (64, 5, 0, 99), (1, 40, 9, 0), (1, 64, 0, 5), (2, 50, 1, 7),
                                   (1, 30, 255, 2**64 - 1), (63, 9, 1, 12345)]:
        d = XorDecoder(n_in, n_out, n_s, seed)
        assert d.matrices.tolist() == reference.matrices(n_in, n_out, n_s, seed)


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 97, 1000, 4099])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.1])
def test_edge_lengths_and_densities(n, density):
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, n).astype(np.uint8)
    care = rng.random(n) < density if 0 < density < 1 else np.full(n, bool(density))
    for dec in (XorDecoder(4, 13, 3), XorDecoder(16, 16, 0), "auto"):
        enc = encode_plane(bits, care, dec, verify=True)
        assert enc.length == n
        assert care_ok(enc, bits, care)


def test_all_care_dense_plane_stays_lossless():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2, 20000).astype(np.uint8)
    care = np.ones(bits.size, bool)
    enc = encode_plane(bits, care, verify=True)
    assert np.array_equal(decode_plane(enc), bits)


def test_one_care_bit_per_slice():
    dec = XorDecoder(1, 50, 0)
    n = 50 * 300
    rng = np.random.default_rng(1)
    care = np.zeros(n, bool)
    care[np.arange(300) * 50 + rng.integers(0, 50, 300)] = True
    bits = rng.integers(0, 2, n).astype(np.uint8)
    enc = encode_plane(bits, care, dec, verify=True)
    assert care_ok(enc, bits, care)


@pytest.mark.parametrize("n_in,n_s", [(1, 0), (1, 127), (1, 255), (2, 63), (8, 15), (64, 1), (64, 0),
                                      (32, 3), (3, 60), (64, 3), (16, 15)])
def test_every_window_size(n_in, n_s):
    rng = np.random.default_rng(n_in * 1000 + n_s)
    n = 30000
    bits = rng.integers(0, 2, n).astype(np.uint8)
    care = rng.random(n) < 0.1
    dec = XorDecoder(n_in, max(1, int(n_in / 0.11)), n_s)
    enc = encode_plane(bits, care, dec, verify=True)
    assert care_ok(enc, bits, care)


def test_sequential_encoding_is_efficient():
    # the whole point of n_s > 0: close to one stream bit per care bit
    rng = np.random.default_rng(7)
    n = 1 << 20
    care = rng.random(n) < 0.1
    bits = rng.integers(0, 2, n).astype(np.uint8)
    enc = encode_plane(bits, care, XorDecoder(8, 78, 15), verify=True)
    assert enc.efficiency > 0.93


def _patches_per_slice(enc):
    return np.bincount(enc.patches // enc.n_out, minlength=enc.n_slices)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(2, 10), st.integers(4, 40), st.sampled_from([0.2, 0.5, 0.9]))
def test_exhaustive_never_worse_than_elimination(seed, n_in, n_out, density):
    rng = np.random.default_rng(seed)
    n = n_out * 40 + 3
    bits = rng.integers(0, 2, n).astype(np.uint8)
    care = rng.random(n) < density
    dec = XorDecoder(n_in, n_out, 0, seed)
    elim = encode_plane(bits, care, dec, method="elimination", verify=True)
    exh = encode_plane(bits, care, dec, method="exhaustive", verify=True)
    pe, px = _patches_per_slice(elim), _patches_per_slice(exh)
    assert np.all(px <= pe)
    assert np.all(px[pe == 0] == 0)  # where a solution exists, both satisfy every care bit


def test_exhaustive_is_a_true_minimum_on_tiny_slices():
    rng = np.random.default_rng(3)
    dec = XorDecoder(3, 9, 0, 11)
    m = dec.matrices[0]
    for _ in range(50):
        bits = rng.integers(0, 2, 9).astype(np.uint8)
        care = rng.random(9) < 0.8
        enc = encode_plane(bits, care, dec, method="exhaustive")
        best = min(
            int(np.sum(((m @ np.array([(x >> i) & 1 for i in range(3)])) % 2 != bits) & care))
            for x in range(8)
        )
        assert enc.patches.size == best


def test_same_seed_same_bytes_other_seed_other_bytes():
    rng = np.random.default_rng(9)
    bits = rng.integers(0, 2, 50000).astype(np.uint8)
    care = rng.random(50000) < 0.2
    a = encode_plane(bits, care, XorDecoder(8, 39, 7, 1))
    b = encode_plane(bits, care, XorDecoder(8, 39, 7, 1))
    c = encode_plane(bits, care, XorDecoder(8, 39, 7, 2))
    assert a.stream.tobytes() == b.stream.tobytes() and np.array_equal(a.patches, b.patches)
    assert a.stream.tobytes() != c.stream.tobytes()
    auto1, auto2 = encode_plane(bits, care), encode_plane(bits, care)
    assert (auto1.n_in, auto1.n_out, auto1.n_s) == (auto2.n_in, auto2.n_out, auto2.n_s)
    assert auto1.stream.tobytes() == auto2.stream.tobytes()


def test_packed_decode_agrees_with_unpacked():
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2, 1001).astype(np.uint8)
    care = rng.random(1001) < 0.5
    enc = encode_plane(bits, care, XorDecoder(5, 11, 4))
    words = decode_plane_packed(enc)
    unpacked = np.unpackbits(words.view(np.uint8), bitorder="little", count=1001)
    assert np.array_equal(unpacked, decode_plane(enc))


@pytest.mark.parametrize(
    "args,msg",
    [
        ((0, 10, 0), "n_in"),
        ((-1, 10, 0), "n_in"),
        ((4, 0, 0), "n_out"),
        ((4, 10, -1), "n_s"),
        ((4, 10, 70), "n_in \\* \\(n_s \\+ 1\\)"),
        ((65, 100, 0), "n_in"),
    ],
)
def test_invalid_decoder_parameters(args, msg):
    with pytest.raises(ValueError, match=msg):
        XorDecoder(*args)


def test_invalid_inputs_rejected():
    d = XorDecoder(4, 10, 1)
    with pytest.raises(ValueError, match="differ in length"):
        encode_plane(np.zeros(10, np.uint8), np.zeros(9, bool), d)
    with pytest.raises(ValueError, match="only 0 and 1"):
        encode_plane(np.array([0, 2, 1], np.uint8), np.ones(3, bool), d)
    with pytest.raises(ValueError, match="dtype"):
        encode_plane(np.array([0.0, 1.0]), np.ones(2, bool), d)
    with pytest.raises(ValueError, match="care"):
        encode_plane(np.zeros(3, np.uint8), np.array([0, 3, 1]), d)
    with pytest.raises(ValueError, match="1-D"):
        encode_plane(np.zeros((2, 2), np.uint8), np.ones((2, 2), bool), d)
    with pytest.raises(ValueError, match="exhaustive"):
        encode_plane(np.zeros(3, np.uint8), np.ones(3, bool), d, method="exhaustive")
    with pytest.raises(ValueError, match="method"):
        encode_plane(np.zeros(3, np.uint8), np.ones(3, bool), d, method="magic")
    with pytest.raises(ValueError, match="chunk_slices"):
        encode_plane(np.zeros(3, np.uint8), np.ones(3, bool), d, chunk_slices=100)
    with pytest.raises(TypeError, match="n_in"):
        XorDecoder(4.0, 10, 1)


@pytest.mark.parametrize("cfg", [(8, 79, 15), (5, 20, 9), (64, 300, 1), (1, 30, 127)])
def test_wide_kernels_agree_with_narrow_ones(cfg, monkeypatch):
    """The multiword kernels (W > 128) run the same algorithm: same stream, same patches."""
    import xorsparse.codec.plane as codec

    rng = np.random.default_rng(sum(cfg))
    n = 200_000
    care = rng.random(n) < 0.1
    bits = rng.integers(0, 2, n).astype(np.uint8)
    dec = XorDecoder(*cfg)
    narrow = encode_plane(bits, care, dec)
    monkeypatch.setattr(codec, "_force_wide", True)
    wide = encode_plane(bits, care, dec)
    assert np.array_equal(narrow.stream, wide.stream)
    assert np.array_equal(narrow.patches, wide.patches)
    assert np.array_equal(decode_plane(wide), decode_plane(narrow))
