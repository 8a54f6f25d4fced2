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

import math
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


def _outputs(out: Any) -> dict[str, torch.Tensor]:
    """The parts of a model output the loss can match."""
    if isinstance(out, torch.Tensor):
        return {"tensor": out}
    got = {}
    for key in ("sentence_embedding", "token_embeddings", "logits", "last_hidden_state"):
        try:
            v = out[key]
        except (KeyError, TypeError, IndexError):
            v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            got[key] = v
    if not got:
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return {"tensor": out[0]}
        raise TypeError(f"cannot find an output tensor to match in {type(out).__name__}")
    return got


def _token_mask(batch: Any, like: torch.Tensor) -> torch.Tensor | None:
    if isinstance(batch, dict) and "attention_mask" in batch:
        m = batch["attention_mask"]
        if m.dim() == 2 and like.dim() >= 2 and tuple(like.shape[:2]) == tuple(m.shape):
            return m.bool()
    return None


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
    """See the module docstring: chosen by what the outputs contain."""
    if "sentence_embedding" in teacher:
        s, t = student["sentence_embedding"], teacher["sentence_embedding"]
        loss = (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        if "token_embeddings" in teacher:
            ts, tt = student["token_embeddings"], teacher["token_embeddings"]
            m = _token_mask(batch, tt)
            if m is not None:
                ts, tt = ts[m], tt[m]
            loss = loss + ((ts - tt) ** 2).mean() / (tt ** 2).mean().clamp(min=1e-12)
        return loss
    if "logits" in teacher:
        s, t = student["logits"].float(), teacher["logits"].float()
        m = _token_mask(batch, t)
        if m is not None and s.dim() == 3:
            s, t = s[m], t[m]
        s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    key = "last_hidden_state" if "last_hidden_state" in teacher else "tensor"
    s, t = student[key].float(), teacher[key].float()
    m = _token_mask(batch, t)
    if m is not None:
        s, t = s[m], t[m]
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp(min=1e-12)


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
    m = _token_mask(batch, t)
    if m is not None:
        s, t = s[m], t[m]
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp(min=1e-12)


def recover(model: nn.Module, teacher: nn.Module, data: Any, steps: int = 200, *, compressed: Any = None,
            lr: float = LR, scale_lr: float = SCALE_LR, seed: int = 0,
            progress: Callable[[int, int, str], None] | None = None):
    """Distil `teacher` into the compressed `model` for `steps` optimizer steps (on CPU);
    returns a CompressedModel of the result, ready to save.

        cm = compress_model(model, ModelConfig(sparsity=0.5, bits=4), calibration=data)
        student = cm.apply_(copy.deepcopy(model))
        cm = recover(student, model, data, steps=200)

    compressed: a CompressedModel (by default the one `cm.apply_` left on the model).
    data: unlabeled inputs, as for compress_model's calibration. lr / scale_lr: Adam step
    sizes of the latent weights and of the scales (warm-up, then cosine decay).
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
                              seed=seed, progress=progress)
    attach_prepared(model, result, config, record)
    record = dict(record or {"method": config.method, "source": "python", "torch": torch.__version__})
    record.update({"recover_steps": steps, "recover_lr": lr, "recover_scale_lr": scale_lr, "recover_seed": seed})
    return encode_prepared(model, result, config, record)


def recover_prepared(model: nn.Module, teacher: nn.Module, data: Any, steps: int, *,
                     prepared: Mapping[str, Prepared], lr: float = LR, scale_lr: float = SCALE_LR, seed: int = 0,
                     block_weight: float = 1.0,
                     progress: Callable[[int, int, str], None] | None = None) -> dict[str, Prepared]:
    """recover() on prepared weights (module name -> Prepared); returns the re-quantized ones.

    block_weight: weight of the layer-wise term (relative squared error of every block's
    output, for models with a block list) next to the output loss.
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
    cache: dict[int, dict[str, torch.Tensor]] = {}
    cache_budget = 1 << 28  # bytes of cached teacher outputs
    bar = progress or Progress("recover", unit="steps")
    ema = None
    # layer-wise distillation: every block's output is matched too (far more signal per step)
    ttap, stap = _BlockTap(teacher), _BlockTap(model)
    try:
        for step in range(steps):
            if not order:
                order = torch.randperm(len(data.batches), generator=gen).tolist()
            bi = order.pop()
            batch = data.batches[bi]
            if bi in cache:
                tout, tblocks = cache[bi]
            else:
                with torch.no_grad():
                    ttap.outputs.clear()
                    tout = {k: v.detach() for k, v in _outputs(run_model(teacher, lambda: data.call(teacher, batch),
                                                                          "the recovery data")).items()}
                    tblocks = [t.detach() for t in ttap.outputs]
                size = sum(v.numel() * v.element_size() for v in list(tout.values()) + tblocks)
                if size * len(data.batches) <= cache_budget:
                    cache[bi] = (tout, tblocks)
            stap.outputs.clear()
            sout = _outputs(run_model(model, lambda: data.call(model, batch), "the recovery data"))
            loss = distillation_loss(sout, tout, batch)
            if block_weight and len(stap.outputs) == len(tblocks) and tblocks:
                loss = loss + block_weight * sum(_relative_mse(s_, t_, batch) for s_, t_ in
                                                 zip(stap.outputs, tblocks)) / len(tblocks)
            if not torch.isfinite(loss):
                raise ValueError(f"recovery diverged at step {step + 1} (loss {float(loss)}); try a smaller lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            lv = float(loss.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            bar(step + 1, steps, f"loss {ema:.4g}")
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
    attach_prepared(model, result, attached_config, attached_record)
    return result


__all__ = ["distillation_loss", "recover", "recover_prepared"]
