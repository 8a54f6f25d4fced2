"""Which decoders an .xsp file uses, and writing their Verilog with their cost and an optional
co-simulation check (the `export-rtl` command: `export_rtl`)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, TextIO

from ..codec.plane import default_chunk_slices, get_decoder
from ..codec.xornet import DEFAULT_SEED, XorDecoder
from ..errors import XorsparseError
from ..format.container import XspFile
from ..format.output import write_bytes
from .cost import DEFAULT_CLOCK_MHZ, decoder_cost
from .netlist import build_netlist
from .sim import CosimOptions, cosim_planes, random_stream_plane
from .verilog import decoder_verilog, module_name_for


@dataclass
class DecoderUse:
    """One decoder of a file, the chunk sizes its planes use, and which planes those are."""

    decoder: XorDecoder
    chunk_slices: Counter = field(default_factory=Counter)
    planes: list[str] = field(default_factory=list)

    @property
    def default_chunk_slices(self) -> int:
        """CHUNK_SLICES for the module: the planes' chunk size, or 0 (in_start marks chunks) if they differ."""
        return next(iter(self.chunk_slices)) if len(self.chunk_slices) == 1 else 0


def decoders_in_file(path: str | os.PathLike) -> list[DecoderUse]:
    """Every distinct (n_in, n_out, n_s, seed) among the planes of an .xsp file, in first-use order.

    Tensors are read through the container's validating reader, so a damaged or edited
    file is an error naming the tensor, never a decoder built from bad parameters.
    """
    uses: dict[tuple[int, int, int, int], DecoderUse] = {}
    with XspFile(path) as f:
        for name in f.tensors:
            ct = f.compressed(name)
            for i, p in enumerate(ct.planes):
                if getattr(p, "kind", "xor") == "packed":  # stored bit for bit: no decoder (FORMAT.md 1.8)
                    continue
                key = (p.n_in, p.n_out, p.n_s, p.seed)
                if key not in uses:
                    uses[key] = DecoderUse(get_decoder(*key))
                uses[key].chunk_slices[p.chunk_slices] += 1
                uses[key].planes.append(f"{name}[plane {i}]")
    return list(uses.values())


def decoder_from_params(n_in: int, n_out: int, n_s: int, seed: int, chunk_slices: int | None) -> DecoderUse:
    """A DecoderUse for explicit parameters (check_params rejects shapes the format does not define)."""
    if chunk_slices is not None and (chunk_slices < 0 or chunk_slices % 64):
        raise ValueError(f"chunk_slices must be 0 (chunk starts from in_start) or a positive multiple of 64, "
                         f"got {chunk_slices}")
    use = DecoderUse(get_decoder(n_in, n_out, n_s, seed))
    use.chunk_slices[default_chunk_slices(n_out) if chunk_slices is None else chunk_slices] += 1
    return use


def write_text_atomic(path: str, text: str) -> None:
    """Write via a temporary file and rename (format/output.py): a reader never sees half a
    module, and a device, folder or symlink in the way is refused."""
    write_bytes(path, text.encode())


@dataclass(frozen=True)
class DecoderParams:
    """A decoder given by its parameters instead of an .xsp file (--n-in/--n-out/--ns/--seed)."""

    n_in: int | None = None
    n_out: int | None = None
    n_s: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class RtlOptions:
    """How the modules are written and measured: XOR sharing, patch port width, chunk size,
    a co-simulation check of `check` slices (0: none) on `simulator`, Yosys statistics, the
    clock the throughput is stated at, and a JSON file of the cost rows."""

    sharing: str = "paar"
    patch_bits: int = 0
    chunk_slices: int | None = None
    check: int = 0
    simulator: str = "auto"
    yosys: bool = False
    clock_mhz: float = DEFAULT_CLOCK_MHZ
    json_path: str | None = None


@dataclass
class RtlExport:
    """What export_rtl wrote: one cost row per module (module, file, planes and the cost
    model's fields), and the first failed check's summary ("" if none failed)."""

    rows: list[dict] = field(default_factory=list)
    failed: str = ""


class CheckUnavailable(XorsparseError):
    """--check could not run (no simulator, or it failed): the first line of why."""


def decoder_uses(xsp: str | None, params: DecoderParams, chunk_slices: int | None) -> tuple[list[DecoderUse], str | None]:
    """The decoders to export, from an .xsp file or from explicit parameters (not both), and the
    source named in the modules' headers."""
    if xsp is not None:
        if any(v is not None for v in (params.n_in, params.n_out, params.n_s, params.seed)):
            raise ValueError("give either an .xsp file or --n-in/--n-out/--ns/--seed, not both")
        uses = decoders_in_file(xsp)
        if not uses:
            raise ValueError(f"{xsp}: no XOR-coded planes (no compressed tensors, or all packed), "
                             "so no decoders to export")
        if chunk_slices is not None:
            for u in uses:
                u.chunk_slices.clear()
                u.chunk_slices[chunk_slices] += 1
        return uses, os.path.basename(xsp)
    if params.n_in is None or params.n_out is None:
        raise ValueError("give an .xsp file, or at least --n-in and --n-out")
    return [decoder_from_params(params.n_in, params.n_out, 0 if params.n_s is None else params.n_s,
                                DEFAULT_SEED if params.seed is None else params.seed, chunk_slices)], None


def export_rtl(output: str, xsp: str | None = None, params: DecoderParams = DecoderParams(),
               options: RtlOptions = RtlOptions(), *, on_check: Callable[[bool, str], None] | None = None,
               stdout: TextIO | None = None) -> RtlExport:
    """Verilog of every decoder an .xsp file uses (or of one given by `params`): to `output`
    ("-": standard output, one module only; a folder: one .v file per module), each module's
    cost, and with `options.check` a co-simulation against the software decoder, reported to
    `on_check(ok, summary)`; a failed check stops the export (RtlExport.failed)."""
    o = options
    uses, source = decoder_uses(xsp, params, o.chunk_slices)
    to_stdout = output == "-"
    as_dir = not to_stdout and (xsp is not None or os.path.isdir(output) or output.endswith(os.sep))
    if to_stdout and len(uses) > 1:
        raise ValueError(f"{len(uses)} decoders to write: give a folder with -o, not '-'")
    if as_dir:
        os.makedirs(output, exist_ok=True)
    result = RtlExport()
    for u in uses:
        d = u.decoder
        cs = u.default_chunk_slices
        net = build_netlist(d.window_matrix(), "paar") if o.sharing == "paar" else None
        label = source
        if source and len(u.planes):
            label = f"{source}: {len(u.planes)} plane(s), first {u.planes[0]}"
            if len(u.chunk_slices) > 1:
                label += f"; chunk_slices differ ({sorted(u.chunk_slices)}), so in_start must mark chunks"
        text = decoder_verilog(d, sharing=o.sharing, chunk_slices=cs, netlist=net, source=label,
                               patch_bits=o.patch_bits)
        if o.check:
            # short checks still cross chunk starts: CHUNK_SLICES is overridden to 64 for them
            check_cs = cs if cs and o.check >= 2 * cs else 64
            plane = random_stream_plane(d, o.check, chunk_slices=check_cs, seed=o.check,
                                        partial=min(3, d.n_out - 1), patch_rate=0.01 if o.patch_bits else 0.0)
            try:
                res = cosim_planes([plane], mode="counter" if cs else "start",
                                   options=CosimOptions(sharing=o.sharing, simulator=o.simulator, netlist=net,
                                                        patch_bits=o.patch_bits))
            except RuntimeError as e:  # no simulator, or it failed: the first line (the cause chained)
                raise CheckUnavailable(f"--check: {str(e).splitlines()[0]}") from e
            if on_check:
                on_check(res.ok, res.summary())
            if not res.ok:
                result.failed = res.summary()
                return result
        name = module_name_for(d)
        if to_stdout:
            (stdout or sys.stdout).write(text)
            path = "-"
        else:
            path = os.path.join(output, name + ".v") if as_dir else output
            write_text_atomic(path, text)
        cost = decoder_cost(d, chunk_slices=cs, clock_mhz=o.clock_mhz, yosys=o.yosys, netlist=net,
                            patch_bits=o.patch_bits)
        row = cost.as_dict()
        row.update(module=name, file=path, planes=len(u.planes))
        result.rows.append(row)
    if o.json_path:
        write_bytes(o.json_path, (json.dumps(result.rows, indent=1) + "\n").encode())
    return result
