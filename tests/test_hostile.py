"""Issue 11's findings, each from its minimal reproduction (the safe-output findings are in
tests/format/test_output.py, the validator's rules one by one in tests/format/test_validate.py)."""

import os
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from benchmarks.xspedit import XspImage
from xorsparse.cli import main
from xorsparse.format.container import RawTensor, XspError, XspFile, write_xsp
from xorsparse.tensor import CompressConfig, compress_tensor, decompress_tensor, reference_prune_quantize


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One entropy-coded bcq tensor with patches, one uniform tensor, one stored tensor."""
    rng = np.random.default_rng(5)
    c1 = CompressConfig(0.7, 2, max_n_s=0, mask_codec="entropy")
    c2 = CompressConfig(0.6, 3, "uniform")
    cts = {"e.weight": compress_tensor(rng.standard_normal((64, 96)).astype(np.float32), c1),
           "u.weight": compress_tensor(rng.standard_normal((16, 40)).astype(np.float32), c2)}
    p = tmp_path_factory.mktemp("base") / "base.xsp"
    write_xsp(p, cts, {"b": RawTensor.from_array(np.arange(8, dtype=np.float32))}, c1,
              {"order": ["e.weight", "u.weight", "b"]})
    return p.read_bytes()


def edited(tmp_path, base, fn, resign=True, name="x.xsp", **kw) -> str:
    img = XspImage.loads(base)
    fn(img)
    p = tmp_path / name
    p.write_bytes(img.dumps(resign=resign, **kw))
    return str(p)


def cli_error(capsys, path, commands=("inspect", "verify", "decompress")) -> list[str]:
    """Every command fails with exit 2 and one line naming the file."""
    msgs = []
    for c in commands:
        args = [c, path] + ([path + ".out.safetensors"] if c == "decompress" else [])
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 2, (c, out, err)
        assert err.count("\n") == 1 and path in err and "Traceback" not in err and "internal error" not in err
        assert not os.path.exists(path + ".out.safetensors")
        msgs.append(err)
    return msgs


def _set_part(img, part, dtype, values: bytes, name="e.weight"):
    e = img.entry(f"{name}.__xs__.{part}")
    e["dtype"] = dtype
    img.blobs[e["name"]] = values


# --- segmentation faults from mask_params / mask_offsets of any dtype -----------------------------


@pytest.mark.parametrize("part,dtype,value", [
    ("mask_params", "I32", struct.pack("<I", 0x80000000)),
    ("mask_params", "F32", struct.pack("<f", float("nan"))),
    ("mask_params", "U32", struct.pack("<I", 0x80000000)),
    ("mask_offsets", "I32", struct.pack("<i", -8)),
])
def test_golomb_tables_of_any_dtype_are_an_error_not_a_segfault(tmp_path, base, part, dtype, value):
    p = edited(tmp_path, base, lambda img: _set_part(img, part, dtype, value))
    for cmd in (["decompress", p, p + ".d.safetensors"], ["verify", p], ["inspect", p]):
        res = subprocess.run([sys.executable, "-m", "xorsparse.cli"] + cmd, capture_output=True, text=True)
        assert res.returncode == 2, (cmd, res.returncode, res.stderr)  # -11 was the segfault
        errors = [ln for ln in res.stderr.splitlines() if not ln.startswith(("decompress:", "verify:"))]
        assert len(errors) == 1 and f"tensor 'e.weight': {part}" in errors[0], res.stderr  # progress aside


# --- out-of-bounds read with "bits": 63 -----------------------------------------------------------


def test_uniform_bits_63_is_refused(tmp_path, base, capsys):
    def fn(img):
        t = img.doc["tensors"]["u.weight"]
        t["bits"] = 63
        t["planes"] = (t["planes"] * 63)[:63]  # enough planes that only the limit can stop it
        for i in range(3, 63):
            t["crc32"][f"plane{i}.stream"] = t["crc32"]["plane0.stream"]
            t["crc32"][f"plane{i}.patches"] = t["crc32"]["plane0.patches"]
    p = edited(tmp_path, base, fn)
    for err in cli_error(capsys, p):
        assert "tensor 'u.weight': bits: must be in 1..8, got 63" in err
    p = edited(tmp_path, base, lambda img: img.doc["tensors"]["u.weight"].update(bits=63), name="y.xsp")
    cli_error(capsys, p)


# --- memory bombs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,msg", [
    (lambda t: t.update(bits=24), "bits: must be in 1..8, got 24"),
    (lambda t: t["planes"][0].update(patches=10_000_000_000), r"planes\[0\].patches: must be in 0..640"),
])
def test_declared_sizes_are_checked_before_allocation(tmp_path, base, fn, msg):
    p = edited(tmp_path, base, lambda img: fn(img.doc["tensors"]["u.weight"]))
    tracemalloc.start()
    with pytest.raises(XspError, match=msg):
        with XspFile(p) as f:
            f.dense("u.weight")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 << 20


def test_patch_count_is_bounded_by_the_bits_that_back_it(tmp_path, base):
    t = XspImage.loads(base).doc["tensors"]["e.weight"]["planes"][0]
    assert t["patches"] > 0
    p = edited(tmp_path, base, lambda img: img.doc["tensors"]["e.weight"]["planes"][0].update(patches=6000))
    with pytest.raises(XspError, match=r"patch_nbits: \d+ bits cannot code 6000 patches"):
        XspFile(p)


# --- silent loss: changes no checksum saw ---------------------------------------------------------


@pytest.mark.parametrize("fn", [
    lambda img: img.doc.update(r1w=img.doc.pop("raw")),  # "raw" -> "r1w": a stored tensor dropped
    lambda img: img.entry("b").update(dtype="I32"),  # a stored tensor's dtype in the header
    lambda img: img.entry("e.weight.__xs__.mask_params").update(dtype="I32"),
    lambda img: img.doc["info"]["order"].remove("u.weight"),  # a name missing from info.order
])
def test_one_changed_description_byte_is_caught(tmp_path, base, capsys, fn):
    p = edited(tmp_path, base, fn, resign=False)
    for err in cli_error(capsys, p):
        assert "description checksum mismatch" in err


def test_raw_renamed_and_order_incomplete_are_errors_even_when_re_signed(tmp_path, base, capsys):
    p = edited(tmp_path, base, lambda img: img.doc.update(r1w=img.doc.pop("raw")))
    assert "raw: missing" in cli_error(capsys, p)[0]
    p = edited(tmp_path, base, lambda img: img.doc["info"]["order"].remove("u.weight"))
    assert "info.order: does not name tensor 'u.weight'" in cli_error(capsys, p)[0]


def test_decompress_and_verify_cover_every_tensor(tmp_path, base, capsys):
    p = tmp_path / "ok.xsp"
    p.write_bytes(base)
    assert main(["verify", str(p)]) == 0
    assert "OK: 3 tensors (2 compressed)" in capsys.readouterr().out
    out = tmp_path / "d.safetensors"
    assert main(["decompress", str(p), str(out)]) == 0
    from safetensors.numpy import load_file

    assert list(load_file(str(out))) == ["e.weight", "u.weight", "b"]


# --- tracebacks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,kw,msg", [
    (lambda img: img.doc.update(tensors=[]), {}, "tensors: must be an object"),  # AttributeError before
    (lambda img: img.doc.update(info=3), {}, "info: must be an object"),
    (lambda img: img.doc["tensors"]["u.weight"].update(mask="x"), {}, "mask: must be an object"),
    (lambda img: img.doc["tensors"]["u.weight"].update(planes=[1, 2, 3]), {}, r"planes\[0\]: must be an object"),
    (lambda img: img.doc["tensors"]["u.weight"].update(order=None), {}, "order: must be an object"),
    (lambda img: img.doc["tensors"]["u.weight"].update(bits="@@"),
     {"doc_edits": [lambda t: t.replace('"@@"', "Infinity")]},
     "Infinity is not a JSON number"),  # OverflowError before
    (lambda img: img.doc["tensors"]["u.weight"]["planes"][0].update(n_out=2**64), {},
     r"planes\[0\].n_out: must be in 1..1024"),
    (lambda img: img.entry("e.weight.__xs__.mask").update(shape=[1, len(img.blobs["e.weight.__xs__.mask"])]), {},
     "mask: shape .* where the format has one dimension"),  # numba TypingError before
    (lambda img: img.doc.update(info="@@"), {"doc_edits": [lambda t: t.replace('"@@"', "[" * 50000 + "]" * 50000)]},
     "nested too deeply"),  # RecursionError before
    (lambda img: img.entry("e.weight.__xs__.mask_offsets").update(shape=[]), {},
     r"mask_offsets: shape \[\] where the description needs \[1\]"),  # IndexError before
])
def test_hostile_json_is_a_one_line_error(tmp_path, base, capsys, fn, kw, msg):
    import re

    p = edited(tmp_path, base, fn, **kw)
    for err in cli_error(capsys, p):
        assert re.search(msg, err), err


# --- spec limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,msg", [
    (lambda img: img.doc["tensors"]["e.weight"]["planes"][0].update(rice_k=-64), r"rice_k: must be in 0..40"),
    (lambda img: img.doc["tensors"]["u.weight"].update(shape=[640], rows=256, cols=2.5), "cols: must be an integer"),
    (lambda img: img.doc["tensors"]["u.weight"].update(shape=[640], rows=256),
     r"rows x cols = 256 x 40 does not match shape \[640\] \(expected 1 x 640\)"),
    (lambda img: img.doc["tensors"]["e.weight"]["planes"][0].update(patches=0.5), r"patches: must be an integer"),
    (lambda img: img.doc.update(version=True), "unsupported format version true"),
])
def test_spec_limits_are_enforced(tmp_path, base, capsys, fn, msg):
    import re

    p = edited(tmp_path, base, fn)
    for err in cli_error(capsys, p):
        assert re.search(msg, err), err


def test_trailing_bytes_are_refused(tmp_path, base, capsys):
    p = tmp_path / "t.xsp"
    p.write_bytes(base + b"\0")
    assert "1 bytes after the last tensor's data" in cli_error(capsys, str(p))[0]


# --- the pickle refusal ---------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def test_malicious_pickle_is_refused_in_one_safe_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2, 2), "x": _Evil()}, str(p))
    code = main(["compress", str(p), str(tmp_path / "o.xsp")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "may be unsafe" in err and "posix.system" in err
    assert "weights_only" not in err and "False" not in err
    assert not (tmp_path / "pwned.txt").exists()


# --- float16 weights near 65504 -------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CompressConfig(0.0, 3, "uniform", symmetric=False), CompressConfig(0.0, 3, "uniform"),
                                 CompressConfig(0.0, 4, "bcq"), CompressConfig(0.5, 2, "uniform", symmetric=False,
                                                                               group_size=16),
                                 # version-2 layouts: codebooks, shared scale rows, log8 scales
                                 CompressConfig(0.0, 3, "codebook"), CompressConfig(0.5, 2, "codebook", scale_rows=4,
                                                                                     codebook_rows=8),
                                 CompressConfig(0.0, 3, "uniform", symmetric=False, scale_format="log8"),
                                 CompressConfig(0.0, 3, "uniform", symmetric=False, scale_rows=4),
                                 CompressConfig(0.0, 4, "bcq", scale_rows=8)])
def test_finite_float16_weights_never_decode_to_inf(tmp_path, cfg):
    from . import reference

    rng = np.random.default_rng(0)
    w = (rng.uniform(-1, 1, (64, 128)) * 65504).astype(np.float16)
    w[0, :4] = [65504, -65504, 65500, 65472]
    ref = reference_prune_quantize(w, cfg)
    assert np.isfinite(ref).all()
    ct = compress_tensor(w, cfg)
    assert decompress_tensor(ct).tobytes() == ref.tobytes()
    p = tmp_path / "h.xsp"
    write_xsp(p, {"w": ct}, {}, cfg)
    spec = np.array(reference.decode_tensor(str(p), "w"), dtype=np.float32).astype(np.float16)
    assert spec.tobytes() == ref.ravel().tobytes()


@pytest.mark.parametrize("cfg", [CompressConfig(0.0, 2, "codebook"), CompressConfig(0.0, 3, "uniform", symmetric=False),
                                 CompressConfig(0.0, 2, "bcq", scale_format="log8")])
def test_float32_weights_near_the_limit_never_decode_to_inf(cfg):
    rng = np.random.default_rng(1)
    w = (rng.uniform(-1, 1, (16, 64)) * 3.4e38).astype(np.float32)
    w[0, :3] = [3.4028235e38, -3.4028235e38, 3.4e38]
    d = decompress_tensor(compress_tensor(w, cfg))
    assert np.isfinite(d).all() and d.tobytes() == reference_prune_quantize(w, cfg).tobytes()


def test_nonfinite_kept_weights_are_refused():
    w = np.ones((4, 8), np.float32)
    w[1, 2] = np.nan
    with pytest.raises(ValueError, match="contains NaN or infinite values"):
        compress_tensor(w, CompressConfig(0.0, 2))
    keep = np.ones(w.shape, bool)
    with pytest.raises(ValueError, match="1 kept weights are NaN, infinite"):
        compress_tensor(w, CompressConfig(0.0, 2), keep=keep)
    keep[1, 2] = False  # pruned by the caller's mask: nothing to quantize, accepted
    assert np.isfinite(decompress_tensor(compress_tensor(w, CompressConfig(0.0, 2), keep=keep))).all()
