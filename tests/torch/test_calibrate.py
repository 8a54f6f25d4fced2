import copy

import numpy as np
import pytest
import torch
from torch import nn

from xorsparse.torch import ModelConfig, compress_model, load_compressed
from xorsparse.torch.calibrate import CalibrationData, CalibrationError, calibrate_model, find_blocks
from xorsparse.torch.recover import recover

VOCAB = 120


def tiny_bert(layers=2, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertModel(cfg, add_pooling_layer=False).eval()


def batches(n=6, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, VOCAB, (batch, 20), generator=g)
        lengths = torch.randint(6, 21, (batch,), generator=g)
        mask = (torch.arange(20)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return CalibrationData(out)


@torch.no_grad()
def out_error(a, b, data):
    num = den = 0.0
    for bt in data.batches:
        ya, yb = a(**bt).last_hidden_state, b(**bt).last_hidden_state
        m = bt["attention_mask"].bool()
        num += float(((ya - yb)[m] ** 2).sum())
        den += float((ya[m] ** 2).sum())
    return num / den


def test_finds_the_block_list():
    name, blocks = find_blocks(tiny_bert(3))
    assert name == "encoder.layer" and len(blocks) == 3
    assert find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))) is None


def test_sequential_calibration_beats_magnitude_and_round_trips(tmp_path):
    model = tiny_bert()
    data, held = batches(), batches(seed=9)
    cfg = ModelConfig(sparsity=0.6, bits=3, method="sparsegpt", module_types=("Linear",))
    cm = compress_model(model, cfg, calibration=data)
    assert cm.calibration["sequential"] and cm.calibration["blocks"] == "encoder.layer"
    assert cm.calibration["calibrated_tensors"] == len(cm.tensors) == 12
    for name, p in cm.prepared.items():  # exact per-row sparsity
        assert np.all(p.keep.sum(1) == p.keep.shape[1] - round(0.6 * p.keep.shape[1])), name
    ref = cm.apply_(copy.deepcopy(model))
    path = str(tmp_path / "m.xsp")
    cm.save(path)
    for mode in ("decode", "ondemand"):
        loaded = load_compressed(copy.deepcopy(model), path, mode=mode)
        for bt in held.batches:
            with torch.no_grad():
                assert torch.equal(loaded(**bt).last_hidden_state, ref(**bt).last_hidden_state)
    mag = compress_model(model, ModelConfig(sparsity=0.6, bits=3, module_types=("Linear",)))
    assert mag.config.method == "magnitude"
    assert out_error(model, ref, held) < 0.7 * out_error(model, mag.apply_(copy.deepcopy(model)), held)
    # the model itself is left as it was
    fresh = tiny_bert()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def query_inputs(model, data):
    """X^T X of layer 1's query inputs (real tokens only) when `model` runs on `data`."""
    xtx = torch.zeros(32, 32, dtype=torch.float64)
    mask = {}

    def hook(mod, args, out):
        x = args[0][mask["m"]].double()
        xtx.add_(x.T @ x)

    h = model.encoder.layer[1].attention.self.query.register_forward_hook(hook)
    for bt in data.batches:
        mask["m"] = bt["attention_mask"].bool()
        with torch.no_grad():
            model(**bt)
    h.remove()
    return xtx.numpy()


def test_each_layer_sees_the_outputs_of_the_compressed_layers_before_it(monkeypatch):
    """Layer 1 must be calibrated on inputs computed by the already-compressed layer 0."""
    import xorsparse.torch.calibrate as cal

    seen = {}
    real = cal.calibrated_prune_quantize

    def spy(w, xtx, config, **kw):
        seen[kw["name"]] = np.array(xtx)
        return real(w, xtx, config, **kw)

    monkeypatch.setattr(cal, "calibrated_prune_quantize", spy)
    model = tiny_bert()
    data = batches(n=3)
    cfg = ModelConfig(sparsity=0.5, bits=2, method="wanda", module_types=("Linear",))
    work = copy.deepcopy(model)
    mods = [(n, m) for n, m in work.named_modules() if isinstance(m, nn.Linear)]
    res = calibrate_model(work, cfg, data, mods)
    # recompute layer 1's query inputs on the compressed model (work now holds compressed weights)
    assert np.allclose(got := seen["encoder.layer.1.attention.self.query"], query_inputs(work, data), rtol=1e-5,
                       atol=1e-5 * np.abs(seen["encoder.layer.1.attention.self.query"]).max())
    # and not those of the original model
    assert not np.allclose(got, query_inputs(model, data), rtol=1e-3)
    # within a block, later groups see earlier groups compressed: the attention output's
    # inputs differ from those of the original layer too
    assert res.sequential


def test_model_without_blocks_is_calibrated_in_one_pass():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    cm = compress_model(model, ModelConfig(sparsity=0.5, bits=2, method="sparsegpt"), calibration=x)
    assert not cm.calibration["sequential"]
    assert any("non-sequential" in n for n in cm.calibration["notes"])


def test_forward_failure_names_the_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
            self.head = nn.Linear(5, 2)  # wrong input size: fails on any input

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    with pytest.raises(CalibrationError, match="module 'head'"):
        compress_model(Net(), ModelConfig(sparsity=0.5, bits=2, method="wanda"), calibration=torch.randn(16, 8))


def test_method_rules():
    model = nn.Sequential(nn.Linear(8, 8))
    assert compress_model(model, ModelConfig(sparsity=0.5, bits=2)).config.method == "magnitude"
    assert compress_model(model, ModelConfig(sparsity=0.5, bits=2), calibration=torch.randn(32, 8)).config.method \
        == "sparsegpt"
    with pytest.raises(ValueError, match="needs calibration data"):
        compress_model(model, ModelConfig(sparsity=0.5, bits=2, method="wanda"))
    with pytest.raises(ValueError, match="uses no calibration data"):
        compress_model(model, ModelConfig(sparsity=0.5, bits=2, method="magnitude"), calibration=torch.randn(32, 8))


def test_recovery_keeps_masks_lowers_the_error_and_stays_exact(tmp_path):
    model = tiny_bert(layers=1)
    data, held = batches(n=4), batches(n=2, seed=9)
    cfg = ModelConfig(sparsity=0.7, bits=2, method="wanda", module_types=("Linear",))
    cm = compress_model(model, cfg, calibration=data)
    student = cm.apply_(copy.deepcopy(model))
    before = out_error(model, student, data)
    cm2 = recover(student, model, data, steps=30, lr=1e-3, scale_lr=1e-4, progress=lambda *a: None)
    assert out_error(model, student, data) < before
    for name, p in cm2.prepared.items():
        assert np.array_equal(p.keep, cm.prepared[name].keep)
    path = str(tmp_path / "r.xsp")
    cm2.save(path)
    loaded = load_compressed(copy.deepcopy(model), path)
    for bt in held.batches:
        with torch.no_grad():
            assert torch.equal(loaded(**bt).last_hidden_state, student(**bt).last_hidden_state)
    with pytest.raises(ValueError, match="no xorsparse-compressed weights"):
        recover(copy.deepcopy(model), model, data, steps=1)


def test_target_bits_allocates_per_layer_within_the_budget(tmp_path):
    from xorsparse.format.container import XspFile

    model = tiny_bert()
    data, held = batches(), batches(seed=9)
    cm = compress_model(model, ModelConfig(method="sparsegpt", module_types=("Linear",), target_bits=2.5),
                        calibration=data)
    alloc = cm.allocation
    assert alloc["target_bits"] == 2.5 and set(alloc["layers"]) == set(cm.tensors)
    assert cm.bits_per_weight()[1] <= 2.5 * 1.03  # the size model's estimate, within 3% of the real size
    for key, (s, q) in alloc["layers"].items():
        assert cm.prepared[key.rsplit(".weight", 1)[0]].quant.bits == q
    path = str(tmp_path / "b.xsp")
    cm.save(path)
    with XspFile(path) as f:
        assert f.records["allocation"] == alloc
    loaded = load_compressed(copy.deepcopy(model), path)
    ref = cm.apply_(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(loaded(**held.batches[0]).last_hidden_state, ref(**held.batches[0]).last_hidden_state)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 17, True, "2"])
def test_target_bits_hostile_values(bad):
    with pytest.raises(ValueError, match="target bits must be a number in"):
        ModelConfig(target_bits=bad)


def test_target_bits_needs_calibration():
    with pytest.raises(ValueError, match="target_bits chooses sparsity and bits from calibration"):
        compress_model(tiny_bert(), ModelConfig(module_types=("Linear",), target_bits=2.0))


def test_allocation_records_are_checked():
    from xorsparse.format.records import RecordError, check_allocation

    good = {"target_bits": 2.0, "estimated_bits": 1.9, "proxy_error": 0.1, "layers": {"a.weight": [0.5, 3]}}
    check_allocation(good)
    for bad in ({**good, "layers": {"a.weight": [1.5, 3]}}, {**good, "layers": {"a.weight": [0.5, 99]}},
                {**good, "layers": {}}, {**good, "target_bits": -1}, {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "layers"}, {**good, "layers": {"a": "x"}}):
        with pytest.raises(RecordError):
            check_allocation(bad)


def test_recovery_resumes_from_its_state_to_the_same_result(tmp_path):
    from xorsparse.torch.recover import recover_prepared

    model = tiny_bert(layers=1)
    data = batches(n=3)
    cm = compress_model(model, ModelConfig(sparsity=0.6, bits=2, method="wanda", module_types=("Linear",)),
                        calibration=data)
    start = cm.apply_(copy.deepcopy(model))
    from xorsparse.torch.attach import PREPARED_ATTR

    prep = getattr(start, PREPARED_ATTR)[0]
    whole = recover_prepared(copy.deepcopy(start), model, data, 9, prepared=prep, progress=lambda *a: None)
    state = str(tmp_path / "r.state")
    lines = []

    def stop_at_4(i, n, text):
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recover_prepared(copy.deepcopy(start), model, data, 9, prepared=prep, progress=stop_at_4, state_path=state,
                         log=lines.append)
    assert any("step 4/9" in ln for ln in lines)
    resumed = recover_prepared(copy.deepcopy(start), model, data, 9, prepared=prep, progress=lambda *a: None,
                               state_path=state, log=lines.append, evaluate=lambda m: "held-out ok", eval_every=3)
    assert any("resuming at step 4/9" in ln for ln in lines)
    assert [ln for ln in lines if "held-out ok" in ln][0].startswith("recovery step 6/9")
    assert not (tmp_path / "r.state").exists()  # removed when the run completes
    for name in whole:
        assert np.array_equal(whole[name].quant.planes, resumed[name].quant.planes)
        assert np.array_equal(whole[name].quant.scales, resumed[name].quant.scales)
    # a state of another run (other steps) is refused, not silently used
    with pytest.raises(KeyboardInterrupt):
        recover_prepared(copy.deepcopy(start), model, data, 9, prepared=prep, progress=stop_at_4, state_path=state)
    with pytest.raises(ValueError, match="recovery state of another run"):
        recover_prepared(copy.deepcopy(start), model, data, 8, prepared=prep, progress=lambda *a: None,
                         state_path=state)
    (tmp_path / "r.state").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="unreadable recovery state"):
        recover_prepared(copy.deepcopy(start), model, data, 9, prepared=prep, progress=lambda *a: None,
                         state_path=state)


def test_layer_sensitivity_is_zero_for_an_unused_layer():
    from xorsparse.torch.budget import layer_sensitivities

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            self.unused(x)
            return self.used(x)

    torch.manual_seed(0)
    m = TwoHeads().eval()
    sens = layer_sensitivities(m, [("used", m.used), ("unused", m.unused)], torch.randn(32, 8))
    assert sens["unused"] == 0.0
    assert 0.5 < sens["used"] < 2.0  # relative output MSE of the output itself: about 1 per unit
