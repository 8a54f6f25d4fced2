"""The plane decoder in hardware: Verilog export, co-simulation and cost (docs/HARDWARE.md).

- `netlist`: the decoder's XOR network as two-input XOR gates, with shared sub-terms
  (Paar's greedy pair extraction) and its depth.
- `verilog`: synthesizable Verilog-2005 of the decoder (valid/ready streams, history
  register with the chunk reset of docs/FORMAT.md, the netlist) and a testbench that
  replays input beats from a $readmemh file and writes every output beat to a file.
- `sim`: runs that testbench in Icarus Verilog or Verilator and compares every output
  bit with `decode_plane`.
- `cost`: gates, flip-flops, depth, throughput at a stated clock; Yosys `stat` if installed.
- `export`: the decoders an .xsp file uses (the `xorsparse export-rtl` command).

Why plain text generation rather than Amaranth: the circuit is a register, a counter and
one fixed XOR netlist, with no state machine or arithmetic where an HDL library would
help, and the netlist is what this package computes (Paar's sharing) and what a reader
of the generated file must be able to audit gate by gate. Amaranth would add a
dependency (and, to emit Verilog, its Yosys WebAssembly wheel, tens of MB) and wrap every
gate in Python objects: for a 1024-output, 256-bit-window decoder (~130,000 unshared
gates, ~38,000 shared) that is slower to build and yields less readable Verilog than
writing one `wire gK = a ^ b;` per gate, which is readable, diffable (no dates, stable
names) and deterministic. The generated text is checked by running it in real
simulators, by Verilator's lint in the tests, and by Yosys synthesis.
"""

from .cost import DecoderCost, decoder_cost, yosys_available, yosys_stat
from .netlist import XorNetlist, build_netlist, naive_gate_count
from .sim import CosimOptions, CosimResult, SimulatorUnavailable, available_simulators, cosim_planes, cosimulate
from .verilog import Testbench, decoder_verilog, module_name_for, testbench_verilog

__all__ = ["CosimOptions", "CosimResult", "DecoderCost", "SimulatorUnavailable", "Testbench", "XorNetlist",
           "available_simulators",
           "build_netlist", "cosim_planes", "cosimulate", "decoder_cost", "decoder_verilog", "module_name_for",
           "naive_gate_count", "testbench_verilog", "yosys_available", "yosys_stat"]
