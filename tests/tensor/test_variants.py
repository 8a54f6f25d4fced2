"""The registry of mask codecs and quantizers: everything reads it, so one module adds a variant."""

from __future__ import annotations

import numpy as np
import pytest

from xorsparse.cli import build_parser
from xorsparse.format.container import XspFile, write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor
from xorsparse.tensor.maskcode import MaskCode
from xorsparse.tensor.variants import (
    MASK_CODECS,
    QUANTIZERS,
    MaskCodec,
    Part,
    encode_mask,
    mask_codec_choices,
    quantizer_choices,
    register_mask_codec,
)
from xorsparse.tensor.variants.bitmask import Bitmask


def test_registries_hold_every_variant_in_rank_order():
    assert list(MASK_CODECS) == ["entropy", "bitmask", "ctx"]
    assert list(QUANTIZERS) == ["bcq", "uniform", "codebook", "affine"]
    assert mask_codec_choices() == ["auto", "entropy", "bitmask", "ctx"]
    assert quantizer_choices() == ["bcq", "uniform", "codebook"]  # affine takes given codes
    assert {n: v.min_version for n, v in {**MASK_CODECS, **QUANTIZERS}.items()} == \
        {"entropy": 1, "bitmask": 1, "ctx": 2, "bcq": 1, "uniform": 1, "codebook": 2, "affine": 2}


def test_a_name_or_rank_registered_twice_is_refused():
    class Again(Bitmask):
        rank = 99

    with pytest.raises(ValueError, match="registered twice"):
        register_mask_codec(Again)


def test_auto_ties_go_to_the_lowest_rank():
    keep = np.zeros(640, bool)  # all pruned: entropy and bitmask may tie in size; the lower rank wins
    code = encode_mask(keep)
    sizes = {n: c.encode(keep, None, 1 << 16).nbits for n, c in MASK_CODECS.items()}
    best = min(sizes.values())
    assert code.codec == next(n for n, s in sizes.items() if s == best)


class _Inverted(MaskCodec):
    """A trivial mask codec for this test only: a bitmask of the pruned positions."""

    name = "inverted-test"
    rank = 90
    min_version = 2
    help = "inverted-test (a test codec)"

    def encode(self, keep, cols, block):
        k = np.asarray(keep, dtype=bool).ravel()
        return MaskCode(self.name, k.size, np.packbits(~k, bitorder="little"))

    def decode_words(self, code):
        n = code.length
        bits = np.unpackbits(code.data, bitorder="little", count=n).astype(bool)
        out = np.zeros((-(-n // 64) + 1) * 8, np.uint8)
        out[: -(-n // 8)] = np.packbits(~bits, bitorder="little")
        return out.view("<u8")

    def check(self, w, m, length):
        w.int_field(m, "block", "mask.", 0, 0)

    def part_specs(self, m, length):
        return {"mask": Part(("U8",), (-(-length // 8),))}


@pytest.fixture
def inverted_codec():
    register_mask_codec(_Inverted)
    yield MASK_CODECS[_Inverted.name]
    del MASK_CODECS[_Inverted.name]


def test_a_new_mask_codec_is_one_class(tmp_path, inverted_codec):
    """Registered, it is a CLI choice, a valid config, written, validated and decoded by the
    fused kernels and the torch modules, with no other change (tests/reference.py, written
    from FORMAT.md, knows only the documented codecs)."""
    assert _Inverted.name in build_parser().parse_args(["compress", "a", "b", "--mask-codec", _Inverted.name]).mask_codec
    cfg = CompressConfig(0.8, 2, mask_codec=_Inverted.name)
    w = np.random.default_rng(0).standard_normal((16, 200)).astype(np.float32)
    ct = compress_tensor(w, cfg)
    assert ct.mask.codec == _Inverted.name
    want = decompress_tensor(compress_tensor(w, CompressConfig(0.8, 2, mask_codec="bitmask")))
    p = tmp_path / "x.xsp"
    write_xsp(p, {"w": ct}, {}, cfg)
    with XspFile(p) as f:
        assert f.tensors["w"]["mask"]["codec"] == _Inverted.name
        got = f.dense("w")
    assert got.tobytes() == want.tobytes()
    from xorsparse.torch.modules import XorWeight

    with XspFile(p) as f:
        assert XorWeight(f.compressed("w")).dense(backend="torch").numpy().tobytes() == want.tobytes()
