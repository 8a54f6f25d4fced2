"""Rate selection: pick (n_in, n_out, n_s) that minimise stream + patch bits.

Patch counts depend on the care pattern in ways no closed formula captures well (rank
deficiency, the queue of spare variables between slices), so candidates are scored by
actually encoding a deterministic sample of the plane. The same input always gives the
same choice.
"""

from __future__ import annotations

import numpy as np

from .xornet import DEFAULT_SEED, MAX_N_IN, MAX_N_OUT, MAX_WINDOW, XorDecoder

SAMPLE_BLOCKS = 8
SAMPLE_BLOCK = 1 << 17
COARSE = (1.0, 1.02, 1.04, 1.08, 1.16, 1.32, 1.64, 2.0)
MIN_N_OUT = 64


def _sample(bits: np.ndarray, care: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The whole plane if small, else SAMPLE_BLOCKS contiguous blocks spread evenly over it."""
    n = bits.size
    if n <= SAMPLE_BLOCKS * SAMPLE_BLOCK:
        return [(bits, care)]
    starts = np.linspace(0, n - SAMPLE_BLOCK, SAMPLE_BLOCKS).astype(np.int64)
    return [(bits[s : s + SAMPLE_BLOCK], care[s : s + SAMPLE_BLOCK]) for s in starts]


def candidate_n_in(density: float, max_n_s: int) -> list[int]:
    """The smallest power of two giving n_out >= MIN_N_OUT, and the next one.

    Small n_in leaves room for a long memory (n_s) in the 128-bit window, which absorbs
    the slice-to-slice spread of care bits; n_out >= 64 keeps decoding at a quarter of a
    table look-up per position. Paper mode (n_s = 0) has no memory, so there a large n_in
    averages the spread instead.
    """
    if max_n_s == 0:
        k = MAX_N_IN
        while k > 1 and k / density > 0.8 * MAX_N_OUT:
            k //= 2
        return [k]
    k = 1
    while k < MAX_N_IN and k / density < MIN_N_OUT:
        k *= 2
    return [k] if k == MAX_N_IN else [k, 2 * k]


def choose(
    bits: np.ndarray,
    care: np.ndarray,
    *,
    method: str = "elimination",
    max_n_s: int | None = None,
    seed: int = DEFAULT_SEED,
) -> XorDecoder:
    """The decoder that codes this plane in the fewest stream + patch bits.

    max_n_s=0 gives the paper's non-sequential network. With method="exhaustive" the
    search is limited to n_in <= 16 and candidates are still scored by elimination (the
    exhaustive result can only have fewer patches).
    """
    from .codec import EXHAUSTIVE_MAX_N_IN, encode_plane, get_decoder

    bits = np.asarray(bits, dtype=np.uint8)
    care = np.asarray(care, dtype=bool)
    if method == "exhaustive":
        max_n_s = 0
    limit_s = MAX_WINDOW - 1 if max_n_s is None else int(max_n_s)
    if limit_s < 0:
        raise ValueError(f"max_n_s must be >= 0, got {max_n_s}")
    n_care = int(care.sum())
    if n_care == 0:
        return XorDecoder(1, MAX_N_OUT, 0, seed)
    density = n_care / care.size
    parts = _sample(bits, care)
    scale = care.size / sum(p[0].size for p in parts)

    def cost(n_in: int, n_out: int, n_s: int) -> float:
        d = get_decoder(n_in, n_out, n_s, seed)
        return scale * sum(encode_plane(b, c, d).value_bits for b, c in parts)

    n_ins = candidate_n_in(density, limit_s)
    if method == "exhaustive":
        n_ins = [min(k, 16, EXHAUSTIVE_MAX_N_IN) for k in n_ins]
    scores: dict[tuple[int, int, int], float] = {}

    def score(n_in: int, factor: float) -> None:
        n_s = min(limit_s, MAX_WINDOW // n_in - 1)
        n_out = int(np.clip(round(n_in / (density * factor)), 1, MAX_N_OUT))
        key = (n_in, n_out, n_s)
        if key not in scores:
            scores[key] = cost(*key)

    for n_in in n_ins:
        for f in COARSE:
            score(n_in, f)
    # refine between the best coarse factor and its neighbours
    (b_in, b_out, _), _ = min(scores.items(), key=lambda kv: (kv[1], kv[0]))
    f_best = b_in / (density * b_out)
    for f in np.linspace(f_best * 0.985, f_best * 1.015, 7):
        if f >= 0.9:
            score(b_in, float(f))
    (n_in, n_out, n_s), _ = min(scores.items(), key=lambda kv: (kv[1], kv[0]))
    return get_decoder(n_in, n_out, n_s, seed)
