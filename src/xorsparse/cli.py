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

from .progress import Progress
from .tensor.variants import AUTO, mask_codec, mask_codec_choices, quantizer, quantizer_choices

EXIT_ERROR = 2
EXIT_MISMATCH = 1
DEFAULT_METHOD = "sparsegpt"  # calibrated default for model folders (docs/BENCHMARKS.md, quality section)
DEMO_SPARSITY, DEMO_BITS, DEMO_SAMPLES = 0.5, 4, 256
SAMPLES = 512  # = data.calibdata.SAMPLES (not imported here: the parser stays light)


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
    from .tensor import CompressConfig

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


def _folder_method(args) -> tuple[str, bool]:
    """(method, run the model?): a model folder is run (calibrated by default, quality report
    always); bare tensor files and compressed-tensors checkpoints (their codes are given) are
    compressed with magnitude, and asking for a calibrated method there is an error."""
    from .checkpoint.compressed_tensors import is_compressed_tensors_folder
    from .torch.folder import is_model_folder

    runnable = is_model_folder(args.input) and not is_compressed_tensors_folder(args.input)
    if not runnable:
        if args.method not in (None, "magnitude") or args.calibration or args.recover:
            what = f"--method {args.method}" if args.method not in (None, "magnitude") else \
                ("--calibration" if args.calibration else "--recover")
            kind = "a compressed-tensors checkpoint keeps its own codes" if is_model_folder(args.input) else \
                "bare tensor files are compressed with --method magnitude"
            raise ValueError(f"{args.input}: {what} needs a model to run (a Hugging Face model folder with "
                             f"config.json); {kind}")
        return "magnitude", False
    if args.method is None:
        from .tensor.calibrated import check_error_feedback_quantizer

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

    from .jobs.executors import make_executor

    if not folder:
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        return contextlib.nullcontext(None)
    return make_executor(args.workers, args.ray)


def _job_progress(label: str, src: str, output: str | None = None):
    """A progress display across shards and tensors for a folder job (None for one file);
    the job announces its size with a "plan" event."""
    from .jobs.executors import JobProgress

    if not os.path.isdir(src) or (output is not None and output.endswith(".xsp")):
        return None
    return JobProgress(label)


def cmd_compress(args) -> int:
    import dataclasses

    from .jobs.checkpoint import compress_checkpoint
    from .checkpoint.stats import totals
    from .checkpoint.compressed_tensors import is_compressed_tensors_folder

    sparsity = args.sparsity
    if sparsity is None:  # a compressed-tensors checkpoint is pruned already: keep its zeros, prune no more
        sparsity = 0.0 if os.path.isdir(args.input) and is_compressed_tensors_folder(args.input) else 0.9
    cfg = _config(args, sparsity)
    t0 = time.perf_counter()
    method, run_model = _folder_method(args)
    cfg = dataclasses.replace(cfg, method=method)
    records: dict = {}
    prepared = None
    if run_model:
        from .torch.folder import ModelFolderError, prepare_folder

        try:
            res = prepare_folder(args.input, cfg, include=args.include, exclude=args.exclude,
                                 force_include=args.force_include, embeddings=args.embeddings,
                                 calibration=args.calibration, recover_steps=args.recover,
                                 samples=args.calibration_samples, seed=args.seed,
                                 log=None if args.json else print)
            records, prepared = res.records, res.checkpoint_prepared()
        except (ModelFolderError, ImportError) as e:
            if args.method is not None or args.calibration or args.recover:
                raise
            # the default only: a folder we cannot run is still compressed, data-free
            print(f"note: {e}; compressing with --method magnitude, without a quality report",
                  file=sys.stderr if args.json else sys.stdout)
            cfg = dataclasses.replace(cfg, method="magnitude")
    bar = _job_progress("compress", args.input, args.output)
    with _executor(args, os.path.isdir(args.input)) as ex:
        if bar is not None and ex is not None:
            bar.where = ex.describe()
        try:
            report = compress_checkpoint(args.input, args.output, cfg, args.include, args.exclude,
                                         None if bar else Progress("compress"),
                                         force_include=args.force_include, embeddings=args.embeddings,
                                         keep_dtype=None if args.keep_dtype == "input" else args.keep_dtype,
                                         load_mode=args.load_mode, executor=ex, force=args.force,
                                         on_event=bar, prepared=prepared, extra=records or None)
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - t0
    tot = report.total
    if args.json:
        print(json.dumps({"file": args.output, "files": report.outputs, "bytes": tot.output_bytes,
                          "input_bytes": tot.input_bytes, "seconds": seconds, "tensors": report.rows,
                          "total": totals(report.rows), **records}, indent=1))
        return 0
    print(report.selection.describe())
    for note in report.notes:
        print(note)
    if args.sparsity is None and sparsity == 0.0:
        print("pruning: the checkpoint's own zeros only (compressed-tensors input; --sparsity prunes more)")
    print_summary(report.rows, totals(report.rows))
    print()
    print_sizes(report.sizes)
    print_records(records)
    how = f"x{tot.ratio:.2f} smaller" if tot.ratio >= 1 else f"x{1 / tot.ratio:.2f} larger"
    print(f"wrote {args.output}: {_mb(tot.output_bytes)} MB from {_mb(tot.input_bytes)} MB "
          f"({how}, whole files) in {seconds:.1f}s")
    return 0


def print_records(records: dict) -> None:
    """The calibration and quality records in a few lines."""
    from .torch.quality import summary_line

    cal, q = records.get("calibration"), records.get("quality")
    if cal:
        how = f"method {cal['method']}"
        if cal.get("method") != "magnitude":
            how += (f", {cal.get('samples')} calibration samples ({cal.get('source')}), "
                    f"{'sequential' if cal.get('sequential') else 'non-sequential'}")
        if cal.get("recover_steps"):
            how += f", {cal['recover_steps']} recovery steps"
        secs = cal.get("seconds") or {}
        if secs:
            how += "; " + ", ".join(f"{k} {v:.1f}s" for k, v in secs.items())
        print(how)
        for n in cal.get("notes", [])[:10]:
            print(f"note: {n}")
    if q:
        print("quality: " + summary_line(q))


def cmd_decompress(args) -> int:
    from .jobs.checkpoint import decompress_checkpoint

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
    print(f"wrote {args.output} ({size / 1e6:.3f} MB of weights)")
    return 0


def cmd_inspect(args) -> int:
    from .checkpoint.inspect import inspect_file

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
    from .checkpoint.verify import verify_checkpoint
    from .checkpoint.xspset import XspSet
    from .torch.folder import needs_recomputation

    with XspSet(args.input) as f:
        record, cfg, names = f.records.get("calibration"), f.config, list(f.tensors)
    calibrated = needs_recomputation(record)
    refs = None
    what = "the reference pruning+quantization"
    if calibrated and args.against:
        from .torch.folder import recompute_references

        refs = recompute_references(names, args.against, cfg, record, args.calibration)
        what = f"a recomputation of its {record['method']} calibration" + \
               (f" and {record['recover_steps']} recovery steps" if record.get("recover_steps") else "")
    bar = _job_progress("verify", args.input)
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
    if args.against:
        bad = [r["name"] for r in res if not r["exact"]]
        if bad:
            hint = (" (calibrated files reproduce exactly only with the same software on the same kind of CPU; "
                    f"this one was made with torch {record.get('torch')})") if calibrated else ""
            print(f"FAILED: {len(bad)} of {len(res)} tensors differ from {what}, first {bad[0]!r}{hint}")
            return EXIT_MISMATCH
        print(f"OK: {len(res)} tensors ({n_c} compressed) checksummed, decoded and bit-identical "
              f"to {what} of {args.against}")
    else:
        note = (f"; its codes come from {record['method']} calibration: --against MODEL_DIR recomputes it and "
                "compares bit for bit") if calibrated else ""
        print(f"OK: {len(res)} tensors ({n_c} compressed) checksummed and decoded{note}")
    return 0


def _seed(text: str) -> int:
    """Decimal or 0x-prefixed hexadecimal seed."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def cmd_export_rtl(args) -> int:
    from .rtl.cost import decoder_cost
    from .rtl.export import decoder_from_params, decoders_in_file, write_text_atomic
    from .rtl.sim import cosim_planes, random_stream_plane
    from .rtl.netlist import build_netlist
    from .rtl.verilog import decoder_verilog, module_name_for

    explicit = [args.n_in, args.n_out]
    if args.xsp is not None:
        if any(v is not None for v in explicit + [args.ns, args.seed]):
            raise ValueError("give either an .xsp file or --n-in/--n-out/--ns/--seed, not both")
        uses = decoders_in_file(args.xsp)
        if not uses:
            raise ValueError(f"{args.xsp}: no XOR-coded planes (no compressed tensors, or all packed), "
                             "so no decoders to export")
        if args.chunk_slices is not None:
            for u in uses:
                u.chunk_slices.clear()
                u.chunk_slices[args.chunk_slices] += 1
        source = os.path.basename(args.xsp)
    else:
        if args.n_in is None or args.n_out is None:
            raise ValueError("give an .xsp file, or at least --n-in and --n-out")
        from .codec.xornet import DEFAULT_SEED

        uses = [decoder_from_params(args.n_in, args.n_out, 0 if args.ns is None else args.ns,
                                    DEFAULT_SEED if args.seed is None else args.seed, args.chunk_slices)]
        source = None
    to_stdout = args.output == "-"
    as_dir = not to_stdout and (args.xsp is not None or os.path.isdir(args.output) or args.output.endswith(os.sep))
    if to_stdout and len(uses) > 1:
        raise ValueError(f"{len(uses)} decoders to write: give a folder with -o, not '-'")
    if as_dir:
        os.makedirs(args.output, exist_ok=True)
    rows = []
    for u in uses:
        d = u.decoder
        cs = u.default_chunk_slices
        net = build_netlist(d.window_matrix(), "paar") if args.sharing == "paar" else None
        label = source
        if source and len(u.planes):
            label = f"{source}: {len(u.planes)} plane(s), first {u.planes[0]}"
            if len(u.chunk_slices) > 1:
                label += f"; chunk_slices differ ({sorted(u.chunk_slices)}), so in_start must mark chunks"
        text = decoder_verilog(d, sharing=args.sharing, chunk_slices=cs, netlist=net, source=label,
                               patch_bits=args.patch_bits)
        if args.check:
            # short checks still cross chunk starts: CHUNK_SLICES is overridden to 64 for them
            check_cs = cs if cs and args.check >= 2 * cs else 64
            plane = random_stream_plane(d, args.check, chunk_slices=check_cs, seed=args.check,
                                        partial=min(3, d.n_out - 1), patch_rate=0.01 if args.patch_bits else 0.0)
            try:
                res = cosim_planes([plane], mode="counter" if cs else "start", sharing=args.sharing,
                                   simulator=args.simulator, netlist=net, patch_bits=args.patch_bits)
            except RuntimeError as e:  # no simulator, or it failed: first line here, all with --debug
                if args.debug:
                    raise
                raise ValueError(f"--check: {str(e).splitlines()[0]}") from None
            print(("check: " if res.ok else "check FAILED: ") + res.summary(), file=sys.stderr if not res.ok else sys.stdout)
            if not res.ok:
                return EXIT_MISMATCH
        name = module_name_for(d)
        if to_stdout:
            sys.stdout.write(text)
            path = "-"
        else:
            path = os.path.join(args.output, name + ".v") if as_dir else args.output
            write_text_atomic(path, text)
        cost = decoder_cost(d, chunk_slices=cs, clock_mhz=args.clock_mhz, yosys=args.yosys, netlist=net,
                            patch_bits=args.patch_bits)
        row = cost.as_dict()
        row.update(module=name, file=path, planes=len(u.planes))
        rows.append(row)
    if not to_stdout:
        table = [["module", "n_in/n_out/n_s", "CHUNK_SLICES", "XOR2 unshared", "shared", "depth", "FFs",
                  "XOR2/out bit", f"Gpos/s @{args.clock_mhz:g}MHz"] + (["yosys XOR2/cells"] if args.yosys else [])
                 + ["file"]]
        for r in rows:
            ys = r.get("yosys")
            table.append([r["module"], f"{r['n_in']}/{r['n_out']}/{r['n_s']}", str(r["chunk_slices"]),
                          str(r["xor2_unshared"]), str(r["xor2_shared"]), str(r["depth_shared"]),
                          str(r["flip_flops"]), f"{r['xor2_per_output_bit']:.1f}", f"{r['decoded_gbit_s']:.1f}"]
                         + ([f"{ys['xor2']}/{ys['cells']}" if ys else "no yosys"] if args.yosys else []) + [r["file"]])
        print(_fmt_table(table, [False, True, True, True, True, True, True, True, True] +
                         ([True] if args.yosys else []) + [False]))
    if args.json:
        from .format.output import write_bytes

        write_bytes(args.json, (json.dumps(rows, indent=1) + "\n").encode())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args, layout_options(args))


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

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
    c.add_argument("--recover", type=int, default=0, metavar="STEPS",
                   help="recovery: STEPS steps of distillation from the original model after compression "
                        "(default 0)")
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
    s, q = (DEMO_SPARSITY, DEMO_BITS) if demo else (None, 2)
    c.add_argument("--sparsity", type=float, default=s,
                   help=f"fraction of weights pruned (default {s})" if demo else
                   "fraction of weights pruned (default 0.9; for a compressed-tensors checkpoint, default: its "
                   "own zeros only)")
    c.add_argument("--global", dest="global_sparsity", action="store_true",
                   help="one magnitude threshold across all compressed tensors (magnitude pruning only)")
    c.add_argument("--bits", type=int, default=q, help=f"bit-planes per weight q (default {q})")
    quantizers = quantizer_choices()
    c.add_argument("--quantizer", choices=quantizers, default=quantizers[0],  # rank 0: bcq
                   help="; ".join(quantizer(q).help for q in quantizers) + ". compressed-tensors "
                        "int4/int8 weights keep their own codes either way")
    c.add_argument("--asymmetric", action="store_true", help="uniform quantizer with a zero point")
    c.add_argument("--group-size", type=int, default=None, help="columns per scale (default: one per row)")
    codecs = [mask_codec(name).help for name in mask_codec_choices()[1:]]
    c.add_argument("--mask-codec", choices=mask_codec_choices(), default=AUTO,
                   help=f"how the pruning mask is stored: {', '.join(codecs)} or {AUTO}: whichever is smallest, "
                        "per tensor (default)")
    c.add_argument("--scale-rows", type=_scale_rows, default=1, metavar="N|auto",
                   help="rows sharing one set of scales (default 1: per row); auto: the most rows whose "
                        "weight error stays within --error-budget of per-row scales")
    c.add_argument("--scale-format", choices=["float16", "log8", "auto"], default="float16",
                   help="scales as float16 (default), one byte each in the log domain (log8), or "
                        "whichever costs less within --error-budget (auto)")
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


def _caused_by_memory_error(e: BaseException | None) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, MemoryError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


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
        if _caused_by_memory_error(e):  # e.g. a compiled kernel's SystemError wrapping a failed allocation
            print("xorsparse: error: out of memory", file=sys.stderr)
            return EXIT_ERROR
        print(f"xorsparse: internal error: {type(e).__name__}: {_one_line(e)[:300]} (run with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
