"""Which decoders an .xsp file uses, and writing their Verilog (the `export-rtl` command)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from ..codec.plane import default_chunk_slices, get_decoder
from ..codec.xornet import XorDecoder


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
    from ..format.container import XspFile

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
    from ..format.output import write_bytes

    write_bytes(path, text.encode())
