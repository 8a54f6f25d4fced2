"""What a compression did, honestly counted: per-tensor statistics, totals against the bound,
and size rows whose sums are the bytes of the files on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..format import safetensors_io as st
from ..format.container import SEP
from ..tensor.maskcode import binary_entropy
from ..tensor.pipeline import CompressedTensor
from .selection import Selection


def tensor_stats(name: str, ct: CompressedTensor) -> dict[str, Any]:
    n = ct.numel
    p0 = ct.planes[0] if ct.planes else None
    kept = ct.kept
    return {
        "name": name, "shape": list(ct.shape), "dtype": ct.dtype, "weights": n,
        "sparsity": 1 - kept / n if n and kept >= 0 else 0.0,
        "bits": ct.quant.bits, "quantizer": ct.quant.quantizer,
        "n_in": p0.n_in if p0 else 0, "n_out": p0.n_out if p0 else 0, "n_s": p0.n_s if p0 else 0,
        "mask_codec": ct.mask.codec, "scale_rows": ct.quant.scale_rows, "scale_format": ct.quant.scale_format,
        "planes": getattr(p0, "kind", "xor") if p0 else "none",
        "value_bits": ct.value_bits, "mask_bits": ct.mask.nbits, "total_bits": ct.total_bits,
        "value_bits_per_weight": ct.value_bits / n if n else 0.0,
        "total_bits_per_weight": ct.total_bits / n if n else 0.0,
        "efficiency": ct.efficiency, "patches": ct.patches,
    }


def totals(rows: Iterable[dict]) -> dict[str, Any]:
    rows = list(rows)
    w = sum(r["weights"] for r in rows)
    v = sum(r["value_bits"] for r in rows)
    t = sum(r["total_bits"] for r in rows)
    kept = sum(r["weights"] * (1 - r["sparsity"]) for r in rows)
    s = 1 - kept / w if w else 0.0
    q = rows[0]["bits"] if rows and len({r["bits"] for r in rows}) == 1 else None
    return {
        "tensors": len(rows), "weights": w, "value_bits": v, "total_bits": t,
        "value_bits_per_weight": v / w if w else 0.0, "total_bits_per_weight": t / w if w else 0.0,
        "sparsity": s, "ratio_to_fp16": 16 * w / t if t else 0.0,
        "bound_bits_per_weight": binary_entropy(s) + (1 - s) * q if q else None,
    }


@dataclass
class SizeRow:
    """One line of the size summary: bytes in the input and in the output."""

    label: str
    tensors: int
    input_bytes: int
    output_bytes: int

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output_bytes if self.output_bytes else float("inf")


CATEGORIES = ("compressed weights", "compressed embeddings", "stored as they are")


def size_rows(tensor_sizes: Mapping[str, tuple[str, int, int]], input_files: int, output_files: int,
              other_in: int = 0, other_out: int = 0, other_count: int = 0) -> list[SizeRow]:
    """Per-category rows whose sums are the file totals: tensor data by category, then
    headers and metadata (the file bytes not in any tensor), then other files carried over."""
    rows = []
    for cat in CATEGORIES:
        sel = [v for v in tensor_sizes.values() if v[0] == cat]
        if sel:
            rows.append(SizeRow(cat, len(sel), sum(v[1] for v in sel), sum(v[2] for v in sel)))
    data_in = sum(v[1] for v in tensor_sizes.values())
    data_out = sum(v[2] for v in tensor_sizes.values())
    rows.append(SizeRow("headers, metadata, indexes", 0, input_files - data_in, output_files - data_out))
    if other_count:
        rows.append(SizeRow("other files (config, tokenizer, ...)", other_count, other_in, other_out))
    rows.append(SizeRow("TOTAL (files on disk)", len(tensor_sizes), input_files + other_in,
                        output_files + other_out))
    return rows


def entry_bytes(path: str) -> dict[str, int]:
    """Data bytes of each tensor in an .xsp file (a compressed tensor's parts summed)."""
    out: dict[str, int] = {}
    with st.Reader(path) as r:
        for name, e in r.entries.items():
            base = name.split(SEP)[0]
            b, end = e["offsets"]
            out[base] = out.get(base, 0) + end - b
    return out


@dataclass
class CompressReport:
    """What `compress_checkpoint` did: per-tensor statistics, the selection, honest sizes."""

    rows: list[dict]
    selection: Selection
    sizes: list[SizeRow]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)  # per output shard (jobs/tasks.ShardOutcome), folders

    @property
    def total(self) -> SizeRow:
        return self.sizes[-1]
