import json
import os

from benchmarks.__main__ import main


def test_codec_benchmark_small(tmp_path, capsys):
    out = tmp_path / "codec.json"
    assert main(["codec", "--positions", "100000", "--sparsity", "0.9", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["method"] for r in rows} == {"auto", "elimination", "exhaustive"}
    for r in rows:
        assert {"sparsity", "n_s", "n_in", "n_out", "method", "value_bits_per_weight", "efficiency",
                "patch_fraction", "encode_mbit_s", "decode_mbit_s", "lossless"} <= set(r)
        assert r["lossless"]
    assert "bound" in capsys.readouterr().out


def test_formats_benchmark_small(tmp_path):
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    assert main(["formats", "--sets", "alexnet-fc", "--scale", "0.05", "--bits", "1", "--repeat", "1",
                 "--json", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())
    fmts = {r["format"] for r in rows}
    assert {"xorsparse", "xorsparse paper (n_s=0)", "csr-int32", "bitmask+int8", "deep-compression",
            "zstd-19", "lzma", "bound", "paper (quoted)"} <= fmts
    for r in rows:
        assert {"config", "format", "value_bits_per_weight", "total_bits_per_weight",
                "decode_ratio_to_floor", "lossless"} <= set(r)
        if r["format"] not in ("bound", "bound (code entropy)", "paper (quoted)"):
            assert r["lossless"] is True and r["decode_ratio_to_floor"] > 0
    assert os.path.getsize(png) > 1000


def test_tensor_benchmark_small(tmp_path):
    out = tmp_path / "t.json"
    assert main(["tensor", "--shape", "64", "300", "--window", "128", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["lossless"] and row["total_bits_per_weight"] > row["total_target"]


def test_speed_benchmark_small(tmp_path):
    out, md = tmp_path / "s.json", tmp_path / "s.md"
    assert main(["speed", "--parts", "decode", "compress", "--scale", "0.05", "--rounds", "1", "--no-minilm",
                 "--json", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    rows = data["median"]
    assert {r["part"] for r in rows} == {"decode", "compress"}
    assert all(r["lossless"] for r in rows if "lossless" in r)
    assert all(r["ratio"] > 0 for r in rows if "ratio" in r)
    assert "| part |" in md.read_text()


def test_rd_benchmark_small(tmp_path):
    out, png, md = tmp_path / "rd.json", tmp_path / "rd.png", tmp_path / "rd.md"
    assert main(["rd", "--sets", "alexnet-fc", "--scale", "0.03", "--bits", "1", "2", "--quantizers", "bcq",
                 "codebook", "--repeat", "1", "--json", str(out), "--plot", str(png), "--markdown", str(md)]) == 0
    res = json.loads(out.read_text())
    fmts = {r["format"] for r in res["points"]}
    assert {"xorsparse", "csr-int32", "bitmask+int8", "deep-compression", "zstd-19", "lzma", "zipnn"} <= fmts
    assert all(r["lossless"] and 0 < r["rel_error"] < 1 for r in res["points"])
    assert res["equal_error"] and all("lowest_fixed_rate" in r for r in res["equal_error"])
    assert os.path.getsize(png) > 1000 and "At equal error" in md.read_text()
    # parts run as separate processes join into the same tables
    parts = []
    for quantizer in ("bcq", "codebook"):
        part = tmp_path / f"part-{quantizer}.json"
        part.write_text(json.dumps({"points": [r for r in res["points"] if r["quantizer"] == quantizer]}))
        parts.append(str(part))
    joined = tmp_path / "joined.json"
    assert main(["rd", "--merge", *parts, "--json", str(joined)]) == 0
    assert json.loads(joined.read_text())["equal_error"] == res["equal_error"]
    try:
        main(["rd", "--merge", parts[0], parts[0]])
    except SystemExit as e:
        assert "also in" in str(e)
    else:
        raise AssertionError("a point measured twice was accepted")


def test_masks_and_mobilenet_benchmarks_small(tmp_path):
    out = tmp_path / "m.json"
    assert main(["masks", "--sets", "alexnet-fc", "--scale", "0.05", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["ctx"] < 1.01 * row["H(S)"] + 0.01 and row["ctx_Mpos_s"] > 0
    out = tmp_path / "mb.json"
    assert main(["mobilenet", "--width", "0.25", "--configs", "v1", "codebook", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert all(r["lossless"] for r in res["configs"])
    assert res["configs"][-1]["total_bits_per_weight"] < res["configs"][0]["total_bits_per_weight"]


def test_rtl_benchmark_small(tmp_path):
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    assert main(["rtl", "--positions", "50000", "--sparsity", "0.9", "--no-yosys", "--json", str(out),
                 "--markdown", str(md)]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["auto", "paper"]
    for r in rows:
        assert r["xor2_shared"] < r["xor2_unshared"] and r["xor2_per_output_bit"] > 0
        assert r["decoded_gbit_s"] == r["n_out"] * 0.5
    assert rows[1]["n_s"] == 0
    assert "XOR2 per out bit" in md.read_text()
def test_quality_benchmark_tiny(tmp_path, tiny_st_dir):
    out, png, md = tmp_path / "q.json", tmp_path / "q.png", tmp_path / "q.md"
    assert main(["quality", "--model", tiny_st_dir, "--points", "0.5:2", "--methods", "magnitude", "sparsegpt",
                 "--recover", "2", "--samples", "32", "--dense-bits", "3", "--target-bits", "2.0", "--json", str(out),
                 "--plot", str(png), "--markdown", str(md)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["recover_steps"]) for r in rows] == [("magnitude", 0), ("magnitude", 2),
                                                                 ("sparsegpt", 0), ("sparsegpt", 2)] * 1 + \
        [("sparsegpt", 0), ("sparsegpt", 2)] * 2
    for r in rows:
        assert r["exact"] and r["reloaded_matches"]
        assert {"total_bits_per_weight", "mean_cosine", "nn_agreement", "ood_cosine", "calibration_s",
                "calibration_cpu_s"} <= set(r)
    dense = [r for r in rows if r["kind"] == "dense"]
    assert dense[0]["point"] == "dense int3" and dense[0]["sparsity"] == 0.0
    assert 3.0 <= dense[0]["total_bits_per_weight"] < 3.0 + 16 / 32 + 0.05  # no mask; codes + per-row scales
    budget = [r for r in rows if r["kind"] == "target"]
    assert budget[0]["target_bits"] == 2.0 and budget[0]["allocation"]
    assert os.path.getsize(png) > 1000 and "| sparsegpt |" in md.read_text()


def test_rd_frontier_ignores_negligible_savings():
    from benchmarks.rd import frontier

    def pt(err, bits):
        return {"rel_error": err, "total_bits_per_weight": bits}

    pts = [pt(0.77, 0.5313025), pt(0.95, 0.5313008), pt(0.76, 0.8), pt(0.80, 0.4), pt(0.79, 0.9)]
    assert [(p["rel_error"], p["total_bits_per_weight"]) for p in frontier(pts)] == \
        [(0.76, 0.8), (0.77, 0.5313025), (0.80, 0.4)]


def test_gpu_benchmark_without_cuda_says_so_in_one_line(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the bench would run for real")
    assert main(["gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "--interpret" in err


def test_gpu_benchmark_interpret_smoke(tmp_path):
    """The whole bench on tiny shapes through Triton's interpreter, in a fresh process
    (TRITON_INTERPRET must be set before triton is imported)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    pytest.importorskip("xorsparse.gpu")
    out, md = tmp_path / "g.json", tmp_path / "g.md"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    res = subprocess.run([sys.executable, "-m", "benchmarks", "gpu", "--interpret", "--configs", "90%/2",
                          "--json", str(out), "--markdown", str(md)], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["interpret"] and "interpreter" in data["device"]
    assert [r["shape"] for r in data["rows"]] == ["64x64", "160x64", "64x160"]
    for r in data["rows"]:
        assert r["bit_exact"] and r["resident_bits_per_weight"] > 0 and r["rel_err_b1"] < 1e-2
        assert {"decode_ms", "copy_ms", "dense_ms_b1", "xor_ms_b24", "ratio_b24", "decode_gweights_s"} <= set(r)
    e2e = data["e2e"]
    assert "skipped" in e2e or (e2e["tokens"] == 4 and e2e["xor_tokens_s"] > 0)
    assert "XorLinear against dense" in md.read_text()
