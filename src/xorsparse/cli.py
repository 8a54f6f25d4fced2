"""The `xorsparse` command: compress, decompress, inspect, verify, demo.

Errors print one line naming what is wrong and exit non-zero; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from .progress import Progress

EXIT_ERROR = 2
EXIT_MISMATCH = 1
DEFAULT_METHOD = "sparsegpt"  # calibrated default for model folders (docs/BENCHMARKS.md, quality section)
DEMO_SPARSITY, DEMO_BITS, DEMO_SAMPLES = 0.5, 4, 256


def _fmt_table(rows: list[list[str]], right: Sequence[bool]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_summary(rows: list[dict], total: dict) -> None:
    head = ["tensor", "shape", "sparsity", "q", "n_in/n_out/n_s", "value b/w", "total b/w", "eff", "patches"]
    table = [head]
    for r in rows:
        table.append([r["name"], "x".join(map(str, r["shape"])), f"{r['sparsity']:.3f}", str(r["bits"]),
                      f"{r['n_in']}/{r['n_out']}/{r['n_s']}", f"{r['value_bits_per_weight']:.4f}",
                      f"{r['total_bits_per_weight']:.4f}", f"{r['efficiency']:.4f}", str(r["patches"])])
    table.append(["TOTAL", f"{total['weights']} weights", f"{total['sparsity']:.3f}", "", "",
                  f"{total['value_bits_per_weight']:.4f}", f"{total['total_bits_per_weight']:.4f}", "", ""])
    print(_fmt_table(table, [False, False, True, True, True, True, True, True, True]))
    bound = total.get("bound_bits_per_weight")
    extra = f"; bound H(S)+(1-S)q = {bound:.4f}" if bound else ""
    print(f"compressed tensors: {total['total_bits'] / 8 / 1e6:.3f} MB vs {total['weights'] * 2 / 1e6:.3f} MB "
          f"fp16 dense (x{total['ratio_to_fp16']:.1f} smaller){extra}")


def _config(args):
    from .tensor import CompressConfig

    return CompressConfig(sparsity=args.sparsity, bits=args.bits, quantizer=args.quantizer,
                          symmetric=not args.asymmetric, group_size=args.group_size,
                          global_sparsity=args.global_sparsity, mask_codec=args.mask_codec,
                          max_n_s=args.ns, max_window=args.window)


def _folder_method(args) -> tuple[str, bool]:
    """(method, run the model?): a model folder is run (calibrated by default, quality report
    always); bare tensor files are compressed with magnitude (a calibrated method is an error)."""
    from .torch.folder import is_model_folder

    if not is_model_folder(args.input):
        if args.method not in (None, "magnitude") or args.calibration or args.recover:
            what = f"--method {args.method}" if args.method not in (None, "magnitude") else \
                ("--calibration" if args.calibration else "--recover")
            raise ValueError(f"{args.input}: {what} needs a model to run (a Hugging Face model folder with "
                             "config.json); bare tensor files are compressed with --method magnitude")
        return "magnitude", False
    return args.method or DEFAULT_METHOD, True


def cmd_compress(args) -> int:
    import dataclasses

    from .io.checkpoint import compress_checkpoint, totals

    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise ValueError("output would overwrite the input")
    t0 = time.perf_counter()
    method, run_model = _folder_method(args)
    cfg = dataclasses.replace(_config(args), method=method)
    records: dict = {}
    if run_model:
        from .torch.folder import ModelFolderError, compress_folder

        try:
            rows, res = compress_folder(args.input, args.output, cfg, include=args.include, exclude=args.exclude,
                                        progress=Progress("compress"), calibration=args.calibration,
                                        recover_steps=args.recover, samples=args.calibration_samples,
                                        seed=args.seed, log=None if args.json else print)
            records = {"calibration": res.calibration, "quality": res.quality}
        except (ModelFolderError, ImportError) as e:
            if args.method is not None or args.calibration or args.recover:
                raise
            # the default only: a folder we cannot run is still compressed, data-free
            print(f"note: {e}; compressing with --method magnitude, without a quality report", file=sys.stderr)
            run_model = False
            cfg = dataclasses.replace(cfg, method="magnitude")
    if not run_model:
        rows = compress_checkpoint(args.input, args.output, cfg, args.include, args.exclude, Progress("compress"))
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"file": args.output, "bytes": os.path.getsize(args.output), "seconds": seconds,
                          "tensors": rows, "total": totals(rows), **records}, indent=1))
        return 0
    print_summary(rows, totals(rows))
    print_records(records)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.3f} MB) in {seconds:.1f}s")
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
    from .io.checkpoint import decompress_checkpoint

    size = decompress_checkpoint(args.input, args.output, Progress("decompress"))
    print(f"wrote {args.output} ({size / 1e6:.3f} MB)")
    return 0


def cmd_inspect(args) -> int:
    from .io.checkpoint import inspect_file

    info = inspect_file(args.input)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['file']}: xorsparse format v{info['version']}, {info['bytes'] / 1e6:.3f} MB, "
          f"{len(info['tensors'])} compressed and {info['stored_tensors']} stored tensors")
    if info["tensors"]:
        print_summary(info["tensors"], info["total"])
    print_records(info)
    return 0


def cmd_verify(args) -> int:
    from .io.checkpoint import verify_checkpoint
    from .io.container import XspFile
    from .torch.folder import needs_recomputation

    with XspFile(args.input) as f:
        record, cfg, names = f.records.get("calibration"), f.config, list(f.tensors)
    calibrated = needs_recomputation(record)
    refs = None
    what = "the reference pruning+quantization"
    if calibrated and args.against:
        from .torch.folder import recompute_references

        refs = recompute_references(names, args.against, cfg, record, args.calibration)
        what = f"a recomputation of its {record['method']} calibration" + \
               (f" and {record['recover_steps']} recovery steps" if record.get("recover_steps") else "")
    res = verify_checkpoint(args.input, args.against, Progress("verify"), references=refs)
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


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xorsparse", description="Fixed-rate lossless XOR-gate weight compression.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="prune, quantize and encode a checkpoint into .xsp")
    c.add_argument("input", help=".safetensors, .pt/.bin state dict, or a Hugging Face model folder")
    c.add_argument("output", help="the .xsp file to write")
    add_compress_options(c)
    c.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="compress only tensors whose names match (repeatable)")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never compress tensors whose names match (repeatable)")
    c.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"], default=None,
                   help=f"how masks and codes are chosen (default: {DEFAULT_METHOD} for a model folder that "
                        "transformers can instantiate, calibrated on data; magnitude for tensor files)")
    c.add_argument("--calibration", metavar="FILE", default=None,
                   help="calibration data: UTF-8 text, one sample per line, or a .pt/.safetensors file of "
                        "inputs (dim 0 = samples); 1 in 8 is held out for the quality report "
                        "(default: the built-in English corpus)")
    c.add_argument("--calibration-samples", type=int, default=512, metavar="N",
                   help="calibration samples to use at most (default 512; a seeded subset of longer files)")
    c.add_argument("--recover", type=int, default=0, metavar="STEPS",
                   help="recovery: STEPS steps of distillation from the original model after compression "
                        "(default 0)")
    c.add_argument("--seed", type=int, default=0, help="seed of the sample subset and recovery order (default 0)")
    c.add_argument("--json", action="store_true", help="print the per-tensor table and the records as JSON")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="write the dense pruned-and-quantized weights as safetensors")
    d.add_argument("input")
    d.add_argument("output")
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", help="per-tensor sizes, bits per weight and codec parameters")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", help="checksums, full decode, optional bit-exact check against the original")
    v.add_argument("input")
    v.add_argument("--against", metavar="ORIG", help="original checkpoint to recompute the reference from "
                   "(for a calibrated file: the original model folder; the calibration is recomputed)")
    v.add_argument("--calibration", metavar="FILE", default=None,
                   help="where the calibration file of a calibrated .xsp is now (default: its recorded path)")
    v.set_defaults(func=cmd_verify)

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


def add_compress_options(c: argparse.ArgumentParser, demo: bool = False) -> None:
    s, q = (DEMO_SPARSITY, DEMO_BITS) if demo else (0.9, 2)
    c.add_argument("--sparsity", type=float, default=s, help=f"fraction of weights pruned (default {s})")
    c.add_argument("--global", dest="global_sparsity", action="store_true",
                   help="one magnitude threshold across all compressed tensors (magnitude pruning only)")
    c.add_argument("--bits", type=int, default=q, help=f"bit-planes per weight q (default {q})")
    c.add_argument("--quantizer", choices=["bcq", "uniform"], default="bcq")
    c.add_argument("--asymmetric", action="store_true", help="uniform quantizer with a zero point")
    c.add_argument("--group-size", type=int, default=None, help="columns per scale (default: one per row)")
    c.add_argument("--mask-codec", choices=["auto", "bitmask", "entropy"], default="auto")
    c.add_argument("--ns", type=int, default=None, help="longest decoder memory n_s (0 = paper mode)")
    c.add_argument("--window", type=int, default=128,
                   help="max n_in*(n_s+1), up to 256 (default 128; 256 is smaller and slower)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("xorsparse: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError) as e:
        if args.debug:
            raise
        msg = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.filename}: {e.strerror}"
        print(f"xorsparse: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
