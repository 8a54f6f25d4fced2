"""Recovery by distillation: a short fine-tuning of the compressed model against the original.

The original model is the teacher, the compressed one the student. Every compressed weight
keeps its mask; its forward pass is quantized (the nearest level of the row's scales, as the
decoder computes them) with a straight-through estimator, so the latent float weights and
the scales both learn. The loss matches the teacher's outputs on unlabeled inputs:

- sentence-transformers models: 1 - cosine of the sentence embeddings, plus the mean squared
  error of the token embeddings (relative to the teacher's), which gives every token a say;
- models with logits (causal LMs, classifiers): KL divergence of the output distributions;
- anything else: relative mean squared error of the first output tensor.

At the end the latent weights are rounded once more to the (stored-precision) scales, in
numpy, exactly as the codec will store them; the model holds those values afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..progress import Progress
from ..tensor.calibrated import requantize
from ..tensor.quant import Quantized
from ..tensor.variants import QUANTIZERS
from .attach import PREPARED_ATTR, attach_prepared
from .calibrate import Prepared, _first_tensor, as_calibration, find_blocks, run_model
from .compress import CompressedModel, encode_prepared
from .losses import distillation_loss, output_parts, token_mask

RECOVERABLE = tuple(name for name, q in QUANTIZERS.items() if q.refits_scales)
LR, SCALE_LR = 1e-3, 1e-4  # Adam step sizes of the latent weights and of the scales (warm-up, cosine decay)


def levels_torch(scales: torch.Tensor, q: int, quantizer: str, symmetric: bool) -> torch.Tensor:
    """tensor.dequant.levels_table in torch (the same float32 operations in the same order),
    differentiable in the scales: (rows, groups, 2^q) levels of every group."""
    if quantizer not in RECOVERABLE:
        raise ValueError(f"recovery supports the {' and '.join(RECOVERABLE)} quantizers, not {quantizer!r}")
    s = scales.to(torch.float32)
    dev = s.device
    codes = torch.arange(1 << q, device=dev)
    if quantizer == "bcq":
        out = torch.zeros(s.shape[0], s.shape[1], 1 << q, dtype=torch.float32, device=dev)
        for i in range(q):
            sign = (((codes >> i) & 1) * 2 - 1).to(torch.float32)
            out = out + s[:, :, i : i + 1] * sign
        return out
    c = codes.to(torch.float32)
    if symmetric:
        return s[:, :, 0:1] * (c - torch.tensor(((1 << q) - 1) / 2, dtype=torch.float32, device=dev))
    return s[:, :, 1:2] + s[:, :, 0:1] * c


class _QuantizedWeight(nn.Module):
    """Parametrization: latent weight -> its nearest level under the learnable scales (STE)."""

    def __init__(self, p: Prepared, weight_dtype: torch.dtype):
        super().__init__()
        q = p.quant
        self.rows, self.cols, self.bits = q.rows, q.cols, q.bits
        self.quantizer, self.symmetric, self.group_size = q.quantizer, q.symmetric, q.group_size
        self.ngroups = q.scales.shape[1]
        self.half_scales = q.scales.dtype == np.float16
        self.weight_dtype = weight_dtype
        self.register_buffer("keep", torch.from_numpy(np.ascontiguousarray(p.keep.reshape(q.rows, q.cols))))
        self.scales = nn.Parameter(torch.from_numpy(q.scales.astype(np.float32)))

    def levels(self) -> torch.Tensor:
        s = self.scales
        if self.half_scales:  # the stored precision, with a straight-through gradient
            s = s + (s.to(torch.float16).to(torch.float32) - s).detach()
        return levels_torch(s, self.bits, self.quantizer, self.symmetric)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows, cols, g, ng = self.rows, self.cols, self.group_size, self.ngroups
        w2 = w.reshape(rows, cols).to(torch.float32)
        sv, _ = self.levels().sort(dim=2)  # (rows, groups, L) sorted; differentiable in the scales
        nl = sv.shape[2]
        with torch.no_grad():
            mids = ((sv[:, :, 1:] + sv[:, :, :-1]) / 2).reshape(rows * ng, nl - 1)
            wd = w2.detach()
            if ng > 1:
                wd = F.pad(wd, (0, ng * g - cols))
            idx = torch.searchsorted(mids, wd.reshape(rows * ng, -1).contiguous())
        vals = sv.reshape(rows * ng, nl).gather(1, idx).reshape(rows, -1)[:, :cols]
        if self.weight_dtype in (torch.float16, torch.bfloat16):
            vals = vals + (vals.to(self.weight_dtype).to(torch.float32) - vals).detach()
        return _MaskedSTE.apply(w2, vals, self.keep).reshape(w.shape).to(w.dtype)


class _MaskedSTE(torch.autograd.Function):
    """keep * vals forward; the gradient goes to vals (the scales) and straight through to w."""

    @staticmethod
    def forward(ctx, w, vals, keep):
        ctx.save_for_backward(keep)
        return torch.where(keep, vals, torch.zeros((), dtype=vals.dtype))

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        g = torch.where(keep, grad, torch.zeros((), dtype=grad.dtype))
        return g, g, None


class _BlockTap:
    """Forward hooks that keep the output of every block of the model's block list."""

    def __init__(self, model: nn.Module):
        self.outputs: list[torch.Tensor] = []
        found = find_blocks(model)
        self.handles = [b.register_forward_hook(lambda m, a, o: self.outputs.append(_first_tensor(o)))
                        for b in (found[1] if found else [])]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _relative_mse(s: torch.Tensor, t: torch.Tensor, batch: Any) -> torch.Tensor:
    s, t = s.float(), t.float()
    m = token_mask(batch, t)
    if m is not None:
        s, t = s[m], t[m]
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp(min=1e-12)


def recover(model: nn.Module, teacher: nn.Module, data: Any, steps: int = 200, *, compressed: Any = None,
            lr: float = LR, scale_lr: float = SCALE_LR, seed: int = 0,
            progress: Callable[[int, int, str], None] | None = None, state_path: str | None = None,
            evaluate: Callable[[nn.Module], str] | None = None, eval_every: int = 0,
            log: Callable[[str], None] | None = None):
    """Distil `teacher` into the compressed `model` for `steps` optimizer steps (on CPU);
    returns a CompressedModel of the result, ready to save.

        cm = compress_model(model, ModelConfig(sparsity=0.5, bits=4), calibration=data)
        student = cm.apply_(copy.deepcopy(model))
        cm = recover(student, model, data, steps=200)

    compressed: a CompressedModel (by default the one `cm.apply_` left on the model).
    data: unlabeled inputs, as for compress_model's calibration. lr / scale_lr: Adam step
    sizes of the latent weights and of the scales (warm-up, then cosine decay).
    state_path: save the run's state there now and then (and when interrupted); calling
    again with the same arguments resumes it. evaluate / eval_every / log: a line of held-out
    quality every eval_every steps (see recover_prepared).
    """
    config, record = None, None
    if isinstance(compressed, CompressedModel):
        config, prepared, record = compressed.config, compressed.prepared, compressed.calibration
    elif compressed is None and getattr(model, PREPARED_ATTR, None) is not None:
        prepared, config, record = getattr(model, PREPARED_ATTR)
    elif compressed is None:
        raise ValueError("the model holds no xorsparse-compressed weights: call cm.apply_(model) first, or pass "
                         "compressed=cm (the CompressedModel from compress_model)")
    else:
        raise TypeError(f"compressed must be a CompressedModel, got {type(compressed).__name__}")
    if config is None:
        raise ValueError("no config known for the compressed weights: pass compressed=cm")
    result = recover_prepared(model, teacher, data, steps, prepared=prepared, lr=lr, scale_lr=scale_lr,
                              seed=seed, progress=progress, state_path=state_path, evaluate=evaluate,
                              eval_every=eval_every, log=log)
    attach_prepared(model, result, config, record)
    record = dict(record or {"method": config.method, "source": "python", "torch": torch.__version__})
    record.update({"recover_steps": steps, "recover_lr": lr, "recover_scale_lr": scale_lr, "recover_seed": seed})
    return encode_prepared(model, result, config, record)


STATE_EVERY_S = 60.0  # seconds between two saves of the recovery state


def _fingerprint(model: nn.Module, prepared: Mapping[str, Prepared], settings: list) -> str:
    """What a saved recovery state must have been made from: the settings, and every
    compressed weight's mask, scales and starting latent values."""
    h = hashlib.sha256(json.dumps(settings).encode())
    mods = dict(model.named_modules())
    for name in sorted(prepared):
        p = prepared[name]
        h.update(name.encode())
        h.update(np.packbits(np.ascontiguousarray(p.keep).reshape(-1)).tobytes())
        h.update(np.ascontiguousarray(p.quant.scales).tobytes())
        h.update(mods[name].weight.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_state(path: str, state: dict) -> None:
    """Written to a temporary name and renamed: an interrupted save leaves the last state."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_state(path: str) -> dict | None:
    """A saved recovery state as written by recover_prepared, None when there is none; a
    file that is not one is an error (checked before calibration, so it costs no time)."""
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure to read means the same to the user
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        raise ValueError(f"{path}: unreadable recovery state (not one xorsparse saved); delete it to start over")
    return state


def _load_state(path: str, fingerprint: str, steps: int, params: dict) -> dict | None:
    """The saved state of this very run, or None when there is none; an unreadable state or
    one of another run is an error (delete it, or start over under another path)."""
    state = read_state(path)
    if state is None:
        return None
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{path}: a recovery state of another run (different model, data or settings); "
                         "delete it to start over")
    done = state.get("step")
    if not isinstance(done, int) or not 0 < done < steps:
        raise ValueError(f"{path}: recovery state field 'step' is {done!r}, expected 1..{steps - 1}")
    for key in ("latent", "scales"):
        got = state.get(key)
        if not isinstance(got, dict) or set(got) != set(params):
            raise ValueError(f"{path}: recovery state field {key!r} does not name this run's weights")
        for name, (w, s) in params.items():
            want = w if key == "latent" else s
            if not isinstance(got[name], torch.Tensor) or got[name].shape != want.shape:
                raise ValueError(f"{path}: recovery state {key!r} of {name!r} has the wrong shape")
    order = state.get("order")
    if not isinstance(order, list) or not all(isinstance(i, int) for i in order):
        raise ValueError(f"{path}: recovery state field 'order' is not a list of batch indices")
    return state


def recover_prepared(model: nn.Module, teacher: nn.Module, data: Any, steps: int, *,
                     prepared: Mapping[str, Prepared], lr: float = LR, scale_lr: float = SCALE_LR, seed: int = 0,
                     block_weight: float = 1.0,
                     progress: Callable[[int, int, str], None] | None = None,
                     evaluate: Callable[[nn.Module], str] | None = None, eval_every: int = 0,
                     log: Callable[[str], None] | None = None,
                     state_path: str | None = None, state_every_s: float = STATE_EVERY_S) -> dict[str, Prepared]:
    """recover() on prepared weights (module name -> Prepared); returns the re-quantized ones.

    block_weight: weight of the layer-wise term (relative squared error of every block's
    output, for models with a block list) next to the output loss.
    evaluate / eval_every: every eval_every steps (and after the last), evaluate(model) on
    the model as it stands (its weights quantized as they will be stored) gives a line of
    held-out quality for `log`.
    state_path: long runs save their state there (every state_every_s seconds, and when
    interrupted); a later call with the same model, data and settings resumes from it and
    gives the same result as an uninterrupted run. The file is removed at the end.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    prepared = dict(prepared)
    for name, p in prepared.items():
        q = p.quant
        if q.quantizer not in RECOVERABLE or q.scale_rows != 1 or q.scale_ref is not None:
            raise ValueError(f"{name}: recovery trains per-row bcq or uniform scales; this weight's quantizer "
                             f"{q.quantizer!r} (scale_rows {q.scale_rows}, "
                             f"{'log8' if q.scale_ref is not None else 'float'} scales) is not supported "
                             "(compress with scale_rows=1, scale_format='float16')")
    data = as_calibration(data, model)
    _, attached_config, attached_record = getattr(model, PREPARED_ATTR, None) or (None, None, None)
    attach_prepared(model, prepared, attached_config, attached_record)
    if steps == 0:
        return prepared
    mods = dict(model.named_modules())
    teacher.eval()
    model.eval()  # no dropout: the student should match the teacher's deterministic outputs
    was_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = {}
    for name, p in prepared.items():
        mod = mods[name]
        parametrize.register_parametrization(mod, "weight", _QuantizedWeight(p, mod.weight.dtype))
        latent = mod.parametrizations.weight.original
        latent.requires_grad_(True)
        params[name] = (latent, mod.parametrizations.weight[0].scales)
    opt = torch.optim.Adam([{"params": [w for w, _ in params.values()], "lr": lr},
                            {"params": [s for _, s in params.values()], "lr": scale_lr}])
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    say = log or (lambda line: None)
    start = 0
    fingerprint = None
    if state_path is not None:
        fingerprint = _fingerprint(model, prepared, [steps, lr, scale_lr, seed, block_weight, len(data.batches)])
        state = _load_state(state_path, fingerprint, steps, params)
        if state is not None:
            with torch.no_grad():
                for name, (w, s) in params.items():
                    w.copy_(state["latent"][name])
                    s.copy_(state["scales"][name])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            order, start = list(state["order"]), state["step"]
            say(f"recovery: resuming at step {start}/{steps} from {state_path}")

    def save(done: int) -> None:
        _save_state(state_path, {"fingerprint": fingerprint, "step": done, "order": list(order),
                                 "latent": {n: w.detach().clone() for n, (w, _) in params.items()},
                                 "scales": {n: s.detach().clone() for n, (_, s) in params.items()},
                                 "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state()})
    cache: dict[int, dict[str, torch.Tensor]] = {}
    cache_budget = 1 << 28  # bytes of cached teacher outputs
    bar = progress or Progress("recover", unit="steps")
    ema = None
    # layer-wise distillation: every block's output is matched too (far more signal per step)
    ttap, stap = _BlockTap(teacher), _BlockTap(model)
    saved_at = time.monotonic()
    completed = start
    ok = updating = False
    try:
        for step in range(start, steps):
            if not order:
                order = torch.randperm(len(data.batches), generator=gen).tolist()
            bi = order.pop()
            batch = data.batches[bi]
            if bi in cache:
                tout, tblocks = cache[bi]
            else:
                with torch.no_grad():
                    ttap.outputs.clear()
                    tout = {k: v.detach() for k, v in output_parts(run_model(teacher, lambda: data.call(teacher, batch),
                                                                          "the recovery data")).items()}
                    tblocks = [t.detach() for t in ttap.outputs]
                size = sum(v.numel() * v.element_size() for v in list(tout.values()) + tblocks)
                if size * len(data.batches) <= cache_budget:
                    cache[bi] = (tout, tblocks)
            stap.outputs.clear()
            sout = output_parts(run_model(model, lambda: data.call(model, batch), "the recovery data"))
            loss = distillation_loss(sout, tout, batch)
            if block_weight and len(stap.outputs) == len(tblocks) and tblocks:
                loss = loss + block_weight * sum(_relative_mse(s_, t_, batch) for s_, t_ in
                                                 zip(stap.outputs, tblocks)) / len(tblocks)
            if not torch.isfinite(loss):
                raise ValueError(f"recovery diverged at step {step + 1} (loss {float(loss)}); try a smaller lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            updating = True  # an interrupt from here to `completed` leaves a half-made step
            opt.step()
            sched.step()
            completed = step + 1
            updating = False
            lv = float(loss.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            bar(step + 1, steps, f"loss {ema:.4g}")
            if evaluate is not None and eval_every > 0 and (completed % eval_every == 0 or completed == steps):
                with torch.no_grad():
                    say(f"recovery step {completed}/{steps}: loss {ema:.4g}, {evaluate(model)}")
            if state_path is not None and completed < steps and time.monotonic() - saved_at >= state_every_s:
                save(completed)
                saved_at = time.monotonic()
        ok = True
    except KeyboardInterrupt:
        if state_path is not None and start < completed < steps and not updating:
            save(completed)
            say(f"recovery interrupted at step {completed}/{steps}; state saved to {state_path} (run again to resume)")
        raise
    finally:
        result: dict[str, Prepared] = {}
        with torch.no_grad():
            for name, p in prepared.items():
                mod = mods[name]
                pq = mod.parametrizations.weight[0]
                scales = pq.scales.detach().numpy().astype(p.quant.scales.dtype)
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
                q = p.quant
                base = Quantized(q.quantizer, q.bits, q.planes, scales, q.rows, q.cols, q.group_size, q.symmetric)
                latent = mod.weight.detach().to(torch.float32).numpy()
                result[name] = Prepared(p.keep, requantize(latent, p.keep, base, p.dtype), p.dtype, p.calibrated)
        for n, p in model.named_parameters():
            p.requires_grad_(was_grad.get(n, True))
        ttap.remove()
        stap.remove()
    if ok and state_path is not None and os.path.exists(state_path):
        os.remove(state_path)
    attach_prepared(model, result, attached_config, attached_record)
    return result


__all__ = ["distillation_loss", "read_state", "recover", "recover_prepared"]
