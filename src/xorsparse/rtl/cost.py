"""What a generated decoder costs in hardware: gates, flip-flops, depth, throughput.

Counts come from the netlist itself (exact for the generated Verilog before any synthesis
tool touches it). Throughput is derived at a stated clock (DEFAULT_CLOCK_MHZ), not from
timing analysis: the decoder accepts one slice per cycle, so it emits n_out plane
positions per cycle whatever the data. If Yosys is installed, `yosys_stat` adds its
generic-gate synthesis (`synth -flatten; stat`): ABC re-maps the XOR network into its own
cells ($_XOR_, $_XNOR_, $_AND_, ... and flip-flops), a second opinion on the size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np

from ..codec.xornet import XorDecoder
from .netlist import build_netlist
from .verilog import decoder_verilog, module_name_for

DEFAULT_CLOCK_MHZ = 500.0
LUT_INPUTS = 6


@dataclass(frozen=True)
class DecoderCost:
    n_in: int
    n_out: int
    n_s: int
    seed: int
    chunk_slices: int  # CHUNK_SLICES of the module (0: no chunk counter)
    window: int
    xor2_unshared: int  # two-input XOR gates, every output its own tree
    xor2_shared: int  # after Paar's pair extraction (what export-rtl writes)
    depth_unshared: int  # XOR levels, balanced trees
    depth_shared: int
    mask_and2: int  # AND gates that zero the history at a chunk start (n_in * n_s)
    counter_bits: int  # chunk counter flip-flops
    flip_flops: int  # history + output register + out_valid + counter (+ patch stage base)
    lut6_unshared: int  # estimate: ceil((weight - 1) / 5) six-input LUTs per output, no sharing
    clock_mhz: float
    patch_bits: int = 0  # patch stage position width (0: no patch stage)
    yosys: dict | None = field(default=None)

    @property
    def out_bits_per_cycle(self) -> int:
        return self.n_out

    @property
    def xor2_per_output_bit(self) -> float:
        """Shared XOR-2 gates per decoded plane position (per output bit per cycle)."""
        return self.xor2_shared / self.n_out

    @property
    def decoded_gbit_s(self) -> float:
        """Plane positions decoded per second at clock_mhz, in billions."""
        return self.n_out * self.clock_mhz / 1e3

    @property
    def stream_gbit_s(self) -> float:
        """Stream bits read per second at clock_mhz, in billions."""
        return self.n_in * self.clock_mhz / 1e3

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(out_bits_per_cycle=self.out_bits_per_cycle, xor2_per_output_bit=self.xor2_per_output_bit,
                 decoded_gbit_s=self.decoded_gbit_s, stream_gbit_s=self.stream_gbit_s)
        return d


def counter_bits(chunk_slices: int) -> int:
    return 0 if chunk_slices <= 0 else max(1, (chunk_slices - 1).bit_length())


def decoder_cost(dec: XorDecoder, *, chunk_slices: int = 0, clock_mhz: float = DEFAULT_CLOCK_MHZ,
                 yosys: bool = False, netlist=None, patch_bits: int = 0) -> DecoderCost:
    """Cost of `dec` as export-rtl generates it; yosys=True adds Yosys statistics when installed.

    Gate counts are the XOR network's; a patch stage (patch_bits > 0) adds patch_bits
    flip-flops, a subtractor, a comparator and a bit decoder, counted only by Yosys.
    """
    g = dec.window_matrix()
    plain = build_netlist(g, "none")
    shared = netlist if netlist is not None else build_netlist(g, "paar")
    weights = g.sum(axis=1).astype(np.int64)
    hist = dec.n_in * dec.n_s
    cbits = counter_bits(chunk_slices) if dec.n_s > 0 else 0
    ys = None
    if yosys and yosys_available():
        ys = yosys_stat(decoder_verilog(dec, chunk_slices=chunk_slices, netlist=shared, patch_bits=patch_bits),
                        module_name_for(dec))
    return DecoderCost(
        dec.n_in, dec.n_out, dec.n_s, int(dec.seed), chunk_slices, dec.window,
        plain.n_gates, shared.n_gates, plain.depth, shared.depth, hist, cbits,
        hist + dec.n_out + 1 + cbits + patch_bits,
        int(np.sum(-(-np.maximum(weights - 1, 0) // (LUT_INPUTS - 1)))), clock_mhz, patch_bits, ys,
    )


def yosys_available() -> bool:
    return shutil.which("yosys") is not None


def yosys_stat(verilog: str, top: str, timeout: float = 600) -> dict:
    """Yosys `synth -flatten` to its generic gate library, then `stat`: cell counts by type.

    Returns {"cells": total, "by_type": {...}, "xor2": XOR + XNOR cells, "flip_flops": ...,
    "other_logic": the rest}.
    """
    with tempfile.TemporaryDirectory(prefix="xsp-yosys-") as d:
        src = os.path.join(d, "dut.v")
        with open(src, "w") as f:
            f.write(verilog)
        out = os.path.join(d, "stat.json")
        script = f"read_verilog {src}; hierarchy -top {top}; synth -flatten -top {top}; tee -q -o {out} stat -json"
        p = subprocess.run(["yosys", "-q", "-p", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            tail = "\n".join(p.stdout.strip().splitlines()[-10:])
            raise RuntimeError(f"yosys failed (exit {p.returncode}):\n{tail}")
        with open(out) as f:
            stat = json.load(f)
    design = stat.get("design") or next(iter(stat.get("modules", {}).values()))
    by_type = {k: int(v) for k, v in design.get("num_cells_by_type", {}).items()}
    xor2 = sum(v for k, v in by_type.items() if k in ("$_XOR_", "$_XNOR_"))
    ffs = sum(v for k, v in by_type.items() if "DFF" in k or "DLATCH" in k)
    total = int(design.get("num_cells", sum(by_type.values())))
    return {"cells": total, "by_type": by_type, "xor2": xor2, "flip_flops": ffs,
            "other_logic": total - xor2 - ffs}
