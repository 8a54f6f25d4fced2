"""A slow decoder written from docs/FORMAT.md alone, to check the fast one against.

It shares no code with xorsparse: its own SplitMix64, its own bit readers, its own Rice
parser, and the decoder equation evaluated literally, one output bit at a time.
"""

from __future__ import annotations

M64 = (1 << 64) - 1


def splitmix64_stream(seed: int):
    state = seed & M64
    while True:
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        yield z ^ (z >> 31)


def matrices(n_in: int, n_out: int, n_s: int, seed: int) -> list[list[list[int]]]:
    """m[k][j][i] per FORMAT.md: rows j in order, each drawn as k = 0..n_s, ceil(n_in/64) words each."""
    gen = splitmix64_stream(seed)
    m = [[[0] * n_in for _ in range(n_out)] for _ in range(n_s + 1)]
    for j in range(n_out):
        while True:
            for k in range(n_s + 1):
                for w in range((n_in + 63) // 64):
                    r = next(gen)
                    for i in range(64 * w, min(64 * w + 64, n_in)):
                        m[k][j][i] = (r >> (i - 64 * w)) & 1
            if any(m[k][j][i] for k in range(n_s + 1) for i in range(n_in)):
                break
    return m


def bit_at(data: bytes, pos: int) -> int:
    return (data[pos >> 3] >> (pos & 7)) & 1


def rice_positions(data: bytes, count: int, k: int) -> list[int]:
    pos, prev, out = 0, -1, []
    for _ in range(count):
        q = 0
        while bit_at(data, pos):
            q += 1
            pos += 1
        pos += 1
        r = 0
        for i in range(k):
            r |= bit_at(data, pos) << i
            pos += 1
        prev = prev + 1 + (q << k | r)
        out.append(prev)
    return out


def decode(length, n_in, n_out, n_s, seed, chunk_slices, stream: bytes, patches: list[int]) -> list[int]:
    m = matrices(n_in, n_out, n_s, seed)
    n_slices = -(-length // n_out)

    def x(t: int, i: int, chunk_start: int) -> int:
        if t < chunk_start:
            return 0
        return bit_at(stream, t * n_in + i)

    out = []
    for p in range(length):
        t, j = divmod(p, n_out)
        start = (t // chunk_slices) * chunk_slices
        v = 0
        for k in range(n_s + 1):
            for i in range(n_in):
                v ^= m[k][j][i] & x(t - k, i, start)
        out.append(v)
    assert n_slices * n_in <= len(stream) * 8
    for p in patches:
        out[p] ^= 1
    return out
