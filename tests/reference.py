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


# --- ctx mask (section 3.2, version 2) --------------------------------------------------------

CTX_RHO = float.fromhex("0x1.1082b577d34edp+0")


def ctx_table() -> dict[int, int]:
    p1, o = {}, 1.0
    for z in range(256):
        p1[z] = min(max(math.floor(65536.0 * o / (1.0 + o) + 0.5), 1), 65535)
        o = o * CTX_RHO
    for z in range(1, 256):
        p1[-z] = 65536 - p1[z]
    return p1


class RangeDecoder:
    def __init__(self, data: bytes):
        self.d = data
        self.range = 0xFFFFFFFF
        self.code = (self.byte(0) << 24) | (self.byte(1) << 16) | (self.byte(2) << 8) | self.byte(3)
        self.pos = 4

    def byte(self, i: int) -> int:
        return self.d[i] if i < len(self.d) else 0

    def decode(self, p1: int) -> int:
        bound = (self.range >> 16) * p1
        if self.code < bound:
            self.range, bit = bound, 1
        else:
            self.code, self.range, bit = self.code - bound, self.range - bound, 0
        while self.range < 1 << 24:
            self.range = (self.range << 8) % (1 << 32)
            self.code = ((self.code << 8) % (1 << 32)) | self.byte(self.pos)
            self.pos += 1
        return bit


def ctx_indices(dec: RangeDecoder, count: int) -> list[int]:
    a = [32768] * 18

    def bit(k: int) -> int:
        b = dec.decode(a[k])
        a[k] = a[k] + ((65536 - a[k]) >> 5) if b else a[k] - (a[k] >> 5)
        return b

    out = []
    for _ in range(count):
        if not bit(0):
            out.append(0)
            continue
        neg = bit(1)
        m = 1
        while m < 255:
            if not bit(2 + min(m - 1, 15)):
                break
            m += 1
        out.append(-m if neg else m)
    return out


def ctx_mask(mk: dict, payload: bytes, offsets: list[int], model: bytes) -> list[int]:
    length, block, rows, cols = mk["length"], mk["block"], mk["rows"], mk["cols"]
    assert rows * cols == length and block % 64 == 0
    dec = RangeDecoder(model)
    ia = ctx_indices(dec, rows) if mk["row_step"] else [0] * rows
    ib = ctx_indices(dec, cols) if mk["col_step"] else [0] * cols
    p1 = ctx_table()
    keep = []
    for i in range(len(offsets)):
        start = offsets[i - 1] if i else 0
        d = RangeDecoder(payload[start : offsets[i]])
        for p in range(i * block, min(length, (i + 1) * block)):
            r, c = divmod(p, cols)
            z = min(max(mk["base"] + mk["row_step"] * ia[r] + mk["col_step"] * ib[c], -255), 255)
            keep.append(d.decode(p1[z]))
    return keep


def decode_tensor(path: str, name: str) -> list[float]:
    """Row-major float32 values of compressed tensor `name`, from the file alone."""
    meta, header, data = read_xsp(path)
    t = meta["tensors"][name]
    part = lambda p: entry(header, data, name + ".__xs__." + p)  # noqa: E731
    length = t["mask"]["length"]
    nb = -(-length // t["mask"]["block"]) if t["mask"]["block"] else 0
    if t["mask"]["codec"] == "bitmask":
        keep = [bit_at(part("mask"), p) for p in range(length)]
    elif t["mask"]["codec"] == "ctx":
        offsets = list(struct.unpack(f"<{nb}I", part("mask_offsets")))
        keep = ctx_mask(t["mask"], part("mask"), offsets, part("mask_model"))
    else:
        nb = -(-length // t["mask"]["block"])
        offsets = list(struct.unpack(f"<{nb}I", part("mask_offsets")))
        params = list(struct.unpack(f"<{nb}I", part("mask_params")))
        keep = golomb_mask(part("mask"), offsets, params, t["mask"]["block"], length)
    planes = []
    for i, pl in enumerate(t["planes"]):
        if pl.get("kind") == "packed":  # section 1.8: j-th kept position gets stream bit j
            stream = part(f"plane{i}.stream")
            assert len(stream) == -(-pl["care_bits"] // 8) and sum(keep) == pl["care_bits"]
            natural, j = [0] * length, 0
            for p in range(length):
                if keep[p]:
                    natural[p] = bit_at(stream, j)
                    j += 1
            planes.append(natural)
            continue
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
    rs = t.get("scale_rows", 1)  # section 4.1
    dt = header[name + ".__xs__.scales"]["dtype"]

    def floats(part_name: str) -> list[float]:
        raw = part(part_name)
        code = header[name + ".__xs__." + part_name]["dtype"]
        if code == "BF16":  # the upper half of a float32
            return [struct.unpack("<f", b"\0\0" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
        fmt, size = ("e", 2) if code == "F16" else ("f", 4)
        return [struct.unpack("<" + fmt, raw[i : i + size])[0] for i in range(0, len(raw), size)]

    if t.get("scale_format") == "log8":  # section 4.3
        raw = part("scales")
        ref = floats("scale_ref")
        steps = [struct.unpack("<f", struct.pack("<I", b))[0] for b in
                 (0x3F800000, 0x3F6AC0C7, 0x3F5744FD, 0x3F45672A, 0x3F3504F3, 0x3F25FED7, 0x3F1837F0, 0x3F0B95C2)]
        scales = []
        for n, v in enumerate(raw):
            m = v & 127
            if m == 0:
                scales.append(0.0)
                continue
            e, j = divmod(m - 1, 8)
            x = f32(f32(ref[n % len(ref)] * steps[j]) * 2.0**-e)
            scales.append(-x if v >> 7 else x)
    else:
        scales = floats("scales")
    ngroups = -(-cols // g) if cols else 1
    zero_points = None
    if t["quantizer"] == "affine" and not t["symmetric"]:
        zero_points = list(struct.unpack(f"<{rows * ngroups}b", part("zero_points")))
    srows = -(-rows // rs) if rows else 1
    k = len(scales) // max(srows * ngroups, 1)
    book = floats("codebook") if t["quantizer"] == "codebook" else None
    out = []
    for p in range(length):
        if not keep[p]:
            out.append(0.0)
            continue
        r, c = divmod(p, cols)
        at = (r // rs) * ngroups + c // g
        s = scales[at * k : (at + 1) * k]
        code = sum(planes[i][p] << i for i in range(q))
        if t["quantizer"] == "codebook":  # section 4.2
            b = r // t["codebook_rows"]
            w = f32(s[0] * book[b * (1 << q) + code])
        elif t["quantizer"] == "bcq":
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
