"""The configuration: four small typed parts, one flat object, a fixed dict layout."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.xspedit import XspImage
from xorsparse.errors import XorsparseError
from xorsparse.format.container import XspFile, write_xsp
from xorsparse.tensor import (
    CalibrationConfig,
    CodingConfig,
    CompressConfig,
    ConfigError,
    PruningConfig,
    QuantizationConfig,
    compress_tensor,
)
from xorsparse.tensor.config import CONFIG_VERSION


def test_flat_and_from_parts_are_the_same_config():
    flat = CompressConfig(0.7, 3, "uniform", symmetric=False, group_size=16, mask_codec="ctx", method="wanda")
    parts = CompressConfig.from_parts(PruningConfig(0.7), QuantizationConfig(3, "uniform", False, 16),
                                      CodingConfig(mask_codec="ctx"), CalibrationConfig("wanda"))
    assert flat == parts
    assert flat.pruning == PruningConfig(0.7) and flat.quantization.group_size == 16
    assert flat.coding.mask_codec == "ctx" and flat.calibration.method == "wanda"
    assert CompressConfig(sparsity=0.9, bits=2) == CompressConfig()  # README's example, the defaults


def test_to_dict_layout_is_fixed():
    """Files record this dict: its keys and their order are format (CONFIG_VERSION 1)."""
    assert CONFIG_VERSION == 1
    assert list(CompressConfig().to_dict()) == [
        "sparsity", "bits", "quantizer", "symmetric", "group_size", "global_sparsity", "mask_codec", "max_n_s",
        "max_window", "seed", "bcq_iters", "scale_rows", "scale_format", "error_budget", "codebook_rows",
        "packed_below", "method", "calib_damp", "calib_block", "calib_passes"]
    cfg = CompressConfig(0.5, 4, "codebook", codebook_rows=8, scale_rows="auto")
    assert CompressConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("d,kw,msg", [
    ({"bits": 2, "bogus": 1}, {}, "config: unknown field 'bogus'"),
    ({"bits": 2}, {"version": 2}, "config: layout version 2 is not supported"),
    ([1, 2], {}, "config: must be a JSON object, got list"),
    ({"bits": 9}, {}, "bits must be in 1..4 for bcq, got 9"),
    ({"mask_codec": "zip"}, {}, "mask_codec must be one of auto, entropy, bitmask, ctx, got 'zip'"),
])
def test_from_dict_refuses_in_one_line(d, kw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        CompressConfig.from_dict(d, **kw)
    assert isinstance(e.value, XorsparseError) and "\n" not in str(e.value)


def test_each_part_checks_its_fields():
    with pytest.raises(ConfigError, match="sparsity must be in"):
        PruningConfig(1.5)
    with pytest.raises(ConfigError, match="quantizer must be one of bcq, uniform, codebook"):
        QuantizationConfig(quantizer="affine")  # given codes only
    with pytest.raises(ConfigError, match="max_window"):
        CodingConfig(max_window=0)
    with pytest.raises(ConfigError, match="calib_passes"):
        CalibrationConfig(calib_passes=0)


def test_a_files_unknown_config_member_is_ignored(tmp_path):
    """FORMAT.md 2.3: `config` is informative; a newer writer's extra member does not make a file unreadable."""
    cfg = CompressConfig(0.8, 2)
    p = tmp_path / "x.xsp"
    write_xsp(p, {"w": compress_tensor(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), cfg)},
              {}, cfg)
    img = XspImage.loads(p.read_bytes())
    img.doc["config"]["from_the_future"] = 1
    p.write_bytes(img.dumps(resign=True))
    with XspFile(p) as f:
        assert f.config == cfg
