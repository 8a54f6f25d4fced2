"""Defects a fuzzing campaign found (issue 18's last list): each test failed before its fix."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xorsparse.cli import main
from xorsparse.errors import XorsparseError
from xorsparse.format.container import write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor, fused


def _entropy_ct(shape=(64, 2048)):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return compress_tensor(w, CompressConfig(0.9, 2, mask_codec="entropy"))


def test_an_allocation_failure_inside_a_kernel_is_out_of_memory(tmp_path, monkeypatch, capsys):
    """numba's parallel kernels sometimes report a failed allocation as SystemError."""
    p = tmp_path / "x.xsp"
    write_xsp(p, {"w": _entropy_ct()}, {})

    def failing(*args):
        try:
            raise MemoryError
        except MemoryError as e:
            raise SystemError("CPUDispatcher(<function _fused_fast_impl>) returned a result with an exception "
                              "set") from e

    for name in ("_fast_parallel", "_fast_serial", "_fused_parallel", "_fused_serial"):
        monkeypatch.setattr(fused, name, failing)
    with pytest.raises(MemoryError):
        decompress_tensor(_entropy_ct())
    assert main(["verify", str(p)]) != 0
    err = capsys.readouterr().err
    assert err == "xorsparse: error: out of memory\n"


def test_a_corrupt_golomb_block_is_found_before_the_output_is_allocated(monkeypatch):
    ct = _entropy_ct()
    m = ct.mask
    data = m.data.copy()
    data[: int(m.offsets[0])] = 0xFF  # block 0: a unary run that never ends
    bad = replace(ct, mask=replace(m, data=data))
    monkeypatch.setattr(fused, "PRECHECK_POSITIONS", 0)

    def no_output(*args):
        raise AssertionError("the output was allocated before the mask was checked")

    monkeypatch.setattr(fused, "output_array", no_output)
    with pytest.raises(ValueError, match="mask block 0 is corrupt or truncated"):
        decompress_tensor(bad)


GOLDEN_FOLDER = __import__("os").path.join(__import__("os").path.dirname(__file__), "golden", "data", "v2-folder")


@pytest.mark.parametrize("with_config", [True, False])
def test_decompress_of_a_folder_with_a_truncated_shard_names_the_shard(tmp_path, capsys, with_config):
    import shutil

    src = tmp_path / "f"
    shutil.copytree(GOLDEN_FOLDER, src)
    shard = src / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:2000])
    if not with_config:
        (src / "config.json").unlink()
    for cmd in (["decompress", str(src), str(tmp_path / "out")], ["verify", str(src)], ["inspect", str(src)]):
        assert main(cmd) != 0
        err = capsys.readouterr().err
        assert err.startswith(f"xorsparse: error: {shard}: truncated"), (cmd, err)


def _golden_copy(tmp_path):
    import shutil

    src = tmp_path / "f"
    shutil.copytree(GOLDEN_FOLDER, src)
    return src


def test_a_shard_without_info_shard_is_refused(tmp_path, capsys):
    """FORMAT.md 7.1: every shard of a folder of several says `"shard": [i, N]`."""
    from benchmarks.xspedit import XspImage

    src = _golden_copy(tmp_path)
    shard = src / "model-00002-of-00002.safetensors"
    img = XspImage.loads(shard.read_bytes())
    del img.doc["info"]["shard"]
    shard.write_bytes(img.dumps(resign=True))
    for cmd in (["decompress", str(src), str(tmp_path / "out")], ["verify", str(src)]):
        assert main(cmd) != 0
        assert capsys.readouterr().err == f"xorsparse: error: {shard}: info.shard: missing (every shard of a " \
                                          "model folder says which it is, FORMAT.md 7.1)\n"
    assert not (tmp_path / "out").exists()


def test_an_unindexed_extra_shard_is_refused_not_copied(tmp_path, capsys):
    src = _golden_copy(tmp_path)
    extra = src / "model-00003-of-00002.safetensors"
    extra.write_bytes((src / "model-00001-of-00002.safetensors").read_bytes())
    for cmd in (["decompress", str(src), str(tmp_path / "out")], ["verify", str(src)]):
        assert main(cmd) != 0
        assert capsys.readouterr().err.startswith(f"xorsparse: error: {extra}: a weights file that "
                                                  "model.safetensors.index.json does not list")
    assert not (tmp_path / "out").exists()


# --- decode_plane on inconsistent EncodedPlane objects ------------------------------------------

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from xorsparse.codec.plane import PlaneError, decode_plane, encode_plane, get_decoder


def _good_plane():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, 3000).astype(np.uint8)
    care = rng.random(3000) < 0.2
    return encode_plane(bits, care, get_decoder(8, 40, 2))


FIELDS = {
    "length": hs.one_of(hs.integers(-5, 10_000), hs.just(1 << 60), hs.none(), hs.floats(0, 10), hs.booleans()),
    "n_in": hs.one_of(hs.integers(-2, 300), hs.none(), hs.just(8.0)),
    "n_out": hs.one_of(hs.integers(-2, 2000), hs.just("40")),
    "n_s": hs.one_of(hs.integers(-3, 300), hs.none()),
    "seed": hs.one_of(hs.integers(-1, 1 << 65), hs.none()),
    "chunk_slices": hs.one_of(hs.integers(-64, 5000), hs.just(0), hs.none()),
    "stream": hs.one_of(hs.none(), hs.just(np.zeros(3, np.uint8)), hs.just(np.zeros((2, 2), np.uint8)),
                        hs.just(np.zeros(10, np.float32)), hs.just([1, 2, 3]), hs.binary(max_size=600)),
    "patches": hs.one_of(hs.none(), hs.just(np.array([5, 3])), hs.just(np.array([-1])),
                         hs.just(np.array([1 << 40])), hs.just(np.array([0.5])), hs.just([1, 2])),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.fixed_dictionaries({}, optional=FIELDS))
def test_decode_plane_on_inconsistent_planes_raises_the_library_error(changes):
    from dataclasses import replace as dc_replace

    plane = _good_plane()
    for k, v in changes.items():
        if isinstance(v, bytes):
            v = np.frombuffer(v, np.uint8)
        changes[k] = v
    bad = dc_replace(plane, **changes)
    try:
        out = decode_plane(bad)
    except PlaneError as e:  # the library's error type, one line
        assert isinstance(e, XorsparseError) and "\n" not in str(e)
        return
    assert out.size == bad.length  # accepted: then it was consistent


def test_decode_plane_error_names_the_field():
    from dataclasses import replace as dc_replace

    plane = _good_plane()
    assert decode_plane(plane).size == 3000
    for change, msg in (({"n_out": 0}, "plane n_out: must be in 1..1024, got 0"),
                        ({"chunk_slices": 0}, "plane chunk_slices"),
                        ({"patches": np.array([3000])}, "plane patches"),
                        ({"stream": None}, "plane stream"),
                        ({"length": 3001}, "plane stream holds")):
        with pytest.raises(PlaneError, match=msg):
            decode_plane(dc_replace(plane, **change))


@pytest.mark.parametrize("codec", ["entropy", "ctx"])
def test_bytes_after_a_mask_blocks_codes_are_ignored_as_format_md_says(codec):
    """FORMAT.md 3 and 3.2: a reader ignores, and does not reject, bytes a block's decoding never reads."""
    from xorsparse.tensor.variants import decode_mask_words, encode_mask

    keep = np.random.default_rng(4).random((40, 64)) < 0.2
    code = encode_mask(keep, codec, block=1024, cols=64)
    assert code.codec == codec and code.offsets.size == 3
    pieces, start = [], 0
    for end in code.offsets.astype(np.int64):
        # entropy: bytes after the final gap's code; ctx: zeros read as the implied zeros, then bytes
        # beyond the last decode step's reach
        tail = np.array([0xA5, 0x5A], np.uint8) if codec == "entropy" else \
            np.concatenate([np.zeros(16, np.uint8), np.array([0xA5, 0x5A], np.uint8)])
        pieces += [code.data[start:end], tail]
        start = end
    data = np.concatenate(pieces)
    offsets = (code.offsets.astype(np.int64) + tail.size * np.arange(1, 4)).astype(np.uint32)
    longer = replace(code, data=data, offsets=offsets)
    assert decode_mask_words(longer).tobytes() == decode_mask_words(code).tobytes()
