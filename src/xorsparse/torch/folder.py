"""Model folders that can be run: calibrate, recover and report quality for `xorsparse compress`.

A Hugging Face folder (config.json) is instantiated offline: with sentence-transformers if it
has modules.json, else with the transformers class its config names (causal LMs recognised
as such), else AutoModel. Its Linear / Conv2d modules are matched to the checkpoint's tensor
names (by name suffix, then checked to hold the same values), calibrated layer by layer
(calibrate.py), optionally recovered by distillation (recover.py), and measured against
the original on held-out data (quality.py). The checkpoint writer then only encodes the
prepared masks and codes (jobs.checkpoint.compress_checkpoint(prepared=...)).

`prepare_folder` is deterministic for the same folder, config, calibration data, seed and
software on the same machine, so `xorsparse verify --against` can recompute it.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..checkpoint.options import RunOptions, SelectOptions
from ..checkpoint.readers import CheckpointError, open_checkpoint
from ..checkpoint.selection import select_tensors
from ..data.calibdata import SAMPLES, CalibrationSet, builtin_set, read_calibration_file, read_eval_file
from ..errors import XorsparseError
from ..format.records import needs_recomputation
from ..format.torchconv import torch_dtype_name
from ..jobs.checkpoint import compress_checkpoint
from ..progress import Progress
from ..tensor.budget import BITS, SPARSITIES, check_target_bits
from ..tensor.calibrated import check_error_feedback_quantizer
from ..tensor.pipeline import CompressConfig, from_float32, to_float32
from ..tensor.prune import global_magnitude_masks
from .budget import allocation_lines, allocation_record, configs_of, plan_allocation
from .calibrate import (
    CalibrationData,
    Prepared,
    calibrate_model,
    prepare_weight,
    sentence_transformer_calibration,
    supports_calibration,
    text_calibration,
)
from .quality import embedding_agreement, quality_report, sentence_embeddings, sub_report, summary_line
from .recover import LR, SCALE_LR, read_state, recover_prepared

BATCH_SIZE = 16
MAX_LENGTH = 128


class ModelFolderError(XorsparseError):
    """A folder whose model cannot be instantiated; the message names the folder and why."""


def is_model_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def _quiet_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:
        pass


@dataclass
class FolderModel:
    path: str
    kind: str  # "sentence-transformers", "causal-lm" or "transformers"
    model: nn.Module
    tokenizer: Any = None

    @property
    def quality_kind(self) -> str:
        return {"sentence-transformers": "sentence-transformers", "causal-lm": "causal-lm"}.get(self.kind,
                                                                                                "layer-error")

    def data(self, samples: Any, kind: str, batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH,
             info: dict | None = None) -> CalibrationData:
        """Batches for this model from texts or from tensors (dim 0 = samples). Texts are cut to
        `max_length` tokens, and to the model's own context where that is shorter."""
        if kind == "text":
            max_length = min(max_length, _context_length(self.model) or max_length)
            if self.kind == "sentence-transformers":
                return sentence_transformer_calibration(self.model, samples, batch_size, max_length, info)
            if self.tokenizer is None:
                raise ModelFolderError(f"{self.path}: no tokenizer to turn calibration text into inputs; "
                                       "pass --calibration with a tensor file (.pt or .safetensors) of inputs")
            if self.tokenizer.pad_token is None and getattr(self.tokenizer, "eos_token", None) is not None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            return text_calibration(samples, self.tokenizer, batch_size, max_length, info)
        tensors: dict = samples
        n = int(next(iter(tensors.values())).shape[0])
        batches = []
        for i in range(0, n, batch_size):
            part = {k: v[i:i + batch_size] for k, v in tensors.items()}
            if list(part) == [""]:
                t = part[""]
                batches.append({"input_ids": t} if not t.is_floating_point() else t)
            else:
                batches.append(part)
        call = (lambda m, b: m(dict(b))) if self.kind == "sentence-transformers" else None
        d = CalibrationData(batches, info=dict(info or {}, samples=n))
        if call is not None:
            d.call = call
        return d


def _check_weights_match(path: str, config, cls) -> None:
    """ModelFolderError unless the checkpoint holds every weight matrix of the model that
    config.json describes (same name suffix, same shape). Checked on a skeleton on the meta
    device, before anything is allocated: a bare `{"model_type": "llama"}` would otherwise
    build a 7B-parameter default model and fill it with random weights."""
    ck = open_checkpoint(path)
    shapes: dict[str, list[tuple[str, tuple]]] = {}
    for n in ck.names:
        shapes.setdefault(n.rsplit(".", 2)[-2] if n.count(".") >= 1 else n, []).append((n, tuple(ck.info(n)[1])))
    import transformers

    with torch.device("meta"):
        skel = transformers.AutoModel.from_config(config) if cls is transformers.AutoModel else cls(config)
    missing = []
    for pname, p in skel.named_parameters():
        if p.dim() < 2:
            continue
        key = pname.rsplit(".", 2)[-2] if pname.count(".") >= 1 else pname
        if not any((c == pname or c.endswith("." + pname) or pname.endswith("." + c)) and shp == tuple(p.shape)
                   for c, shp in shapes.get(key, [])):
            missing.append(pname)
    if missing:
        raise ModelFolderError(f"{path}: the checkpoint does not hold the weights of the model config.json describes "
                               f"({len(missing)} weight matrices missing or of another shape, first {missing[0]!r})")


def load_folder_model(path: str) -> FolderModel:
    """Instantiate the model of a Hugging Face folder on the CPU, in float32, offline."""
    if not is_model_folder(path):
        raise ModelFolderError(f"{path}: not a model folder (no config.json)")
    _quiet_offline()
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"running a model folder needs transformers ({e}): pip install 'xorsparse[demo]'") from None
    try:
        if os.path.exists(os.path.join(path, "modules.json")):
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device="cpu", local_files_only=True,
                                        model_kwargs={"dtype": torch.float32})
            return FolderModel(path, "sentence-transformers", model.eval())
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        )

        causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        archs = [a for a in (getattr(config, "architectures", None) or []) if hasattr(transformers, a)]
        cls = getattr(transformers, archs[0]) if archs else transformers.AutoModel
        _check_weights_match(path, config, cls)
        model = cls.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        kind = "causal-lm" if archs and archs[0] in causal else "transformers"
    except ModelFolderError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFolderError(f"{path}: transformers cannot instantiate this model ({type(e).__name__}: {msg})") \
            from None
    tok = None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        tok = None
    return FolderModel(path, kind, model, tok)


def map_to_checkpoint(model: nn.Module, ck, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """module name -> checkpoint tensor name for every calibratable module whose weight is one
    of `names` (matched by name suffix, then by value); and notes on what was left out."""
    wanted = set(names)
    shared: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(pname)
    out: dict[str, str] = {}
    notes: list[str] = []
    taken: set[str] = set()
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not supports_calibration(mod) or not isinstance(w, torch.Tensor):
            continue
        pname = f"{name}.weight"
        cands = [c for c in wanted if c == pname or c.endswith("." + pname) or pname.endswith("." + c)]
        for c in sorted(cands, key=len, reverse=True):
            t = ck.get(c)
            if c in taken or tuple(t.shape) != tuple(w.shape) or not torch.equal(t.to(w.dtype), w.detach()):
                continue
            if len(shared.get(id(w), [])) > 1:
                notes.append(f"{c}: weight shared by {', '.join(shared[id(w)])}; not calibrated")
                break
            out[name] = c
            taken.add(c)
            break
    return out, notes


def _parameters_of(model: nn.Module, ck, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """checkpoint tensor name -> the model parameter holding it (matched by name suffix, then
    checked to hold the same values)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for c in names:
        t = ck.get(c)
        for pname, p in params.items():
            if (c == pname or c.endswith("." + pname) or pname.endswith("." + c)) and \
                    tuple(p.shape) == tuple(t.shape) and torch.equal(t.to(p.dtype), p.detach()):
                out[c] = p
                break
    return out


@dataclass
class FolderResult:
    prepared: dict[str, Prepared]  # checkpoint tensor name -> prepared weight
    calibration: dict
    quality: dict | None
    model_kind: str
    notes: list[str] = field(default_factory=list)
    # wall seconds of each stage and the CPU seconds: reported, never written into the file
    # (they differ from run to run, and a rerun must give the same bytes)
    seconds: dict[str, float] = field(default_factory=dict)
    allocation: dict | None = None  # the bit budget's choice per tensor (--target-bits)

    @property
    def records(self) -> dict:
        """The .xsp records (docs/FORMAT.md section 8): calibration, quality if measured, and
        allocation under a bit budget."""
        out = {"calibration": self.calibration}
        if self.quality is not None:
            out["quality"] = self.quality
        if self.allocation is not None:
            out["allocation"] = self.allocation
        return out

    def checkpoint_prepared(self) -> dict[str, Prepared]:
        """The prepared tensors, as the checkpoint writer encodes them (one Prepared type throughout)."""
        return dict(self.prepared)


def _context_length(model: nn.Module) -> int | None:
    """The longest input the model's position embeddings take (None: no such limit found)."""
    for m in model.modules():
        limit = getattr(getattr(m, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def calibration_set(calibration: str | None, samples: int | None, seed: int) -> CalibrationSet:
    return builtin_set(samples, seed) if calibration is None else read_calibration_file(calibration, samples, seed)


def _held_out_probe(fm, teacher: nn.Module, cset: CalibrationSet, batch_size: int,
                    max_length: int) -> Callable[[nn.Module], str]:
    """evaluate(model) for recovery: quality on the out-of-domain held-out set (text neither
    calibration nor recovery sees), the teacher's side computed once."""
    texts, info = cset.out_of_domain, cset.out_of_domain_info
    if fm.quality_kind == "sentence-transformers":
        reference = sentence_embeddings(teacher, texts)
        return lambda m: f"out-of-domain cosine {embedding_agreement(reference, sentence_embeddings(m, texts))['mean_cosine']:.4f}"
    if fm.tokenizer is None:
        texts, info = cset.held_out, cset.held_out_info
    held = fm.data(texts, "text" if fm.tokenizer is not None else cset.kind, batch_size, max_length, info)
    return lambda m: "held-out " + summary_line(quality_report(fm.quality_kind, teacher, m, held, info=info))


@dataclass(frozen=True)
class CalibrationOptions:
    """The calibration run of a model folder: its data (`calibration` file or the built-in
    sentences, `samples`, `seed`, `batch_size`, `max_length`), recovery by distillation
    (`recover_steps`, `recover_lr`, `recover_scale_lr`), whether to measure quality, an
    `eval_file` of held-out text, and `target_bits`: total bits per compressed weight, the
    sparsity and bits of every tensor then chosen per layer within it (torch/budget.py, config's
    not used); `allocation`: a file's `allocation` record, to recompute that file (verify --against).
    `recover_state`: where a long recovery saves its state (a rerun resumes from it);
    `recover_eval_every`: held-out quality (out-of-domain set) every N recovery steps
    (None: every tenth of the run, 0: never)."""

    calibration: str | None = None
    samples: int | None = SAMPLES
    seed: int = 0
    batch_size: int = BATCH_SIZE
    max_length: int = MAX_LENGTH
    recover_steps: int = 0
    recover_lr: float = LR
    recover_scale_lr: float = SCALE_LR
    with_quality: bool = True
    eval_file: str | None = None
    target_bits: float | None = None
    allocation: dict | None = None
    recover_state: str | None = None
    recover_eval_every: int | None = None


def prepare_folder(src: str, config: CompressConfig, select: SelectOptions = SelectOptions(),
                   calib: CalibrationOptions = CalibrationOptions(), *, log: Callable[[str], None] | None = None,
                   progress: bool | None = None) -> FolderResult:
    """Masks and codes of a model folder's selected tensors by `config.method` (plus recovery),
    and the quality report; nothing is written. The selection is the checkpoint writer's
    (`select`: include, exclude, force_include, embeddings); selected tensors that are not
    weights of modules the calibration can reach (embedding tables, ...) are pruned data-free
    here too, so that `prepared` holds every selected tensor. `progress` (None: on) shows
    calibration and recovery on stderr: a bar on a terminal, elsewhere a line every tenth of
    the work."""
    calibration, recover_steps, samples, seed = calib.calibration, calib.recover_steps, calib.samples, calib.seed
    batch_size, max_length, with_quality = calib.batch_size, calib.max_length, calib.with_quality
    recover_lr, recover_scale_lr = calib.recover_lr, calib.recover_scale_lr
    eval_file, target_bits, allocation = calib.eval_file, calib.target_bits, calib.allocation
    say = log or (lambda s: None)
    t0, c0 = time.perf_counter(), time.process_time()
    fm = load_folder_model(src)
    ck = open_checkpoint(src)
    selected = select_tensors(ck, select.include, select.exclude, select.force_include, select.embeddings).compressed
    if not selected:
        raise CheckpointError(f"{src}: no tensor selected for compression (check --include/--exclude)")
    if config.global_sparsity and config.method != "magnitude":
        raise ValueError("--global applies to magnitude pruning only; calibrated methods prune per layer")
    if recover_steps:  # recovery trains per-row scales: "auto" layouts mean per-row float16 there
        config = replace(config, scale_rows=1 if config.scale_rows == "auto" else config.scale_rows,
                         scale_format="float16" if config.scale_format == "auto" else config.scale_format)
    if config.method != "magnitude" or recover_steps or target_bits is not None:
        check_error_feedback_quantizer(config)  # before the model runs (recovery has the same needs)
    if target_bits is not None:
        check_target_bits(target_bits)
        if config.method == "magnitude" or config.global_sparsity:
            raise ValueError("--target-bits chooses sparsity and bits per layer from calibration data: use a "
                             "calibrated method (sparsegpt or wanda), without --global")
    if recover_steps and calib.recover_state:
        read_state(calib.recover_state)  # a bad state file fails now, not after calibration
    cset = calibration_set(calibration, samples, seed)
    eval_set = read_eval_file(eval_file) if eval_file is not None and with_quality else None
    if eval_set is not None and fm.quality_kind != "sentence-transformers" and fm.tokenizer is None:
        raise ModelFolderError(f"{src}: no tokenizer to turn the --eval text into inputs")
    data = fm.data(cset.calibration, cset.kind, batch_size, max_length, cset.info)
    mapping, notes = map_to_checkpoint(fm.model, ck, selected)
    calibrated = config.method != "magnitude" or bool(recover_steps)
    if not calibrated:  # notes on what calibration could not reach mean nothing when nothing is calibrated
        notes = []
    mods = dict(fm.model.named_modules())
    modules = [(m, mods[m]) for m in mapping]
    dtypes = {m: torch_dtype_name(ck.get(c)) for m, c in mapping.items()}
    teacher = copy.deepcopy(fm.model) if (with_quality or recover_steps) else None
    # selected tensors no calibrated module owns (embedding tables, ...): data-free, and
    # written into the model first, so that calibration, recovery and the quality report
    # all see the model the file will hold
    free = [n for n in selected if n not in mapping.values()]
    chosen, configs = None, {}  # the allocation record of a new bit budget; per-module configs
    if target_bits is not None:
        say(f"bit budget: scoring {len(modules) + len(free)} tensors at {len(SPARSITIES) * len(BITS)} "
            f"(sparsity, bits) candidates each")
        plan = plan_allocation(fm.model, modules, data, config, target_bits, free={n: ck.get(n) for n in free},
                               progress=Progress("budget", progress,
                                                 unit="tensors"))
        configs = configs_of(plan, config)
        chosen = allocation_record(plan, mapping)
        for line in allocation_lines(plan, mapping):
            say(line)
    elif allocation is not None:  # recomputing a file made under a bit budget: its recorded choices
        module_of = {c: m for m, c in mapping.items()}
        configs = {module_of.get(n, n): replace(config, sparsity=float(sq[0]), bits=int(sq[1]))
                   for n, sq in allocation["layers"].items()}
    free_masks = None
    if config.global_sparsity:
        free_masks = global_magnitude_masks({n: to_float32(ck.get(n))[0] for n in selected}, config.sparsity)
    free_prepared = {n: prepare_weight(ck.get(n), configs.get(n, config), None,
                                       None if free_masks is None else free_masks[n], name=n) for n in free}
    params = _parameters_of(fm.model, ck, free)
    with torch.no_grad():
        for n, p in free_prepared.items():
            if n in params:
                params[n].copy_(p.torch_weight().to(params[n].device, params[n].dtype))
    missing = [n for n in free if n not in params]
    if missing:
        notes.append(f"{len(missing)} selected tensors are not parameters of the instantiated model (the quality "
                     f"report does not see their compression), first {missing[0]!r}")
    seconds: dict[str, float] = {}
    rec: dict[str, Any] = {"method": config.method, "model_kind": fm.kind}
    rec.update({k: cset.info[k] for k in ("source", "file", "sha256", "samples", "held_out", "selection")})
    rec.update({"max_length": max_length, "batch_size": batch_size, "seed": seed, "torch": torch.__version__})
    t = time.perf_counter()
    if config.method == "magnitude":
        prepared = {}
        for m, c in mapping.items():
            prepared[m] = prepare_weight(ck.get(c), config, None, None if free_masks is None else free_masks[c],
                                         name=c)
            with torch.no_grad():
                mods[m].weight.copy_(prepared[m].torch_weight())
        rec.update({"sequential": False, "blocks": None, "calibrated_tensors": 0})
    else:
        say(f"calibrating {len(modules)} modules with {config.method} on {cset.info['samples']} samples "
            f"({cset.info['source']}: {os.path.basename(str(cset.info.get('file')))})")
        res = calibrate_model(fm.model, config, data, modules, dtypes=dtypes, configs=configs or None,
                              progress=Progress("calibrate", progress, unit="modules"))
        prepared = res.prepared
        notes += res.notes
        rec.update({"sequential": res.sequential, "blocks": res.blocks,
                    "calibrated_tensors": sum(p.calibrated for p in prepared.values())})
    seconds["pruning" if config.method == "magnitude" else "calibration"] = time.perf_counter() - t
    if recover_steps:
        say(f"recovery: {recover_steps} steps of distillation from the original model")
        t = time.perf_counter()
        every = calib.recover_eval_every
        every = max(1, recover_steps // 10) if every is None else every
        evaluate = _held_out_probe(fm, teacher, cset, batch_size, max_length) if every and with_quality else None
        prepared = recover_prepared(fm.model, teacher, data, recover_steps, prepared=prepared, lr=recover_lr,
                                    scale_lr=recover_scale_lr, seed=seed, progress=Progress("recover", progress, unit="steps"),
                                    evaluate=evaluate, eval_every=every, log=say, state_path=calib.recover_state)
        seconds["recovery"] = time.perf_counter() - t
        rec.update({"recover_steps": recover_steps, "recover_lr": recover_lr, "recover_scale_lr": recover_scale_lr,
                    "recover_seed": seed})
    quality = None
    if with_quality:
        t = time.perf_counter()
        held = cset.held_out if fm.quality_kind == "sentence-transformers" else \
            fm.data(cset.held_out, cset.kind, batch_size, max_length, cset.held_out_info)
        quality = quality_report(fm.quality_kind, teacher, fm.model, held, names=list(mapping),
                                 info=cset.held_out_info)
        if "layers" in quality:
            quality["layers"] = {mapping[m]: v for m, v in quality["layers"].items()}
        # the same figures on text calibration never saw: the built-in out-of-domain set, --eval FILE
        for key, texts, info in (("out_of_domain", cset.out_of_domain, cset.out_of_domain_info),
                                 ("eval", *(eval_set or (None, None)))):
            if texts is None or (fm.quality_kind != "sentence-transformers" and fm.tokenizer is None):
                continue
            held = texts if fm.quality_kind == "sentence-transformers" else \
                fm.data(texts, "text", batch_size, max_length, info)
            quality[key] = sub_report(quality_report(fm.quality_kind, teacher, fm.model, held, names=list(mapping),
                                                     info=info))
        seconds["quality"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    seconds["cpu"] = time.process_time() - c0
    if free and calibrated:
        notes.append(f"{len(free)} selected tensors are not weights of calibratable modules "
                     f"(data-free magnitude pruning), first {free[0]!r}")
    rec["notes"] = notes
    out = {mapping[m]: p for m, p in prepared.items()}
    out.update(free_prepared)
    return FolderResult(out, rec, quality, fm.kind, notes, seconds,
                        chosen if chosen is not None else allocation)


__all__ = ["CalibrationOptions", "FolderModel", "FolderResult", "ModelFolderError", "is_model_folder", "load_folder_model",
           "map_to_checkpoint", "prepare_folder"]


def compress_model_folder(src: str, out: str, config: CompressConfig, select: SelectOptions = SelectOptions(),
                          calib: CalibrationOptions = CalibrationOptions(), run: RunOptions = RunOptions(), *,
                          log: Callable[[str], None] | None = None):
    """prepare_folder, then the checkpoint writer encodes the prepared tensors (and stores the
    rest) into an .xsp file or model folder with the records; returns (CompressReport,
    FolderResult)."""
    res = prepare_folder(src, config, select, calib, log=log)
    report = compress_checkpoint(src, out, config, select, run, prepared=res.checkpoint_prepared(),
                                 extra=res.records)
    return report, res


def recompute_references(xsp_names: Sequence[str], against: str, config: CompressConfig, record: dict,
                         calibration: str | None = None, log: Callable[[str], None] | None = None,
                         allocation: dict | None = None) -> dict[str, torch.Tensor]:
    """The dense tensors a calibrated file should decode to, recomputed from the original
    folder with the file's config and calibration record (same data, seed and steps)."""

    if record.get("source") == "builtin":
        path = None
        if builtin_set(record.get("samples"), record.get("seed", 0)).info["sha256"] != record.get("sha256"):
            raise ValueError("the built-in calibration corpus of this xorsparse differs from the one the file was "
                             "calibrated with; recomputation is not possible")
    elif record.get("source") == "file":
        path = calibration or record.get("file")
        if not path or not os.path.exists(path):
            raise ValueError(f"calibration file {path!r} not found: pass --calibration FILE (the file the .xsp "
                             "was calibrated with)")
        probe = read_calibration_file(path, record.get("samples"), record.get("seed", 0))
        if probe.info["sha256"] != record.get("sha256"):
            raise ValueError(f"{path}: not the calibration file this .xsp was made with (sha256 differs)")
    else:
        raise ValueError(f"calibration source {record.get('source')!r} cannot be recomputed")
    calib = CalibrationOptions(calibration=path, samples=record.get("samples"), seed=int(record.get("seed", 0)),
                               batch_size=int(record.get("batch_size", BATCH_SIZE)),
                               max_length=int(record.get("max_length", MAX_LENGTH)),
                               recover_steps=int(record.get("recover_steps") or 0),
                               recover_lr=float(record.get("recover_lr", LR)),
                               recover_scale_lr=float(record.get("recover_scale_lr", SCALE_LR)), with_quality=False,
                               allocation=allocation)
    res = prepare_folder(against, config, SelectOptions(include=list(xsp_names)), calib, log=log)
    return {n: from_float32(p.dense(), p.dtype, "torch") for n, p in res.prepared.items()}


__all__ += ["compress_model_folder", "needs_recomputation", "recompute_references"]
