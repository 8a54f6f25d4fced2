"""compressed-tensors checkpoints through xorsparse and back, bit for bit.

Fixtures are built offline: a Llama-shaped model from a config with random weights, pruned
by magnitude, quantized and compressed by compressed-tensors' own code (benchmarks.ct).
"""

import json
import os

import pytest
import torch

pytest.importorskip("compressed_tensors")

from safetensors.torch import load_file  # noqa: E402

from benchmarks.ct import (
    TINY,
    ct_dequantized,
    llama,
    prune_,
    save_compressed_tensors,
    save_legacy_bitmask,  # noqa: E402
)
from xorsparse.checkpoint.folder import xsp_files  # noqa: E402
from xorsparse.checkpoint.xspset import XspSet  # noqa: E402
from xorsparse.cli import main  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = {  # strategy, format, symmetric, bits
    "int4-group-sym": ("group", "pack-quantized", True, 4),
    "int4-group-asym": ("group", "pack-quantized", False, 4),
    "int8-channel-asym": ("channel", "int-quantized", False, 8),
    "int8-tensor-sym": ("tensor", "int-quantized", True, 8),
}


def run(capsys, *args):
    capsys.readouterr()  # what building the fixture printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def all_tensors(folder):
    out = {}
    for f in xsp_files(folder):
        out.update(load_file(f))
    return out


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.fixture(scope="module", params=list(CONFIGS))
def ct_round_trip(request, tmp_path_factory):
    strategy, fmt, symmetric, bits = CONFIGS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    src, xsp, back = d / "ct", d / "xsp", d / "back"
    model = llama(TINY)
    prune_(model, 0.5)
    save_compressed_tensors(model, str(src), strategy, fmt, symmetric, bits, group_size=32,
                            max_shard_size="100KB" if request.param == "int4-group-asym" else None)
    assert main(["compress", str(src), str(xsp)]) == 0
    assert main(["decompress", str(xsp), str(back), "--format", "compressed-tensors"]) == 0
    return request.param, src, xsp, back


def test_every_weight_is_bit_identical(ct_round_trip):
    name, src, xsp, back = ct_round_trip
    ref = ct_dequantized(str(src))
    assert len(ref) == 14
    got = ct_dequantized(str(back))
    assert list(got) == list(ref) and all(same(got[k], ref[k]) for k in ref)
    with XspSet(str(xsp)) as xs:
        for k in ref:  # what xorsparse decodes is compressed-tensors' dequantization, bit for bit
            assert xs.compressed(k).quant.quantizer == "affine"
            assert same(xs.dense(k, "torch"), ref[k]), k
    a, b = all_tensors(str(src)), all_tensors(str(back))
    assert set(a) == set(b) and all(same(a[k], b[k]) for k in a)  # codes, scales, zero points: unchanged
    assert len(xsp_files(str(back))) == len(xsp_files(str(src))) == len(xsp_files(str(xsp)))
    cfg = json.load(open(back / "config.json"))["quantization_config"]
    assert cfg == json.load(open(src / "config.json"))["quantization_config"]


def test_xsp_weights_are_smaller(ct_round_trip):
    name, src, xsp, back = ct_round_trip
    from xorsparse.checkpoint.stats import entry_bytes

    ct_bytes = {}
    for f in xsp_files(str(src)):
        ct_bytes.update(entry_bytes(f))
    xsp_bytes = {}
    for f in xsp_files(str(xsp)):
        xsp_bytes.update(entry_bytes(f))
    quantized = [k for k in ct_dequantized(str(src))]
    ours = sum(xsp_bytes[k] for k in quantized)
    theirs = sum(v for k, v in ct_bytes.items() if k.rsplit(".", 1)[0] + ".weight" in quantized)
    assert ours < 0.85 * theirs, (name, ours, theirs)


def test_transformers_loads_the_xsp_folder(ct_round_trip):
    name, src, xsp, back = ct_round_trip
    from transformers import AutoModelForCausalLM

    import xorsparse  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(str(xsp))
    ref = ct_dequantized(str(src))
    params = dict(model.named_parameters())
    for k, v in ref.items():
        assert same(params[k].detach(), v.to(params[k].dtype)), k
    x = torch.randint(0, 256, (1, 6))
    assert torch.isfinite(model(x).logits.float()).all()


def test_legacy_sparse_bitmask_and_dense_zeros(tmp_path, capsys):
    model = llama(TINY, dtype="float32")
    prune_(model, 0.6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    src, xsp, back = tmp_path / "bm", tmp_path / "xsp", tmp_path / "back"
    save_legacy_bitmask(model, str(src))
    assert any(k.endswith(".bitmask") for k in load_file(str(src / "model.safetensors")))
    code, text, _ = run(capsys, "compress", src, xsp, "--bits", "3")
    assert code == 0 and "read 14 legacy sparse-bitmask tensors" in text
    assert "the checkpoint's own zeros only" in text
    with XspSet(str(xsp)) as xs:
        w = "model.layers.0.mlp.up_proj.weight"
        dense = xs.dense(w, "torch")
        assert torch.equal(dense != 0, state[w] != 0)  # the mask is the checkpoint's, exactly
        assert xs.compressed(w).quant.bits == 3
    code, _, _ = run(capsys, "decompress", xsp, back, "--format", "compressed-tensors")
    assert code == 0
    cfg = json.load(open(back / "config.json"))["quantization_config"]
    assert cfg["sparsity_config"]["format"] == "dense"
    with XspSet(str(xsp)) as xs:
        back_t = all_tensors(str(back))
        assert same(back_t[w], xs.dense(w, "torch"))


def test_corrupt_bitmask_is_a_one_line_error(tmp_path, capsys):
    from safetensors.torch import save_file

    model = llama(TINY, dtype="float32")
    prune_(model, 0.5)
    src = tmp_path / "bm"
    save_legacy_bitmask(model, str(src))
    t = load_file(str(src / "model.safetensors"))
    t["model.layers.1.self_attn.q_proj.row_offsets"][3] += 1
    save_file(t, str(src / "model.safetensors"))
    code, _, err = run(capsys, "compress", src, tmp_path / "x")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("xorsparse: error: ")
    assert "tensor 'model.layers.1.self_attn.q_proj.weight': field 'row_offsets'" in last
    assert not os.path.exists(tmp_path / "x")  # nothing half-written is left behind


def test_unsupported_scheme_is_refused(tmp_path, capsys):
    model = llama(TINY)
    prune_(model, 0.5)
    src = tmp_path / "ct"
    save_compressed_tensors(model, str(src), "channel", "int-quantized", True, 8)
    cfg = json.load(open(src / "config.json"))
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["type"] = "float"
    json.dump(cfg, open(src / "config.json", "w"))
    code, _, err = run(capsys, "compress", src, tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "float weight quantization has no integer codes" in err


def test_verify_against_the_compressed_tensors_original(ct_round_trip, capsys):
    name, src, xsp, back = ct_round_trip
    code, text, _ = run(capsys, "verify", xsp, "--against", src)
    assert code == 0 and "bit-identical" in text, text


def test_dense_checkpoint_with_zeros(tmp_path, capsys):
    """SparseGPT / Wanda output saved dense with a compressed-tensors sparsity config."""
    model = llama(TINY)
    prune_(model, 0.5)
    src, xsp, back = tmp_path / "dense", tmp_path / "xsp", tmp_path / "back"
    model.save_pretrained(str(src))
    cfg = json.load(open(src / "config.json"))
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "dense", "config_groups": {},
                                  "sparsity_config": {"format": "dense", "sparsity_structure": "unstructured",
                                                      "global_sparsity": 0.5, "targets": ["Linear"],
                                                      "ignore": ["lm_head"]}}
    json.dump(cfg, open(src / "config.json", "w"))
    code, text, _ = run(capsys, "compress", src, xsp, "--bits", "4", "--quantizer", "uniform")
    assert code == 0 and "own zeros only" in text
    state = load_file(str(src / "model.safetensors"))
    with XspSet(str(xsp)) as xs:
        for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
            ct = xs.compressed(k)
            assert ct.kept == int((state[k] != 0).sum())  # the mask is the checkpoint's zeros, no more
    assert run(capsys, "decompress", xsp, back, "--format", "compressed-tensors")[0] == 0
    out = all_tensors(str(back))
    with XspSet(str(xsp)) as xs:
        assert all(same(out[k], xs.dense(k, "torch")) for k in xs.names())
    assert json.load(open(back / "config.json"))["quantization_config"]["sparsity_config"]["format"] == "dense"


def test_int8_codes_in_the_legacy_bitmask_layout(tmp_path, capsys):
    """Sparsity with quantization, the legacy way: int-quantized codes stored as a bitmask."""
    import numpy as np
    from safetensors.torch import save_file

    model = llama(TINY)
    prune_(model, 0.6)
    src, xsp = tmp_path / "ct", tmp_path / "xsp"
    save_compressed_tensors(model, str(src), "channel", "int-quantized", True, 8)
    ref = ct_dequantized(str(src))
    t = load_file(str(src / "model.safetensors"))
    for name in [n for n in t if n.endswith(".weight") and n[: -len(".weight")] + ".weight_scale" in t]:
        codes, m = t.pop(name), name[: -len(".weight")]
        mask = codes != 0
        t[f"{m}.shape"] = torch.tensor(list(codes.shape))
        t[f"{m}.compressed"] = codes[mask].contiguous()
        t[f"{m}.bitmask"] = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
        t[f"{m}.row_offsets"] = torch.cumsum(mask.sum(1), 0) - mask.sum(1)
    save_file(t, str(src / "model.safetensors"))
    code, text, _ = run(capsys, "compress", src, xsp)
    assert code == 0 and "read 14 legacy sparse-bitmask tensors" in text and "14 compressed-tensors" in text
    with XspSet(str(xsp)) as xs:
        assert all(same(xs.dense(k, "torch"), v) for k, v in ref.items())
