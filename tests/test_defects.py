"""Defects a fuzzing campaign found (issue 18's last list): each test failed before its fix."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xorsparse.cli import main
from xorsparse.io.container import write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor
from xorsparse.tensor import fused


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
