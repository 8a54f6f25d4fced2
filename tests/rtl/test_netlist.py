import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xorsparse import XorDecoder
from xorsparse.rtl.netlist import build_netlist, naive_gate_count
from xorsparse.rtl.verilog import hex_lines, parse_hex_lines


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.5, 0.9]))
def test_shared_netlist_computes_the_matrix(rows, cols, seed, density):
    rng = np.random.default_rng(seed)
    g = (rng.random((rows, cols)) < density).astype(np.uint8)
    g[np.arange(rows), rng.integers(0, cols, rows)] = 1  # decoder rows are never all zero
    for sharing in ("paar", "none"):
        net = build_netlist(g, sharing)
        assert np.array_equal(net.matrix(), g)
        w = rng.integers(0, 2, (50, cols)).astype(np.uint8)
        assert np.array_equal(net.evaluate(w), (w.astype(np.int64) @ g.T.astype(np.int64)) % 2)
        # gates only read earlier signals
        idx = np.arange(net.n_gates) + cols
        assert np.all(net.gates.max(axis=1, initial=-1) < idx)
    assert build_netlist(g, "none").n_gates == naive_gate_count(g)
    assert build_netlist(g, "paar").n_gates <= naive_gate_count(g)


@pytest.mark.parametrize("params", [(32, 106, 3), (8, 79, 15), (4, 197, 31), (64, 582, 0)])
def test_sharing_on_default_decoders(params):
    g = XorDecoder(*params).window_matrix()
    plain, shared = build_netlist(g, "none"), build_netlist(g, "paar")
    assert np.array_equal(shared.matrix(), g)
    assert shared.n_gates < 0.45 * plain.n_gates  # about a third on these random matrices
    assert shared.depth <= plain.depth + 2  # shallow pairs win ties: sharing barely deepens the network


def test_deterministic():
    g = XorDecoder(8, 79, 15).window_matrix()
    a, b = build_netlist(g), build_netlist(g)
    assert np.array_equal(a.gates, b.gates) and np.array_equal(a.outputs, b.outputs)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="selects no window bit"):
        build_netlist(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="sharing"):
        build_netlist(np.ones((2, 3), np.uint8), "magic")


@pytest.mark.parametrize("width", [1, 3, 4, 5, 64, 79, 1024])
def test_hex_round_trip(width):
    bits = np.random.default_rng(width).integers(0, 2, (17, width)).astype(np.uint8)
    text = hex_lines(bits)
    assert len(text.split(b"\n")[0]) == -(-width // 4)
    assert np.array_equal(parse_hex_lines(text, width), bits)
    # most significant digit first, like Verilog's %h
    one = np.zeros((1, width), np.uint8)
    one[0, 0] = 1
    assert hex_lines(one).strip().endswith(b"1")


def test_parse_rejects_unknown_bits():
    with pytest.raises(ValueError, match="not plain hex"):
        parse_hex_lines(b"0x\n", 8)
    with pytest.raises(ValueError, match="digits"):
        parse_hex_lines(b"000\n", 8)
