import json
import os

import pytest

from xorsparse.cli import main
from xorsparse.rtl.export import decoders_in_file


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_params(tmp_path, capsys):
    path = tmp_path / "dec.v"
    js = tmp_path / "cost.json"
    code, out, err = run(capsys, "export-rtl", "--n-in", "8", "--n-out", "79", "--ns", "15", "--seed", "0x5eed",
                         "-o", str(path), "--json", str(js))
    assert code == 0, err
    text = path.read_text()
    assert "module xsp_dec_i8_o79_s15_5eed" in text and "n_in = 8, n_out = 79, n_s = 15, seed = 24301" in text
    assert "parameter CHUNK_SLICES = 13248" in text  # the library's default chunk for n_out = 79
    (row,) = json.loads(js.read_text())
    assert row["xor2_shared"] < row["xor2_unshared"] and row["flip_flops"] == 120 + 79 + 1 + 14
    assert "xsp_dec_i8_o79_s15_5eed" in out and "XOR2/out bit" in out


def test_export_to_stdout_and_folder(tmp_path, capsys):
    code, out, _ = run(capsys, "export-rtl", "--n-in", "4", "--n-out", "9", "--sharing", "none", "-o", "-")
    assert code == 0 and out.startswith("// xsp_dec_i4_o9_s0_5eed") and "^(w & " in out
    d = tmp_path / "rtl"
    d.mkdir()
    code, out, _ = run(capsys, "export-rtl", "--n-in", "4", "--n-out", "9", "--ns", "2", "--chunk-slices", "0",
                       "-o", str(d))
    assert code == 0 and os.listdir(d) == ["xsp_dec_i4_o9_s2_5eed.v"]
    assert "parameter CHUNK_SLICES = 0" in (d / "xsp_dec_i4_o9_s2_5eed.v").read_text()


def test_export_from_xsp(st_file, tmp_path, capsys):
    xsp = str(tmp_path / "m.xsp")
    assert run(capsys, "compress", st_file, xsp, "--sparsity", "0.8", "--bits", "2")[0] == 0
    uses = decoders_in_file(xsp)
    assert uses and sum(len(u.planes) for u in uses) == 5 * 2  # five compressed tensors (embedding included), two planes each
    out = tmp_path / "rtl"
    code, text, err = run(capsys, "export-rtl", xsp, "-o", str(out))
    assert code == 0, err
    files = sorted(os.listdir(out))
    assert len(files) == len(uses)
    for u in uses:
        d = u.decoder
        v = (out / f"xsp_dec_i{d.n_in}_o{d.n_out}_s{d.n_s}_{d.seed:x}.v").read_text()
        assert f"parameter CHUNK_SLICES = {u.default_chunk_slices}" in v and "m.xsp" in v


def test_export_check_runs_the_simulator(tmp_path, capsys, simulator):
    code, out, err = run(capsys, "export-rtl", "--n-in", "3", "--n-out", "7", "--ns", "2", "-o",
                         str(tmp_path / "d.v"), "--check", "150", "--simulator", simulator)
    assert code == 0, err
    assert "check: " in out and "all equal" in out and "CHUNK_SLICES=64" in out
    code, out, err = run(capsys, "export-rtl", "--n-in", "3", "--n-out", "7", "--ns", "2", "-o",
                         str(tmp_path / "p.v"), "--check", "150", "--patch-bits", "32", "--simulator", simulator)
    assert code == 0 and "all equal" in out, err
    assert "input  wire [31:0] patch_pos" in (tmp_path / "p.v").read_text()


@pytest.mark.parametrize("args,msg", [
    (["--n-in", "65", "--n-out", "10"], "n_in must be in 1..64"),
    (["--n-in", "8", "--n-out", "10", "--ns", "40"], "must be <= 256"),
    (["--n-in", "8", "--n-out", "0"], "n_out must be in"),
    (["--n-in", "8", "--n-out", "10", "--seed", str(2**64)], "seed must be"),
    (["--n-in", "8", "--n-out", "10", "--chunk-slices", "100"], "multiple of 64"),
    (["--n-in", "8", "--n-out", "10", "--patch-bits", "4"], "patch_bits must be"),
    (["--n-out", "10"], "at least --n-in and --n-out"),
    (["missing.xsp"], "missing.xsp"),
    (["missing.xsp", "--n-in", "3", "--n-out", "5"], "not both"),
])
def test_export_errors_are_one_line(tmp_path, capsys, args, msg):
    code, out, err = run(capsys, "export-rtl", *args, "-o", str(tmp_path / "x.v"))
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.v").exists()


def test_export_rejects_a_non_xsp_file(st_file, tmp_path, capsys):
    code, _, err = run(capsys, "export-rtl", st_file, "-o", str(tmp_path / "o"))
    assert code == 2 and "not an xorsparse file" in err and err.count("\n") == 1


def test_check_without_a_simulator_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("xorsparse.rtl.sim.available_simulators", lambda: [])
    code, _, err = run(capsys, "export-rtl", "--n-in", "3", "--n-out", "7", "-o", str(tmp_path / "q.v"),
                       "--check", "10")
    assert code == 2 and "no Verilog simulator" in err and "apt-get install iverilog" in err
    assert err.count("\n") == 1 and not (tmp_path / "q.v").exists()
