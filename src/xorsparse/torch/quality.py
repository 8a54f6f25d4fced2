"""How much a compressed model still computes what the original did, on held-out inputs.

- sentence-transformers models: mean (and minimum) cosine similarity of the sentence
  embeddings, and nearest-neighbour agreement: the fraction of held-out sentences whose
  nearest other sentence (by cosine) is the same under both models;
- causal language models: perplexity of both on the held-out texts, and their ratio;
- anything else: the relative output error ||y' - y||^2 / ||y||^2 of every compressed layer
  (its compressed output against the original layer applied to the same input), and of the
  model's output.

A report is measured on the in-domain held-out set (the held-out part of the calibration
sources) and, as sub-reports `out_of_domain` and `eval`, on text from sources calibration
never saw (the built-in out-of-domain set) and on the user's `--eval FILE`: the in-domain
figure alone overstates what a user sees on their own text.

Every report is a JSON-ready dict; `xorsparse compress` stores it in the .xsp metadata
under `quality` (docs/FORMAT.md).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .calibrate import CalibrationData, run_model

KINDS = ("sentence-transformers", "causal-lm", "layer-error")


def embedding_agreement(original: torch.Tensor, compressed: torch.Tensor) -> dict[str, float]:
    """Cosine similarity of paired embeddings and nearest-neighbour agreement."""
    a = F.normalize(original.detach().double(), dim=-1)
    b = F.normalize(compressed.detach().double(), dim=-1)
    cos = (a * b).sum(-1)
    out = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    if a.shape[0] >= 2:
        sa, sb = a @ a.T, b @ b.T
        sa.fill_diagonal_(-math.inf)
        sb.fill_diagonal_(-math.inf)
        out["nn_agreement"] = float((sa.argmax(1) == sb.argmax(1)).double().mean())
    return out


@torch.no_grad()
def sentence_embeddings(model: nn.Module, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)


@torch.no_grad()
def perplexity(model: nn.Module, data: CalibrationData) -> float:
    """exp(mean next-token negative log-likelihood) over the real tokens of every batch."""
    nll, count = 0.0, 0
    for b in data.batches:
        out = run_model(model, lambda: data.call(model, b), "the held-out data")
        logits = out["logits"] if isinstance(out, dict) else out.logits
        ids = b["input_ids"]
        mask = b.get("attention_mask", torch.ones_like(ids)).bool()
        lg = logits[:, :-1].float()
        tgt = ids[:, 1:]
        m = mask[:, 1:] & mask[:, :-1]
        loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").reshape(tgt.shape)
        nll += float(loss[m].sum())
        count += int(m.sum())
    if count == 0:
        raise ValueError("the held-out data has no token to predict")
    return math.exp(nll / count)


def _first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("sentence_embedding", "logits", "last_hidden_state"):
        try:
            v = out[key]
        except (KeyError, TypeError, IndexError):
            v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find an output tensor in {type(out).__name__}")


@torch.no_grad()
def layer_errors(original: nn.Module, compressed: nn.Module, names: Iterable[str],
                 data: CalibrationData) -> dict[str, Any]:
    """Relative output error of each named layer (compressed layer vs the original layer on
    the compressed model's own inputs) and of the model output."""
    names = list(names)
    orig_mods = dict(original.named_modules())
    comp_mods = dict(compressed.named_modules())
    err = {n: 0.0 for n in names}
    ref = {n: 0.0 for n in names}
    handles = []
    state = {"mask": None}

    def hook(name):
        def h(mod, args, out):
            y0 = orig_mods[name](*args)
            d, r = (out.float() - y0.float()), y0.float()
            m = state["mask"]
            if m is not None and d.dim() == 3 and tuple(d.shape[:2]) == tuple(m.shape):
                d, r = d[m], r[m]
            err[name] += float((d * d).sum())
            ref[name] += float((r * r).sum())
        return h

    for n in names:
        handles.append(comp_mods[n].register_forward_hook(hook(n)))
    out_err, out_ref = 0.0, 0.0
    try:
        for b in data.batches:
            state["mask"] = data.mask_of(b)
            yc = _first_output(run_model(compressed, lambda: data.call(compressed, b), "the held-out data")).float()
            yo = _first_output(run_model(original, lambda: data.call(original, b), "the held-out data")).float()
            out_err += float(((yc - yo) ** 2).sum())
            out_ref += float((yo ** 2).sum())
    finally:
        for h in handles:
            h.remove()
    rel = {n: (err[n] / ref[n] if ref[n] > 0 else 0.0) for n in names}
    return {"layers": rel, "mean_relative_error": sum(rel.values()) / len(rel) if rel else 0.0,
            "max_relative_error": max(rel.values()) if rel else 0.0,
            "output_relative_error": out_err / out_ref if out_ref > 0 else 0.0}


def quality_report(kind: str, original: nn.Module, compressed: nn.Module, held_out: Any,
                   names: Iterable[str] = (), info: dict | None = None) -> dict[str, Any]:
    """One report: held_out is a list of texts (sentence-transformers) or CalibrationData."""
    report: dict[str, Any] = {"kind": kind}
    if kind == "sentence-transformers":
        texts = list(held_out)
        report.update(embedding_agreement(sentence_embeddings(original, texts), sentence_embeddings(compressed, texts)))
    elif kind == "causal-lm":
        p0, p1 = perplexity(original, held_out), perplexity(compressed, held_out)
        report.update({"perplexity_original": p0, "perplexity_compressed": p1, "perplexity_ratio": p1 / p0})
    elif kind == "layer-error":
        report.update(layer_errors(original, compressed, names, held_out))
    else:
        raise ValueError(f"unknown quality kind {kind!r}; expected one of {', '.join(KINDS)}")
    report["held_out"] = dict(info or {})
    return report


SUB_REPORTS = ("out_of_domain", "eval")  # measured on other held-out sets (FORMAT.md section 8)


def sub_report(report: dict[str, Any]) -> dict[str, Any]:
    """A report as stored under `out_of_domain` / `eval`: its figures and held_out, without
    the per-layer table (the in-domain report has it)."""
    return {k: v for k, v in report.items() if k not in ("layers", "kind") + SUB_REPORTS}


def summary_line(report: dict[str, Any]) -> str:
    """The report in one line, for the CLI summary and inspect: in-domain, then out-of-domain
    and the user's --eval text when measured."""
    line = _one_line(report)
    for key, label in (("out_of_domain", "out-of-domain"), ("eval", "--eval")):
        sub = report.get(key)
        if isinstance(sub, dict):
            h = sub.get("held_out", {})
            line += f"; {label} ({h.get('file', '?').rsplit('/', 1)[-1]}): " + _one_line(dict(sub, kind=report.get("kind")))
    return line


def _one_line(report: dict[str, Any]) -> str:
    kind = report.get("kind")
    h = report.get("held_out", {})
    n = h.get("samples")
    domain = {"in-domain": " in-domain", "out-of-domain": " out-of-domain", "user": " of your"}.get(h.get("domain"), "")
    where = f" on {n}{domain} held-out samples" if n else ""
    if kind == "sentence-transformers":
        s = f"mean cosine to the original {report['mean_cosine']:.4f} (min {report['min_cosine']:.4f})"
        if "nn_agreement" in report:
            s += f", nearest-neighbour agreement {report['nn_agreement']:.3f}"
        return s + where
    if kind == "causal-lm":
        return (f"perplexity {report['perplexity_compressed']:.3f} vs {report['perplexity_original']:.3f} "
                f"original (ratio {report['perplexity_ratio']:.4f})" + where)
    if kind == "layer-error":
        return (f"relative output error: model {report['output_relative_error']:.4g}, layers mean "
                f"{report['mean_relative_error']:.4g}, max {report['max_relative_error']:.4g}" + where)
    return f"quality: {kind}"


__all__ = ["KINDS", "SUB_REPORTS", "embedding_agreement", "sub_report", "layer_errors", "perplexity", "quality_report", "sentence_embeddings",
           "summary_line"]
