"""What `xorsparse compress` does when not told, and the quality below which its summary warns.

One place, so that the CLI, its --help, the demo and the docs agree, and so that a later bit
budget can replace the fixed targets here. Kept free of heavy imports: the parser reads it.

- A model folder (what a user runs) is compressed to keep the model useful: 50% of the
  weights pruned, 4 bit-planes (mean cosine 0.93 on MiniLM with the calibrated default,
  docs/BENCHMARKS.md quality section), where 90% / 2 bits gave 0.28.
- A bare tensor file has no model to measure; it keeps the paper's regime, 90% / 2 bits,
  which shows the codec (0.7 bits per weight) rather than a usable model.
- A compressed-tensors checkpoint is pruned already: its own zeros are kept, none added.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Target(NamedTuple):
    sparsity: float
    bits: int


MODEL_TARGET = Target(0.5, 4)  # model folders and the demo
TENSOR_TARGET = Target(0.9, 2)  # bare .safetensors / .pt / .bin files
COMPRESSED_TENSORS_TARGET = Target(0.0, MODEL_TARGET.bits)  # the checkpoint's own zeros only

# Below these the summary says plainly that the compressed model is far from the original
# (docs/CALIBRATION.md, "Quality report"): a sentence-embedding model whose mean cosine to the
# original is under 0.90, a causal LM whose perplexity grew by more than half, any other
# model whose output moved by more than 10% (relative squared error).
MIN_MEAN_COSINE = 0.90
MAX_PERPLEXITY_RATIO = 1.5
MAX_OUTPUT_RELATIVE_ERROR = 0.10


def default_target(input_kind: str) -> Target:
    """The (sparsity, bits) for `input_kind`: "model", "tensors" or "compressed-tensors"."""
    return {"model": MODEL_TARGET, "tensors": TENSOR_TARGET,
            "compressed-tensors": COMPRESSED_TENSORS_TARGET}[input_kind]


def quality_warning(report: dict[str, Any] | None) -> str | None:
    """One plain sentence when a quality report is below the documented threshold, else None."""
    if not report:
        return None
    kind = report.get("kind")
    if kind == "sentence-transformers" and report.get("mean_cosine", 1.0) < MIN_MEAN_COSINE:
        return (f"mean cosine {report['mean_cosine']:.2f} is below {MIN_MEAN_COSINE:.2f}: the compressed model's "
                "embeddings are far from the original's")
    if kind == "causal-lm" and report.get("perplexity_ratio", 1.0) > MAX_PERPLEXITY_RATIO:
        return (f"perplexity x{report['perplexity_ratio']:.2f} the original's is above x{MAX_PERPLEXITY_RATIO:.1f}: "
                "the compressed model predicts text much worse")
    if kind == "layer-error" and report.get("output_relative_error", 0.0) > MAX_OUTPUT_RELATIVE_ERROR:
        return (f"relative output error {report['output_relative_error']:.2f} is above "
                f"{MAX_OUTPUT_RELATIVE_ERROR:.2f}: the compressed model's outputs are far from the original's")
    return None


__all__ = ["COMPRESSED_TENSORS_TARGET", "MAX_OUTPUT_RELATIVE_ERROR", "MAX_PERPLEXITY_RATIO", "MIN_MEAN_COSINE",
           "MODEL_TARGET", "TENSOR_TARGET", "Target", "default_target", "quality_warning"]
