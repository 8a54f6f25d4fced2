"""The `xorsparse` command: compress, decompress, inspect, verify, demo, export-rtl.

Errors print one line naming what is wrong and exit non-zero; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Sequence

from .checkpoint.compressed_tensors import is_compressed_tensors_folder
from .checkpoint.inspect import inspect_file
from .checkpoint.options import RunOptions, SelectOptions
from .checkpoint.readers import open_checkpoint
from .checkpoint.selection import select_tensors
from .checkpoint.stats import totals
from .checkpoint.verify import verify_checkpoint
from .checkpoint.xspset import XspSet
from .data.calibdata import SAMPLES
from .defaults import MODEL_TARGET, TENSOR_TARGET, default_target, quality_warning
from .errors import caused_by_memory_error
from .jobs.checkpoint import check_compress_output, compress_checkpoint, decompress_checkpoint
from .jobs.executors import JobProgress, make_executor
from .progress import Progress
from .rtl.export import DecoderParams, RtlOptions, export_rtl
from .tensor import CompressConfig
from .tensor.calibrated import check_error_feedback_quantizer
from .tensor.variants import AUTO, mask_codec, mask_codec_choices, quantizer, quantizer_choices
from .version import __version__

EXIT_ERROR = 2
EXIT_MISMATCH = 1
DEFAULT_METHOD = "sparsegpt"  # calibrated default for model folders (docs/BENCHMARKS.md, quality section)
DEMO_SPARSITY, DEMO_BITS = MODEL_TARGET
DEMO_SAMPLES = 256


def _fmt_table(rows: list[list[str]], right: Sequence[bool]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def print_sizes(sizes) -> None:
    """Bytes per category, input against output; the last row is the files on disk."""
    table = [["", "tensors", "input MB", "output MB", "ratio"]]
    for r in sizes:
        table.append([r.label, str(r.tensors) if r.tensors else "", _mb(r.input_bytes), _mb(r.output_bytes),
                      f"x{r.ratio:.2f}" if r.output_bytes else "-"])
    print(_fmt_table(table, [False, True, True, True, True]))


def print_summary(rows: list[dict], total: dict) -> None:
    head = ["tensor", "shape", "sparsity", "q", "n_in/n_out/n_s", "value b/w", "total b/w", "eff", "patches"]
    table = [head]
    for r in rows:
        table.append([r["name"], "x".join(map(str, r["shape"])), f"{r['sparsity']:.3f}", str(r["bits"]),
                      "packed" if r.get("planes") == "packed" else f"{r['n_in']}/{r['n_out']}/{r['n_s']}",
                      f"{r['value_bits_per_weight']:.4f}",
                      f"{r['total_bits_per_weight']:.4f}", f"{r['efficiency']:.4f}", str(r["patches"])])
    table.append(["TOTAL", f"{total['weights']} weights", f"{total['sparsity']:.3f}", "", "",
                  f"{total['value_bits_per_weight']:.4f}", f"{total['total_bits_per_weight']:.4f}", "", ""])
    print(_fmt_table(table, [False, False, True, True, True, True, True, True, True]))
    bound = total.get("bound_bits_per_weight")
    extra = f"; bound H(S)+(1-S)q = {bound:.4f}" if bound else ""
    print(f"compressed tensors alone: {total['total_bits'] / 8 / 1e6:.3f} MB of coded data, "
          f"{total['total_bits_per_weight']:.4f} bits per weight{extra}")


def _config(args, sparsity: float | None = None):
    return CompressConfig(sparsity=args.sparsity if sparsity is None else sparsity, bits=args.bits,
                          quantizer=args.quantizer,
                          symmetric=not args.asymmetric, group_size=args.group_size,
                          global_sparsity=args.global_sparsity, mask_codec=args.mask_codec,
                          max_n_s=args.ns, max_window=args.window, **layout_options(args))


def layout_options(args) -> dict:
    """The version-2 scale layout, codebook and small-tensor options of compress and demo."""
    rows = args.scale_rows
    return dict(scale_rows=rows if rows == "auto" else int(rows), scale_format=args.scale_format,
                error_budget=args.error_budget,
                codebook_rows=args.codebook_rows, packed_below=args.packed_below)


def _scale_rows(text: str):
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return v


def _nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def _folder_method(args) -> tuple[str, bool]:
    """(method, run the model?): a model folder is run (calibrated by default, quality report
    always); bare tensor files and compressed-tensors checkpoints (their codes are given) are
    compressed with magnitude, and asking for a calibrated method there is an error."""
    from .torch.folder import is_model_folder

    runnable = is_model_folder(args.input) and not is_compressed_tensors_folder(args.input)
    if not runnable:
        if args.method not in (None, "magnitude") or args.calibration or args.recover or args.eval \
                or args.target_bits is not None:
            what = f"--method {args.method}" if args.method not in (None, "magnitude") else \
                ("--calibration" if args.calibration else "--eval" if args.eval else
                 "--target-bits" if args.target_bits is not None else "--recover")
            kind = "a compressed-tensors checkpoint keeps its own codes" if is_model_folder(args.input) else \
                "bare tensor files are compressed with --method magnitude"
            raise ValueError(f"{args.input}: {what} needs a model to run (a Hugging Face model folder with "
                             f"config.json); {kind}")
        return "magnitude", False
    if args.method is None:
        try:  # a quantizer or scale layout the calibrated pass cannot refit: data-free masks, still measured
            check_error_feedback_quantizer(_config(args, 0.5))
        except ValueError:
            if args.recover:
                raise
            print(f"note: --quantizer {args.quantizer} / --scale-rows {args.scale_rows} / --scale-format "
                  f"{args.scale_format} is not calibrated: --method magnitude (quality report still measured)",
                  file=sys.stderr if args.json else sys.stdout)
            return "magnitude", True
    return args.method or DEFAULT_METHOD, True


def _executor(args, folder: bool = True):
    """--workers / --ray: where the shards of a folder job run (one file: in this process)."""
    import contextlib


    if not folder:
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        return contextlib.nullcontext(None)
    return make_executor(args.workers, args.ray)


def _job_progress(label: str, src: str, output: str | None = None):
    """A progress display across shards and tensors for a folder job (None for one file);
    the job announces its size with a "plan" event."""

    if not os.path.isdir(src) or (output is not None and output.endswith(".xsp")):
        return None
    return JobProgress(label)


def cmd_compress(args) -> int:
    import dataclasses

    select = SelectOptions(args.include, args.exclude, args.force_include, args.embeddings,
                           None if args.keep_dtype == "input" else args.keep_dtype)
    t0 = time.perf_counter()
    check_compress_output(args.input, args.output, args.force)  # before any work: a mistake costs no calibration
    bar = _job_progress("compress", args.input, args.output)  # its clock starts with the command
    kind = ("compressed-tensors" if is_compressed_tensors_folder(args.input) else "model") \
        if os.path.isdir(args.input) else "tensors"
    target = default_target(kind)  # what was not given (xorsparse/defaults.py)
    sparsity = target.sparsity if args.sparsity is None else args.sparsity
    if args.bits is None:
        args.bits = target.bits
    cfg = _config(args, sparsity)
    method, run_model = _folder_method(args)
    cfg = dataclasses.replace(cfg, method=method)
    records: dict = {}
    stage_seconds: dict[str, float] = {}
    prepared = None
    kept = _finished_job(args, cfg, select) if run_model else None
    if kept is not None:  # a resume with nothing left to do: no calibration, no quality report again
        records, prepared = kept
        print("resume: every output shard of this job is done and verified; calibration and quality report not "
              "run again (the records are the first run's)", file=sys.stderr if args.json else sys.stdout)
    elif run_model:
        from .torch.folder import ModelFolderError, prepare_folder

        try:
            res = prepare_folder(args.input, cfg, select, _calibration_options(args), log=None if args.json else print)
            records, prepared, stage_seconds = res.records, res.checkpoint_prepared(), res.seconds
        except (ModelFolderError, ImportError) as e:
            if args.method is not None or args.calibration or args.recover or args.eval \
                    or args.target_bits is not None:
                raise
            # the default only: a folder we cannot run is still compressed, data-free
            print(f"note: {e}; compressing with --method magnitude, without a quality report",
                  file=sys.stderr if args.json else sys.stdout)
            cfg = dataclasses.replace(cfg, method="magnitude")
    with _executor(args, os.path.isdir(args.input)) as ex:
        if bar is not None and ex is not None:
            bar.where = ex.describe()
        try:
            run = RunOptions(executor=ex, on_event=bar, progress=None if bar else Progress("compress"),
                             force=args.force)
            report = compress_checkpoint(args.input, args.output, cfg, select, run, prepared=prepared,
                                         load_mode=args.load_mode, extra=records or None)
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - t0
    tot = report.total
    if args.json:
        print(json.dumps({"file": args.output, "files": report.outputs, "bytes": tot.output_bytes,
                          "input_bytes": tot.input_bytes, "seconds": seconds, "tensors": report.rows,
                          "total": totals(report.rows), "stage_seconds": stage_seconds, **records}, indent=1))
        return 0
    print(report.selection.describe())
    if not records:  # no model run: say what chose the masks, since nothing else will
        why = "a bare tensor file has no model to run" if kind == "tensors" else "no model run"
        print(f"method magnitude (data-free: {why}); sparsity {cfg.sparsity}, {cfg.bits} bit-planes")
    for note in report.notes:
        print(note)
    if args.sparsity is None and sparsity == 0.0:
        print("pruning: the checkpoint's own zeros only (compressed-tensors input; --sparsity prunes more)")
    print_summary(report.rows, totals(report.rows))
    print()
    print_sizes(report.sizes)
    print_records(records, stage_seconds)
    low = quality_warning(records.get("quality"))
    if low:
        print(f"WARNING: low quality: {low} (threshold: docs/CALIBRATION.md, Quality report); prune less or "
              f"keep more bits, e.g. --sparsity {MODEL_TARGET.sparsity} --bits {MODEL_TARGET.bits}")
    how = f"x{tot.ratio:.2f} smaller" if tot.ratio >= 1 else f"x{1 / tot.ratio:.2f} larger"
    print(f"wrote {args.output}: {_mb(tot.output_bytes)} MB from {_mb(tot.input_bytes)} MB "
          f"({how}, whole files) in {seconds:.1f}s")
    return 0


def _calibration_options(args):
    """The calibration run the command line asks for (torch.folder.CalibrationOptions)."""
    from .torch.folder import CalibrationOptions

    return CalibrationOptions(calibration=args.calibration, samples=args.calibration_samples, seed=args.seed,
                              recover_steps=args.recover, eval_file=args.eval, target_bits=args.target_bits,
                              recover_state=_recover_state(args), recover_eval_every=getattr(args, "recover_eval_every", None))


def _recover_state(args) -> str | None:
    """Where a recovery saves its state: --recover-state, else beside the output (a rerun of
    the same command resumes); None without recovery."""
    if not getattr(args, "recover", 0):
        return None
    return args.recover_state or f"{str(args.output).rstrip('/')}.recover-state"


def _finished_job(args, cfg, select: SelectOptions):
    """(records, prepared) when the output folder already holds this whole job (torch/resume.py);
    None when there is work to do. Refuses, before any work, shards of another job in the way."""
    if args.output.endswith(".xsp") or not os.path.isdir(args.output):
        return None
    from .torch.resume import KeptShards, finished_folder_job

    records = finished_folder_job(args.input, args.output, cfg, select, _calibration_options(args),
                                  force=args.force)
    if records is None:
        return None
    # a bit budget or an --eval text the shards were not made with: the model runs again
    if (records.get("allocation") or {}).get("target_bits") != args.target_bits:
        return None
    if args.eval is not None and "eval" not in (records.get("quality") or {}):
        return None
    names = select_tensors(open_checkpoint(args.input), select.include, select.exclude, select.force_include,
                           select.embeddings).compressed
    return records, KeptShards(names, args.output)


def print_records(records: dict, seconds: dict[str, float] | None = None) -> None:
    """The calibration and quality records in a few lines; `seconds`: this run's stage
    timings (not in the file; older files carry them in the calibration record)."""
    from .torch.quality import summary_line

    cal, q = records.get("calibration"), records.get("quality")
    if cal:
        how = f"method {cal['method']}"
        if cal.get("method") != "magnitude":
            how += (f", {cal.get('samples')} calibration samples ({cal.get('source')}), "
                    f"{'sequential' if cal.get('sequential') else 'non-sequential'}")
        if cal.get("recover_steps"):
            how += f", {cal['recover_steps']} recovery steps"
        secs = seconds or cal.get("seconds") or {}
        if secs:
            how += "; " + ", ".join(f"{k} {v:.1f}s" for k, v in secs.items())
        print(how)
        for n in cal.get("notes", [])[:10]:
            print(f"note: {n}")
    if q:
        print("quality: " + summary_line(q))


def cmd_decompress(args) -> int:
    t0 = time.perf_counter()
    bar = _job_progress("decompress", args.input)
    with _executor(args, os.path.isdir(args.input)) as ex:
        if bar is not None and ex is not None:
            bar.where = ex.describe()
        try:
            size = decompress_checkpoint(args.input, args.output, None if bar else Progress("decompress"),
                                         args.format, executor=ex, on_event=bar, force=args.force)
        finally:
            if bar is not None:
                bar.close()
    print(f"wrote {args.output} ({size / 1e6:.3f} MB of weights) in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_inspect(args) -> int:
    info = inspect_file(args.input)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['file']}: xorsparse format v{info['version']}, {info['bytes'] / 1e6:.3f} MB in "
          f"{len(info['files'])} file(s): {len(info['tensors'])} compressed tensors "
          f"({_mb(info['compressed_bytes'])} MB), {info['stored_tensors']} stored as they are "
          f"({_mb(info['stored_bytes'])} MB)")
    if info["tensors"]:
        print_summary(info["tensors"], info["total"])
    if info["stored"]:
        print()
        table = [["stored as it is", "dtype", "shape", "bytes"]]
        for r in info["stored"]:
            table.append([r["name"], r["dtype"], "x".join(map(str, r["shape"])) or "scalar", str(r["bytes"])])
        print(_fmt_table(table, [False, False, False, True]))
    print_records(info)
    return 0


def cmd_verify(args) -> int:
    from .torch.folder import needs_recomputation

    t0 = time.perf_counter()
    bar = _job_progress("verify", args.input)  # its clock starts with the command (a recomputation included)
    with XspSet(args.input) as f:
        record, cfg, names = f.records.get("calibration"), f.config, list(f.tensors)
        allocation = f.records.get("allocation")
    calibrated = needs_recomputation(record)
    refs = None
    what = "the reference pruning+quantization"
    if calibrated and args.against:
        from .torch.folder import recompute_references

        print(f"verify: recomputing the {record['method']} calibration from {args.against}", file=sys.stderr)
        refs = recompute_references(names, args.against, cfg, record, args.calibration, allocation=allocation)
        what = f"a recomputation of its {record['method']} calibration" + \
               (f" and {record['recover_steps']} recovery steps" if record.get("recover_steps") else "")
    with _executor(args, os.path.isdir(args.input)) as ex:
        if bar is not None and ex is not None:
            bar.where = ex.describe()
        try:
            res = verify_checkpoint(args.input, args.against, None if bar else Progress("verify"),
                                    executor=ex, on_event=bar, references=refs)
        finally:
            if bar is not None:
                bar.close()
    n_c = sum(r["compressed"] for r in res)
    took = f" in {time.perf_counter() - t0:.1f}s"
    if args.against:
        bad = [r["name"] for r in res if not r["exact"]]
        if bad:
            hint = (" (calibrated files reproduce exactly only with the same software on the same kind of CPU; "
                    f"this one was made with torch {record.get('torch')})") if calibrated else ""
            print(f"FAILED: {len(bad)} of {len(res)} tensors differ from {what}, first {bad[0]!r}{hint}")
            return EXIT_MISMATCH
        print(f"OK: {len(res)} tensors ({n_c} compressed) checksummed, decoded and bit-identical "
              f"to {what} of {args.against}{took}")
    else:
        note = (f"; its codes come from {record['method']} calibration: --against MODEL_DIR recomputes it and "
                "compares bit for bit") if calibrated else ""
        print(f"OK: {len(res)} tensors ({n_c} compressed) checksummed and decoded{took}{note}")
    return 0


def _seed(text: str) -> int:
    """Decimal or 0x-prefixed hexadecimal seed."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def cmd_export_rtl(args) -> int:
    def on_check(ok: bool, summary: str) -> None:
        print(("check: " if ok else "check FAILED: ") + summary, file=sys.stderr if not ok else sys.stdout)

    options = RtlOptions(sharing=args.sharing, patch_bits=args.patch_bits, chunk_slices=args.chunk_slices,
                         check=args.check, simulator=args.simulator, yosys=args.yosys, clock_mhz=args.clock_mhz,
                         json_path=args.json)
    res = export_rtl(args.output, args.xsp, DecoderParams(args.n_in, args.n_out, args.ns, args.seed), options,
                     on_check=on_check)
    if res.failed:
        return EXIT_MISMATCH
    if args.output != "-":
        table = [["module", "n_in/n_out/n_s", "CHUNK_SLICES", "XOR2 unshared", "shared", "depth", "FFs",
                  "XOR2/out bit", f"Gpos/s @{args.clock_mhz:g}MHz"] + (["yosys XOR2/cells"] if args.yosys else [])
                 + ["file"]]
        for r in res.rows:
            ys = r.get("yosys")
            table.append([r["module"], f"{r['n_in']}/{r['n_out']}/{r['n_s']}", str(r["chunk_slices"]),
                          str(r["xor2_unshared"]), str(r["xor2_shared"]), str(r["depth_shared"]),
                          str(r["flip_flops"]), f"{r['xor2_per_output_bit']:.1f}", f"{r['decoded_gbit_s']:.1f}"]
                         + ([f"{ys['xor2']}/{ys['cells']}" if ys else "no yosys"] if args.yosys else []) + [r["file"]])
        print(_fmt_table(table, [False, True, True, True, True, True, True, True, True] +
                         ([True] if args.yosys else []) + [False]))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args, layout_options(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xorsparse", description="Fixed-rate lossless XOR-gate weight compression.")
    p.add_argument("--version", action="version", version=f"xorsparse {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="prune, quantize and encode a checkpoint into .xsp (a file or a model folder)")
    c.add_argument("input", help=".safetensors, .pt/.bin state dict, or a Hugging Face / sentence-transformers "
                                 "model folder (compressed-tensors checkpoints included)")
    c.add_argument("output", help="an .xsp file, or (from a model folder) the model folder to write: "
                                  "config, tokenizer and other files carried over, weights as .xsp")
    c.add_argument("-f", "--force", action="store_true",
                   help="replace an existing output file (through a symlink, the file it points to); folders: "
                        "replace output shards another job wrote (other settings or input). Without it both are "
                        "refused; shards this same job wrote are always kept (resume). An output that is an "
                        "input, a device or inside the input folder is refused even so")
    add_compress_options(c)
    c.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="compress only weight matrices whose names match (repeatable); never widens the "
                        "selection to 1-D tensors, norms or biases")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never compress tensors whose names match (repeatable)")
    c.add_argument("--force-include", action="append", default=[], metavar="GLOB",
                   help="also compress floating-point tensors whose names match even if they are 1-D, norms "
                        "or biases (repeatable)")
    c.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                   help="store embedding tables as they are (by default they are compressed like other weights)")
    c.add_argument("--keep-dtype", choices=["input", "float32", "float16", "bfloat16"], default="input",
                   help="dtype of the floating-point tensors stored as they are (default: as in the input)")
    c.add_argument("--load-mode", choices=["decode", "ondemand"], default="decode",
                   help="how transformers loads the folder: decode every weight once (default) or keep "
                        "Linear/Conv2d/Embedding weights compressed, decoding in forward")
    add_executor_options(c)
    c.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"], default=None,
                   help=f"how masks and codes are chosen (default: {DEFAULT_METHOD} for a model folder that "
                        "transformers can instantiate, calibrated on data; magnitude for tensor files)")
    c.add_argument("--calibration", metavar="FILE", default=None,
                   help="calibration data: UTF-8 text, one sample per line, or a .pt/.safetensors file of "
                        "inputs (dim 0 = samples); 1 in 8 is held out for the quality report "
                        "(default: the built-in English corpus)")
    c.add_argument("--calibration-samples", type=int, default=SAMPLES, metavar="N",
                   help=f"calibration samples to use at most (default {SAMPLES}; a seeded subset of longer files)")
    c.add_argument("--target-bits", type=float, default=None, metavar="B",
                   help="a size budget: total bits per compressed weight (mask, values, patches, scales); "
                        "sparsity and bits are chosen per layer from calibration statistics (dense quantization "
                        "among the candidates) and printed; --sparsity/--bits are then not used")
    c.add_argument("--eval", metavar="FILE", default=None,
                   help="your own held-out text (UTF-8, one sample per line, never used for calibration): the "
                        "quality report scores it too, beside the built-in in-domain and out-of-domain sets")
    c.add_argument("--recover", type=int, default=0, metavar="STEPS",
                   help="recovery: STEPS steps of distillation from the original model after compression "
                        "(default 0)")
    c.add_argument("--recover-state", metavar="PATH", default=None,
                   help="where recovery saves its state every minute and when interrupted (default: OUTPUT.recover-state); "
                        "rerunning the same command resumes from it, and it is removed when recovery ends")
    c.add_argument("--recover-eval-every", type=_nonnegative_int, default=None, metavar="N",
                   help="print the out-of-domain held-out quality every N recovery steps (default: every tenth "
                        "of the run; 0: never)")
    c.add_argument("--seed", type=int, default=0, help="seed of the sample subset and recovery order (default 0)")
    c.add_argument("--json", action="store_true", help="print the per-tensor table and the records as JSON")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="write the dense pruned-and-quantized weights: a file or a model folder")
    d.add_argument("input", help="an .xsp file or an xorsparse model folder")
    d.add_argument("output", help="a .safetensors file, a PyTorch state dict (.pt/.pth/.bin, torch.save), or, "
                                  "from a folder, the plain model folder to write")
    d.add_argument("--format", choices=["safetensors", "compressed-tensors"], default=None,
                   help="folders only: plain safetensors (default) or compressed-tensors, for folders made "
                        "from a compressed-tensors checkpoint")
    add_force_option(d)
    add_executor_options(d)
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", help="per-tensor sizes, bits per weight and codec parameters")
    i.add_argument("input", help="an .xsp file or an xorsparse model folder")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", help="checksums, full decode, optional bit-exact check against the original")
    v.add_argument("input", help="an .xsp file or an xorsparse model folder")
    v.add_argument("--against", metavar="ORIG", help="original checkpoint to recompute the reference from "
                   "(for a calibrated file: the original model folder; the calibration is recomputed)")
    v.add_argument("--calibration", metavar="FILE", default=None,
                   help="where the calibration file of a calibrated .xsp is now (default: its recorded path)")
    add_executor_options(v)
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("export-rtl", help="write synthesizable Verilog of the plane decoders (docs/HARDWARE.md)",
                       description="Verilog-2005 of the XOR-gate plane decoder: for given --n-in/--n-out/--ns/--seed, "
                                   "or one module per decoder an .xsp file uses. Prints each module's cost.")
    r.add_argument("xsp", nargs="?", help=".xsp file whose decoders to export (one .v per decoder)")
    r.add_argument("-o", "--output", required=True,
                   help="the .v file to write, a folder (one NAME.v per decoder; always a folder with an .xsp "
                        "file), or '-' for standard output")
    r.add_argument("--n-in", type=int, help="stream bits per slice (1..64)")
    r.add_argument("--n-out", type=int, help="plane positions per slice (1..1024)")
    r.add_argument("--ns", type=int, help="decoder memory in slices (default 0: the paper's network)")
    r.add_argument("--seed", type=_seed, help="matrix seed, decimal or 0x hex (default 0x5EED)")
    r.add_argument("--chunk-slices", type=int, default=None,
                   help="default of the module's CHUNK_SLICES parameter: 0 = chunk starts only from in_start "
                        "(default: the file's chunk_slices, or the library's default for n_out)")
    r.add_argument("--sharing", choices=["paar", "none"], default="paar",
                   help="paar: shared XOR sub-terms, one wire per gate (default); none: one reduction XOR per output")
    r.add_argument("--patch-bits", type=int, default=0, metavar="BITS",
                   help="add the patch stage, taking patch positions of BITS bits (0: none, the default)")
    r.add_argument("--check", type=int, default=0, metavar="SLICES",
                   help="co-simulate each module over SLICES random slices against the Python decoder first")
    r.add_argument("--simulator", choices=["auto", "iverilog", "verilator"], default="auto",
                   help="simulator for --check (default: Icarus Verilog if installed, else Verilator)")
    r.add_argument("--yosys", action="store_true", help="add Yosys generic-gate synthesis statistics (needs yosys)")
    r.add_argument("--clock-mhz", type=float, default=500.0,
                   help="clock for the derived throughput (an assumption, not a timing result; default 500)")
    r.add_argument("--json", metavar="PATH", help="also write the cost rows as JSON")
    r.set_defaults(func=cmd_export_rtl)

    m = sub.add_parser("demo", help="compress the bundled all-MiniLM-L6-v2 and compare embeddings")
    add_compress_options(m, demo=True)
    m.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"], default="sparsegpt",
                   help="how masks and codes are chosen (default sparsegpt, calibrated on the built-in corpus)")
    m.add_argument("--calibration-samples", type=int, default=DEMO_SAMPLES, metavar="N",
                   help=f"built-in calibration sentences to use (default {DEMO_SAMPLES})")
    m.add_argument("--recover", type=int, default=0, metavar="STEPS",
                   help="recovery: STEPS steps of distillation from the original model (default 0)")
    m.add_argument("--out", default=os.path.join("out", "minilm.xsp"), help="where to write the .xsp file")
    m.set_defaults(func=cmd_demo)
    return p


def add_force_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("-f", "--force", action="store_true",
                   help="replace an existing output (through a symlink, the file it points to); an output "
                        "that is an input, a device or a folder is refused even so")


def add_executor_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="model folders: shards processed in parallel by N local worker processes, one thread "
                        "each (default: the number of cores; 1 = in this process). With --ray: the CPUs of "
                        "the local Ray")
    c.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="model folders: run the shards as Ray tasks, on the cluster at ADDRESS (ray.init(ADDRESS); "
                        "every node must see the same paths) or, without ADDRESS, on a local Ray (needs "
                        "pip install 'xorsparse[ray]'). The output bytes are the same with any executor")


def add_compress_options(c: argparse.ArgumentParser, demo: bool = False) -> None:
    s, q = (DEMO_SPARSITY, DEMO_BITS) if demo else (None, None)
    c.add_argument("--sparsity", type=float, default=s,
                   help=f"fraction of weights pruned (default {s})" if demo else
                   f"fraction of weights pruned (default: {MODEL_TARGET.sparsity} for a model folder, "
                   f"{TENSOR_TARGET.sparsity} for a bare tensor file; for a compressed-tensors checkpoint its own "
                   "zeros only)")
    c.add_argument("--global", dest="global_sparsity", action="store_true",
                   help="one magnitude threshold across all compressed tensors (magnitude pruning only)")
    c.add_argument("--bits", type=int, default=q, help=f"bit-planes per weight q (default {q})" if demo else
                   f"bit-planes per weight q (default: {MODEL_TARGET.bits} for a model folder, {TENSOR_TARGET.bits} "
                   "for a bare tensor file)")
    quantizers = quantizer_choices()
    c.add_argument("--quantizer", choices=quantizers, default=quantizers[0],  # rank 0: bcq
                   help="; ".join(quantizer(q).help for q in quantizers) + ". compressed-tensors "
                        "int4/int8 weights keep their own codes either way")
    c.add_argument("--asymmetric", action="store_true", help="uniform quantizer with a zero point")
    c.add_argument("--group-size", type=int, default=None, help="columns per scale (default: one per row)")
    codecs = [mask_codec(name).help for name in mask_codec_choices()[1:]]
    c.add_argument("--mask-codec", choices=mask_codec_choices(), default=AUTO,
                   help=f"how the pruning mask is stored: {', '.join(codecs)} or {AUTO}: whichever is smallest, "
                        "per tensor, ctx only where it saves 5%% or more (default)")
    c.add_argument("--scale-rows", type=_scale_rows, default="auto", metavar="N|auto",
                   help="rows sharing one set of scales (1: per row); auto (default): the most rows whose "
                        "weight error stays within --error-budget of per-row scales, searched only where "
                        "per-row float16 scales cost 5%% or more of the tensor's bits (short rows)")
    c.add_argument("--scale-format", choices=["float16", "log8", "auto"], default="auto",
                   help="scales as float16, one byte each in the log domain (log8), or whichever costs "
                        "less within --error-budget (auto, the default; searched as --scale-rows auto)")
    c.add_argument("--error-budget", type=float, default=0.01,
                   help="for --scale-rows/--scale-format auto: allowed relative increase of ||W - Wq|| "
                        "over per-row float16 scales (default 0.01)")
    c.add_argument("--codebook-rows", type=int, default=None, metavar="N",
                   help="codebook quantizer: rows sharing one codebook (default: one per tensor)")
    c.add_argument("--packed-below", type=int, default=0, metavar="N",
                   help="tensors of fewer than N weights store one bit per kept weight instead of the "
                        "XOR code, exact where its fixed costs show (16384 suits conv nets; default 0: never)")
    c.add_argument("--ns", type=int, default=None, help="longest decoder memory n_s (0 = paper mode)")
    c.add_argument("--window", type=int, default=128,
                   help="max n_in*(n_s+1), up to 256 (default 128; 256 is smaller and slower)")


def _one_line(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    return " ".join(msg.split())


class _Stderr(logging.Handler):
    """Library warnings (e.g. a stale temporary file removed) as `xorsparse: ...` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"xorsparse: {record.getMessage()}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log = logging.getLogger("xorsparse")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr(logging.WARNING))
        log.setLevel(logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("xorsparse: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xorsparse inspect ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"xorsparse: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        if args.debug:
            raise
        print("xorsparse: error: out of memory", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        if caused_by_memory_error(e):  # e.g. a compiled kernel's SystemError wrapping a failed allocation
            print("xorsparse: error: out of memory", file=sys.stderr)
            return EXIT_ERROR
        print(f"xorsparse: internal error: {type(e).__name__}: {_one_line(e)[:300]} (run with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
