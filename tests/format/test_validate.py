"""The validating reader on its own: framing, the description checksum, every rule, version 1."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from benchmarks.xspedit import XspImage
from xorsparse.format import validate
from xorsparse.format.container import RawTensor, XspError, XspFile, write_xsp
from xorsparse.format.validate import EntryInfo, description_crc, load_json, parse_header
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor

from .. import reference

DATA = os.path.join(os.path.dirname(__file__), "data")
V1 = os.path.join(DATA, "v1-bitmask.xsp")  # bitmask, asymmetric uniform, groups (v1.xsp: entropy, bcq)
V1_EXPECTED = os.path.join(DATA, "v1-bitmask-expected.npz")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A version-2 file with both quantizers, both mask codecs and a stored tensor; its bytes."""
    rng = np.random.default_rng(3)
    c1 = CompressConfig(0.7, 2, max_n_s=0, mask_codec="entropy", scale_rows=1, scale_format="float16")
    c2 = CompressConfig(0.5, 3, "uniform", symmetric=False, group_size=7, mask_codec="bitmask",
                        scale_rows=1, scale_format="float16")
    cts = {"a.weight": compress_tensor(rng.standard_normal((40, 70)).astype(np.float32), c1),
           "b.weight": compress_tensor(rng.standard_normal((9, 30)).astype(np.float16), c2)}
    p = tmp_path_factory.mktemp("v") / "good.xsp"
    write_xsp(p, cts, {"a.bias": RawTensor.from_array(np.arange(40, dtype=np.float32))}, c1,
              {"order": ["a.weight", "a.bias", "b.weight"], "pruning": "per-tensor"})
    return p.read_bytes(), {k: decompress_tensor(v) for k, v in cts.items()}


def _file(tmp_path, data: bytes, name="x.xsp"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _edit(tmp_path, good, fn, resign=True, **kw):
    img = XspImage.loads(good[0])
    fn(img)
    return _file(tmp_path, img.dumps(resign=resign, **kw))


def _err(p, match):
    with pytest.raises(XspError, match=match) as ei:
        with XspFile(p) as f:
            for n in f.names():
                f.dense(n)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg
    return msg


# --- JSON and framing -----------------------------------------------------------------------------


@pytest.mark.parametrize("text,msg", [
    ('{"a": NaN}', "NaN is not a JSON number"), ('{"a": Infinity}', "Infinity"), ('{"a": 1e999}', "out of range"),
    ('{"a": 1, "a": 2}', "duplicate key"), ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"a": ' + "9" * 5000 + "}", "not valid JSON"), (b"\xff\xfe", "not UTF-8"), ("{", "not valid JSON"),
])
def test_strict_json(text, msg):
    with pytest.raises(XspError, match=msg):
        load_json(text, "what", "f.xsp")


def _header(obj) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize("header,size,msg", [
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8, None),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 9, "1 bytes after the last tensor"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 7, "truncated: tensor 't'"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "hold 4 bytes, but dtype F32"),
    ({"t": {"dtype": "F8", "shape": [2], "data_offsets": [0, 2]}}, 2, "dtype: unknown value"),
    ({"t": {"dtype": "U8", "shape": [2.0], "data_offsets": [0, 2]}}, 2, r"shape\[0\]: must be an integer"),
    ({"t": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, 1, r"shape\[0\]: must be an integer"),
    ({"t": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, 1, r"must be in 0"),
    ({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}, 1, "unknown member"),
    ({"t": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, 2, "leaves 1 bytes unaccounted"),
    ({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
      "u": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, 3, "overlaps"),
    ({"t": [1]}, 0, "must be an object"), ({"__metadata__": {"a": 1}}, 0, "must be a string"),
    ({"__metadata__": []}, 0, "must be an object"),
    ({"t": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "u": {"dtype": "U8", "shape": [0],
      "data_offsets": [0, 0]}}, 0, None),
])
def test_parse_header(header, size, msg):
    raw = _header(header)
    if msg is None:
        parse_header(raw, 8 + len(raw) + size, "f.xsp")
    else:
        with pytest.raises(XspError, match=msg):
            parse_header(raw, 8 + len(raw) + size, "f.xsp")


def test_description_checksum_check_value():
    """The example of FORMAT.md section 2.1, from the library and from the reference decoder."""
    meta = {"xorsparse": "{}", "xorsparse_crc32": "whatever"}
    assert description_crc(meta, {"w": EntryInfo("F32", (2, 3), 0, 24)}) == 0x7894001A
    assert reference.description_crc(meta, {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}) \
        == "7894001a"


def test_reference_recomputes_the_checksum_of_written_files(good, tmp_path):
    p = _file(tmp_path, good[0])
    stored, computed = reference.description_checksum(str(p))
    assert stored == computed
    img = XspImage.loads(good[0])
    img.entry("a.bias")["dtype"] = "I32"
    q = _file(tmp_path, img.dumps(resign=False), "q.xsp")
    stored, computed = reference.description_checksum(str(q))
    assert stored != computed


def test_good_file_and_reference_agree(good, tmp_path):
    p = _file(tmp_path, good[0])
    with XspFile(p) as f:
        assert f.version == 2 and f.names() == ["a.weight", "a.bias", "b.weight"]
        for n, want in good[1].items():
            assert f.dense(n).tobytes() == want.tobytes()
            ref = np.array(reference.decode_tensor(str(p), n), dtype=np.float32).astype(want.dtype)
            assert ref.tobytes() == want.ravel().tobytes()


# --- every rule, each from a one-field edit with the checksums recomputed -----------------------


def T(name="a.weight"):
    return lambda img: img.doc["tensors"][name]


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.update(version=True), "unsupported format version true"),
    (lambda d: d.update(version=2.0), "unsupported format version 2.0"),
    (lambda d: d.update(format="xorsparse2"), "not an xorsparse file"),
    (lambda d: d.pop("raw"), "raw: missing"),
    (lambda d: d.update(tensors=[]), "tensors: must be an object"),
    (lambda d: d.update(info=None), "info: must be an object"),
    (lambda d: d["info"].update(order=["a.weight", "a.bias"]), "info.order: does not name tensor 'b.weight'"),
    (lambda d: d["info"].update(order=["a.weight", "a.bias", "b.weight", "a.bias"]), "names 'a.bias' twice"),
    (lambda d: d["info"].update(order=["a.weight", "a.bias", "b.weight", "c"]), "names 'c', which"),
    (lambda d: d["info"].update(pruning="some"), "info.pruning"),
    (lambda d: d["config"].update(bcq_iters=10**9), "config.bcq_iters: must be in 0..1000"),
    (lambda d: d["config"].update(sparsity="0.5"), "config.sparsity"),
    (lambda d: d["raw"].update({"a.bias": 5}), r"raw entry: must be an object"),
    (lambda d: d["raw"]["a.bias"].update(extra=1), "unknown member"),
    (lambda d: d["tensors"]["a.weight"].update(bits=63), "bits: must be in 1..4, got 63"),
    (lambda d: d["tensors"]["b.weight"].update(bits=24), "bits: must be in 1..8, got 24"),
    (lambda d: d["tensors"]["a.weight"].update(bits=2.0), "bits: must be an integer, got 2.0"),
    (lambda d: d["tensors"]["a.weight"].update(symmetric=False), "symmetric: must be true for bcq"),
    (lambda d: d["tensors"]["a.weight"].update(quantizer="kmeans"), "unknown value \"kmeans\""),
    (lambda d: d["tensors"]["a.weight"].update(dtype="int8"), "dtype: unknown value"),
    (lambda d: d["tensors"]["a.weight"].update(zero_point=0), "unknown member \"zero_point\""),
    (lambda d: d["tensors"]["a.weight"].update(meta_crc32=0), "unknown member \"meta_crc32\""),
    (lambda d: d["tensors"]["a.weight"].update(shape=[2800], rows=1, cols=2800), "crc32|shape"),
    (lambda d: d["tensors"]["a.weight"].update(group_size=71), "group_size: must be in 1..70"),
    (lambda d: d["tensors"]["a.weight"].update(group_size=0), "group_size: must be in 1..70"),
    (lambda d: d["tensors"]["a.weight"]["mask"].update(block=100), "mask.block: must be a multiple of 64"),
    (lambda d: d["tensors"]["a.weight"]["mask"].update(block=2**27), "mask.block: must be in 64"),
    (lambda d: d["tensors"]["a.weight"]["mask"].update(length=2799), "mask.length: 2799 does not match"),
    (lambda d: d["tensors"]["a.weight"]["mask"].update(codec="rle"), "mask.codec: unknown value"),
    (lambda d: d["tensors"]["b.weight"]["mask"].update(block=64), "mask.block: must be in 0..0"),
    (lambda d: d["tensors"]["a.weight"]["order"].update(kind="rows"), "order.kind: unknown value"),
    (lambda d: d["tensors"]["a.weight"]["order"].update(step=10**6), "order.step: must be in 0..42"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(seed="0x5eed"), r"seed: must be a decimal string"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(seed="024301"), r"seed: must be a decimal string"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(seed=str(2**64)), r"seed: must be a decimal"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(n_s=300), r"n_s: must be in 0..255"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(chunk_slices=2**40), r"chunk_slices: must be in"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(care_bits=-2), r"care_bits: must be in -1"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(rice_k=41), r"rice_k: must be in 0..40"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(patches=10**10), r"patches: must be in 0..2800"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(patch_nbits=0), r"patch_nbits: 0 bits cannot code"),
    (lambda d: d["tensors"]["a.weight"]["planes"][0].update(extra=0), r"planes\[0\]: unknown member"),
    (lambda d: d["tensors"]["a.weight"]["crc32"].update(extra=0), r"crc32: unknown member"),
    (lambda d: d["tensors"]["a.weight"]["crc32"].pop("scales"), r"crc32.scales: missing"),
    (lambda d: d["tensors"].update({"x.__xs__.y": d["tensors"].pop("a.weight")}), "invalid tensor name"),
])
def test_description_rules(good, tmp_path, edit, msg):
    def fn(img):
        edit(img.doc)
    _err(_edit(tmp_path, good, fn), msg)


@pytest.mark.parametrize("edit,msg", [
    (lambda img: img.entry("a.weight.__xs__.mask_params").update(dtype="I32"), "mask_params: dtype I32"),
    (lambda img: img.entry("a.weight.__xs__.mask_offsets").update(shape=[]), r"mask_offsets: shape \[\]"),
    (lambda img: img.entry("a.weight.__xs__.mask").update(shape=[1, len(img.blobs["a.weight.__xs__.mask"])]),
     "mask: shape .* where the format has one dimension"),
    (lambda img: img.entry("a.weight.__xs__.scales").update(dtype="BF16"), "scales: dtype BF16"),
    (lambda img: img.entry("a.bias").update(dtype="I32"), None),  # a stored tensor may be anything: forged
    (lambda img: img.entries.append({"name": "orphan", "dtype": "U8", "shape": [1]}) or img.blobs.update(orphan=b"x"),
     "entry 'orphan' is not described"),
    (lambda img: img.entries.remove(img.entry("a.bias")), "tensor 'a.bias': missing entry"),
])
def test_header_rules(good, tmp_path, edit, msg):
    p = _edit(tmp_path, good, edit)
    if msg is None:
        with XspFile(p) as f:
            assert f.raw("a.bias")[1] == "I32"
    else:
        _err(p, msg)


@pytest.mark.parametrize("part,value,msg", [
    ("mask_params", b"\0\0\0\x80", "Golomb parameter 2147483648 is outside 1..67108864"),
    ("mask_params", b"\0\0\0\0", "Golomb parameter 0"),
    ("mask_offsets", b"\0\0\0\0", "block 0: offsets must increase"),
    ("mask_offsets", b"\xff\0\0\0", "last offset 255 does not match"),
])
def test_data_rules(good, tmp_path, part, value, msg):
    def fn(img):
        img.blobs[f"a.weight.__xs__.{part}"] = value
    _err(_edit(tmp_path, good, fn), msg)


def test_nonzero_padding_and_nonfinite_scales(good, tmp_path):
    def pad(img):
        b = bytearray(img.blobs["b.weight.__xs__.mask"])
        b[-1] |= 0x80  # 270 positions: the last byte uses 6 bits
        img.blobs["b.weight.__xs__.mask"] = bytes(b)
    _err(_edit(tmp_path, good, pad), "mask: unused bits after the end")

    def nan(img):
        b = bytearray(img.blobs["a.weight.__xs__.scales"])
        b[0:2] = b"\x00\x7e"
        img.blobs["a.weight.__xs__.scales"] = bytes(b)
    _err(_edit(tmp_path, good, nan), "scales: holds a value that is NaN")


def test_patch_list_checks(good, tmp_path):
    doc = XspImage.loads(good[0]).doc
    p0 = doc["tensors"]["a.weight"]["planes"][0]
    assert p0["patches"] > 2, "the fixture should have patches (paper mode)"

    def fewer(img):
        img.doc["tensors"]["a.weight"]["planes"][0]["patches"] -= 1  # bits left over: too far for the plane
    _err(_edit(tmp_path, good, fewer), r"planes\[0\].patch_nbits: \d+ bits cannot code")

    if p0["patch_nbits"] % 8:
        def longer(img):
            img.doc["tensors"]["a.weight"]["planes"][0]["patch_nbits"] += 1  # same bytes, one bit unused
        _err(_edit(tmp_path, good, longer), "plane0.patches: the list codes in")

    def flip(img):
        b = bytearray(img.blobs["a.weight.__xs__.plane0.patches"])
        b[0] = 0xFF  # a long unary run: positions beyond the plane
        img.blobs["a.weight.__xs__.plane0.patches"] = bytes(b)
    _err(_edit(tmp_path, good, flip), "plane0.patches")


def test_unforged_edits_fail_the_description_checksum(good, tmp_path):
    for fn in (lambda img: img.doc.update(r1w=img.doc.pop("raw")),
               lambda img: img.entry("a.bias").update(dtype="I32"),
               lambda img: img.doc["info"]["order"].pop(),
               lambda img: img.doc["tensors"]["a.weight"]["planes"][0].update(chunk_slices=128)):
        _err(_edit(tmp_path, good, fn, resign=False), "description checksum mismatch")


def test_checksum_key_rules(good, tmp_path):
    _err(_edit(tmp_path, good, lambda img: img.metadata.pop("xorsparse_crc32"), resign=False), "checksum missing")
    _err(_edit(tmp_path, good, lambda img: img.metadata.update(xorsparse_crc32="ABCDEF01"), resign=False),
         "8 lowercase hexadecimal")
    # version 2 -> 1 by a single changed byte: the checksum key betrays it
    _err(_edit(tmp_path, good, lambda img: img.doc.update(version=1), resign=False),
         "present in a version-1 file|checksum mismatch")


def test_other_metadata_and_informative_members_are_covered_and_allowed(good, tmp_path):
    def fn(img):
        img.metadata["note"] = "hello"
        img.doc["tool_notes"] = {"cosine": 0.99}  # ("quality" is a checked record: FORMAT.md section 8)
        img.doc["info"]["host"] = "x"
        img.doc["config"]["future_option"] = [1, 2]
    p = _edit(tmp_path, good, fn)
    with XspFile(p) as f:
        assert f.dense("a.weight").tobytes() == good[1]["a.weight"].tobytes()
    img = XspImage.load(p)
    img.metadata["note"] = "hellO"
    _err(_file(tmp_path, img.dumps(resign=False), "n.xsp"), "description checksum mismatch")


def test_decode_memory_limit(good, tmp_path, monkeypatch):
    p = _file(tmp_path, good[0])
    monkeypatch.setenv("XORSPARSE_MAX_TENSOR_BYTES", "1k")
    with XspFile(p) as f:
        f.compressed("a.weight")  # reading the parts is bounded by the file: allowed
        with pytest.raises(XspError, match=r"tensor 'a.weight': decoding needs about .* above the limit .*"
                                           r"XORSPARSE_MAX_TENSOR_BYTES"):
            f.dense("a.weight")
    with XspFile(p, max_tensor_bytes=1 << 20) as f:
        f.dense("a.weight")
    monkeypatch.setenv("XORSPARSE_MAX_TENSOR_BYTES", "lots")
    with pytest.raises(ValueError, match="is not a size"):
        validate.max_tensor_bytes()


# --- version 1 -------------------------------------------------------------------------------------


def test_version1_file_still_reads(tmp_path):
    """v1-bitmask.xsp was written by the version-1 writer (the code before format version 2)."""
    p = V1
    want = np.load(V1_EXPECTED)
    with XspFile(p) as f:
        assert f.version == 1 and f.names() == ["a.weight", "a.bias", "b.weight"]
        assert f.dense("a.weight").tobytes() == want["a.weight"].tobytes()
        assert f.dense("b.weight").tobytes() == want["b.weight"].tobytes()
        assert f.dense("a.bias").tobytes() == want["bias"].tobytes()
    for n in ("a.weight", "b.weight"):
        ref = np.array(reference.decode_tensor(p, n), dtype=np.float32).astype(want[n].dtype)
        assert ref.tobytes() == want[n].ravel().tobytes()


def test_version1_checks(tmp_path):
    data = open(V1, "rb").read()
    img = XspImage.loads(data)
    img.doc["tensors"]["a.weight"]["planes"][0]["n_out"] += 1
    _err(_file(tmp_path, img.dumps(resign=False)), "tensor 'a.weight': checksum mismatch in its metadata")
    img = XspImage.loads(data)
    img.doc["tensors"]["a.weight"]["bits"] = 9
    _err(_file(tmp_path, img.dumps(resign=True), "b.xsp"), "bits: must be in 1..4")  # meta_crc32 re-signed
    img = XspImage.loads(data)
    img.metadata["xorsparse_crc32"] = "00000000"
    _err(_file(tmp_path, img.dumps(resign=False), "c.xsp"), "present in a version-1 file")


# --- hypothesis: any one-field edit, any byte edit -------------------------------------------------


def _paths(obj, prefix=()):
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += [prefix + (k,)] + _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += [prefix + (i,)] + _paths(v, prefix + (i,))
    return out


JSONISH = st_.recursive(st_.none() | st_.booleans() | st_.integers(-2**70, 2**70) |
                        st_.floats(allow_nan=False, allow_infinity=False) | st_.text(max_size=8),
                        lambda c: st_.lists(c, max_size=3) | st_.dictionaries(st_.text(max_size=4), c, max_size=3),
                        max_leaves=6)


def _outcome(p, good):
    """'error', 'same' or 'different': anything else (another exception) fails the test."""
    try:
        with XspFile(p) as f:
            out = {n: f.dense(n) for n in f.names()}
    except XspError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return "error"
    same = all(n in out and np.asarray(out[n]).tobytes() == v.tobytes() for n, v in good[1].items())
    return "same" if same else "different"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st_.data())
def test_any_field_edit_is_caught_or_harmless(good, tmp_path, data):
    img = XspImage.loads(good[0])
    paths = _paths(img.doc)
    path = data.draw(st_.sampled_from(paths))
    parent = img.doc
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    if type(old) is int and data.draw(st_.booleans()):
        new = old + data.draw(st_.integers(-70, 70))
    else:
        new = data.draw(JSONISH)
    parent[path[-1]] = new
    resign = data.draw(st_.booleans())
    p = _file(tmp_path, img.dumps(resign=resign), "h.xsp")
    out = _outcome(p, good)
    if not resign:
        assert out != "different"  # an unforged edit is never silent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st_.data())
def test_any_byte_edit_is_caught(good, tmp_path, data):
    b = bytearray(good[0])
    for _ in range(data.draw(st_.integers(1, 3))):
        i = data.draw(st_.integers(0, len(b) - 1))
        b[i] ^= data.draw(st_.integers(1, 255))
    if data.draw(st_.booleans()):
        cut = data.draw(st_.integers(0, len(b)))
        b = b[:cut] + bytes(data.draw(st_.binary(max_size=4)))
    p = _file(tmp_path, bytes(b), "b.xsp")
    assert _outcome(p, good) in ("error", "same")


@settings(max_examples=25, deadline=None)
@given(rows=st_.integers(1, 40), cols=st_.integers(1, 90), sparsity=st_.floats(0.0, 0.95), q=st_.integers(1, 4),
       quantizer=st_.sampled_from(["bcq", "uniform"]), sym=st_.booleans(),
       codec=st_.sampled_from(["bitmask", "entropy"]),
       ns=st_.sampled_from([None, 0]), seed=st_.integers(0, 1000))
def test_every_file_the_writer_makes_passes_the_validator(tmp_path_factory, rows, cols, sparsity, q, quantizer, sym,
                                                          codec, ns, seed):
    cfg = CompressConfig(sparsity, q, quantizer, symmetric=sym or quantizer == "bcq", mask_codec=codec, max_n_s=ns)
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    ct = compress_tensor(w, cfg)
    p = tmp_path_factory.mktemp("w") / "w.xsp"
    write_xsp(p, {"w": ct}, {}, cfg)
    with XspFile(p) as f:
        assert f.dense("w").tobytes() == decompress_tensor(ct).tobytes()


def test_version1_file_through_the_cli(tmp_path, capsys):
    from xorsparse.cli import main

    p = V1
    assert main(["inspect", p]) == 0
    assert "xorsparse format v1" in capsys.readouterr().out
    assert main(["verify", p]) == 0
    out = tmp_path / "d.safetensors"
    assert main(["decompress", p, str(out)]) == 0
    from safetensors.numpy import load_file

    got = load_file(str(out))
    want = np.load(V1_EXPECTED)
    assert list(got) == ["a.weight", "a.bias", "b.weight"]
    assert got["b.weight"].tobytes() == want["b.weight"].tobytes()
