"""Rate selection: pick (n_in, n_out, n_s) that minimise stream + patch bits.

Patch counts depend on the care pattern in ways no closed formula captures well (rank
deficiency, the queue of spare variables between slices), so candidates are scored by
actually encoding a deterministic sample of the plane. The same input always gives the
same choice.
"""

from __future__ import annotations

import numpy as np

from .xornet import DEFAULT_SEED, MAX_N_IN, MAX_N_OUT, MAX_WINDOW, XorDecoder

SAMPLE_BLOCKS = 4
SAMPLE_BLOCK = 1 << 20
# rate over care density tried first: with memory the best sits within a few percent of 1;
# without (n_s = 0) the binomial spread of care bits per slice needs far more headroom
COARSE_SEQUENTIAL = (1.0, 1.01, 1.02, 1.03, 1.05, 1.08)
COARSE_PAPER = (1.0, 1.04, 1.08, 1.16, 1.32, 1.64, 2.0)
DEFAULT_WINDOW = 128
# Planes up to SAMPLE_BLOCKS * SAMPLE_BLOCK positions are scored whole, so their patch counts
# are exact. Larger ones are scored on a sample, and patches come in bursts (a run of dense
# slices exhausts the spare variables), so a sample tends to under-count them: there they
# weigh double, which steers towards rates that hold up on the whole plane.
PATCH_WEIGHT = 2.0
MIN_N_OUT = 64


def _sample(bits: np.ndarray, care: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The whole plane if small, else SAMPLE_BLOCKS contiguous blocks spread evenly over it."""
    n = bits.size
    if n <= SAMPLE_BLOCKS * SAMPLE_BLOCK:
        return [(bits, care)]
    starts = np.linspace(0, n - SAMPLE_BLOCK, SAMPLE_BLOCKS).astype(np.int64)
    return [(bits[s : s + SAMPLE_BLOCK], care[s : s + SAMPLE_BLOCK]) for s in starts]


def candidate_n_in(density: float, max_n_s: int) -> list[int]:
    """Powers of two from the smallest giving n_out >= MIN_N_OUT, up to n_out <= 1024.

    Small n_in leaves room for a long memory (n_s) in the window, which absorbs the
    slice-to-slice spread of care bits; n_out >= 64 keeps decoding near a quarter of a
    table look-up per position. Paper mode (n_s = 0) has no memory, so there a large
    n_in averages the spread instead.
    """
    if max_n_s == 0:
        k = MAX_N_IN
        while k > 1 and k / density > 0.8 * MAX_N_OUT:
            k //= 2
        return [k]
    k = 1
    while k < MAX_N_IN and k / density < MIN_N_OUT:
        k *= 2
    out = [k]
    while len(out) < 4 and out[-1] < MAX_N_IN and 2 * out[-1] / density <= MAX_N_OUT:
        out.append(2 * out[-1])
    return out


def choose(
    bits: np.ndarray,
    care: np.ndarray,
    *,
    method: str = "elimination",
    max_n_s: int | None = None,
    max_window: int = DEFAULT_WINDOW,
    seed: int = DEFAULT_SEED,
) -> XorDecoder:
    """The decoder that codes this plane in the fewest stream + patch bits.

    max_n_s=0 gives the paper's non-sequential network. max_window caps n_in * (n_s + 1):
    the default 128 runs on the fastest kernels; 256 codes about half a percent smaller
    at a third of the encoding speed. With method="exhaustive" the
    search is limited to n_in <= 16 and candidates are still scored by elimination (the
    exhaustive result can only have fewer patches).
    """
    from .plane import EXHAUSTIVE_MAX_N_IN, encode_plane, get_decoder

    bits = np.asarray(bits, dtype=np.uint8)
    care = np.asarray(care, dtype=bool)
    if method == "exhaustive":
        max_n_s = 0
    limit_s = MAX_WINDOW - 1 if max_n_s is None else int(max_n_s)
    if limit_s < 0:
        raise ValueError(f"max_n_s must be >= 0, got {max_n_s}")
    if not 1 <= max_window <= MAX_WINDOW:
        raise ValueError(f"max_window must be in 1..{MAX_WINDOW}, got {max_window}")
    n_care = int(care.sum())
    if n_care == 0:
        return XorDecoder(1, MAX_N_OUT, 0, seed)
    density = n_care / care.size
    parts = _sample(bits, care)
    scale = care.size / sum(p[0].size for p in parts)

    def cost(n_in: int, n_out: int, n_s: int) -> float:
        d = get_decoder(n_in, n_out, n_s, seed)
        encs = [encode_plane(b, c, d) for b, c in parts]
        # without memory patches are independent; on the whole plane the count is exact
        weight = PATCH_WEIGHT if n_s > 0 and scale > 1 else 1.0
        return scale * sum(e.stream_bits + weight * e.patch_bits for e in encs)

    n_ins = candidate_n_in(density, limit_s)
    if method == "exhaustive":
        n_ins = [min(k, 16, EXHAUSTIVE_MAX_N_IN) for k in n_ins]
    scores: dict[tuple[int, int, int], float] = {}

    def score(n_in: int, factor: float) -> None:
        n_s = max(0, min(limit_s, max_window // n_in - 1))
        n_out = int(np.clip(round(n_in / (density * factor)), 1, MAX_N_OUT))
        key = (n_in, n_out, n_s)
        if key not in scores:
            scores[key] = cost(*key)

    coarse = COARSE_PAPER if limit_s == 0 else COARSE_SEQUENTIAL
    if len(n_ins) > 1:  # pick n_in on two typical rates, then search the rate for it
        for n_in in n_ins:
            for f in coarse[1:4:2]:
                score(n_in, f)
        (b_in, _, _), _ = min(scores.items(), key=lambda kv: (kv[1], kv[0]))
        n_ins = [b_in]
    for f in coarse:
        score(n_ins[0], f)
    # refine between the best coarse factor and its neighbours
    (b_in, b_out, _), _ = min(scores.items(), key=lambda kv: (kv[1], kv[0]))
    f_best = b_in / (density * b_out)
    step = 0.005 if limit_s else 0.02
    for f in (f_best - 2 * step, f_best - step, f_best + step, f_best + 2 * step):
        if f >= 0.95:
            score(b_in, float(f))
    (n_in, n_out, n_s), _ = min(scores.items(), key=lambda kv: (kv[1], kv[0]))
    return get_decoder(n_in, n_out, n_s, seed)
