"""What "close to the original" means to recovery and to the bit budget: the parts of a
model's output that can be matched, and the distillation loss between two outputs (see
recover.py's docstring)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def output_parts(out: Any) -> dict[str, torch.Tensor]:
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


def token_mask(batch: Any, like: torch.Tensor) -> torch.Tensor | None:
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
            m = token_mask(batch, tt)
            if m is not None:
                ts, tt = ts[m], tt[m]
            loss = loss + ((ts - tt) ** 2).mean() / (tt ** 2).mean().clamp(min=1e-12)
        return loss
    if "logits" in teacher:
        s, t = student["logits"].float(), teacher["logits"].float()
        m = token_mask(batch, t)
        if m is not None and s.dim() == 3:
            s, t = s[m], t[m]
        s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    key = "last_hidden_state" if "last_hidden_state" in teacher else "tensor"
    s, t = student[key].float(), teacher[key].float()
    m = token_mask(batch, t)
    if m is not None:
        s, t = s[m], t[m]
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp(min=1e-12)


__all__ = ["distillation_loss", "output_parts", "token_mask"]
