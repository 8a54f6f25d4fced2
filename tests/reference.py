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


# --- whole tensors from an .xsp file (sections 2-5) -------------------------------------------

import json  # noqa: E402
import math  # noqa: E402
import struct  # noqa: E402


def f32(x: float) -> float:
    """Round a Python float to IEEE float32, as every operation of section 4 does."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def round_scale_dtype(x: float, code: str) -> float:
    """Section 4, affine: round a float32 value to the scale dtype (F32, F16 or BF16), ties to even."""
    if code == "F32":
        return x
    if code == "F16":
        try:
            return struct.unpack("<e", struct.pack("<e", x))[0]
        except OverflowError:
            return math.copysign(math.inf, x)
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", b))[0]


def read_xsp(path: str) -> tuple[dict, dict, bytes]:
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["xorsparse"])
    return meta, header, blob[8 + n :]


def entry(header: dict, data: bytes, name: str) -> bytes:
    b, e = header[name]["data_offsets"]
    return data[b:e]


def golomb_mask(payload: bytes, offsets: list[int], params: list[int], block: int, length: int) -> list[int]:
    keep = [0] * length
    for i, m in enumerate(params):
        start = offsets[i - 1] if i else 0
        chunk = payload[start : offsets[i]]
        n = min(block, length - i * block)
        pos, prev = 0, -1
        while True:
            q = 0
            while bit_at(chunk, pos):
                q += 1
                pos += 1
            pos += 1
            r = 0
            if m > 1:
                b = math.ceil(math.log2(m))
                u = (1 << b) - m
                for _ in range(b - 1):
                    r = (r << 1) | bit_at(chunk, pos)
                    pos += 1
                if r >= u:
                    r = ((r << 1) | bit_at(chunk, pos)) - u
                    pos += 1
            p = prev + 1 + q * m + r
            if p == n:
                break
            keep[i * block + p] = 1
            prev = p
    return keep


def decode_tensor(path: str, name: str) -> list[float]:
    """Row-major float32 values of compressed tensor `name`, from the file alone."""
    meta, header, data = read_xsp(path)
    t = meta["tensors"][name]
    part = lambda p: entry(header, data, name + ".__xs__." + p)  # noqa: E731
    length = t["mask"]["length"]
    if t["mask"]["codec"] == "bitmask":
        keep = [bit_at(part("mask"), p) for p in range(length)]
    else:
        nb = -(-length // t["mask"]["block"])
        offsets = list(struct.unpack(f"<{nb}I", part("mask_offsets")))
        params = list(struct.unpack(f"<{nb}I", part("mask_params")))
        keep = golomb_mask(part("mask"), offsets, params, t["mask"]["block"], length)
    planes = []
    for i, pl in enumerate(t["planes"]):
        patches = rice_positions(part(f"plane{i}.patches"), pl["patches"], pl["rice_k"])
        coded = decode(length, pl["n_in"], pl["n_out"], pl["n_s"], int(pl["seed"]), pl["chunk_slices"],
                       part(f"plane{i}.stream"), patches)
        nfull, step = length // 64, t["order"]["step"]
        natural = list(coded)
        for j in range(nfull):
            k = (j * step) % nfull
            natural[64 * j : 64 * j + 64] = coded[64 * k : 64 * k + 64]
        planes.append(natural)
    rows, cols, g, q = t["rows"], t["cols"], t["group_size"], t["bits"]
    sc = part("scales")
    dt = header[name + ".__xs__.scales"]["dtype"]
    if dt == "BF16":  # the upper half of a float32
        scales = [struct.unpack("<f", b"\0\0" + sc[i : i + 2])[0] for i in range(0, len(sc), 2)]
    else:
        fmt, size = ("e", 2) if dt == "F16" else ("f", 4)
        scales = [struct.unpack("<" + fmt, sc[i : i + size])[0] for i in range(0, len(sc), size)]
    ngroups = -(-cols // g) if cols else 1
    zero_points = None
    if t["quantizer"] == "affine" and not t["symmetric"]:
        zero_points = list(struct.unpack(f"<{rows * ngroups}b", part("zero_points")))
    k = len(scales) // max(rows * ngroups, 1)
    out = []
    for p in range(length):
        if not keep[p]:
            out.append(0.0)
            continue
        r, c = divmod(p, cols)
        s = scales[(r * ngroups + c // g) * k : (r * ngroups + c // g + 1) * k]
        code = sum(planes[i][p] << i for i in range(q))
        if t["quantizer"] == "bcq":
            w = 0.0
            for i in range(q):
                w = f32(w + f32(s[i] * (1.0 if (code >> i) & 1 else -1.0)))
        elif t["quantizer"] == "affine":
            z = zero_points[r * ngroups + c // g] if zero_points is not None else 0
            w = round_scale_dtype(f32((code - (1 << (q - 1)) - z) * s[0]), dt)
        elif t["symmetric"]:
            w = f32(s[0] * f32(float(code) - ((1 << q) - 1) / 2))
        else:
            w = f32(s[1] + f32(s[0] * float(code)))
        out.append(w)
    return out


# --- the version-2 description checksum (section 2.1) -----------------------------------------------

import zlib  # noqa: E402


def description_crc(metadata: dict, entries: dict) -> str:
    """Section 2.1: CRC-32 of D over the metadata pairs (but the checksum's) and the header entries."""
    u64 = lambda n: struct.pack("<Q", n)  # noqa: E731
    s = lambda x: u64(len(x.encode("utf-8"))) + x.encode("utf-8")  # noqa: E731
    pairs = sorted((k.encode("utf-8"), k, v) for k, v in metadata.items() if k != "xorsparse_crc32")
    d = u64(len(pairs)) + b"".join(s(k) + s(v) for _, k, v in pairs)
    rows = sorted((n.encode("utf-8"), n, e) for n, e in entries.items())
    d += u64(len(rows))
    for _, n, e in rows:
        d += s(n) + s(e["dtype"]) + u64(len(e["shape"])) + b"".join(u64(x) for x in e["shape"])
        d += u64(e["data_offsets"][0]) + u64(e["data_offsets"][1])
    return "%08x" % (zlib.crc32(d) & 0xFFFFFFFF)


def description_checksum(path: str) -> tuple[str | None, str]:
    """(stored, recomputed) description checksum of a file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    return meta.get("xorsparse_crc32"), description_crc(meta, header)
