"""A new user's first hour (issue 22): bad outputs refused before any work, the same bytes on
every rerun and executor, progress lines with right numbers, resume that resumes, a useful
default. Small models only (tests/torch/tiny_models.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from xorsparse.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_dir(tiny_st_dir, tmp_path):
    """A private copy of the tiny sentence-transformers folder (tests may write into it)."""
    return shutil.copytree(tiny_st_dir, str(tmp_path / "model"))


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if compress starts any model work (calibration, quality report)."""
    from xorsparse.torch import folder

    def refuse(*a, **k):
        raise AssertionError("the model was run before the output was checked")
    monkeypatch.setattr(folder, "prepare_folder", refuse)
    monkeypatch.setattr(folder, "load_folder_model", refuse)


# 1-2. outputs checked before any work


def test_a_file_output_inside_the_input_folder_is_refused(model_dir, capsys, no_calibration):
    before = sorted(os.listdir(model_dir))
    code, _out, err = run(capsys, "compress", model_dir, os.path.join(model_dir, "model.xsp"))
    assert code == 2 and "inside the input folder" in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert sorted(os.listdir(model_dir)) == before


@pytest.mark.parametrize("where", ["same", "inside", "inside-file"])
def test_folder_output_mistakes_are_refused_before_calibration(model_dir, capsys, no_calibration, where):
    out_path = {"same": model_dir, "inside": os.path.join(model_dir, "out"),
                "inside-file": os.path.join(model_dir, "1_Pooling", "x.xsp")}[where]
    code, _out, err = run(capsys, "compress", model_dir, out_path)
    assert code == 2 and "input folder" in err, err
    assert not os.path.exists(os.path.join(model_dir, "out"))


def test_existing_file_output_is_refused_before_calibration(model_dir, tmp_path, capsys, no_calibration):
    target = tmp_path / "model.xsp"
    target.write_bytes(b"mine")
    code, _out, err = run(capsys, "compress", model_dir, str(target))
    assert code == 2 and "already exists" in err
    assert target.read_bytes() == b"mine"


def test_a_file_where_a_folder_output_goes_is_refused_before_calibration(model_dir, tmp_path, capsys,
                                                                          no_calibration):
    target = tmp_path / "out"
    target.write_bytes(b"mine")
    code, _out, err = run(capsys, "compress", model_dir, str(target), "--force")
    assert code == 2 and "not a folder" in err


# 3. the same bytes on every run and executor


def folder_bytes(d: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = fh.read()
    return out


def test_a_calibrated_folder_compress_gives_the_same_bytes_every_run(model_dir, tmp_path, capsys):
    outs = []
    for i, workers in enumerate(["1", "2", "1"]):
        out = str(tmp_path / f"out{i}")
        code, text, err = run(capsys, "compress", model_dir, out, "--calibration-samples", "16",
                              "--workers", workers)
        assert code == 0, err
        assert "calibration" in text  # the stage timings are still reported, in the summary
        outs.append(folder_bytes(out))
    assert outs[0] == outs[1] == outs[2]
    from xorsparse.checkpoint.xspset import XspSet

    with XspSet(str(tmp_path / "out0")) as f:
        assert f.records["calibration"]["method"] == "sparsegpt"
        assert "seconds" not in f.records["calibration"]


def test_a_magnitude_folder_compress_gives_the_same_bytes_on_ray(model_dir, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'xorsparse[ray]'): Ray executor untested")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run(capsys, "compress", model_dir, a, "--method", "magnitude", "--workers", "1")[0] == 0
    assert run(capsys, "compress", model_dir, b, "--method", "magnitude", "--ray", "--workers", "2")[0] == 0
    assert folder_bytes(a) == folder_bytes(b)


def test_files_with_timings_in_their_calibration_record_still_read():
    from xorsparse.format.records import check_calibration

    check_calibration({"method": "sparsegpt", "seconds": {"calibration": 12.5, "total": 20.0, "cpu": 30.0}})


# 4. progress while calibrating, also when stderr is not a terminal


def test_calibration_progress_on_a_non_terminal(model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "compress", model_dir, str(tmp_path / "out"), "--calibration-samples", "16")
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("calibrate: ")]
    assert len(lines) >= 5, err  # a line every tenth of the modules
    assert lines[-1].endswith(" done") and "modules (100%)" in lines[-1]


# 5. progress lines with right numbers


@pytest.fixture(scope="module")
def magnitude_out(tiny_st_dir, tmp_path_factory):
    """The tiny model compressed with --method magnitude into a folder: (model, output)."""
    d = tmp_path_factory.mktemp("magnitude")
    model = shutil.copytree(tiny_st_dir, str(d / "model"))
    out = str(d / "out")
    assert main(["compress", model, out, "--method", "magnitude"]) == 0
    return model, out


def test_verify_and_decompress_count_the_weights_they_decode(magnitude_out, tmp_path):
    from xorsparse.checkpoint.verify import verify_checkpoint
    from xorsparse.jobs.checkpoint import decompress_checkpoint

    model, out = magnitude_out
    for label, call in [("verify", lambda ev: verify_checkpoint(out, model, on_event=ev)),
                        ("decompress", lambda ev: decompress_checkpoint(out, str(tmp_path / "plain"), on_event=ev))]:
        events: list[dict] = []
        call(events.append)
        plan = next(e for e in events if e["kind"] == "plan")
        decoded = sum(e["weights"] for e in events if e["kind"] == "tensor")
        assert plan["weights"] > 0 and decoded == plan["weights"], label


def test_progress_lines_show_a_rate_only_for_work_done():
    import io

    from xorsparse.jobs.executors import JobProgress

    s = io.StringIO()
    bar = JobProgress("compress", stream=s, tty=False)
    bar({"kind": "plan", "items": 1, "tensors": 3, "weights": 3000})
    bar({"kind": "item", "name": "model.safetensors", "reused": True, "tensors": 3, "weights": 3000})
    assert "M weights/s" not in s.getvalue() and "(1 reused)" in s.getvalue()
    s = io.StringIO()
    bar = JobProgress("verify", stream=s, tty=False)
    bar({"kind": "plan", "items": 1, "tensors": 1, "weights": 2_000_000})
    bar({"kind": "tensor", "name": "w", "weights": 2_000_000})
    bar({"kind": "item", "name": "model.safetensors", "tensors": 1})
    assert "2.00 M weights to decode and check" in s.getvalue()
    assert " 0.00 M weights/s" not in s.getvalue() and "M weights/s" in s.getvalue()


def test_a_resumed_compress_prints_no_zero_rate(magnitude_out, tmp_path, capsys):
    model, out = magnitude_out
    again = shutil.copytree(out, str(tmp_path / "again"))
    code, text, err = run(capsys, "compress", model, again, "--method", "magnitude")
    assert code == 0 and "resumed: kept 1 of 1" in text
    assert "0.00 M weights/s" not in err and "(1 reused)" in err


def test_verify_time_includes_the_recomputation(tiny_st_dir, tmp_path, capsys, monkeypatch):
    import time

    from xorsparse.torch import folder

    model = shutil.copytree(tiny_st_dir, str(tmp_path / "model"))
    out = str(tmp_path / "out")
    assert run(capsys, "compress", model, out, "--calibration-samples", "16")[0] == 0
    real = folder.recompute_references

    def slow(*a, **k):  # the recomputation takes at least 1.5 s: the times shown must include it
        time.sleep(1.5)
        return real(*a, **k)
    monkeypatch.setattr(folder, "recompute_references", slow)
    code, text, err = run(capsys, "verify", out, "--against", model)
    assert code == 0, err
    assert "verify: recomputing the sparsegpt calibration" in err
    shown = float(text.split(" in ")[-1].rstrip().rstrip("s"))
    assert shown >= 1.5
    last = [ln for ln in err.splitlines() if ln.startswith("verify: shards")][-1]
    assert int(last.split("s, left")[0].rsplit(" ", 1)[-1]) >= 1


# 7. a default that keeps the model useful, and a plain word when quality is low


def test_a_model_folder_default_is_half_pruned_at_four_bits(model_dir, tmp_path, capsys):
    from xorsparse.checkpoint.xspset import XspSet
    from xorsparse.defaults import MODEL_TARGET

    out = str(tmp_path / "out")
    code, text, err = run(capsys, "compress", model_dir, out, "--calibration-samples", "16")
    assert code == 0, err
    with XspSet(out) as f:
        assert (f.config.sparsity, f.config.bits) == MODEL_TARGET == (0.5, 4)
    assert "WARNING" not in text  # the tiny model keeps a mean cosine above the threshold at the default


def test_low_quality_is_said_plainly(magnitude_out, tmp_path, capsys, monkeypatch):
    from xorsparse import defaults

    model, _ = magnitude_out
    monkeypatch.setattr(defaults, "MIN_MEAN_COSINE", 1.01)  # every report is below it
    code, text, _ = run(capsys, "compress", model, str(tmp_path / "o"), "--method", "magnitude")
    assert code == 0
    warning = [ln for ln in text.splitlines() if ln.startswith("WARNING: low quality: mean cosine")]
    assert len(warning) == 1 and "--sparsity 0.5 --bits 4" in warning[0]


def test_quality_thresholds():
    from xorsparse.defaults import quality_warning

    assert quality_warning({"kind": "sentence-transformers", "mean_cosine": 0.28, "min_cosine": 0.1})
    assert quality_warning({"kind": "sentence-transformers", "mean_cosine": 0.93, "min_cosine": 0.8}) is None
    assert quality_warning({"kind": "causal-lm", "perplexity_ratio": 3.0})
    assert quality_warning({"kind": "causal-lm", "perplexity_ratio": 1.1}) is None
    assert quality_warning({"kind": "layer-error", "output_relative_error": 0.5})
    assert quality_warning(None) is None


# 8. messages that say what happened


def test_a_bare_file_compress_says_its_method(st_file, tmp_path, capsys):
    code, text, _ = run(capsys, "compress", st_file, str(tmp_path / "x.xsp"))
    assert code == 0
    assert "method magnitude (data-free: a bare tensor file has no model to run); sparsity 0.9, 2 bit-planes" in text


def test_a_magnitude_folder_compress_prints_no_calibration_notes(magnitude_out, tmp_path, capsys):
    model, _out = magnitude_out
    code, text, _ = run(capsys, "compress", model, str(tmp_path / "o"), "--method", "magnitude")
    assert code == 0
    assert not [ln for ln in text.splitlines() if ln.startswith("note:")], text
    assert "method magnitude;" in text and "calibration" not in text.split("method magnitude;")[1].splitlines()[0]


def test_decompress_of_a_plain_folder_blames_the_input(model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "decompress", model_dir, str(tmp_path / "out"))
    assert code == 2 and err.startswith(f"xorsparse: error: {model_dir}: not an xorsparse model folder")
    assert not os.path.exists(tmp_path / "out")


def test_make_test_installs_every_tool_its_tests_need():
    """`make test` runs the hdl target first; a tool the tests skip without must be in it, or
    every run of `make test` skips that test (the Verilator lint test did)."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "Makefile"), encoding="utf-8") as fh:
        make = fh.read()
    installed = set(re.search(r"^HDL_TEST := (.*)$", make, re.MULTILINE).group(1).split())
    assert re.search(r"^test: .*\bhdl\b", make, re.MULTILINE)
    needed = set()
    for dirpath, _, files in os.walk(os.path.join(root, "tests")):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    text = fh.read()
                needed |= set(re.findall(r"shutil\.which\(\"(iverilog|yosys|verilator)\"\)", text))
    assert needed and needed <= installed, needed - installed


# 6. a resume with nothing left to do runs no model


@pytest.mark.parametrize("method", ["sparsegpt", "magnitude"])
def test_a_finished_job_resumes_without_calibration_or_quality(model_dir, tmp_path, capsys, monkeypatch, method):
    out = str(tmp_path / "out")
    args = ["compress", model_dir, out, "--calibration-samples", "16", "--method", method]
    code, first, err = run(capsys, *args)
    assert code == 0, err
    before = folder_bytes(out)
    from xorsparse.torch import folder

    def refuse(*a, **k):
        raise AssertionError("the model ran again on a finished job")
    monkeypatch.setattr(folder, "prepare_folder", refuse)
    monkeypatch.setattr(folder, "load_folder_model", refuse)
    code, text, err = run(capsys, *args)
    assert code == 0, err
    assert "resume: every output shard of this job is done" in text and "resumed: kept 1 of 1" in text
    assert folder_bytes(out) == before
    assert [ln for ln in first.splitlines() if ln.startswith("quality: ")] == \
        [ln for ln in text.splitlines() if ln.startswith("quality: ")]  # the stored report, shown again


def test_another_jobs_folder_is_refused_before_calibration(model_dir, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    assert run(capsys, "compress", model_dir, out, "--calibration-samples", "16")[0] == 0
    from xorsparse.torch import folder

    calls = []
    real = folder.prepare_folder
    monkeypatch.setattr(folder, "prepare_folder", lambda *a, **k: calls.append(1) or real(*a, **k))
    for other in (["--calibration-samples", "32"], ["--calibration-samples", "16", "--bits", "3"]):
        code, _, err = run(capsys, "compress", model_dir, out, *other)
        assert code == 2 and "refusing to replace it (--force redoes it)" in err, err
        assert not calls  # refused before the model ran
    code, _text, err = run(capsys, "compress", model_dir, out, "--calibration-samples", "32", "--force")
    assert code == 0 and calls, err


def test_the_demo_checks_its_output_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from xorsparse import demo

    def refuse():
        raise AssertionError("the model was loaded before the output was checked")
    monkeypatch.setattr(demo, "_load", refuse)
    code, _, err = run(capsys, "demo", "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err
