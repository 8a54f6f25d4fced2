"""Golden files of every version-2 feature, decoded forever (tests/golden/make_golden.py made them)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xorsparse.checkpoint.xspset import XspSet
from xorsparse.format.container import XspFile
from xorsparse.tensor.variants import MASK_CODECS, QUANTIZERS

from .compat import DATA, as_f32, check_backwards_compatibility

SINGLE = ["v2-ctx", "v2-codebook", "v2-log8", "v2-scale-rows", "v2-packed", "v2-affine", "v2-records"]


def _expected(stem: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(DATA, stem + "-expected.npz")) as z:
        return {k: z[k] for k in z.files}


def _description(path: str) -> dict:
    with XspFile(path) as f:
        return f.meta


@pytest.mark.parametrize("stem", SINGLE)
def test_golden_file_decodes_on_every_backend(stem):
    path = os.path.join(DATA, stem + ".xsp")
    assert check_backwards_compatibility(path, _expected(stem))
    with XspFile(path) as f:
        assert f.version == 2


def test_golden_files_cover_what_they_say():
    """Each file holds the feature it is named after (so a silent writer change cannot hollow it out)."""
    t = {stem: _description(os.path.join(DATA, stem + ".xsp"))["tensors"] for stem in SINGLE}
    assert t["v2-ctx"]["w"]["mask"]["codec"] == "ctx"
    assert {v["quantizer"] for v in t["v2-codebook"].values()} == {"codebook"}
    assert "codebook_rows" in t["v2-codebook"]["w"]
    assert {v.get("scale_format") for v in t["v2-log8"].values()} == {"log8"}
    assert {v.get("scale_rows", 1) for v in t["v2-scale-rows"].values()} == {4, 8}
    assert all(p.get("kind") == "packed" for v in t["v2-packed"].values() for p in v["planes"])
    assert {v["quantizer"] for v in t["v2-affine"].values()} == {"affine"}
    assert {v["mask"]["codec"] for s in t.values() for v in s.values()} == {"bitmask", "entropy", "ctx"}
    assert {v["quantizer"] for s in t.values() for v in s.values()} == {"bcq", "uniform", "codebook", "affine"}
    with XspFile(os.path.join(DATA, "v2-records.xsp")) as f:
        assert set(f.records) == {"calibration", "quality"}
        assert f.records["calibration"]["method"] == "wanda"


def test_golden_sharded_folder():
    folder = os.path.join(DATA, "v2-folder")
    expected = _expected("v2-folder")
    with open(os.path.join(folder, "model.safetensors.index.json")) as fh:
        index = json.load(fh)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2
    seen = []
    for shard in shards:
        p = os.path.join(folder, shard)
        with XspFile(p) as f:
            names = f.names()
        seen += names
        check_backwards_compatibility(p, {n: expected[n] for n in names})
    assert sorted(seen) == sorted(expected)
    with XspSet(folder) as s:
        for n in s.names():
            assert as_f32(s.dense(n)).tobytes() == expected[n].tobytes(), n


ALL_GOLDEN = [os.path.join(DATA, stem + ".xsp") for stem in SINGLE] + \
    [os.path.join(DATA, "v2-folder", f) for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")]


def _golden_using(kind: str, name: str) -> list[str]:
    out = []
    for path in ALL_GOLDEN:
        tensors = _description(path)["tensors"].values()
        if any((t["mask"]["codec"] if kind == "mask codec" else t["quantizer"]) == name for t in tensors):
            out.append(path)
    return out


@pytest.mark.parametrize("kind,name", [("mask codec", n) for n in MASK_CODECS] + [("quantizer", n) for n in QUANTIZERS])
def test_every_registered_variant_decodes_its_golden_files(kind, name):
    """numcodecs' check_backwards_compatibility, per registered variant: a variant with no
    golden file fails here, so a new one comes with its file (tests/golden/make_golden.py)."""
    paths = _golden_using(kind, name)
    assert paths, f"no golden file uses {kind} {name!r}"
    for path in paths:
        expected = _expected(os.path.splitext(os.path.basename(path))[0]) if "v2-folder" not in path else \
            _expected("v2-folder")
        with XspFile(path) as f:
            names = f.names()
        check_backwards_compatibility(path, {n: expected[n] for n in names})
