import json
import struct

import numpy as np
import pytest

from xorsparse.format import safetensors_io as st
from xorsparse.format.container import RawTensor, XspError, XspFile, write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor


@pytest.fixture
def xsp(tmp_path):
    rng = np.random.default_rng(0)
    cfg = CompressConfig(0.8, 2, scale_rows=1, scale_format="float16")  # the edits below assume per-row scales
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
        assert f.config == CompressConfig(0.8, 2, scale_rows=1, scale_format="float16")


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
    from benchmarks.xspedit import XspImage

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
    from benchmarks.xspedit import XspImage

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
                                 CompressConfig(0.7, 4, "uniform", max_n_s=0),
                                 CompressConfig(0.8, 2, mask_codec="ctx"), CompressConfig(0.3, 1, mask_codec="ctx"),
                                 CompressConfig(0.8, 2, "codebook"), CompressConfig(0.6, 3, "codebook", codebook_rows=5,
                                                                                    scale_rows=4, group_size=7),
                                 CompressConfig(0.8, 2, scale_rows=8, packed_below=1 << 20),
                                 CompressConfig(0.5, 3, "uniform", symmetric=False, scale_rows="auto", error_budget=0.5),
                                 CompressConfig(0.7, 4, "codebook", packed_below=1 << 20, mask_codec="ctx"),
                                 CompressConfig(0.8, 3, scale_format="log8"),
                                 CompressConfig(0.6, 2, "codebook", scale_format="log8", scale_rows=3),
                                 CompressConfig(0.5, 3, "uniform", symmetric=False, scale_format="log8",
                                                group_size=16)])
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


# --- version 2: the affine quantizer; version 1 files stay readable ---------------------------

import os  # noqa: E402

from benchmarks.xspedit import XspImage  # noqa: E402
from xorsparse.format.validate import CHECKSUM_KEY  # noqa: E402
from xorsparse.tensor import compress_quantized  # noqa: E402
from xorsparse.tensor.quant import given_keep, quantize_given, round_to_bfloat16  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


def _affine_ct(rng, symmetric, scale_dtype, shape=(20, 96), group=32, bits=4, dtype="bfloat16"):
    codes = rng.integers(-(1 << bits - 1), 1 << bits - 1, shape).astype(np.int8)
    codes[rng.random(shape) < 0.7] = 0
    scales = (rng.random((shape[0], shape[1] // group)) * 0.05).astype(np.float32)
    scales = {"bfloat16": round_to_bfloat16, "float16": lambda s: s.astype(np.float16).astype(np.float32),
              "float32": lambda s: s}[scale_dtype](scales)
    zp = None if symmetric else rng.integers(-2, 3, (shape[0], shape[1] // group)).astype(np.int8)
    qz = quantize_given(codes, scales, zp, bits, group, scale_dtype)
    keep = given_keep(codes, qz.scales, qz.zero_points, group)
    return compress_quantized(keep, qz, dtype, CompressConfig())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("scale_dtype", ["bfloat16", "float16", "float32"])
def test_affine_round_trip_and_reference_decoder(tmp_path, symmetric, scale_dtype):
    from .. import reference

    ct = _affine_ct(np.random.default_rng(11), symmetric, scale_dtype, dtype="float32")
    p = tmp_path / "a.xsp"
    write_xsp(p, {"w": ct}, {})
    with XspFile(p) as f:
        assert f.version == 2
        back = f.compressed("w")
        assert back.quant.scale_dtype == scale_dtype and (back.quant.zero_points is None) == symmetric
        ours = decompress_tensor(back)
    assert ours.tobytes() == decompress_tensor(ct).tobytes()
    ref = np.array(reference.decode_tensor(str(p), "w"), dtype=np.float32)
    assert ours.ravel().tobytes() == ref.tobytes()
    with st.Reader(p) as r:
        want = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[scale_dtype]
        assert r.entries["w.__xs__.scales"]["dtype"] == want
        assert ("w.__xs__.zero_points" in r.entries) == (not symmetric)


def test_version_1_files_stay_readable():
    expected = np.load(os.path.join(DATA, "v1-expected.npz"))
    with XspFile(os.path.join(DATA, "v1.xsp")) as f:
        assert f.version == 1
        for name in expected.files:
            assert f.dense(name).astype(np.float32).tobytes() == expected[name].tobytes()
        assert f.raw("a.bias")[0].tolist() == list(range(24))


@pytest.fixture
def affine_xsp(tmp_path):
    p = tmp_path / "af.xsp"
    write_xsp(p, {"w": _affine_ct(np.random.default_rng(2), False, "bfloat16")}, {})
    return p


def _as_version_1(img):
    """What a version-1 writer would have written: meta_crc32 per tensor, no description checksum."""
    from xorsparse.format.container import meta_crc

    img.doc["version"] = 1
    img.metadata.pop(CHECKSUM_KEY, None)
    for t in img.doc["tensors"].values():
        t["meta_crc32"] = meta_crc(t)


@pytest.mark.parametrize("edit,msg", [
    (_as_version_1, "quantizer: 'affine' needs format version 2, file is version 1"),
    (lambda img: img.doc.update(version=True), "unsupported format version true"),
    (lambda img: img.doc["tensors"]["w"].update(bits=True), "bits: must be an integer, got true"),
    (lambda img: img.doc["tensors"]["w"].update(bits=4.0), "bits: must be an integer, got 4.0"),
    (lambda img: img.doc["tensors"]["w"].update(bits=9), "bits: must be in 1..8, got 9"),
    (lambda img: img.doc["tensors"]["w"].update(symmetric=1), "symmetric: must be true or false, got 1"),
    (lambda img: img.doc["tensors"]["w"].update(symmetric=True), 'crc32: unknown member "zero_points"'),
    (lambda img: img.doc["tensors"]["w"].update(group_size=48),
     r"scales: shape \[20, 3, 1\] where the description needs \[20, 2, 1\]"),
    (lambda img: img.doc["tensors"]["w"].update(quantizer="affinity"), 'quantizer: unknown value "affinity"'),
    (lambda img: img.entry("w.__xs__.zero_points").update(dtype="U8"), "zero_points: dtype U8 where the format has I8"),
    (lambda img: img.entry("w.__xs__.zero_points").update(shape=[60]),
     r"zero_points: shape \[60\] where the description needs \[20, 3\]"),
    (lambda img: img.entry("w.__xs__.scales").update(dtype="I16"), "scales: dtype I16 where the format has F16"),
    (lambda img: img.entries.remove(img.entry("w.__xs__.zero_points")), "missing entry 'w.__xs__.zero_points'"),
    (lambda img: img.blobs.update({"w.__xs__.scales": b"\x80\x7f" * 60}), "scales: holds a value that is NaN"),
])
def test_affine_descriptions_and_parts_are_validated(affine_xsp, edit, msg):
    """Every checksum re-signed after the edit: only the validation can stop it."""
    img = XspImage.load(affine_xsp)
    edit(img)
    img.save(affine_xsp, resign=True)
    with pytest.raises(XspError, match=msg):
        with XspFile(affine_xsp) as f:
            f.dense("w", framework="torch")


def test_bcq_scales_in_bfloat16_are_rejected(xsp):
    p, _ = xsp
    img = XspImage.load(p)
    img.entry("a.weight.__xs__.scales")["dtype"] = "BF16"
    img.save(p)
    with pytest.raises(XspError, match="scales: dtype BF16 where the format has F16 or F32"):
        XspFile(p)


def _as_version1(p):
    """The file as a version-1 writer would have made it: meta_crc32 per tensor, no
    description checksum (the layout is unchanged otherwise)."""
    from benchmarks.xspedit import XspImage
    from xorsparse.format.validate import CHECKSUM_KEY

    img = XspImage.load(p)
    img.doc["version"] = 1
    for t in img.doc["tensors"].values():
        t["meta_crc32"] = 0  # recomputed by the re-signing
    img.metadata.pop(CHECKSUM_KEY, None)
    img.save(p, resign=True)


@pytest.fixture
def ctx_xsp(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((60, 80)).astype(np.float32) * rng.lognormal(0, 0.7, (60, 1)).astype(np.float32)
    cfg = CompressConfig(0.8, 2, mask_codec="ctx", scale_rows=1, scale_format="float16")
    ct = compress_tensor(w, cfg)
    assert ct.mask.codec == "ctx" and ct.mask.model.row_step > 0
    p = tmp_path / "c.xsp"
    write_xsp(p, {"w": ct}, {}, cfg)
    return p, ct


def test_ctx_mask_file_round_trip(ctx_xsp):
    p, ct = ctx_xsp
    with XspFile(p) as f:
        assert f.version == 2
        assert decompress_tensor(f.compressed("w")).tobytes() == decompress_tensor(ct).tobytes()


@pytest.mark.parametrize("edit,msg", [
    (lambda mk: mk.update(row_step=True), "mask.row_step: must be an integer, got true"),
    (lambda mk: mk.update(base=2.0), "mask.base: must be an integer, got 2.0"),
    (lambda mk: mk.update(base=-1021), r"mask.base: must be in -1020..1020"),
    (lambda mk: mk.update(col_step=99), r"mask.col_step: must be in 0..64, got 99"),
    (lambda mk: mk.update(rows=7), "does not cover"),
    (lambda mk: mk.update(block=100), "mask.block: must be a multiple of 64"),
    (lambda mk: mk.update(block=1 << 25), r"mask.block: must be in 64..16777216"),
    (lambda mk: mk.update(block=64), "mask_offsets: shape"),
    (lambda mk: mk.update(codec="zip"), 'mask.codec: unknown value "zip"'),
    (lambda mk: mk.pop("base"), "mask.base: missing"),
    (lambda mk: mk.update(extra=1), 'unknown member "extra"'),
])
def test_hostile_ctx_fields_are_errors(ctx_xsp, edit, msg):
    p, _ = ctx_xsp
    _rewrite_meta(p, lambda m: edit(m["tensors"]["w"]["mask"]))
    with pytest.raises(XspError, match=msg):
        with XspFile(p) as f:
            f.dense("w")


def test_ctx_offsets_that_decrease_are_errors(ctx_xsp):
    from benchmarks.xspedit import XspImage

    p, _ = ctx_xsp
    img = XspImage.load(p)
    offs = np.frombuffer(img.blobs["w.__xs__.mask_offsets"], "<u4").copy()
    offs[-1] += 1
    img.blobs["w.__xs__.mask_offsets"] = offs.tobytes()
    img.save(p, resign=True)
    with pytest.raises(XspError, match="mask_offsets: last offset .* does not match"):
        with XspFile(p) as f:
            f.dense("w")
    offs = np.array([offs[-1] - 1, 5, offs[-1] - 1], "<u4")  # as if three blocks: one offset decreases
    img.blobs["w.__xs__.mask_offsets"] = offs.tobytes()
    img.entry("w.__xs__.mask_offsets")["shape"] = [3]
    img.doc["tensors"]["w"]["mask"]["block"] = 1664  # ceil(4800 / 1664) = 3 blocks
    img.save(p, resign=True)
    with pytest.raises(XspError, match="mask_offsets: block 1: offsets must not decrease"):
        with XspFile(p) as f:
            f.dense("w")


def test_version_1_files_still_read_and_ctx_is_not_version_1(tmp_path, ctx_xsp):
    rng = np.random.default_rng(0)
    cts = {"a": compress_tensor(rng.standard_normal((30, 40)).astype(np.float32), CompressConfig(0.8, 2, mask_codec="entropy", scale_rows=1, scale_format="float16")),
           "b": compress_tensor(rng.standard_normal((5, 7)).astype(np.float16), CompressConfig(0.5, 3, "uniform", mask_codec="bitmask",
                                                                                       scale_rows=1, scale_format="float16"))}
    p = tmp_path / "v1.xsp"
    write_xsp(p, cts, {}, None)  # version-1 features only: the layout a version-1 writer produced
    _as_version1(p)
    with XspFile(p) as f:
        assert f.version == 1
        for k, ct in cts.items():
            assert decompress_tensor(f.compressed(k)).tobytes() == decompress_tensor(ct).tobytes()
    c, _ = ctx_xsp
    _as_version1(c)
    with pytest.raises(XspError, match="mask.codec: 'ctx' needs format version 2, file is version 1"):
        XspFile(c)
    for bad in (2.0, "2", True, 3):
        _rewrite_meta(c, lambda m: m.update(version=bad))
        with pytest.raises(XspError, match="unsupported format version"):
            XspFile(c)


@pytest.fixture
def v2_xsp(tmp_path):
    rng = np.random.default_rng(2)
    w = {"cb": rng.standard_normal((40, 50)).astype(np.float32), "pk": rng.standard_normal((16, 9)).astype(np.float32)}
    cts = {"cb": compress_tensor(w["cb"], CompressConfig(0.8, 2, "codebook", scale_rows=4, codebook_rows=10,
                                                         mask_codec="entropy", scale_format="float16")),
           "l8": compress_tensor(w["cb"], CompressConfig(0.8, 2, scale_rows=1, scale_format="log8", mask_codec="entropy")),
           "pk": compress_tensor(w["pk"], CompressConfig(0.8, 2, packed_below=1000, mask_codec="bitmask", scale_rows=1,
                                                         scale_format="float16"))}
    p = tmp_path / "v2.xsp"
    write_xsp(p, cts, {}, None)
    return p, cts


@pytest.mark.parametrize("tensor,edit,msg", [
    ("cb", lambda t: t.update(scale_rows=0), r"scale_rows: must be in 1..40, got 0"),
    ("cb", lambda t: t.update(scale_rows=41), r"scale_rows: must be in 1..40, got 41"),
    ("cb", lambda t: t.update(scale_rows=8), "scales: shape"),
    ("cb", lambda t: t.update(scale_rows=4.0), "scale_rows: must be an integer"),
    ("cb", lambda t: t.update(codebook_rows=True), "codebook_rows: must be an integer"),
    ("cb", lambda t: t.update(codebook_rows=20), "codebook: shape"),
    ("cb", lambda t: t.update(codebook_rows=0), r"codebook_rows: must be in 1..40"),
    ("cb", lambda t: t.pop("codebook_rows"), "codebook_rows: missing"),
    ("cb", lambda t: t.update(symmetric=False), "symmetric: must be true for codebook"),
    ("cb", lambda t: t.update(bits=5), r"bits: must be in 1..4, got 5"),
    ("cb", lambda t: t.update(quantizer="kmeans"), 'quantizer: unknown value "kmeans"'),
    ("l8", lambda t: t.update(codebook_rows=1), 'unknown member "codebook_rows"'),
    ("pk", lambda t: t["planes"][0].update(care_bits=t["planes"][0]["care_bits"] + 9), r"plane0.stream: shape"),
    ("pk", lambda t: t["planes"][0].update(care_bits=t["planes"][0]["care_bits"] + 1), "bits for"),
    ("pk", lambda t: t["planes"][0].update(care_bits=-1), r"planes\[0\].care_bits: must be in 0..144, got -1"),
    ("pk", lambda t: t["planes"][0].update(care_bits="7"), r"planes\[0\].care_bits: must be an integer"),
    ("pk", lambda t: t["planes"][0].update(kind="dense"), r'planes\[0\].kind: unknown value "dense"'),
    ("pk", lambda t: t["planes"][0].update(n_in=3), r'unknown member "n_in"'),
    ("l8", lambda t: t.update(scale_format="log4"), 'scale_format: unknown value "log4"'),
    ("l8", lambda t: t.pop("scale_format"), 'crc32: unknown member "scale_ref"'),
    ("cb", lambda t: t.update(scale_format="log8"), "crc32.scale_ref: missing"),
])
def test_hostile_version_2_fields_are_errors(v2_xsp, tensor, edit, msg):
    p, _ = v2_xsp
    _rewrite_meta(p, lambda m: edit(m["tensors"][tensor]))
    with pytest.raises(XspError, match=msg):
        with XspFile(p) as f:
            f.dense(tensor)


def test_version_2_fields_rejected_in_version_1(v2_xsp):
    from benchmarks.xspedit import XspImage

    p, cts = v2_xsp
    with XspFile(p) as f:
        for k, ct in cts.items():
            assert decompress_tensor(f.compressed(k)).tobytes() == decompress_tensor(ct).tobytes()
    for name, msg in (("cb", "quantizer: 'codebook' needs format version 2, file is version 1"),
                      ("pk", r"planes\[0\].kind: packed planes need format version 2"),
                      ("l8", "scale_format: not allowed with version 1")):
        q = p.with_name(name + ".xsp")
        img = XspImage.load(p)
        img.doc["tensors"] = {name: img.doc["tensors"][name]}
        img.entries = [e for e in img.entries if e["name"].startswith(name + ".__xs__.")]
        img.save(q, resign=True)
        _as_version1(q)
        with pytest.raises(XspError, match=msg):
            XspFile(q)


def test_hostile_log8_reference(v2_xsp):
    from benchmarks.xspedit import XspImage

    p, _ = v2_xsp
    img = XspImage.load(p)
    ref = np.frombuffer(img.blobs["l8.__xs__.scale_ref"], np.float32).copy()
    ref[0] = np.nan
    img.blobs["l8.__xs__.scale_ref"] = ref.tobytes()
    img.save(p, resign=True)
    with XspFile(p) as f:
        with pytest.raises(XspError, match="scale_ref: holds a value that is NaN or infinite"):
            f.compressed("l8")
        f.compressed("cb")  # the other tensors are fine


def test_ctx_mask_length_checked_before_the_model_is_decoded(ctx_xsp):
    p, _ = ctx_xsp
    _rewrite_meta(p, lambda m: m["tensors"]["w"]["mask"].update(length=10**12, rows=10**6, cols=10**6))
    with pytest.raises(XspError, match="mask.length: 1000000000000 does not match the 4800 weights"):
        XspFile(p)
    _rewrite_meta(p, lambda m: m["tensors"]["w"].update(shape=[10**6, 10**6], rows=10**6, cols=10**6))
    with pytest.raises(XspError, match="scales: shape|order.step"):  # what the file's bytes cannot back
        XspFile(p)


def test_ctx_model_is_read_within_the_memory_limit(ctx_xsp, monkeypatch):
    """rows + cols model indices are not backed by the file's bytes: bounded before reading."""
    p, _ = ctx_xsp
    _rewrite_meta(p, lambda m: m["tensors"]["w"]["mask"].update(rows=4800, cols=1, row_step=1, col_step=0))
    monkeypatch.setenv("XORSPARSE_MAX_TENSOR_BYTES", "16k")
    with XspFile(p) as f:
        with pytest.raises(XspError, match="tensor 'w': decoding needs about .* above the limit"):
            f.compressed("w")
    monkeypatch.setenv("XORSPARSE_MAX_TENSOR_BYTES", "1M")
    with XspFile(p) as f:
        f.compressed("w")  # a different model of the same mask: decodes (to other weights)


QUALITY = {"kind": "sentence-transformers", "mean_cosine": 0.93, "min_cosine": 0.7, "nn_agreement": 0.9,
           "held_out": {"source": "builtin", "file": "heldout_en.txt", "sha256": "0" * 64, "samples": 256,
                        "selection": "all"}}
CALIBRATION = {"method": "sparsegpt", "source": "builtin", "samples": 512, "sequential": True, "blocks": "layers",
               "notes": [], "seconds": {"total": 1.5}}


@pytest.fixture
def xsp_records(tmp_path):
    cfg = CompressConfig(0.8, 2, method="sparsegpt")
    ct = compress_tensor(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), cfg)
    p = tmp_path / "r.xsp"
    write_xsp(p, {"w": ct}, {}, cfg, extra={"quality": QUALITY, "calibration": CALIBRATION})
    return p


def test_records_round_trip(xsp_records):
    with XspFile(xsp_records) as f:
        assert f.version == 2 and f.records == {"quality": QUALITY, "calibration": CALIBRATION}
        assert f.config.method == "sparsegpt"


def test_version_1_files_have_no_records_and_magnitude_configs():
    with XspFile(os.path.join(DATA, "v1.xsp")) as f:  # written by the version-1 release
        assert f.version == 1 and f.records == {}
        assert f.config is None or f.config.method == "magnitude"


def test_records_are_not_part_of_version_1(xsp_records):
    _rewrite_meta(xsp_records, lambda m: m.update(version=1))
    with pytest.raises(XspError, match="not part of format version 1|present in a version-1 file"):
        XspFile(xsp_records)


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m.update(quality=[1, 2]), "quality must be a JSON object"),
    (lambda m: m["quality"].update(mean_cosine="high"), "quality.mean_cosine"),
    (lambda m: m["quality"].update(mean_cosine=True), "quality.mean_cosine"),
    (lambda m: m["quality"].update(nn_agreement=1.5), "quality.nn_agreement"),
    (lambda m: m["quality"].update(kind="vibes"), "quality.kind"),
    (lambda m: m["quality"].pop("kind"), "quality.kind: missing"),
    (lambda m: m["quality"].update(extra=1), "unknown field 'extra'"),
    (lambda m: m["quality"]["held_out"].update(samples=-1), "quality.held_out.samples"),
    (lambda m: m["quality"].update(layers={"a": "b"}), "quality.layers"),
    (lambda m: m["calibration"].update(samples=1.5), "calibration.samples"),
    (lambda m: m["calibration"].update(method="obs"), "calibration.method"),
    (lambda m: m["calibration"].update(notes=[1]), "calibration.notes"),
    (lambda m: m["calibration"].update(sha256="xyz"), "calibration.sha256"),
    (lambda m: m["config"].update(method="obs"), "config: method must be one of"),
    (lambda m: m["config"].update(calib_block=0), "config: calib_block"),
    (lambda m: m.update(version=True), "unsupported format version"),
])
def test_bad_records_are_one_line_errors(xsp_records, edit, msg):
    _rewrite_meta(xsp_records, edit)
    with pytest.raises(XspError, match=msg) as e:
        XspFile(xsp_records)
    assert str(xsp_records) in str(e.value) and "\n" not in str(e.value)


def test_writer_refuses_records_the_reader_would_refuse(tmp_path):
    ct = compress_tensor(np.ones((4, 64), np.float32), CompressConfig(0.5, 1))
    with pytest.raises(ValueError, match="quality.mean_cosine"):
        write_xsp(tmp_path / "x.xsp", {"w": ct}, {}, extra={"quality": dict(QUALITY, mean_cosine=2.0)})
    with pytest.raises(ValueError, match="unknown record"):
        write_xsp(tmp_path / "x.xsp", {"w": ct}, {}, extra={"stuff": {}})
    assert not (tmp_path / "x.xsp").exists()
