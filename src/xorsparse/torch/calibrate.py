"""Sequential one-shot calibration of a PyTorch model: statistics from forward hooks, layer
by layer, each layer calibrated on the outputs of the already-compressed layers before it.

The numerics (masks, error feedback, scale refits) are pure functions in
`xorsparse.tensor.calibrated`; this module runs the model. The model's repeated blocks are
found generically (the largest nn.ModuleList of modules of one class: `encoder.layer` of
BERT, `model.layers` of Llama, `transformer.h` of GPT-2). The inputs of the first block are
captured once; then for every block, in order:

1. the block is run on its inputs with hooks that add up X^T X of each selected module's
   input (only real tokens: padding is masked out), group by group in call order (modules
   that read the same tensor, such as q/k/v, form one group), each group calibrated after
   the groups before it are compressed;
2. each module is pruned and quantized from its statistics, and its weight replaced by
   exactly the values the .xsp file will decode to;
3. the block is run again, now compressed: its outputs are the next block's inputs.

Selected modules outside the blocks are calibrated before (if they run before the first
block) or after them. A model without a block list is calibrated in one forward pass
(non-sequential), and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XorsparseError
from ..tensor.calibrated import calibrated_prune_quantize, check_error_feedback_quantizer
from ..tensor.pipeline import CompressConfig, Prepared, prune_quantize, to_float32


class CalibrationError(XorsparseError):
    """The model cannot be run on the calibration data; the message names the module."""


# ---------------------------------------------------------------------------------------
# Calibration data


def default_call(model: nn.Module, batch: Any) -> Any:
    """Run `model` on one batch: a dict is passed as keyword arguments, a tuple or list as
    positional arguments, anything else as the one argument."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@dataclass
class CalibrationData:
    """Batches of model inputs and how to run the model on one.

    token_mask: key of a (batch, tokens) 0/1 mask in dict batches; module inputs of shape
    (batch, tokens, features) contribute only their real tokens to the statistics.
    info: where the data came from (recorded in the .xsp file).
    """

    batches: list
    call: Callable[[nn.Module, Any], Any] = default_call
    token_mask: str | None = "attention_mask"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batches)

    def mask_of(self, batch: Any) -> torch.Tensor | None:
        if self.token_mask and isinstance(batch, dict) and self.token_mask in batch:
            return batch[self.token_mask].bool()
        return None

    def samples(self) -> int:
        n = 0
        for b in self.batches:
            t = next(iter(b.values())) if isinstance(b, dict) else (b[0] if isinstance(b, (tuple, list)) else b)
            n += int(t.shape[0]) if hasattr(t, "shape") and len(t.shape) else 1
        return n


def as_calibration(data: Any, model: nn.Module | None = None, batch_size: int = 16,
                   max_length: int = 128) -> CalibrationData:
    """Accept CalibrationData, a tensor (split along dim 0), a list of batches, or a list of
    strings for a model that tokenizes its own input (sentence-transformers)."""
    if isinstance(data, CalibrationData):
        return data
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise ValueError("calibration tensor is empty")
        return CalibrationData(list(data.split(batch_size)), info={"samples": int(data.shape[0])})
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, str) for t in data):
        if model is not None and (hasattr(model, "preprocess") or hasattr(model, "tokenize")):
            return sentence_transformer_calibration(model, list(data), batch_size, max_length)
        raise ValueError("calibration texts need a tokenizer: pass text_calibration(texts, tokenizer) "
                         "(or a sentence-transformers model, which tokenizes its own input)")
    if isinstance(data, (list, tuple)) and data:
        return CalibrationData(list(data))
    raise ValueError(f"calibration data must be CalibrationData, a tensor, or a non-empty list of batches or "
                     f"texts, got {type(data).__name__}")


def _length_sorted(texts: Sequence[str]) -> list[str]:
    """Similar lengths in one batch waste less on padding; a stable order keeps runs repeatable."""
    return sorted(texts, key=len)


def text_calibration(texts: Sequence[str], tokenizer, batch_size: int = 16, max_length: int = 128,
                     info: dict | None = None) -> CalibrationData:
    """Tokenized batches for a Hugging Face model (input_ids, attention_mask, ...)."""
    batches = []
    ordered = _length_sorted(texts)
    for i in range(0, len(ordered), batch_size):
        enc = tokenizer(ordered[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append(dict(enc))
    return CalibrationData(batches, info=dict(info or {}, samples=len(texts)))


def _st_call(model: nn.Module, batch: dict) -> Any:
    return model(dict(batch))  # sentence-transformers adds its outputs to the dict it is given


def sentence_transformer_calibration(model: nn.Module, texts: Sequence[str], batch_size: int = 16,
                                     max_length: int = 128, info: dict | None = None) -> CalibrationData:
    """Batches as SentenceTransformer.encode builds them (its own tokenizer and truncation)."""
    batches = []
    ordered = _length_sorted(texts)
    limit = getattr(model, "max_seq_length", None)
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i:i + batch_size]
        feats = model.preprocess(chunk) if hasattr(model, "preprocess") else model.tokenize(chunk)
        if "attention_mask" in feats and max_length and (limit is None or max_length < limit):
            feats = {k: v[:, :max_length] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in feats.items()}
        batches.append(dict(feats))
    return CalibrationData(batches, call=_st_call, info=dict(info or {}, samples=len(texts)))


# ---------------------------------------------------------------------------------------
# Running the model and naming the module that failed


CACHE_KWARGS = ("past_key_value", "past_key_values", "cache", "layer_past")


class _Stop(Exception):
    """Raised from a hook to end a forward pass early (the rest is not needed)."""


class _Tracker:
    """Remembers which modules are executing, so an exception can name the innermost one."""

    def __init__(self, model: nn.Module, prefix: str = ""):
        self.stack: list[str] = []
        self.failed: str | None = None
        self.handles = []
        for name, mod in model.named_modules():
            full = f"{prefix}.{name}".strip(".") if prefix else name
            self.handles.append(mod.register_forward_pre_hook(self._enter(full)))
            # no always_call: after an exception the stack still names the modules it came through
            self.handles.append(mod.register_forward_hook(self._leave(full)))

    def _enter(self, name):
        def hook(mod, args):
            self.stack.append(name)
        return hook

    def _leave(self, name):
        def hook(mod, args, out):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run_model(model: nn.Module, fn: Callable[[], Any], what: str = "the calibration data", prefix: str = "") -> Any:
    """fn() runs a forward pass of (part of) model; a failure names the module that raised it."""
    tr = _Tracker(model, prefix)
    try:
        return fn()
    except _Stop:
        raise
    except Exception as e:  # any error from user models: re-raised with the module's name
        where = tr.stack[-1] if tr.stack else prefix
        place = f"in module {where!r}" if where else "in the model's own forward"
        raise CalibrationError(f"the model's forward pass failed on {what} {place}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        tr.remove()


# ---------------------------------------------------------------------------------------
# Statistics


def _rows_of_input(mod: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The input as (samples, columns) in the weight's column order; None if unsupported."""
    if isinstance(mod, nn.Linear):
        if token_mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
            return x[token_mask]
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1 or isinstance(mod.padding, str) or mod.padding_mode != "zeros":
            return None
        cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (B, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return None


def supports_calibration(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, nn.Conv2d):
        return mod.groups == 1 and not isinstance(mod.padding, str) and mod.padding_mode == "zeros"
    return False


class _Stats:
    """X^T X (float64) of one module's inputs, added up batch by batch."""

    def __init__(self, cols: int):
        self.xtx = torch.zeros(cols, cols, dtype=torch.float64)
        self.count = 0


class _Collector:
    """Forward hooks that add each module's inputs to its statistics."""

    def __init__(self, mods: dict[str, nn.Module], stop_after: str | None = None):
        self.stats = {n: _Stats(m.weight[0].numel()) for n, m in mods.items()}
        self.mask: torch.Tensor | None = None
        self.handles = []
        self._last: tuple = (None, None, None)  # (input, module type, product): q/k/v share one input
        for n, m in mods.items():
            self.handles.append(m.register_forward_hook(self._hook(n, m, n == stop_after)))

    def _hook(self, name, mod, stop):
        def hook(module, args, out):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                last_x, last_kind, last = self._last
                st = self.stats[name]
                if x is last_x and last_kind == (type(mod), st.xtx.shape[0]) and not isinstance(mod, nn.Conv2d):
                    st.xtx += last[0]
                    st.count += last[1]
                else:
                    rows = _rows_of_input(mod, x, self.mask)
                    if rows is not None:
                        r = rows.detach().to(torch.float32)
                        prod = (r.T @ r).to(torch.float64)
                        st.xtx += prod
                        st.count += int(r.shape[0])
                        self._last = (x, (type(mod), st.xtx.shape[0]), (prod, int(r.shape[0])))
            if stop:
                raise _Stop
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self._last = (None, None, None)


def _whole_model_stats(model: nn.Module, data, mods: dict[str, nn.Module]) -> dict:
    """Input statistics of `mods` from forward passes of the whole model over every batch."""
    coll = _Collector(mods)
    try:
        for b in data.batches:
            coll.mask = data.mask_of(b)
            run_model(model, lambda: data.call(model, b))
    finally:
        coll.remove()
    return coll.stats


# ---------------------------------------------------------------------------------------
# Finding the blocks


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's repeated blocks: the largest nn.ModuleList (by parameters) of at least two
    modules of one class that hold parameters; None if there is none."""
    best, best_size = None, 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        size = sum(p.numel() for p in mod.parameters())
        if size > best_size:
            best, best_size = (name, mod), size
    return best


# ---------------------------------------------------------------------------------------
# Compressing one module


def prepare_weight(weight: torch.Tensor, config: CompressConfig, xtx: torch.Tensor | np.ndarray | None,
                   keep: np.ndarray | None = None, name: str = "tensor", dtype: str | None = None) -> Prepared:
    """Calibrated (keep, Quantized) if statistics are given, else the data-free pipeline.

    dtype: the dtype the weight is stored in, if not the module's (a bfloat16 checkpoint
    run in float32): the levels are rounded to it, as the decoder will.
    """
    w32, wdtype = to_float32(weight)
    dtype = dtype or wdtype
    if xtx is None:
        k, qz, _ = prune_quantize(w32, config, keep=keep, name=name)
        return Prepared(k, qz, dtype, False)
    h = xtx.numpy() if isinstance(xtx, torch.Tensor) else np.asarray(xtx)
    k, qz = calibrated_prune_quantize(w32, h, config, keep=keep, dtype=dtype, name=name)
    return Prepared(k, qz, dtype, True)


@torch.no_grad()
def _set_weight(mod: nn.Module, p: Prepared) -> None:
    mod.weight.copy_(p.torch_weight().to(mod.weight.device))


# ---------------------------------------------------------------------------------------
# The sequential driver


@dataclass
class CalibrationResult:
    prepared: dict[str, Prepared]  # module name -> result
    sequential: bool
    blocks: str | None  # name of the block list used
    notes: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)  # module name -> calibration rows seen


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    raise TypeError(f"block returned {type(out).__name__}, expected a tensor or a tuple starting with one")


@torch.no_grad()
def calibrate_model(model: nn.Module, config: CompressConfig, data: CalibrationData,
                    modules: Sequence[tuple[str, nn.Module]], masks: dict | None = None,
                    sequential: bool = True, progress: Callable[[int, int, str], None] | None = None,
                    dtypes: dict[str, str] | None = None,
                    configs: dict[str, CompressConfig] | None = None) -> CalibrationResult:
    """Calibrate and compress `modules` of `model` in place (their weights become the values
    the .xsp file decodes to); returns the prepared (keep, Quantized) of each.

    masks: module name -> fixed keep mask (only the quantization is calibrated then).
    dtypes: module name -> dtype the weight is stored in, where not the module's own.
    configs: module name -> its own config (e.g. another sparsity), where not `config`.
    """
    if not len(data):
        raise ValueError("no calibration batches")
    for c in [config] + list((configs or {}).values()):
        check_error_feedback_quantizer(c)
    model.eval()
    mods = dict(modules)
    masks = masks or {}
    prepared: dict[str, Prepared] = {}
    notes: list[str] = []
    tokens: dict[str, int] = {}
    total = len(mods)

    def step(name: str) -> None:
        if progress:
            progress(len(prepared), total, name)

    def compress(names: Iterable[str], stats: dict[str, _Stats]) -> None:
        for n in names:
            step(n)
            st = stats.get(n)
            xtx = st.xtx if st is not None and st.count > 0 else None
            tokens[n] = st.count if st is not None else 0
            if xtx is None and n in calibratable:
                notes.append(f"{n}: not reached by the calibration data (data-free magnitude pruning)")
            prepared[n] = prepare_weight(mods[n].weight, (configs or {}).get(n, config), xtx, masks.get(n), name=n,
                                         dtype=(dtypes or {}).get(n))
            _set_weight(mods[n], prepared[n])

    calibratable = {n: m for n, m in mods.items() if supports_calibration(m)}
    for n in mods:
        if n not in calibratable:
            notes.append(f"{n}: {type(mods[n]).__name__} is not calibrated (data-free magnitude pruning)")

    found = find_blocks(model) if sequential else None
    if found is None:
        if sequential:
            notes.append("no repeated block list found: calibrated in one forward pass (non-sequential)")
        compress([n for n in mods if n in calibratable], _whole_model_stats(model, data, calibratable))
        compress([n for n in mods if n not in prepared], {})
        step("")
        return CalibrationResult(prepared, False, None, notes, tokens)

    block_name, blocks = found
    in_blocks = {n for n in mods if n.startswith(block_name + ".")}
    outside = {n: m for n, m in calibratable.items() if n not in in_blocks}

    def capture() -> tuple[list, dict[str, _Stats]]:
        """Inputs (args, kwargs, token mask) of the first block for every batch."""
        caught: list = []
        coll = _Collector(outside)

        def grab(mod, args, kwargs):
            # a block is replayed several times per batch: key/value caches must not grow
            kw = {k: (None if k in CACHE_KWARGS else v) for k, v in kwargs.items()}
            if "use_cache" in kw:
                kw["use_cache"] = False
            caught.append((args, kw))
            raise _Stop

        h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for b in data.batches:
                coll.mask = data.mask_of(b)
                n0 = len(caught)
                try:
                    run_model(model, lambda: data.call(model, b))
                except _Stop:
                    pass
                if len(caught) == n0:
                    raise CalibrationError(f"the model's forward pass never reached {block_name}.0 "
                                           "on the calibration data")
                caught[-1] = caught[-1] + (data.mask_of(b),)
        finally:
            h.remove()
            coll.remove()
        return caught, coll.stats

    inputs, pre_stats = capture()
    pre = [n for n in outside if pre_stats[n].count > 0]
    if pre:
        compress(pre, pre_stats)
        inputs, _ = capture()

    for i, block in enumerate(blocks):
        prefix = f"{block_name}.{i}"
        names = [n for n in mods if n.startswith(prefix + ".") and n in calibratable]
        groups = _call_groups(block, {n: mods[n] for n in names}, inputs[0], prefix)
        for g in groups:
            coll = _Collector({n: mods[n] for n in g}, stop_after=g[-1])
            try:
                for args, kwargs, mask in inputs:
                    coll.mask = mask
                    try:
                        run_model(block, lambda: block(*args, **kwargs), prefix=prefix)
                    except _Stop:
                        pass
            finally:
                coll.remove()
            compress(g, coll.stats)
        rest = [n for n in mods if n.startswith(prefix + ".") and n not in prepared]
        compress(rest, {})
        nxt = []
        for args, kwargs, mask in inputs:
            out = run_model(block, lambda: block(*args, **kwargs), prefix=prefix)
            h = _first_tensor(out)
            if args:
                nxt.append(((h,) + tuple(args[1:]), kwargs, mask))
            else:
                nxt.append((args, dict(kwargs, hidden_states=h), mask))
        inputs = nxt
    del inputs

    post = {n: m for n, m in outside.items() if n not in prepared}
    if post:
        compress(list(post), _whole_model_stats(model, data, post))
    compress([n for n in mods if n not in prepared], {})
    step("")
    return CalibrationResult(prepared, True, block_name, notes, tokens)


def _call_groups(block: nn.Module, mods: dict[str, nn.Module], first: tuple, prefix: str) -> list[list[str]]:
    """Modules of one block in the order the block calls them, grouped by shared input."""
    order: list[tuple[str, Any]] = []  # (name, the input tensor itself: kept alive, compared by identity)
    handles = []

    def hook(name):
        def h(mod, args):
            if all(n != name for n, _ in order):
                order.append((name, args[0] if args else None))
        return h

    for n, m in mods.items():
        handles.append(m.register_forward_pre_hook(hook(n)))
    args, kwargs, _ = first
    try:
        run_model(block, lambda: block(*args, **kwargs), prefix=prefix)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last = None
    for n, x in order:
        if groups and x is not None and x is last:
            groups[-1].append(n)
        else:
            groups.append([n])
        last = x
    called = {n for n, _ in order}
    missing = [n for n in mods if n not in called]
    if missing:
        groups.append(missing)  # not called on this batch: maybe on others
    return groups


__all__ = ["CalibrationData", "CalibrationError", "CalibrationResult", "Prepared", "as_calibration",
           "calibrate_model", "default_call", "find_blocks", "prepare_weight", "run_model",
           "sentence_transformer_calibration", "supports_calibration", "text_calibration"]
