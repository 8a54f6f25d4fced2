"""Rate selection: pick (n_in, n_out, n_s) that minimise stream + patch bits.

Patch counts depend on the care pattern in ways no closed formula captures well (rank
deficiency, the queue of spare variables between slices), so candidates are scored by
actually encoding planes (`score_candidates`). The block order of section 5 of
docs/FORMAT.md spreads a tensor's care bits evenly over its planes, so what matters is
the care density: `choose` scores once per density bucket, on a synthetic plane made
from the bucket alone, and reuses the result (as the ratio of rate to density) for every
tensor in that bucket. The choice is a pure function of (density, limits, seed): the
same tensor gets the same decoder whatever was compressed before it, in any thread.
Planes too small for that to hold (chunk starts weigh more) are scored whole.
`choose_by_encoding` is the former per-plane search, kept to measure against.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
from numba import njit

from .plane import EXHAUSTIVE_MAX_N_IN, EncodedPlane, Method, as_plane, get_decoder
from .plane import encode_plane as encode_with
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
SYNTHETIC_POSITIONS = 1 << 19  # positions of the synthetic plane scored per bucket
DENSITY_BUCKET = 1.02  # buckets are 2% wide in density
SMALL_PLANE = 1 << 14  # planes up to this many positions are scored whole
DISPERSION_BUCKET = 1.5  # buckets of the spread of care counts between 64-position blocks
MAX_DISPERSION_BUCKET = 12
_bucket_lock = threading.Lock()


@njit(cache=True, nogil=True)
def _block_counts_moments(care):
    """Sum and sum of squares of the care counts of the full 64-position blocks."""
    nb = care.shape[0] // 64
    s = 0
    s2 = 0
    for b in range(nb):
        c = 0
        for i in range(b * 64, b * 64 + 64):
            c += care[i] != 0
        s += c
        s2 += c * c
    return nb, s, s2


def dispersion_bucket(care: np.ndarray) -> int:
    """How much more care counts vary between 64-position blocks than Bernoulli bits would
    (magnitude pruning leaves some rows far denser than others), as a bucket index (0 = no
    more than Bernoulli)."""
    nb, s, s2 = _block_counts_moments(care.view(np.uint8) if care.dtype == np.bool_ else care)
    if nb < 2:
        return 0
    mean = s / nb
    var = s2 / nb - mean * mean
    d = mean / 64
    binom = 64 * d * (1 - d)
    if binom <= 0 or var <= binom:
        return 0
    return min(MAX_DISPERSION_BUCKET, int(round(math.log(var / binom) / math.log(DISPERSION_BUCKET))))


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


def _limits(method: str, max_n_s: int | None, max_window: int) -> int:
    if method not in ("elimination", "exhaustive"):
        raise ValueError(f"method must be 'elimination' or 'exhaustive', got {method!r}")
    if method == "exhaustive":
        max_n_s = 0
    limit_s = MAX_WINDOW - 1 if max_n_s is None else int(max_n_s)
    if limit_s < 0:
        raise ValueError(f"max_n_s must be >= 0, got {max_n_s}")
    if not 1 <= max_window <= MAX_WINDOW:
        raise ValueError(f"max_window must be in 1..{MAX_WINDOW}, got {max_window}")
    return limit_s


def density_bucket(density: float) -> int:
    """Index of the 2%-wide density bucket holding `density` (0 < density <= 1)."""
    return int(round(math.log(density) / math.log(DENSITY_BUCKET)))


def synthetic_care(rng: np.random.Generator, n: int, density: float, dispersion: float) -> np.ndarray:
    """Care bits whose 64-position blocks have beta-binomial counts: mean `density`, and
    `dispersion` times the variance of Bernoulli bits (1 = Bernoulli)."""
    if dispersion <= 1.0 or density >= 1.0:
        return rng.random(n) < density
    rho = min(0.999, (dispersion - 1.0) / 63.0)  # intra-block correlation of beta-binomial counts
    ab = 1.0 / rho - 1.0
    nb = -(-n // 64)
    p = rng.beta(density * ab, (1.0 - density) * ab, nb)
    return (rng.random((nb, 64)) < p[:, None]).ravel()[:n]


def _synthetic(bucket: int, spread: int, limit_s: int, max_window: int, seed: int):
    density = min(1.0, DENSITY_BUCKET ** bucket)
    rng = np.random.default_rng([abs(bucket), int(bucket < 0), spread, limit_s, max_window, seed & 0xFFFFFFFF])
    n = SYNTHETIC_POSITIONS
    care = synthetic_care(rng, n, density, DISPERSION_BUCKET ** spread if spread else 1.0)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    return bits, care


@lru_cache(maxsize=None)
def _bucket_choice(bucket: int, spread: int, method: str, limit_s: int, max_window: int,
                   seed: int) -> tuple[int, int, float]:
    """(n_in, n_s, rate / density) for a density and dispersion bucket, scored on a synthetic plane.

    The plane's care bits follow the buckets (synthetic_care) and its bits are fair coins,
    from a generator seeded by the arguments: a pure function of them.
    """
    bits, care = _synthetic(bucket, spread, limit_s, max_window, seed)
    d = choose_by_encoding(bits, care, method=method, max_n_s=limit_s, max_window=max_window, seed=seed)
    return d.n_in, d.n_s, d.n_in / (care.mean() * d.n_out)


def choose(
    bits: np.ndarray,
    care: np.ndarray,
    *,
    method: str = "elimination",
    max_n_s: int | None = None,
    max_window: int = DEFAULT_WINDOW,
    seed: int = DEFAULT_SEED,
) -> XorDecoder:
    """The decoder for this plane: its density bucket's choice (see the module docstring).

    Costs one count of the care bits once the bucket is known; the first tensor of a
    bucket in a process pays for scoring the synthetic plane (about a quarter second).
    """
    care = np.asarray(care)
    limit_s = _limits(method, max_n_s, max_window)
    n_care = int(np.count_nonzero(care))
    if n_care == 0:
        return XorDecoder(1, MAX_N_OUT, 0, seed)
    if care.size <= SMALL_PLANE:
        return choose_by_encoding(bits, care, method=method, max_n_s=max_n_s, max_window=max_window, seed=seed)
    density = n_care / care.size
    key = (density_bucket(density), dispersion_bucket(care), method, limit_s, int(max_window), int(seed))
    with _bucket_lock:  # one thread scores a bucket, the others wait for its answer
        n_in, n_s, factor = _bucket_choice(*key)
    n_out = int(np.clip(round(n_in / (density * factor)), 1, MAX_N_OUT))
    return get_decoder(n_in, n_out, n_s, seed)


def choose_by_encoding(
    bits: np.ndarray,
    care: np.ndarray,
    *,
    method: str = "elimination",
    max_n_s: int | None = None,
    max_window: int = DEFAULT_WINDOW,
    seed: int = DEFAULT_SEED,
) -> XorDecoder:
    """The decoder that codes this plane in the fewest stream + patch bits, by trial encodings.

    max_n_s=0 gives the paper's non-sequential network. max_window caps n_in * (n_s + 1):
    the default 128 runs on the fastest kernels; 256 codes about half a percent smaller
    at a third of the encoding speed. With method="exhaustive" the
    search is limited to n_in <= 16 and candidates are still scored by elimination (the
    exhaustive result can only have fewer patches).
    """
    bits = np.asarray(bits, dtype=np.uint8)
    care = np.asarray(care, dtype=bool)
    limit_s = _limits(method, max_n_s, max_window)
    n_care = int(care.sum())
    if n_care == 0:
        return XorDecoder(1, MAX_N_OUT, 0, seed)
    density = n_care / care.size
    parts = _sample(bits, care)
    scale = care.size / sum(p[0].size for p in parts)

    def cost(n_in: int, n_out: int, n_s: int) -> float:
        d = get_decoder(n_in, n_out, n_s, seed)
        encs = [encode_with(b, c, d) for b, c in parts]
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


def encode_plane(bits, care, decoder: XorDecoder | str = "auto", *, method: Method = "elimination",
                 chunk_slices: int | None = None, verify: bool = False) -> EncodedPlane:
    """Encode a flat 0/1 plane so that decode_plane reproduces every care bit (plane.py);
    decoder="auto" picks the rate from the care density (`choose`)."""
    if isinstance(decoder, str):
        if decoder != "auto":
            raise ValueError(f"decoder must be an XorDecoder or 'auto', got {decoder!r}")
        b, c = as_plane(bits, care)
        decoder = choose(b, c.view(bool), method=method)
    return encode_with(bits, care, decoder, method=method, chunk_slices=chunk_slices, verify=verify)
