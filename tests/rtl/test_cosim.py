"""The generated Verilog in a real simulator against decode_plane, bit for bit."""

import shutil
import subprocess

import numpy as np
import pytest

from xorsparse import XorDecoder, decode_plane
from xorsparse.rtl.cost import decoder_cost, yosys_available
from xorsparse.rtl.sim import (
    CosimOptions,
    cosim_planes,
    cosimulate,
    plane_vectors,
    random_plane,
    random_stream_plane,
    raw_outputs,
    stream_beats,
)
from xorsparse.rtl.verilog import decoder_verilog, module_name_for

from .. import reference

# (n_in, n_out, n_s, seed): memory, paper mode (n_s = 0), one input bit, the widest window
CONFIGS = [
    (3, 7, 2, 1),
    (8, 79, 15, 0x5EED),  # the default decoder at 90% sparsity
    (16, 140, 0, 0x5EED),  # paper mode
    (1, 40, 9, 0),
    (64, 20, 3, 2**64 - 1),  # W = 256
]


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: "x".join(map(str, p)))
@pytest.mark.parametrize("mode", ["counter", "start"])
def test_random_streams_bit_exact(simulator, params, mode):
    dec = XorDecoder(*params)
    # 3 chunks of 64 slices and a partial one, last slice short of n_out
    plane = random_stream_plane(dec, 64 * 3 + 17, chunk_slices=64, seed=params[0], partial=min(2, dec.n_out - 1))
    res = cosim_planes([plane], mode=mode, options=CosimOptions(simulator=simulator))
    assert res.ok, res.summary()
    assert res.output_bits == (64 * 3 + 17) * dec.n_out


def test_golden_vectors_follow_the_spec():
    """What the simulator is compared with is what tests/reference.py (written from FORMAT.md) decodes."""
    for params in [(3, 7, 2, 1), (2, 11, 5, 7)]:
        dec = XorDecoder(*params)
        plane = random_stream_plane(dec, 150, chunk_slices=64, seed=3, partial=2)
        full = reference.decode(plane.n_slices * dec.n_out, dec.n_in, dec.n_out, dec.n_s, dec.seed, 64,
                                plane.stream.tobytes(), [])
        assert raw_outputs(plane).ravel().tolist() == full


def test_encoded_plane_with_patches(simulator):
    """A real encoded plane: co-simulated outputs, patched in Python, give every care bit."""
    dec = XorDecoder(8, 79, 15)
    enc, bits, care = random_plane(dec, 200, 0.12, seed=5, chunk_slices=64, partial=5)
    assert enc.patches.size > 0  # a dense plane, so the patch path is covered too
    x, starts, exp, cs = plane_vectors([enc], "counter")
    res = cosimulate(dec, x, starts, exp, options=CosimOptions(chunk_slices=cs, simulator=simulator))
    assert res.ok, res.summary()
    hw = exp.ravel()[: enc.length].copy()  # the simulator matched these bits exactly
    hw[enc.patches] ^= 1
    assert np.array_equal(hw, decode_plane(enc))
    assert np.array_equal(hw[care], bits[care])


@pytest.mark.parametrize("params", [(8, 79, 15, 0x5EED), (16, 40, 0, 3), (1, 1, 0, 0)],
                         ids=lambda p: "x".join(map(str, p)))
def test_patch_stage_outputs_the_decoded_planes(simulator, params):
    """With the patch stage the hardware output is the decoded plane itself, two planes in a row."""
    dec = XorDecoder(*params)
    a, bits, care = random_plane(dec, 150, 0.5 if dec.n_out == 1 else 0.12, seed=1, chunk_slices=64,
                                 partial=min(3, dec.n_out - 1))
    b = random_stream_plane(dec, 90, chunk_slices=64, seed=2, patch_rate=0.02)
    assert b.patches.size
    x, starts, exp, cs = plane_vectors([a, b], "counter")
    flat = exp.reshape(-1)
    patches = np.concatenate([a.patches, b.patches + a.n_slices * dec.n_out])
    flat[patches] ^= 1
    assert np.array_equal(flat[: a.length], decode_plane(a))
    off = a.n_slices * dec.n_out
    assert np.array_equal(flat[off : off + b.length], decode_plane(b))
    res = cosimulate(dec, x, starts, exp, patches, CosimOptions(chunk_slices=cs, patch_bits=24, simulator=simulator))
    assert res.ok, res.summary()
    assert cosim_planes([a, b], options=CosimOptions(patch_bits=24, simulator=simulator)).ok
    # negative control: the patches go in, the expectation lacks them
    x, starts, raw, cs = plane_vectors([b], "counter")
    res = cosimulate(dec, x, starts, raw, b.patches, CosimOptions(chunk_slices=cs, patch_bits=24, simulator=simulator))
    assert not res.ok and res.mismatched_bits == b.patches.size


def test_planes_back_to_back(simulator):
    """in_start in the middle of a chunk (a new plane) restarts the counter and clears the history."""
    dec = XorDecoder(4, 30, 7, 11)
    a = random_stream_plane(dec, 100, chunk_slices=64, seed=1, partial=7)
    b = random_stream_plane(dec, 150, chunk_slices=64, seed=2)
    res = cosim_planes([a, b], mode="counter", options=CosimOptions(simulator=simulator))
    assert res.ok, res.summary()


def test_unshared_netlist_and_no_stalls(simulator):
    dec = XorDecoder(6, 50, 4, 3)
    plane = random_stream_plane(dec, 150, chunk_slices=64, seed=9)
    for sharing, stall in (("none", True), ("paar", False)):
        x, starts, exp, cs = plane_vectors([plane], "counter")
        res = cosimulate(dec, x, starts, exp, options=CosimOptions(chunk_slices=cs, sharing=sharing, stall=stall,
                                                                simulator=simulator))
        assert res.ok, res.summary()


def test_mismatches_are_caught(simulator):
    """Negative controls: a wrong golden bit, and a module whose chunk size disagrees with the plane's."""
    dec = XorDecoder(3, 7, 2, 1)
    plane = random_stream_plane(dec, 140, chunk_slices=64, seed=4)
    x, starts, exp, cs = plane_vectors([plane], "counter")
    bad = exp.copy()
    bad[77, 3] ^= 1
    res = cosimulate(dec, x, starts, bad, options=CosimOptions(chunk_slices=cs, simulator=simulator))
    assert not res.ok and res.first_mismatch == 77 and res.mismatched_bits == 1
    res = cosimulate(dec, x, starts, exp, options=CosimOptions(chunk_slices=128, simulator=simulator))
    assert not res.ok and res.first_mismatch == 64  # history not cleared at the real chunk start


def test_stream_beats_layout():
    dec = XorDecoder(3, 5, 1)
    plane = random_stream_plane(dec, 10, chunk_slices=64, seed=0)
    beats = stream_beats(plane)
    bits = np.unpackbits(plane.stream, bitorder="little")
    assert beats.shape == (10, 3) and np.array_equal(beats.ravel(), bits[:30])


def test_verilator_lint_clean():
    if not shutil.which("verilator"):
        pytest.skip("verilator not installed: lint check skipped (Debian: apt-get install verilator)")
    import os
    import tempfile

    for params, cs, pb in [((8, 79, 15), 13248, 0), ((16, 140, 0), 64, 0), ((3, 7, 2), 0, 0),
                           ((8, 79, 15), 64, 32), ((1, 1, 0), 0, 8)]:
        dec = XorDecoder(*params)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, module_name_for(dec) + ".v")
            with open(path, "w") as f:
                f.write(decoder_verilog(dec, chunk_slices=cs, patch_bits=pb))
            p = subprocess.run(["verilator", "--lint-only", "-Wall", path],
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stderr[-2000:]


def test_yosys_synthesis_agrees_on_flip_flops():
    if not yosys_available():
        pytest.skip("yosys not installed: synthesis statistics skipped (Debian: apt-get install yosys)")
    dec = XorDecoder(8, 79, 15)
    cost = decoder_cost(dec, chunk_slices=13248, yosys=True)
    assert cost.yosys["flip_flops"] == cost.flip_flops == 120 + 79 + 1 + 14
    assert 0 < cost.yosys["xor2"] < cost.xor2_unshared
    with_patches = decoder_cost(XorDecoder(3, 7, 2), chunk_slices=64, yosys=True, patch_bits=20)
    assert with_patches.yosys["flip_flops"] == with_patches.flip_flops == 6 + 7 + 1 + 6 + 20
