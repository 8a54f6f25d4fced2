"""The calibrated compress / verify / inspect commands on tiny model folders (random weights)."""

import json
import os
import shutil

import pytest
import torch

from xorsparse.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compressed_st(tiny_st_dir, tmp_path_factory):
    """The default compress of a sentence-transformers folder (calibrated, quality report)."""
    out = str(tmp_path_factory.mktemp("cli") / "st.xsp")
    assert main(["compress", tiny_st_dir, out, "--sparsity", "0.5", "--bits", "3",
                 "--calibration-samples", "48"]) == 0
    return out


def test_default_for_a_model_folder_is_calibrated_with_a_quality_report(compressed_st, tiny_st_dir, capsys):
    code, out, _ = run(capsys, "inspect", compressed_st, "--json")
    info = json.loads(out)
    assert code == 0 and info["version"] == 2
    assert info["config"]["method"] == "sparsegpt"
    cal = info["calibration"]
    assert cal["source"] == "builtin" and cal["samples"] == 48 and cal["sequential"]
    # every Linear weight is calibrated; the embedding tables (compressed by default) are pruned data-free
    assert cal["calibrated_tensors"] == len([t for t in info["tensors"] if "embeddings" not in t["name"]]) > 0
    assert any("embeddings" in t["name"] for t in info["tensors"])
    q = info["quality"]
    assert q["kind"] == "sentence-transformers" and -1 <= q["mean_cosine"] <= 1 and 0 <= q["nn_agreement"] <= 1
    from xorsparse.data.calibdata import builtin_set, builtin_texts

    assert q["held_out"]["source"] == "builtin" and q["held_out"]["domain"] == "in-domain"
    assert q["held_out"]["samples"] == len(builtin_set(48).held_out) > 256
    # the out-of-domain set: a source and register no calibration line comes from
    ood = q["out_of_domain"]
    assert ood["held_out"]["domain"] == "out-of-domain" and ood["held_out"]["file"] == "ood_jargon.txt"
    assert ood["held_out"]["samples"] == len(builtin_texts("out-of-domain")) and -1 <= ood["mean_cosine"] <= 1
    assert not set(builtin_texts("out-of-domain")) & set(builtin_texts("mix"))
    code, out, _ = run(capsys, "inspect", compressed_st)
    assert "quality: mean cosine to the original" in out and "method sparsegpt" in out
    assert "in-domain held-out samples; out-of-domain (ood_jargon.txt): mean cosine" in out
    code, out, _ = run(capsys, "verify", compressed_st)
    assert code == 0 and "--against MODEL_DIR recomputes it" in out


def test_verify_recomputes_the_calibration(compressed_st, tiny_st_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "verify", compressed_st, "--against", tiny_st_dir)
    assert code == 0 and "bit-identical to a recomputation of its sparsegpt calibration" in out
    other = str(tmp_path / "other")
    from .torch.tiny_models import tiny_bert

    tiny_bert(other, seed=5)
    code, out, _ = run(capsys, "verify", compressed_st, "--against", other)
    assert code == 1 and out.startswith("FAILED")


def test_json_summary_has_the_records(tiny_llama_dir, tmp_path, capsys):
    out = str(tmp_path / "l.xsp")
    code, text, _ = run(capsys, "compress", tiny_llama_dir, out, "--sparsity", "0.5", "--bits", "2", "--method",
                        "wanda", "--calibration-samples", "32", "--json")
    assert code == 0
    info = json.loads(text)
    assert info["calibration"]["method"] == "wanda" and info["calibration"]["model_kind"] == "causal-lm"
    q = info["quality"]
    assert q["kind"] == "causal-lm" and q["perplexity_ratio"] > 0
    assert {"tensors", "total", "file", "bytes"} <= set(info)


def test_bare_tensor_files_use_magnitude(st_file, tmp_path, capsys):
    out = str(tmp_path / "m.xsp")
    code, _, _ = run(capsys, "compress", st_file, out, "--sparsity", "0.5")
    assert code == 0
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert info["config"]["method"] == "magnitude" and "quality" not in info and "calibration" not in info
    for extra in (["--method", "sparsegpt"], ["--method", "wanda"], ["--recover", "5"],
                  ["--calibration", st_file]):
        code, text, err = run(capsys, "compress", st_file, str(tmp_path / "x.xsp"), *extra)
        assert code == 2 and text == "" and len(err.strip().splitlines()) == 1
        assert st_file in err and "needs a model to run" in err
    assert not os.path.exists(tmp_path / "x.xsp")


@pytest.mark.parametrize("content,msg", [
    (b"", "empty calibration file"),
    (b"   \n\n  \n", "empty calibration file"),
    (b"\x00\x01\x02binary\xff\xfe" * 50, "binary data"),
    (b"\xff\xfe not utf-8 \xc3\x28\n" * 50, "not UTF-8 text"),
    (b"one line\nand another\n", "too short for calibration: 2 non-empty lines"),
])
def test_bad_calibration_files_are_one_line_errors(tiny_st_dir, tmp_path, capsys, content, msg):
    cal = tmp_path / "cal.txt"
    cal.write_bytes(content)
    out = tmp_path / "o.xsp"
    code, text, err = run(capsys, "compress", tiny_st_dir, str(out), "--calibration", str(cal))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(cal) in err and msg in err
    assert not out.exists()


def test_bad_tensor_calibration_files(tiny_st_dir, tmp_path, capsys):
    few = tmp_path / "few.pt"
    torch.save(torch.randint(0, 10, (3, 8)), str(few))
    code, _, err = run(capsys, "compress", tiny_st_dir, str(tmp_path / "o.xsp"), "--calibration", str(few))
    assert code == 2 and "too short for calibration: 3 samples" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all" * 10)
    code, _, err = run(capsys, "compress", tiny_st_dir, str(tmp_path / "o.xsp"), "--calibration", str(junk))
    assert code == 2 and "not a readable tensor file" in err and len(err.strip().splitlines()) == 1


def test_forward_failure_names_the_module(tiny_llama_dir, tmp_path, capsys):
    ids = tmp_path / "ids.pt"
    torch.save(torch.full((32, 8), 10_000), str(ids))  # token ids beyond the vocabulary
    code, _, err = run(capsys, "compress", tiny_llama_dir, str(tmp_path / "o.xsp"), "--calibration", str(ids))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "forward pass failed" in err and "model.embed_tokens" in err


def test_user_text_calibration_holds_out_one_in_eight(tiny_st_dir, tmp_path, capsys):
    from xorsparse.data.calibdata import builtin_texts

    cal = tmp_path / "mine.txt"
    cal.write_text("\n".join(builtin_texts("calibration")[:80]) + "\n")
    out = str(tmp_path / "u.xsp")
    code, _, _ = run(capsys, "compress", tiny_st_dir, out, "--method", "wanda", "--calibration", str(cal),
                     "--bits", "2", "--json")
    assert code == 0
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert info["calibration"]["source"] == "file" and info["calibration"]["samples"] == 70
    assert info["quality"]["held_out"]["samples"] == 10
    moved = str(tmp_path / "moved.txt")
    shutil.move(str(cal), moved)
    code, _, err = run(capsys, "verify", out, "--against", tiny_st_dir)
    assert code == 2 and "--calibration" in err
    code, text, _ = run(capsys, "verify", out, "--against", tiny_st_dir, "--calibration", moved)
    assert code == 0 and text.startswith("OK")


def test_folder_output_carries_the_records_and_verifies(tiny_st_dir, tmp_path, capsys):
    """A model folder out (one .xsp shard): records in the shard, verify recomputes them."""
    out = str(tmp_path / "folder-out")
    code, _, _ = run(capsys, "compress", tiny_st_dir, out, "--sparsity", "0.5", "--bits", "2",
                     "--calibration-samples", "40")
    assert code == 0
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert info["calibration"]["method"] == "sparsegpt" and info["quality"]["kind"] == "sentence-transformers"
    code, text, _ = run(capsys, "verify", out, "--against", tiny_st_dir)
    assert code == 0 and "recomputation of its sparsegpt calibration" in text


def test_a_config_the_checkpoint_does_not_match_falls_back_to_magnitude(tmp_path, capsys):
    """config.json naming a model the weights do not belong to: nothing is instantiated (a bare
    {"model_type": "llama"} would be a 7B default model); the default method falls back."""
    from tests.jobs.test_job import make_folder

    src = make_folder(tmp_path / "model", shards=1)
    code, text, err = run(capsys, "compress", src, str(tmp_path / "o.xsp"), "--sparsity", "0.5")
    assert code == 0 and "does not hold the weights of the model config.json describes" in text
    info = json.loads(run(capsys, "inspect", str(tmp_path / "o.xsp"), "--json")[1])
    assert info["config"]["method"] == "magnitude" and "quality" not in info
    code, _, err = run(capsys, "compress", src, str(tmp_path / "x.xsp"), "--method", "wanda")
    assert code == 2 and "does not hold the weights" in err and len(err.strip().splitlines()) == 1


def test_quantizers_calibration_cannot_refit(tiny_st_dir, tmp_path, capsys):
    """codebook / shared or log8 scales: the default falls back to magnitude (still measured);
    asking for a calibrated method with them is a one-line error before the model runs."""
    out = str(tmp_path / "cb.xsp")
    code, text, _ = run(capsys, "compress", tiny_st_dir, out, "--quantizer", "codebook", "--bits", "2")
    assert code == 0 and "is not calibrated: --method magnitude" in text
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert info["config"]["method"] == "magnitude" and info["quality"]["kind"] == "sentence-transformers"
    for extra in (["--quantizer", "codebook"], ["--scale-format", "log8"], ["--scale-rows", "4"]):
        code, _, err = run(capsys, "compress", tiny_st_dir, str(tmp_path / "x.xsp"), "--method", "sparsegpt", *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "calibrated methods" in err


def test_eval_file_is_scored_beside_the_builtin_sets(tiny_st_dir, tmp_path, capsys):
    ev = tmp_path / "mine.txt"
    ev.write_text("\n".join(f"My own sentence number {i} talks about gardens and rivers." for i in range(12)) + "\n")
    out = str(tmp_path / "e.xsp")
    code, text, _ = run(capsys, "compress", tiny_st_dir, out, "--sparsity", "0.5", "--bits", "2",
                        "--calibration-samples", "40", "--eval", str(ev))
    assert code == 0 and "--eval (mine.txt): mean cosine" in text
    code, text, _ = run(capsys, "inspect", out, "--json")
    q = json.loads(text)["quality"]["eval"]
    assert q["held_out"]["domain"] == "user" and q["held_out"]["samples"] == 12 and -1 <= q["mean_cosine"] <= 1


@pytest.mark.parametrize("content,msg", [
    (b"", "empty evaluation file"),
    (b"\x00\x01binary\n" * 20, "binary data"),
    (b"\xff\xfe not utf-8\n" * 20, "not UTF-8"),
    (b"one line only is not enough\n", "too short to evaluate"),
    (b"a\nb\nc\nd\ne\nf\ng\nh\ni\n", "too short to evaluate"),
])
def test_bad_eval_files_are_one_line_errors(tiny_st_dir, tmp_path, capsys, content, msg):
    ev = tmp_path / "ev.txt"
    ev.write_bytes(content)
    code, out, err = run(capsys, "compress", tiny_st_dir, str(tmp_path / "x.xsp"), "--eval", str(ev))
    assert code != 0 and msg in err and len(err.strip().splitlines()) == 1 and str(ev) in err
    assert not os.path.exists(tmp_path / "x.xsp")


def test_eval_needs_a_model(st_file, tmp_path, capsys):
    ev = tmp_path / "ev.txt"
    ev.write_text("a sentence long enough to be text\n" * 10)
    code, out, err = run(capsys, "compress", st_file, str(tmp_path / "x.xsp"), "--eval", str(ev))
    assert code != 0 and "--eval needs a model to run" in err


def test_target_bits_chooses_sparsity_and_bits_per_layer(tiny_st_dir, tmp_path, capsys):
    out = str(tmp_path / "b.xsp")
    code, text, _ = run(capsys, "compress", tiny_st_dir, out, "--target-bits", "2.0", "--no-embeddings",
                        "--calibration-samples", "40")
    assert code == 0 and "bit budget 2 bits per weight: estimated" in text and "sparsity " in text
    code, text, _ = run(capsys, "inspect", out, "--json")
    info = json.loads(text)
    alloc = info["allocation"]
    assert alloc["target_bits"] == 2.0 and set(alloc["layers"]) == {t["name"] for t in info["tensors"]}
    assert alloc["estimated_bits"] <= 2.0 + 1e-9
    bits = {t["name"]: t for t in info["tensors"]}
    for name, (s, q) in alloc["layers"].items():  # every tensor holds the bits the allocation chose
        assert bits[name]["bits"] == q
    code, text, _ = run(capsys, "verify", out, "--against", tiny_st_dir)
    assert code == 0 and "bit-identical to a recomputation" in text


@pytest.mark.parametrize("value,msg", [("0", "target bits must be a number in (0, 16]"),
                                       ("-1", "target bits must be"), ("nan", "target bits must be"),
                                       ("17", "target bits must be"), ("0.01", "below the smallest size")])
def test_bad_target_bits_are_one_line_errors(tiny_st_dir, tmp_path, capsys, value, msg):
    code, out, err = run(capsys, "compress", tiny_st_dir, str(tmp_path / "x.xsp"), "--target-bits", value,
                         "--calibration-samples", "40")
    # progress lines of the budget's scoring may come first (stderr is not a terminal here);
    # the error itself is one line, the last, with no traceback
    lines = err.strip().splitlines()
    assert code != 0 and msg in lines[-1] and lines[-1].startswith("xorsparse: error:")
    assert not any(line.startswith(("Traceback", "  File ")) for line in lines)
    assert not os.path.exists(tmp_path / "x.xsp")


def test_target_bits_not_a_number(tiny_st_dir, tmp_path):
    with pytest.raises(SystemExit):  # argparse: usage, then the error
        main(["compress", tiny_st_dir, str(tmp_path / "x.xsp"), "--target-bits", "abc"])


def test_target_bits_needs_a_model(st_file, tmp_path, capsys):
    code, out, err = run(capsys, "compress", st_file, str(tmp_path / "x.xsp"), "--target-bits", "2")
    assert code != 0 and "--target-bits needs a model to run" in err


def test_recovery_prints_held_out_quality_and_leaves_no_state(tiny_st_dir, tmp_path, capsys):
    out = tmp_path / "r.xsp"
    code, text, err = run(capsys, "compress", tiny_st_dir, str(out), "--sparsity", "0.5", "--bits", "2",
                          "--calibration-samples", "32", "--recover", "4", "--recover-eval-every", "2")
    assert code == 0, err
    lines = [ln for ln in text.splitlines() if ln.startswith("recovery step")]
    assert [ln.split(":")[0] for ln in lines] == ["recovery step 2/4", "recovery step 4/4"]
    assert all("out-of-domain cosine" in ln for ln in lines)
    assert out.exists() and not (tmp_path / "r.xsp.recover-state").exists()
    stale = tmp_path / "s.state"
    stale.write_bytes(b"junk")
    code, text, err = run(capsys, "compress", tiny_st_dir, str(tmp_path / "s.xsp"), "--calibration-samples", "32",
                          "--recover", "4", "--recover-state", str(stale))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unreadable recovery state" in err
    assert not (tmp_path / "s.xsp").exists()


@pytest.mark.parametrize("bad", ["-1", "x", "1.5"])
def test_recover_eval_every_hostile_values(tiny_st_dir, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        run(capsys, "compress", tiny_st_dir, str(tmp_path / "o.xsp"), "--recover", "2", "--recover-eval-every", bad)
    assert e.value.code == 2
    assert "--recover-eval-every: expected a non-negative integer" in capsys.readouterr().err
    assert not (tmp_path / "o.xsp").exists()
