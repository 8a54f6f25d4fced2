"""The `xorsparse` command: compress, decompress, inspect, verify, demo.

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

EXIT_ERROR = 2
EXIT_MISMATCH = 1


class Progress:
    """A one-line progress bar on a terminal (stderr), silent otherwise."""

    def __init__(self, label: str, enabled: bool | None = None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def __call__(self, i: int, n: int, name: str) -> None:
        if not self.enabled:
            return
        width = 30
        done = int(width * i / n) if n else width
        el = time.perf_counter() - self.t0
        line = f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {i}/{n} {el:5.1f}s {name[:50]:<50}"
        sys.stderr.write(line)
        if i >= n:
            sys.stderr.write("\n")
        sys.stderr.flush()


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


def cmd_compress(args) -> int:
    from .io.checkpoint import compress_checkpoint, totals

    cfg = _config(args)
    t0 = time.perf_counter()
    rows = compress_checkpoint(args.input, args.output, cfg, args.include, args.exclude,
                               Progress("compress"), force=args.force)
    print_summary(rows, totals(rows))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.3f} MB) in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_decompress(args) -> int:
    from .io.checkpoint import decompress_checkpoint

    size = decompress_checkpoint(args.input, args.output, Progress("decompress"), force=args.force)
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
    return 0


def cmd_verify(args) -> int:
    from .io.checkpoint import verify_checkpoint

    res = verify_checkpoint(args.input, args.against, Progress("verify"))
    n_c = sum(r["compressed"] for r in res)
    if args.against:
        bad = [r["name"] for r in res if not r["exact"]]
        if bad:
            print(f"FAILED: {len(bad)} of {len(res)} tensors differ from the reference, first {bad[0]!r}")
            return EXIT_MISMATCH
        print(f"OK: {len(res)} tensors ({n_c} compressed) checksummed, decoded and bit-identical "
              f"to the reference pruning+quantization of {args.against}")
    else:
        print(f"OK: {len(res)} tensors ({n_c} compressed) checksummed and decoded")
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
    add_force_option(c)
    add_compress_options(c)
    c.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="compress only tensors whose names match (repeatable)")
    c.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never compress tensors whose names match (repeatable)")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="write the dense pruned-and-quantized weights as safetensors")
    d.add_argument("input", help="the .xsp file to decode")
    d.add_argument("output", help="the .safetensors file to write")
    add_force_option(d)
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", help="per-tensor sizes, bits per weight and codec parameters")
    i.add_argument("input", help="the .xsp file to describe")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", help="checksums, full decode, optional bit-exact check against the original")
    v.add_argument("input", help="the .xsp file to check")
    v.add_argument("--against", metavar="ORIG", help="original checkpoint to recompute the reference from")
    v.set_defaults(func=cmd_verify)

    m = sub.add_parser("demo", help="compress the bundled all-MiniLM-L6-v2 and compare embeddings")
    add_compress_options(m, demo=True)
    m.add_argument("--out", default=os.path.join("out", "minilm.xsp"), help="where to write the .xsp file")
    m.set_defaults(func=cmd_demo)
    return p


def add_force_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("-f", "--force", action="store_true",
                   help="replace an existing output (through a symlink, the file it points to); an output "
                        "that is an input, a device or a folder is refused even so")


def add_compress_options(c: argparse.ArgumentParser, demo: bool = False) -> None:
    c.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned (default 0.9)")
    c.add_argument("--global", dest="global_sparsity", action="store_true",
                   help="one magnitude threshold across all compressed tensors")
    c.add_argument("--bits", type=int, default=2, help="bit-planes per weight q (default 2)")
    c.add_argument("--quantizer", choices=["bcq", "uniform"], default="bcq",
                   help="binary coding (bcq, q <= 4) or uniform integers (q <= 8)")
    c.add_argument("--asymmetric", action="store_true", help="uniform quantizer with a zero point")
    c.add_argument("--group-size", type=int, default=None, help="columns per scale (default: one per row)")
    c.add_argument("--mask-codec", choices=["auto", "bitmask", "entropy"], default="auto",
                   help="how the pruning mask is stored (auto: the smaller)")
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
    except (ValueError, TypeError, OSError, ImportError) as e:
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
        print(f"xorsparse: internal error: {type(e).__name__}: {_one_line(e)[:300]} (run with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
