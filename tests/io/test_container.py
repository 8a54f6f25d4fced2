import json
import struct

import numpy as np
import pytest

from xorsparse.io import safetensors_io as st
from xorsparse.io.container import RawTensor, XspError, XspFile, write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor


@pytest.fixture
def xsp(tmp_path):
    rng = np.random.default_rng(0)
    cfg = CompressConfig(0.8, 2)
    w = {"a.weight": rng.standard_normal((30, 40)).astype(np.float32),
         "b.weight": rng.standard_normal((5, 7)).astype(np.float16)}
    cts = {k: compress_tensor(v, cfg) for k, v in w.items()}
    raw = {"a.bias": RawTensor.from_array(np.arange(30, dtype=np.float32))}
    p = tmp_path / "m.xsp"
    write_xsp(p, cts, raw, cfg)
    return p, cts


def test_round_trip_and_lazy_reading(xsp):
    p, cts = xsp
    with XspFile(p) as f:
        assert f.names() == ["a.weight", "b.weight", "a.bias"]
        for k, ct in cts.items():
            assert decompress_tensor(f.compressed(k)).tobytes() == decompress_tensor(ct).tobytes()
        a, dt = f.raw("a.bias")
        assert dt == "F32" and a.tolist() == list(range(30))
        assert f.config == CompressConfig(0.8, 2)


def test_standard_safetensors_tools_can_list_it(xsp):
    from safetensors import safe_open

    p, _ = xsp
    with safe_open(str(p), framework="numpy") as h:
        keys = list(h.keys())
        assert "a.bias" in keys and "a.weight.__xs__.plane0.stream" in keys
        assert json.loads(h.metadata()["xorsparse"])["format"] == "xorsparse"
        assert h.get_tensor("a.bias").tolist() == list(range(30))


def _header_end(p) -> int:
    with open(p, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_corrupt_byte_names_tensor(xsp):
    p, _ = xsp
    with st.Reader(p) as r:
        b, _ = r.entries["a.weight.__xs__.plane1.stream"]["offsets"]
    data = bytearray(p.read_bytes())
    data[_header_end(p) + b] ^= 0x10
    p.write_bytes(bytes(data))
    with XspFile(p) as f:
        f.compressed("b.weight")  # untouched tensors still read
        with pytest.raises(XspError, match=r"tensor 'a.weight': checksum mismatch in plane1.stream"):
            f.compressed("a.weight")


def test_truncated_file(xsp):
    p, _ = xsp
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(XspError, match=r"m.xsp: truncated: tensor 'a.bias'"):
        XspFile(p)
    p.write_bytes(data[:5])
    with pytest.raises(XspError, match="truncated"):
        XspFile(p)


def _rewrite_meta(p, fn, fix_crc=True):
    """Edit the JSON description; by default re-sign it, as a careless tool might."""
    from xorsparse.bench.xspedit import XspImage

    img = XspImage.load(p)
    fn(img.doc)
    img.save(p, resign=fix_crc)


def test_edited_parameter_fails_the_description_checksum(xsp):
    p, _ = xsp
    _rewrite_meta(p, lambda m: m["tensors"]["a.weight"]["planes"][0].update(n_out=7), fix_crc=False)
    with pytest.raises(XspError, match=r"m.xsp: description checksum mismatch"):
        XspFile(p)


def test_wrong_version(xsp):
    p, _ = xsp
    _rewrite_meta(p, lambda m: m.update(version=99))
    with pytest.raises(XspError, match="unsupported format version 99"):
        XspFile(p)


def test_missing_entry_and_unknown_tensor(xsp):
    from xorsparse.bench.xspedit import XspImage

    p, _ = xsp
    with XspFile(p) as f:
        with pytest.raises(XspError, match="no compressed tensor 'nope'"):
            f.compressed("nope")
        with pytest.raises(XspError, match="no stored tensor 'nope'"):
            f.raw("nope")
    img = XspImage.load(p)
    img.entries = [e for e in img.entries if e["name"] != "a.weight.__xs__.mask"]
    img.save(p, resign=False)
    with pytest.raises(XspError, match=r"description checksum mismatch"):
        XspFile(p)
    img.save(p)
    with pytest.raises(XspError, match=r"tensor 'a.weight': missing entry 'a.weight.__xs__.mask'"):
        XspFile(p)


def test_not_xorsparse(tmp_path):
    p = tmp_path / "plain.safetensors"
    st.write(p, [st.array_entry("x", np.zeros(3, np.float32))])
    with pytest.raises(XspError, match="not an xorsparse file"):
        XspFile(p)
    q = tmp_path / "junk.xsp"
    q.write_bytes(b"\xff" * 100)
    with pytest.raises(XspError, match="not a safetensors file"):
        XspFile(q)
    with pytest.raises(XspError, match="cannot open"):
        XspFile(tmp_path / "absent.xsp")


def test_writer_is_atomic(tmp_path):
    p = tmp_path / "out.safetensors"
    p.write_bytes(b"old contents")

    def boom():
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        st.write(p, [st.array_entry("x", np.zeros(3, np.float32)), st.Entry("y", "F32", (2,), boom)])
    assert p.read_bytes() == b"old contents"


def test_reader_reads_files_written_by_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "t.safetensors"
    t = {"w": torch.randn(3, 4).to(torch.bfloat16), "i": torch.arange(5)}
    save_file(t, str(p))
    with st.Reader(p) as r:
        assert r.read("i").tolist() == list(range(5))
        assert r.read("w").dtype == np.uint16
        assert r.entries["w"]["dtype"] == "BF16"


@pytest.mark.parametrize("cfg", [CompressConfig(0.8, 2), CompressConfig(0.5, 3, "uniform", symmetric=False),
                                 CompressConfig(0.95, 1, mask_codec="bitmask"), CompressConfig(0.6, 2, group_size=5),
                                 CompressConfig(0.7, 4, "uniform", max_n_s=0)])
def test_file_decodes_with_reference_written_from_format_md(tmp_path, cfg):
    from .. import reference

    rng = np.random.default_rng(7)
    w = rng.standard_normal((23, 61)).astype(np.float32)
    p = tmp_path / "r.xsp"
    ct = compress_tensor(w, cfg)
    write_xsp(p, {"w": ct}, {}, cfg)
    ours = decompress_tensor(ct).ravel()
    ref = np.array(reference.decode_tensor(str(p), "w"), dtype=np.float32)
    assert ours.tobytes() == ref.tobytes()


@pytest.mark.parametrize("edit,msg", [
    (lambda t: t.update(rows=t["rows"] + 1), r"rows: rows x cols = 31 x 40 does not match shape \[30, 40\]"),
    (lambda t: t.update(group_size=3), r"scales: shape \[30, 1, 2\] where the description needs \[30, 14, 2\]"),
    (lambda t: t["planes"].pop(), "planes: 1 planes for 2 bits"),
    (lambda t: t["order"].update(step=2), "order.step: 2 is not coprime"),
    (lambda t: t["planes"][0].update(n_in=1000), r"planes\[0\].n_in: must be in 1..64, got 1000"),
    (lambda t: t["planes"][0].update(n_out=0), r"planes\[0\].n_out"),
    (lambda t: t["planes"][0].update(chunk_slices=100), r"planes\[0\].chunk_slices: must be a multiple of 64"),
    (lambda t: t["planes"][0].update(n_s=t["planes"][0]["n_s"] + 1, n_in=1, n_out=1), "plane0.stream: shape"),
])
def test_edited_metadata_is_an_error_not_a_crash(xsp, edit, msg):
    p, _ = xsp
    _rewrite_meta(p, lambda m: edit(m["tensors"]["a.weight"]))
    with pytest.raises(XspError, match=r"m.xsp: tensor 'a.weight': " + msg):
        XspFile(p)
