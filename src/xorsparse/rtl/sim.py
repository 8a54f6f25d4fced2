"""Co-simulation: the generated Verilog in a real simulator against the Python decoder.

The testbench is generated Verilog (no cocotb): it reads the input beats with $readmemh,
drives them through the valid/ready handshake with random stalls on both sides, and
writes every output beat as a hex line. Python then compares those lines, bit for bit,
with `decode_plane` on the same stream. Keeping the comparison in Python means a
testbench bug cannot report a false pass (a missing or extra beat is a failure too), and
the simulator runs at full speed with no per-cycle calls into Python: hundreds of
thousands of slices take seconds to minutes.

Simulators: Icarus Verilog (`iverilog`/`vvp`, quick to compile, the default) or
Verilator (`verilator --binary`, slow to compile, fast to run: for long runs of large
decoders). Both are Debian packages; `make test` installs Icarus when it runs as root.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..codec.plane import EncodedPlane, decode_plane, encode_plane
from ..codec.xornet import XorDecoder
from ..errors import XorsparseError
from .netlist import XorNetlist
from .verilog import Testbench, decoder_verilog, hex_lines, module_name_for, parse_hex_lines, testbench_verilog

SIMULATORS = ("iverilog", "verilator")
StartMode = Literal["counter", "start"]


class SimulatorUnavailable(XorsparseError, RuntimeError):
    """No Verilog simulator on this machine (the message says how to get one)."""


def available_simulators() -> list[str]:
    found = []
    if shutil.which("iverilog") and shutil.which("vvp"):
        found.append("iverilog")
    if shutil.which("verilator"):
        found.append("verilator")
    return found


def pick_simulator(name: str = "auto") -> str:
    have = available_simulators()
    if name == "auto":
        if not have:
            raise SimulatorUnavailable(
                "no Verilog simulator found: install Icarus Verilog (Debian/Ubuntu: apt-get install iverilog) "
                "or Verilator (apt-get install verilator)")
        return have[0]
    if name not in SIMULATORS:
        raise ValueError(f"simulator must be 'auto' or one of {SIMULATORS}, got {name!r}")
    if name not in have:
        pkg = "iverilog" if name == "iverilog" else "verilator"
        raise SimulatorUnavailable(f"{name} not found on PATH (Debian/Ubuntu: apt-get install {pkg})")
    return name


@dataclass(frozen=True)
class CosimResult:
    """What one simulation run showed; ok means every output bit matched."""

    n_in: int
    n_out: int
    n_s: int
    seed: int
    chunk_slices: int  # the CHUNK_SLICES parameter the module ran with (0: in_start only)
    sharing: str
    simulator: str
    n_slices: int
    output_bits: int  # bits compared: n_slices * n_out
    slices_out: int  # beats the simulation produced
    mismatched_slices: int
    mismatched_bits: int
    first_mismatch: int  # slice index, -1 if none
    compile_seconds: float
    run_seconds: float
    log: str = dataclasses.field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.slices_out == self.n_slices and self.mismatched_bits == 0

    def summary(self) -> str:
        head = (f"n_in={self.n_in} n_out={self.n_out} n_s={self.n_s} seed={self.seed} sharing={self.sharing} "
                f"CHUNK_SLICES={self.chunk_slices} on {self.simulator}: ")
        if self.ok:
            return head + (f"{self.n_slices} slices, {self.output_bits} output bits, all equal "
                           f"(compile {self.compile_seconds:.1f}s, run {self.run_seconds:.1f}s)")
        if self.slices_out != self.n_slices:
            return head + f"FAILED: {self.slices_out} of {self.n_slices} slices came out"
        return head + (f"FAILED: {self.mismatched_bits} bits differ in {self.mismatched_slices} slices, "
                       f"first at slice {self.first_mismatch}")


def _run(cmd: list[str], cwd: str, timeout: float | None) -> str:
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        tail = "\n".join(p.stdout.strip().splitlines()[-15:])
        raise RuntimeError(f"{cmd[0]} failed (exit {p.returncode}):\n{tail}")
    return p.stdout


def _compile(simulator: str, workdir: str, top: str, files: list[str], timeout: float | None) -> list[str]:
    """Build the simulation; returns the command that runs it."""
    if simulator == "iverilog":
        _run(["iverilog", "-g2005", "-o", "sim.vvp", "-s", top, *files], workdir, timeout)
        return ["vvp", "-n", "sim.vvp"]
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    _run(["verilator", "--binary", "--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", top,
          "-Mdir", "obj", "-o", "sim", "-j", jobs, "-O3", *files], workdir, timeout)
    return [os.path.join("obj", "sim")]


@dataclass(frozen=True)
class CosimOptions:
    """How the decoder module is generated and simulated: CHUNK_SLICES, XOR sharing (or a
    ready `netlist`), the simulator, random stalls (LFSR `seed`), where the files go (`workdir`,
    kept; None: a temporary folder), a time limit per tool run, and the patch port width."""

    chunk_slices: int = 0
    sharing: str = "paar"
    simulator: str = "auto"
    stall: bool = True
    workdir: str | None = None
    netlist: XorNetlist | None = None
    seed: int = 1
    timeout: float | None = None
    patch_bits: int = 0


def cosimulate(dec: XorDecoder, x: np.ndarray, starts: np.ndarray, expected: np.ndarray,
               patches: np.ndarray | None = None, options: CosimOptions = CosimOptions()) -> CosimResult:
    """Feed beats {starts[t], x[t]} to the generated decoder and compare every output with `expected`.

    x: (n_slices, n_in) 0/1; starts: (n_slices,) bool (in_start per beat); expected:
    (n_slices, n_out) 0/1, what the decoder must output for each beat. chunk_slices is the
    CHUNK_SLICES parameter of the module. Files go to `workdir` (kept) or a temporary folder.
    patch_bits > 0 generates the module with its patch stage and streams `patches` (output
    positions since reset, increasing) into it; `expected` must then include their flips.
    """
    o = options
    chunk_slices, sharing, simulator, stall, workdir = o.chunk_slices, o.sharing, o.simulator, o.stall, o.workdir
    netlist, seed, timeout, patch_bits = o.netlist, o.seed, o.timeout, o.patch_bits
    sim = pick_simulator(simulator)
    x = np.asarray(x, dtype=np.uint8)
    n = x.shape[0]
    if n == 0:
        raise ValueError("nothing to simulate: no slices")
    if x.shape != (n, dec.n_in) or expected.shape != (n, dec.n_out) or starts.shape != (n,):
        raise ValueError(f"vector shapes {x.shape}, {starts.shape}, {expected.shape} do not fit the decoder")
    name = module_name_for(dec)
    beats = np.concatenate([x, np.asarray(starts, dtype=np.uint8)[:, None]], axis=1)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="xsp-cosim-")
        workdir = tmp.name
    os.makedirs(workdir, exist_ok=True)
    try:
        pl = np.empty(0, dtype=np.int64) if patches is None else np.asarray(patches, dtype=np.int64)
        if patch_bits:
            if pl.size and (pl[0] < 0 or np.any(np.diff(pl) <= 0) or pl[-1] >= n * dec.n_out):
                raise ValueError("patch positions must be increasing and inside the simulated slices")
            digits = -(-patch_bits // 4)
            with open(os.path.join(workdir, "patch.hex"), "w") as f:
                f.writelines(f"{int(p):0{digits}x}\n" for p in pl)
                f.write(f"{(1 << patch_bits) - 1:0{digits}x}\n")
        elif pl.size:
            raise ValueError("patches given without a patch stage (patch_bits = 0)")
        with open(os.path.join(workdir, "dut.v"), "w") as f:
            f.write(decoder_verilog(dec, sharing=sharing, chunk_slices=chunk_slices, netlist=netlist,
                                    patch_bits=patch_bits))
        with open(os.path.join(workdir, "tb.v"), "w") as f:
            f.write(testbench_verilog(name, dec.n_in, dec.n_out, Testbench(n, chunk_slices, stall, seed, patch_bits,
                                                                          int(pl.size))))
        with open(os.path.join(workdir, "in.hex"), "wb") as f:
            f.write(hex_lines(beats))
        out_path = os.path.join(workdir, "out.hex")
        if os.path.exists(out_path):
            os.unlink(out_path)
        t0 = time.perf_counter()
        run_cmd = _compile(sim, workdir, "tb", ["dut.v", "tb.v"], timeout)
        t1 = time.perf_counter()
        log = _run(run_cmd, workdir, timeout)
        t2 = time.perf_counter()
        if "TB_TIMEOUT" in log:
            raise RuntimeError(f"simulation stalled: {log.strip().splitlines()[-1]}")
        with open(out_path, "rb") as f:
            got = parse_hex_lines(f.read(), dec.n_out)
    finally:
        if tmp is not None:
            tmp.cleanup()
    m = min(n, got.shape[0])
    diff = got[:m] != np.asarray(expected[:m], dtype=np.uint8)
    bad_slices = np.flatnonzero(diff.any(axis=1))
    return CosimResult(dec.n_in, dec.n_out, dec.n_s, int(dec.seed), chunk_slices, sharing, sim, n,
                       n * dec.n_out, int(got.shape[0]), int(bad_slices.size), int(diff.sum()),
                       int(bad_slices[0]) if bad_slices.size else -1, t1 - t0, t2 - t1, log)


def stream_beats(enc: EncodedPlane) -> np.ndarray:
    """The plane's stream as (n_slices, n_in) input beats: beat t bit i = stream bit t*n_in + i."""
    n = enc.n_slices
    bits = np.unpackbits(enc.stream, bitorder="little", count=n * enc.n_in)
    return bits.reshape(n, enc.n_in)


def raw_outputs(enc: EncodedPlane) -> np.ndarray:
    """(n_slices, n_out): every decoder output before patches, the last slice's tail included."""
    full = dataclasses.replace(enc, length=enc.n_slices * enc.n_out, patches=np.empty(0, dtype=np.int64),
                               _rice_k=-1)
    return decode_plane(full).reshape(enc.n_slices, enc.n_out)


def plane_vectors(planes: list[EncodedPlane], mode: StartMode = "counter"):
    """Beats, in_start flags, expected outputs and CHUNK_SLICES for planes streamed back to back.

    mode="counter": CHUNK_SLICES = the planes' chunk_slices and in_start on each plane's
    first slice only (the module finds the later chunk starts). mode="start": CHUNK_SLICES
    = 0 and in_start on every chunk's first slice.
    """
    if not planes:
        raise ValueError("no planes")
    d0 = planes[0]
    for p in planes:
        if (p.n_in, p.n_out, p.n_s, p.seed) != (d0.n_in, d0.n_out, d0.n_s, d0.seed):
            raise ValueError("planes streamed through one decoder must share (n_in, n_out, n_s, seed)")
        if mode == "counter" and p.chunk_slices != d0.chunk_slices:
            raise ValueError("mode 'counter' needs one chunk_slices for all planes")
    xs, starts, exp = [], [], []
    for p in planes:
        s = np.zeros(p.n_slices, dtype=bool)
        if mode == "counter":
            s[:1] = True
        elif mode == "start":
            s[:: p.chunk_slices] = True
        else:
            raise ValueError(f"mode must be 'counter' or 'start', got {mode!r}")
        xs.append(stream_beats(p))
        starts.append(s)
        exp.append(raw_outputs(p))
    cs = d0.chunk_slices if mode == "counter" else 0
    return np.concatenate(xs), np.concatenate(starts), np.concatenate(exp), cs


def random_plane(dec: XorDecoder, n_slices: int, density: float, *, seed: int = 0,
                 chunk_slices: int | None = None, partial: int = 0) -> tuple[EncodedPlane, np.ndarray, np.ndarray]:
    """A random plane encoded for `dec`: (encoded, bits, care). `partial` positions short of whole slices."""
    rng = np.random.default_rng(seed)
    length = n_slices * dec.n_out - partial
    bits = rng.integers(0, 2, length, dtype=np.uint8)
    care = rng.random(length) < density
    return encode_plane(bits, care, dec, chunk_slices=chunk_slices), bits, care


def random_stream_plane(dec: XorDecoder, n_slices: int, *, chunk_slices: int, seed: int = 0,
                        partial: int = 0, patch_rate: float = 0.0) -> EncodedPlane:
    """A plane whose stream is fair coin flips (no encoding): any stream is valid input.

    `partial` positions short of whole slices, so the last slice is a partial one;
    patch_rate > 0 adds that fraction of positions as random patches.
    """
    if n_slices < 1:
        raise ValueError(f"need at least one slice, got {n_slices}")
    if not 0 <= partial < dec.n_out:
        raise ValueError(f"partial must be in 0..n_out-1, got {partial}")
    rng = np.random.default_rng(seed)
    nbytes = -(-n_slices * dec.n_in // 8)
    stream = rng.integers(0, 256, nbytes, dtype=np.uint8)
    used = n_slices * dec.n_in
    if used % 8:
        stream[-1] &= (1 << (used % 8)) - 1  # unused bits at the end of a stream are zero
    length = n_slices * dec.n_out - partial
    patches = np.flatnonzero(rng.random(length) < patch_rate).astype(np.int64)
    return EncodedPlane(length=length, n_in=dec.n_in, n_out=dec.n_out, n_s=dec.n_s, seed=int(dec.seed),
                        chunk_slices=chunk_slices, stream=stream, patches=patches)


def stream_patches(planes: list[EncodedPlane]) -> np.ndarray:
    """The planes' patch lists as output positions since the first plane's first slice."""
    out, base = [], 0
    for p in planes:
        out.append(np.asarray(p.patches, dtype=np.int64) + base)
        base += p.n_slices * p.n_out
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def cosim_planes(planes: list[EncodedPlane], *, mode: StartMode = "counter",
                 options: CosimOptions = CosimOptions()) -> CosimResult:
    """Co-simulate the decoder of `planes` over all their slices (see plane_vectors for mode).

    options.patch_bits > 0: with the patch stage, fed the planes' patch lists, so the outputs
    compared are the decoded planes themselves (decode_plane) plus the last slice's tail.
    options.chunk_slices is the planes' own.
    """
    patch_bits = options.patch_bits
    x, starts, exp, cs = plane_vectors(planes, mode)
    patches = None
    if patch_bits:
        patches = stream_patches(planes)
        flat = exp.reshape(-1)  # a view: flip the expected bits in place
        flat[patches] ^= 1
    return cosimulate(planes[0].decoder, x, starts, exp, patches, dataclasses.replace(options, chunk_slices=cs))
