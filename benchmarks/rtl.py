"""Hardware cost of the decoders the default rate selection picks, and their co-simulation.

    python -m benchmarks rtl [--cosim-slices 100000] [--json PATH] [--markdown PATH]

For each sparsity, `rates.choose` picks a decoder on a random plane (Bernoulli care mask,
fair-coin bits) exactly as compression does; the paper-mode row is `choose(...,
max_n_s=0)` at 90%. Each decoder's cost comes from the netlist export-rtl writes (and
Yosys, where installed). With --cosim-slices N, a random plane of N slices (the last one
partial) is encoded with that decoder and its stream and patch list run through the
generated Verilog with its patch stage in a simulator; every output bit is compared with
decode_plane (the decoded plane itself, plus the last slice's dropped tail).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xorsparse.codec.plane import default_chunk_slices, encode_plane
from xorsparse.codec.rates import choose
from xorsparse.rtl.cost import DEFAULT_CLOCK_MHZ, decoder_cost, yosys_available
from xorsparse.rtl.netlist import build_netlist
from xorsparse.rtl.sim import CosimOptions, available_simulators, cosim_planes

from ._report import markdown_table, print_table, write_json, write_text

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
PAPER_SPARSITY = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positions", type=int, default=1 << 21,
                   help="plane length the rate selection sees (default 2097152)")
    p.add_argument("--sparsity", type=float, nargs="*", default=list(SPARSITIES))
    p.add_argument("--no-paper", action="store_true", help="skip the n_s = 0 row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock-mhz", type=float, default=DEFAULT_CLOCK_MHZ,
                   help="clock for the derived throughput (an assumption, not a timing result)")
    p.add_argument("--no-yosys", action="store_true", help="skip Yosys synthesis statistics")
    p.add_argument("--cosim-slices", type=int, default=0, metavar="N",
                   help="also co-simulate each decoder over a random plane of N slices (0: no simulation)")
    p.add_argument("--simulator", choices=["auto", "iverilog", "verilator"], default="auto",
                   help="for --cosim-slices (auto: Verilator if installed, fastest on long runs; else Icarus)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.set_defaults(run=run)


def cosim_row(dec, sparsity: float, n_slices: int, seed: int, simulator: str, netlist) -> dict:
    """Encode a random plane of n_slices (last slice 3 positions short) and co-simulate its stream."""
    rng = np.random.default_rng(seed)
    length = n_slices * dec.n_out - min(3, dec.n_out - 1)
    care = rng.random(length) >= sparsity
    bits = rng.integers(0, 2, length, dtype=np.uint8)
    enc = encode_plane(bits, care, dec, verify=True)
    patch_bits = max(24, (enc.n_slices * dec.n_out).bit_length() + 1)
    res = cosim_planes([enc], mode="counter",
                       options=CosimOptions(simulator=simulator, netlist=netlist, patch_bits=patch_bits))
    print(f"  co-simulation: {res.summary()}; {enc.patches.size} patches", flush=True)
    return {"cosim_slices": res.n_slices, "cosim_bits": res.output_bits, "cosim_patches": int(enc.patches.size),
            "cosim_chunks": -(-enc.n_slices // enc.chunk_slices),
            "cosim_ok": res.ok, "cosim_mismatched_bits": res.mismatched_bits, "cosim_simulator": res.simulator,
            "cosim_compile_s": res.compile_seconds, "cosim_run_s": res.run_seconds}


def run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    n = args.positions
    simulator = args.simulator
    if args.cosim_slices and simulator == "auto":
        have = available_simulators()
        simulator = "verilator" if "verilator" in have else "auto"
    use_yosys = not args.no_yosys and yosys_available()
    if not args.no_yosys and not use_yosys:
        print("note: yosys not found, synthesis columns left empty (Debian: apt-get install yosys)")
    plan = [(s, "auto") for s in args.sparsity]
    if not args.no_paper:
        plan.append((PAPER_SPARSITY, "paper"))
    rows = []
    for k, (s, mode) in enumerate(plan):
        care = rng.random(n) >= s
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        dec = choose(bits, care, max_n_s=0) if mode == "paper" else choose(bits, care)
        cs = default_chunk_slices(dec.n_out)
        t0 = time.perf_counter()
        net = build_netlist(dec.window_matrix(), "paar")
        t_net = time.perf_counter() - t0
        cost = decoder_cost(dec, chunk_slices=cs, clock_mhz=args.clock_mhz, yosys=use_yosys, netlist=net)
        row = {"sparsity": s, "mode": mode, "decoder": f"{dec.n_in}/{dec.n_out}/{dec.n_s}",
               "netlist_s": t_net, **cost.as_dict()}
        row["sharing_ratio"] = cost.xor2_shared / cost.xor2_unshared
        row["stream_bits_per_position"] = dec.n_in / dec.n_out
        ys = cost.yosys or {}
        row["yosys_xor2"] = ys.get("xor2")
        row["yosys_other"] = ys.get("other_logic")
        row["yosys_ffs"] = ys.get("flip_flops")
        row["yosys_cells"] = ys.get("cells")
        print(f"  S={s} {mode}: {row['decoder']} XOR2 {cost.xor2_unshared} -> {cost.xor2_shared} "
              f"(depth {cost.depth_shared}), {cost.flip_flops} FFs", flush=True)
        if args.cosim_slices:
            row.update(cosim_row(dec, s, args.cosim_slices, args.seed + 1000 + k, simulator, net))
        rows.append(row)
    print()
    print(f"decoders picked by rates.choose on random planes of {n} positions; throughput at an assumed "
          f"{args.clock_mhz:g} MHz, one slice per cycle; XOR2 = two-input XOR gates")
    columns = [
        ("sparsity", "S", ".2f"), ("mode", "mode", "s"), ("decoder", "n_in/n_out/n_s", "s"),
        ("window", "W", "d"), ("xor2_unshared", "XOR2 unshared", "d"), ("xor2_shared", "XOR2 shared", "d"),
        ("sharing_ratio", "shared/unshared", ".2f"), ("depth_unshared", "depth", "d"),
        ("depth_shared", "depth shared", "d"), ("flip_flops", "FFs", "d"),
        ("xor2_per_output_bit", "XOR2 per out bit", ".1f"), ("out_bits_per_cycle", "out bits/cycle", "d"),
        ("decoded_gbit_s", "Gpos/s", ".1f"), ("stream_gbit_s", "stream Gbit/s", ".2f"),
    ]
    if use_yosys:
        columns += [("yosys_xor2", "yosys XOR2", "d"), ("yosys_other", "yosys other", "d"),
                    ("yosys_ffs", "yosys FFs", "d")]
    if args.cosim_slices:
        columns += [("cosim_slices", "cosim slices", "d"), ("cosim_chunks", "chunks", "d"),
                    ("cosim_patches", "patches", "d"),
                    ("cosim_ok", "bit-exact", ""), ("cosim_simulator", "simulator", "s")]
    print_table(rows, columns)
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, columns))
        print(f"wrote {args.markdown}")
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0 if all(r.get("cosim_ok", True) for r in rows) else 1
