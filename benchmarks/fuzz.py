"""Fuzzing the .xsp reader: mutated files through the real command line, outcomes classified.

    python -m benchmarks fuzz --cases 100000 [--seed S] [--json PATH] [--markdown PATH]

Base files: small .xsp files covering both quantizers, both mask codecs (one with several
Golomb blocks), patch lists, several chunks, a wide decoder window, every output dtype and
raw tensors of many dtypes (0-d and empty ones included). Each case mutates one of them:

- structured (about 70%): edits of the JSON description (hostile values of every type,
  deleted, renamed and unknown members, list surgery, NaN/Infinity/1e999 tokens, huge
  integers, deep nesting, duplicate keys), of the safetensors header (dtypes, shapes,
  offsets, missing, orphan and renamed entries) and of the parts' data (Golomb parameters
  and offsets, streams, patch lists, scales), with every checksum recomputed in most cases
  (`forged`), so the edit reaches the validator and the decoders;
- raw (about 30%): byte and bit flips, truncation, appended garbage, inserted and deleted
  bytes, a different header length; no checksum is recomputed.

Every case runs `inspect --json`, `verify` and `decompress` of the real CLI in a process
forked from a warmed-up server (15-20 cases a second on 2 cores), under a CPU
limit, a wall-clock limit and an address-space limit, with XORSPARSE_MAX_TENSOR_BYTES at
64 MiB. Outcomes:

    error       a one-line XspError naming the file (the only acceptable failure)
    identical   accepted, and the decompressed tensors equal the base file's
    different   accepted with different tensors: acceptable only if the case forged the
                checksums (a forgery the format cannot tell from an honest file)
    traceback   any other exception, or an error message without the file or on several lines
    crash       killed by a signal (segmentation fault, abort, ...)
    hang        over the CPU or wall-clock limit
    memory      MemoryError, or peak memory above 192 MiB + 64 x the file size

"bad" = traceback + crash + hang + memory + different-without-forgery; the benchmark and
the test suite's short run require 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from ._report import subprocess_env
from .xspedit import XspImage

OUTCOMES = ("error", "identical", "different", "traceback", "crash", "hang", "memory")
FUZZ_LIMIT = 64 << 20  # XORSPARSE_MAX_TENSOR_BYTES inside the cases
MEM_BASE = 192 << 20
MEM_PER_FILE_BYTE = 64
CPU_SECONDS = 30
WALL_SECONDS = 90
AS_HEADROOM = 3 << 30


# ---------------------------------------------------------------------------------------
# Base files


def make_bases(folder: str) -> list[str]:
    """Small .xsp files covering the format's variants; returns their paths."""
    import dataclasses

    import numpy as np

    from xorsparse.codec.plane import encode_plane
    from xorsparse.codec.rates import choose
    from xorsparse.format.container import RawTensor, write_xsp
    from xorsparse.tensor import CompressConfig, compress_tensor
    from xorsparse.tensor.interleave import to_coded
    from xorsparse.tensor.maskcode import encode_entropy
    from xorsparse.tensor.pipeline import prune_quantize

    rng = np.random.default_rng(20240611)

    def custom(w, cfg, block=None, chunk_slices=None, max_n_s=None):
        """compress_tensor with a small mask block and short chunks (several of each)."""
        ct = compress_tensor(w, cfg)
        keep, qz, _ = prune_quantize(w, cfg)
        flat = keep.ravel()
        if block:
            ct = dataclasses.replace(ct, mask=encode_entropy(flat, block))
        if chunk_slices:
            care = to_coded(flat, ct.block_step)
            d = choose(to_coded(qz.planes[0], ct.block_step), care, max_n_s=max_n_s, seed=cfg.seed)
            planes = [encode_plane(to_coded(p, ct.block_step), care, d, chunk_slices=chunk_slices)
                      for p in qz.planes]
            ct = dataclasses.replace(ct, planes=planes)
        return ct

    def raws(*arrays):
        return {f"raw{i}": RawTensor.from_array(a) for i, a in enumerate(arrays)}

    os.makedirs(folder, exist_ok=True)
    out = []

    def save(name, compressed, raw, cfg):
        p = os.path.join(folder, name)
        write_xsp(p, compressed, raw, cfg, {"order": list(compressed) + list(raw), "pruning": "per-tensor",
                                            "source": "fuzz"})
        out.append(p)

    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    c = CompressConfig(0.7, 2, max_n_s=0)  # paper mode: patches
    save("bcq-entropy-patches.xsp", {"w.weight": custom(f32(48, 96), c, block=256)},
         raws(np.arange(5, dtype=np.float32)), c)
    c = CompressConfig(0.5, 3, "uniform", symmetric=False, group_size=7, mask_codec="bitmask")
    save("uniform-asym-bitmask.xsp", {"h.weight": compress_tensor(f32(20, 37).astype(np.float16), c)},
         raws(np.arange(6, dtype=np.int64), np.array(3.5, dtype=np.float64), np.zeros((2, 0), np.float32),
              np.array([1, 0, 1], dtype=bool), np.arange(4, dtype=np.uint8)), c)
    c = CompressConfig(0.9, 4, "bcq", max_window=256)
    save("bcq4-wide-chunks.xsp", {"conv.weight": custom(f32(16, 8, 3, 3), c, chunk_slices=64, max_n_s=None),
                                  "v": compress_tensor(f32(300), c)},
         raws(np.arange(3, dtype=np.int16)), c)
    c = CompressConfig(0.8, 8, "uniform", mask_codec="entropy")
    save("uniform8-f64.xsp", {"d.weight": compress_tensor(rng.standard_normal((9, 50)), c)}, {}, c)
    # affine (given codes, scales and zero points: compressed-tensors), with the info members
    # of a sharded job's output (info.shard, info.job)
    from xorsparse.tensor.pipeline import compress_quantized
    from xorsparse.tensor.quant import given_keep, quantize_given, round_to_scale_dtype

    def affine(rows, cols, bits, group, scale_dtype, symmetric, dtype):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        codes = rng.integers(lo, hi + 1, size=(rows, cols)).astype(np.int8)
        codes[rng.random(codes.shape) < 0.5] = 0
        groups = -(-cols // group)
        scales = round_to_scale_dtype(rng.random((rows, groups)) * 0.02 + 1e-3, scale_dtype)
        zp = None if symmetric else rng.integers(-3, 4, size=(rows, groups)).astype(np.int8)
        qz = quantize_given(codes, scales, zp, bits, group, scale_dtype)
        keep = given_keep(codes, qz.scales, qz.zero_points, group)
        return compress_quantized(keep, qz, dtype, CompressConfig(0.0, bits, "uniform"))

    job = {"key": "ab" * 32, "input_sha256": "0123456789abcdef" * 4}
    c = CompressConfig(0.0, 4, "uniform")
    p = os.path.join(folder, "affine-shard.xsp")
    write_xsp(p, {"a.weight": affine(12, 64, 4, 32, "bfloat16", False, "bfloat16"),
                  "s.weight": affine(8, 40, 8, 16, "float16", True, "float16")},
              raws(np.arange(7, dtype=np.float32)), c,
              {"order": ["a.weight", "s.weight", "raw0"], "pruning": "per-tensor", "source": "fuzz",
               "shard": [1, 1], "job": job})
    out.append(p)
    # version-2 layouts (FORMAT.md 1.8, 3.2, 4.1-4.3): ctx mask with a row and column model,
    # codebook with scale and codebook row groups, log8 scales, packed planes
    w = f32(60, 80) * rng.lognormal(0, 0.7, (60, 1)).astype(np.float32)
    c = CompressConfig(0.8, 2, "codebook", scale_rows=4, codebook_rows=10, mask_codec="ctx")
    c2 = CompressConfig(0.8, 3, "uniform", symmetric=False, scale_format="log8", mask_codec="ctx")
    c3 = CompressConfig(0.7, 2, packed_below=1000, mask_codec="entropy")
    save("v2-ctx-codebook-log8-packed.xsp", {"cb.weight": compress_tensor(w, c), "l8.weight": compress_tensor(w, c2),
                                             "pk.weight": compress_tensor(f32(16, 9), c3)},
         raws(np.arange(2, dtype=np.float16)), c)
    try:
        import torch

        c = CompressConfig(0.6, 1, "bcq")
        w = torch.from_numpy(f32(24, 64)).to(torch.bfloat16)
        save("bcq1-bf16.xsp", {"b.weight": compress_tensor(w, c)},
             {"bf": RawTensor("BF16", (4,), torch.arange(4, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())},
             c)
    except ImportError:  # pragma: no cover
        pass
    return out


# ---------------------------------------------------------------------------------------
# Mutations


HOSTILE = [0, -1, 1, 2, 3, 7, 63, 64, 65, 127, 255, 256, 257, 1023, 1024, 1025, 2**20, 2**26 + 1, 2**31 - 1,
           2**31, 2**32 - 1, 2**32, 2**40, 2**48, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -2**31,
           -2**63, 10**30, 0.5, 1.0, 2.0, -0.0, 1e-300, 1e308, True, False, None, "", "0", "1", "-1", "x",
           "bcq", "uniform", "entropy", "bitmask", "blocks64", "float16", "bfloat16", "int8", "F32", "U8",
           "é", "a.__xs__.b", "__metadata__", [], {}, [0], [1, 2], [[1]], {"a": 1}, "9" * 30, "18446744073709551616"]
TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 5000, "1.5e308", "[" * 100_000 + "]" * 100_000,
          "{\"a\":" * 50_000 + "1" + "}" * 50_000, "\"\\ud800\"", "\"\\u0000\"", "0" * 20, "-0", "1E2", "tru"]
ST_DTYPES = ["BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "U64", "I64", "F64"]
SAME_SIZE = [["U8", "I8", "BOOL"], ["U16", "I16", "F16", "BF16"], ["U32", "I32", "F32"], ["U64", "I64", "F64"]]
MARK = "@@FUZZ@@"


def _paths(obj: Any, prefix=()) -> list[tuple]:
    """Every (container, key) pair under obj, as key paths."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _near(v: Any, rng: random.Random) -> Any:
    if isinstance(v, bool) or not isinstance(v, int):
        return rng.choice(HOSTILE)
    return rng.choice([v + 1, v - 1, v * 2, v // 2, -v, v + 64, v - 64, 0, v + 2**32, v * 1000, v ^ 1])


class Mutator:
    """Structure-aware mutations of one base file; each returns (bytes, description, forged)."""

    def __init__(self, base: bytes, rng: random.Random):
        self.base = base
        self.rng = rng

    # -- raw ------------------------------------------------------------------------------

    def raw(self) -> tuple[bytes, str]:
        r = self.rng
        b = bytearray(self.base)
        (hlen,) = struct.unpack("<Q", self.base[:8])
        kind = r.choice(["flip", "flip_header", "bitflip", "truncate", "append", "insert", "delete",
                         "header_len", "fill"])
        if kind in ("flip", "flip_header"):
            for _ in range(r.randint(1, 4)):
                i = r.randrange(8, 8 + hlen) if kind == "flip_header" else r.randrange(len(b))
                b[i] ^= r.randint(1, 255)
        elif kind == "bitflip":
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
        elif kind == "truncate":
            b = b[: r.randrange(len(b))]
        elif kind == "append":
            extra = r.choice([bytes(r.randrange(256) for _ in range(r.randint(1, 64))), b"\0" * r.randint(1, 64),
                              bytes(self.base), b" "])
            b += extra
        elif kind == "insert":
            i = r.randrange(len(b) + 1)
            b[i:i] = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
        elif kind == "delete":
            i = r.randrange(len(b))
            del b[i : i + r.randint(1, 16)]
        elif kind == "header_len":
            n = r.choice([hlen + r.choice([-8, -1, 1, 8, 16]), 0, 2**63, 2**64 - 1, len(b), 100 * 2**20 + 1])
            b[:8] = struct.pack("<Q", n % 2**64)
        else:
            i = r.randrange(len(b))
            b[i : i + r.randint(1, 32)] = bytes([r.choice([0, 255])]) * len(b[i : i + 32])
        return bytes(b), kind

    # -- structured -----------------------------------------------------------------------

    def structured(self) -> tuple[bytes, str, bool]:
        r = self.rng
        img = XspImage.loads(self.base)
        forged = r.random() < 0.85
        self.doc_edits: list[Callable[[str], str]] = []
        self.header_edit: Callable[[dict], str] | None = None
        ops = []
        for _ in range(r.choice([1, 1, 1, 2, 3])):
            op = r.choice(["doc_value", "doc_value", "doc_value", "doc_near", "doc_near", "doc_delete",
                           "doc_unknown", "doc_rename", "doc_list", "doc_token", "doc_dup", "entry_dtype",
                           "entry_same_size", "entry_shape", "entry_offsets", "entry_remove", "entry_add",
                           "entry_rename", "entry_extra", "meta_edit", "data_params", "data_offsets",
                           "data_bytes", "data_resize", "data_scales", "findings"])
            try:  # an earlier edit may have left nothing for this one to work on
                getattr(self, "_" + op)(img)
                ops.append(op)
            except Exception:  # noqa: BLE001 (struct.error, KeyError, ...): skip this edit
                pass
        try:
            data = img.dumps(resign=forged, doc_edits=self.doc_edits, header_edit=self.header_edit)
        except (TypeError, ValueError, RecursionError, OverflowError):
            img = XspImage.loads(self.base)
            data, forged = img.dumps(resign=False), False
            ops.append("unserializable")
        return data, "+".join(ops), forged

    def _doc_target(self, img):
        paths = _paths(img.doc)
        return self.rng.choice(paths) if paths else None

    def _doc_value(self, img):
        p = self._doc_target(img)
        if p:
            _at(img.doc, p[:-1])[p[-1]] = self.rng.choice(HOSTILE)

    def _doc_near(self, img):
        ints = [p for p in _paths(img.doc) if type(_at(img.doc, p)) is int]
        if ints:
            p = self.rng.choice(ints)
            _at(img.doc, p[:-1])[p[-1]] = _near(_at(img.doc, p), self.rng)

    def _doc_delete(self, img):
        p = self._doc_target(img)
        if p:
            del _at(img.doc, p[:-1])[p[-1]]

    def _objects(self, img):
        return [p for p in [()] + _paths(img.doc) if isinstance(_at(img.doc, p), dict)]

    def _doc_unknown(self, img):
        o = _at(img.doc, self.rng.choice(self._objects(img)))
        o[self.rng.choice(["extra", "zero_point", "codebook", "transform", "x" * 40])] = self.rng.choice(HOSTILE)

    def _doc_rename(self, img):
        objs = [p for p in self._objects(img) if _at(img.doc, p)]
        if objs:
            o = _at(img.doc, self.rng.choice(objs))
            k = self.rng.choice(list(o))
            new = k[:-1] + chr((ord(k[-1]) + 1) % 128) if k else "k"
            o[new] = o.pop(k)

    def _doc_list(self, img):
        lists = [p for p in _paths(img.doc) if isinstance(_at(img.doc, p), list) and _at(img.doc, p)]
        if lists:
            lst = _at(img.doc, self.rng.choice(lists))
            op = self.rng.choice(["pop", "dup", "swap", "append", "clear"])
            if op == "pop":
                lst.pop(self.rng.randrange(len(lst)))
            elif op == "dup":
                lst.append(json.loads(json.dumps(lst[self.rng.randrange(len(lst))])))
            elif op == "swap" and len(lst) > 1:
                i, j = self.rng.sample(range(len(lst)), 2)
                lst[i], lst[j] = lst[j], lst[i]
            elif op == "append":
                lst.append(self.rng.choice(HOSTILE))
            else:
                lst.clear()

    def _doc_token(self, img):
        p = self._doc_target(img)
        if p:
            mark = f"{MARK}{len(self.doc_edits)}"
            _at(img.doc, p[:-1])[p[-1]] = mark
            token = self.rng.choice(TOKENS)
            self.doc_edits.append(lambda text: text.replace(json.dumps(mark), token, 1))

    def _doc_dup(self, img):
        objs = [p for p in self._objects(img) if _at(img.doc, p)]
        if objs:
            o = _at(img.doc, self.rng.choice(objs))
            k = self.rng.choice(list(o))
            mark = f"{MARK}{len(self.doc_edits)}"
            o[mark] = self.rng.choice(HOSTILE)
            self.doc_edits.append(lambda text: text.replace(json.dumps(mark), json.dumps(k), 1))

    def _entry(self, img):
        return self.rng.choice(img.entries) if img.entries else None

    def _entry_dtype(self, img):
        e = self._entry(img)
        if e:
            e["dtype"] = self.rng.choice(ST_DTYPES + ["F8_E4M3", "X", 5, None, ["F32"]])

    def _entry_same_size(self, img):
        e = self._entry(img)
        if e:
            for g in SAME_SIZE:
                if e["dtype"] in g:
                    e["dtype"] = self.rng.choice([d for d in g if d != e["dtype"]])

    def _entry_shape(self, img):
        e = self._entry(img)
        if not e:
            return
        s = list(e["shape"])
        n = 1
        for d in s:
            n *= d if isinstance(d, int) else 1
        op = self.rng.choice(["flat", "lead1", "trail1", "reverse", "dim", "drop", "hostile", "scalar"])
        if op == "flat":
            e["shape"] = [n]
        elif op == "lead1":
            e["shape"] = [1] + s
        elif op == "trail1":
            e["shape"] = s + [1]
        elif op == "reverse":
            e["shape"] = s[::-1]
        elif op == "dim" and s:
            i = self.rng.randrange(len(s))
            s[i] = _near(s[i], self.rng)
            e["shape"] = s
        elif op == "drop" and s:
            e["shape"] = s[:-1]
        elif op == "scalar":
            e["shape"] = []
        else:
            e["shape"] = self.rng.choice([[-1], [2**64], [1.5], ["3"], [True], 7, None, [[2]]])

    def _entry_offsets(self, img):
        e = self._entry(img)
        if not e:
            return
        off = 0
        for x in img.entries:
            n = len(img.blobs.get(x["name"], b""))
            if x is e:
                break
            off += n
        n = len(img.blobs.get(e["name"], b""))
        e["data_offsets"] = self.rng.choice([[off + 1, off + n + 1], [off - 1, off + n - 1], [off, off + n + 8],
                                             [0, n], [off + n, off], [off, 2**64], [-8, n], [off], "x",
                                             [off, off + n, 3], [1.0 * off, off + n]])

    def _entry_remove(self, img):
        e = self._entry(img)
        if e:
            img.entries.remove(e)
            img.blobs.pop(e["name"], None)

    def _entry_add(self, img):
        name = self.rng.choice(["orphan", "w.weight.__xs__.extra", "raw0", "__metadata__x", "w.weight"])
        if any(e["name"] == name for e in img.entries):
            name += "2"
        img.entries.insert(self.rng.randrange(len(img.entries) + 1), {"name": name, "dtype": "U8", "shape": [3]})
        img.blobs[name] = b"abc"

    def _entry_rename(self, img):
        e = self._entry(img)
        if e:
            old = e["name"]
            e["name"] = self.rng.choice([old + "x", old[:-1], old.upper(), "", "\ud800" + old])
            img.blobs[e["name"]] = img.blobs.pop(old)

    def _entry_extra(self, img):
        op = self.rng.choice(["member", "dup", "meta_type", "notobj", "token"])
        pick = self.rng.random()
        value = self.rng.choice([1, "x", [], None])
        meta = self.rng.choice([[], {"xorsparse": 5}, "x", None, {"xorsparse": None}])
        token = self.rng.choice(TOKENS)

        def edit(header: dict) -> str:
            names = [n for n in header if n != "__metadata__"] or ["__metadata__"]
            name = names[int(pick * len(names))]
            if op == "member" and isinstance(header.get(name), dict):
                header[name]["extra"] = 1
            elif op == "meta_type":
                header["__metadata__"] = meta
            elif op == "notobj":
                header[name] = value
            elif op == "token" and isinstance(header.get(name), dict):
                header[name]["shape"] = MARK
                return json.dumps(header, separators=(",", ":")).replace(json.dumps(MARK), token, 1)
            elif op == "dup":
                text = json.dumps(header, separators=(",", ":"))
                return text[:-1] + "," + json.dumps(name) + ":" + json.dumps(header.get(name)) + "}"
            return json.dumps(header, separators=(",", ":"))

        self.header_edit = edit

    def _meta_edit(self, img):
        m = img.metadata
        op = self.rng.choice(["drop_doc", "drop_crc", "crc_upper", "crc_short", "extra", "version1", "version3"])
        if op == "drop_doc":
            m.pop("xorsparse", None)
            img.doc = None
        elif op == "drop_crc":
            img.metadata = {k: v for k, v in m.items() if k != "xorsparse_crc32"}
        elif op == "extra":
            m["note"] = "hello"
        elif op == "version1" and isinstance(img.doc, dict):
            img.doc["version"] = 1
        elif op == "version3" and isinstance(img.doc, dict):
            img.doc["version"] = 3
        return None

    def _parts(self, img, suffix):
        return [e for e in img.entries if e["name"].endswith(suffix)]

    def _data_params(self, img):
        es = self._parts(img, ".__xs__.mask_params")
        if not es:
            return self._data_bytes(img)
        e = self.rng.choice(es)
        n = len(img.blobs[e["name"]]) // 4
        v = self.rng.choice([0, 0x80000000, 0xFFFFFFFF, 2**26 + 1, 1, 2, 65536, 0x7FC00000])
        vals = list(struct.unpack(f"<{n}I", img.blobs[e["name"]][: 4 * n]))
        if vals:
            vals[self.rng.randrange(n)] = v
        img.blobs[e["name"]] = struct.pack(f"<{n}I", *vals)
        if self.rng.random() < 0.5:
            e["dtype"] = self.rng.choice(["I32", "F32"])

    def _data_offsets(self, img):
        es = self._parts(img, ".__xs__.mask_offsets")
        if not es:
            return self._data_bytes(img)
        e = self.rng.choice(es)
        n = len(img.blobs[e["name"]]) // 4
        vals = list(struct.unpack(f"<{n}I", img.blobs[e["name"]][: 4 * n]))
        op = self.rng.choice(["set", "swap", "scalar", "drop"])
        if op == "set" and vals:
            vals[self.rng.randrange(n)] = self.rng.choice([0, 1, 2**31, 2**32 - 1, vals[-1] + 1,
                                                           vals[0] - 1 & 0xFFFFFFFF])
        elif op == "swap" and n > 1:
            i = self.rng.randrange(n - 1)
            vals[i], vals[i + 1] = vals[i + 1], vals[i]
        elif op == "scalar" and vals:
            vals = vals[:1]
            e["shape"] = []
        elif op == "drop" and vals:
            vals = vals[:-1]
            e["shape"] = [len(vals)]
        img.blobs[e["name"]] = struct.pack(f"<{len(vals)}I", *vals)

    def _data_bytes(self, img):
        es = [e for e in img.entries if img.blobs.get(e["name"])]
        if es:
            e = self.rng.choice(es)
            b = bytearray(img.blobs[e["name"]])
            for _ in range(self.rng.randint(1, 3)):
                b[self.rng.randrange(len(b))] ^= self.rng.randint(1, 255)
            img.blobs[e["name"]] = bytes(b)

    def _data_resize(self, img):
        e = self._entry(img)
        if e:
            b = img.blobs.get(e["name"], b"")
            k = self.rng.choice([1, 4, 8, 64])
            b = b + bytes(k) if self.rng.random() < 0.5 else b[:-k]
            img.blobs[e["name"]] = b
            if self.rng.random() < 0.7 and e["dtype"] == "U8":
                e["shape"] = [len(b)]

    def _data_scales(self, img):
        """NaN, infinity, the largest finite value or zero in a scale, codebook entry or log8 reference."""
        es = [e for e in self._parts(img, ".__xs__.scales") + self._parts(img, ".__xs__.codebook")
              + self._parts(img, ".__xs__.scale_ref") if e["dtype"] in ("F16", "F32")]
        if not es:
            return
        e = self.rng.choice(es)
        b = bytearray(img.blobs[e["name"]])
        size = 2 if e["dtype"] == "F16" else 4
        bad = {2: [b"\x00\x7c", b"\x00\xfe", b"\xff\x7b", b"\x00\x00"],
               4: [b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f", b"\xff\xff\x7f\x7f", b"\x00\x00\x00\x00"]}[size]
        if len(b) >= size:
            i = self.rng.randrange(len(b) // size) * size
            b[i : i + size] = self.rng.choice(bad)
        img.blobs[e["name"]] = bytes(b)

    def _findings(self, img):
        """The issue's reproductions, on whatever tensor the base file has."""
        if not isinstance(img.doc, dict) or not img.doc.get("tensors"):
            return None
        name = self.rng.choice(list(img.doc["tensors"]))
        t = img.doc["tensors"][name]
        op = self.rng.choice(["bits63", "bits24", "patches_bomb", "patches_half", "version_true", "rice_neg",
                              "rows256", "raw_r1w", "order_drop", "dtype_i32", "v2_layout"])
        if op == "v2_layout":  # the version-2 members (FORMAT.md 1.8, 3.2, 4.1-4.3) on any tensor
            key = self.rng.choice(["scale_rows", "codebook_rows", "scale_format", "mask.rows", "mask.cols",
                                   "mask.base", "mask.row_step", "mask.col_step", "mask.codec", "planes.kind"])
            value = self.rng.choice([0, 1, 2, 4, 7, 64, 65, 1021, -1021, 10**12, "log8", "ctx", "packed",
                                     True, 1.5, None, [], "x"])
            if key.startswith("mask."):
                t["mask"][key[5:]] = value
            elif key == "planes.kind":
                t["planes"][self.rng.randrange(len(t["planes"]))]["kind"] = value
            else:
                t[key] = value
            return None
        if op == "bits63":
            t["bits"] = 63
        elif op == "bits24":
            t["bits"] = 24
            t["planes"] = (t["planes"] * 24)[:24]
        elif op == "patches_bomb":
            t["planes"][0]["patches"] = 10_000_000_000
        elif op == "patches_half":
            t["planes"][0]["patches"] = 0.5
        elif op == "version_true":
            img.doc["version"] = True
        elif op == "rice_neg":
            t["planes"][0]["rice_k"] = -64
        elif op == "rows256":
            t["rows"], t["cols"], t["shape"] = 256, t["mask"]["length"] // 256 or 1, [t["mask"]["length"]]
        elif op == "raw_r1w":
            img.doc["r1w"] = img.doc.pop("raw")
        elif op == "order_drop" and img.doc.get("info", {}).get("order"):
            img.doc["info"]["order"].pop()
        elif op == "dtype_i32":
            for e in img.entries:
                if e["dtype"] == "F32":
                    e["dtype"] = "I32"
                    break
        return None

    def case(self) -> tuple[bytes, str, bool]:
        if self.rng.random() < 0.3:
            data, kind = self.raw()
            return data, "raw:" + kind, False
        try:
            return self.structured()
        except Exception:  # noqa: BLE001 - a mutator bug must not stop the run: a raw case instead
            data, kind = self.raw()
            return data, "raw:" + kind, False


# ---------------------------------------------------------------------------------------
# Running one case (inside the forked child)


def decode_all(path: str, out: str) -> dict[str, list]:
    """inspect, verify and decompress through the CLI; the decompressed tensors' digests."""
    import contextlib
    import io

    from xorsparse.cli import main
    from xorsparse.format import safetensors_io as st

    for argv in (["--debug", "inspect", "--json", path], ["--debug", "verify", path],
                 ["--debug", "decompress", "--force", path, out]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
        if code != 0:
            raise RuntimeError(f"{argv[1]} returned {code} without raising")
    digests = {}
    with st.Reader(out) as r:
        for name, info in r.entries.items():
            digests[name] = [info["dtype"], list(info["shape"]), hashlib.sha256(r.read_bytes(name)).hexdigest()]
    return digests


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_case(path: str, out: str) -> dict:
    """One case, in whatever process calls it: outcome, detail, digests of the output."""
    from xorsparse.format.output import OutputError
    from xorsparse.format.validate import XspError

    try:
        return {"outcome": "accepted", "digests": decode_all(path, out)}
    except (XspError, OutputError) as e:
        msg = str(e)
        ok = "\n" not in msg and path in msg
        return {"outcome": "error" if ok else "traceback", "detail": f"{type(e).__name__}: {msg[:300]}"}
    except MemoryError:
        return {"outcome": "memory", "detail": "MemoryError"}
    except BaseException as e:  # noqa: BLE001 - the point is to see everything
        import traceback

        tb = traceback.extract_tb(e.__traceback__)
        where = f"{tb[-1].filename.split('xorsparse/')[-1]}:{tb[-1].lineno}" if tb else "?"
        return {"outcome": "traceback", "detail": f"{type(e).__name__}: {str(e)[:200]} at {where}"}


def fork_case(target: Callable[[], dict], wall: float = WALL_SECONDS, cpu: int = CPU_SECONDS,
              headroom: int = AS_HEADROOM) -> dict:
    """Run target() in a forked child under CPU, wall-clock and address-space limits.

    The child's result dict gets "peak_kb" (its peak resident memory above what it started
    with); a child killed by a signal is a crash, one over a limit a hang.
    """
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(r)
            try:
                resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + headroom, resource.RLIM_INFINITY))
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
            except (ValueError, OSError):
                pass
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            rss0 = _rss_kb()
            try:
                res = target()
            except MemoryError:
                res = {"outcome": "memory", "detail": "MemoryError"}
            res["peak_kb"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0)
            os.write(w, json.dumps(res).encode())
            os.close(w)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    status = None
    deadline = time.monotonic() + wall
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], min(left, 1.0))
        if ready:
            data = os.read(r, 1 << 16)
            if data:
                chunks.append(data)
                continue
            _, status = os.waitpid(pid, 0)
            break
    os.close(r)
    seconds = time.perf_counter() - t0
    if timed_out:
        res = {"outcome": "hang", "detail": f"over {wall:g}s wall clock"}
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            res = {"outcome": "hang", "detail": "over the CPU-time limit"}
        elif sig == signal.SIGKILL:  # not ours: the kernel's out-of-memory killer
            res = {"outcome": "memory", "detail": "killed by SIGKILL (out of memory?)"}
        else:
            res = {"outcome": "crash", "detail": f"killed by {signal.Signals(sig).name}"}
    else:
        try:
            res = json.loads(b"".join(chunks))
        except ValueError:
            res = {"outcome": "crash", "detail": f"exit status {os.WEXITSTATUS(status)} without a result"}
    res["seconds"] = seconds
    return res


def serve() -> None:
    """The fork server: warm up, then one forked child per request line on stdin."""
    import warnings

    warnings.simplefilter("ignore")
    bases = json.loads(sys.stdin.readline())
    tmp = tempfile.mkdtemp(prefix="xsp-fuzz-warm-")
    for b in bases:  # import, compile and cache everything the cases use
        try:
            decode_all(b, os.path.join(tmp, "out.safetensors"))
        except Exception:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        res = fork_case(lambda: run_case(req["path"], req["out"]))
        try:
            os.unlink(req["out"])
        except FileNotFoundError:
            pass
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------
# The harness


@dataclass
class Worker:
    proc: subprocess.Popen
    busy: dict | None = None


def _start_worker(bases: list[str]) -> Worker:
    env = subprocess_env()
    env.update({"NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "1",
                "XORSPARSE_MAX_TENSOR_BYTES": str(FUZZ_LIMIT), "PYTHONWARNINGS": "ignore",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fuzz", "--serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
    proc.stdin.write(json.dumps(bases) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError("fuzz worker failed to start")
    return Worker(proc)


def classify(res: dict, expected: dict, forged: bool, size: int) -> str:
    out = res["outcome"]
    if out == "accepted":
        out = "identical" if res.get("digests") == expected else "different"
    bound = MEM_BASE + MEM_PER_FILE_BYTE * size
    if out in ("identical", "different", "error") and res.get("peak_kb", 0) * 1024 > bound:
        out = "memory"
    return out


def is_bad(outcome: str, forged: bool) -> bool:
    return outcome in ("traceback", "crash", "hang", "memory") or (outcome == "different" and not forged)


def run(cases: int, seed: int = 0, workers: int = 2, progress: Callable[[int, dict, Callable[[], dict]], None]
        | None = None, keep: str | None = None) -> dict:
    """Run `cases` mutated files; returns the counts, the worst examples and timings.

    progress(done, counts, summary) is called after every case; summary() gives the result
    so far (for a partial report of a long run).
    """
    from xorsparse import cli  # noqa: F401  (fail early if the package does not import)

    t_start = time.perf_counter()
    bases: list[str] = []
    counts = {(k, f): 0 for k in OUTCOMES for f in (False, True)}
    kinds: dict[str, dict[str, int]] = {}
    bad_examples: list[dict] = []
    peak_max = {"kb": 0, "size": 0}
    slow = [0.0]
    done = 0

    def summary() -> dict:
        total = {k: counts[(k, False)] + counts[(k, True)] for k in OUTCOMES}
        bad = sum(counts[(k, f)] for (k, f) in counts if is_bad(k, f))
        return {"cases": done, "requested": cases, "complete": done == cases, "seed": seed, "workers": workers,
                "bases": [os.path.basename(b) for b in bases],
                "counts": {f"{k}{'/forged' if f else ''}": v for (k, f), v in counts.items()}, "total": total,
                "bad": bad,
                "raw_cases": sum(v.get(o, 0) for k, v in kinds.items() if k.startswith("raw:") for o in v),
                "by_kind": kinds, "bad_examples": bad_examples[:50], "slowest_case_s": slow[0],
                "peak_extra_mb": peak_max["kb"] / 1024, "peak_case_bytes": peak_max["size"],
                "memory_bound": f"{MEM_BASE >> 20} MiB + {MEM_PER_FILE_BYTE} x file size",
                "tensor_limit_mib": FUZZ_LIMIT >> 20, "seconds": time.perf_counter() - t_start}

    root = tempfile.mkdtemp(prefix="xsp-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        bases += make_bases(os.path.join(root, "bases"))
        base_bytes = [open(b, "rb").read() for b in bases]
        expected = []
        for b in bases:
            expected.append(decode_all(b, os.path.join(root, "expected.safetensors")))
        pool = [_start_worker(bases) for _ in range(max(1, workers))]
        rng = random.Random(seed)
        issued = 0
        while done < cases:
            for i, wk in enumerate(pool):
                if wk.busy is None and issued < cases:
                    bi = rng.randrange(len(bases))
                    data, kind, forged = Mutator(base_bytes[bi], random.Random(rng.getrandbits(64))).case()
                    path = os.path.join(root, f"case{i}.xsp")
                    with open(path, "wb") as f:
                        f.write(data)
                    wk.busy = {"n": issued, "base": bi, "kind": kind, "forged": forged, "size": len(data),
                               "path": path, "data": data}
                    wk.proc.stdin.write(json.dumps({"path": path, "out": os.path.join(root, f"out{i}.safetensors")})
                                        + "\n")
                    wk.proc.stdin.flush()
                    issued += 1
            ready, _, _ = select.select([wk.proc.stdout for wk in pool if wk.busy], [], [], 5.0)
            for i, wk in enumerate(pool):
                if wk.busy is None or wk.proc.stdout not in ready:
                    continue
                line = wk.proc.stdout.readline()
                job = wk.busy
                wk.busy = None
                if not line:  # the server itself died: count a crash, start another
                    res = {"outcome": "crash", "detail": "fuzz server died"}
                    wk.proc.wait()
                    pool[i] = _start_worker(bases)
                else:
                    res = json.loads(line)
                outcome = classify(res, expected[job["base"]], job["forged"], job["size"])
                counts[(outcome, job["forged"])] += 1
                k = job["kind"].split("+")[0]
                kinds.setdefault(k, {}).setdefault(outcome, 0)
                kinds[k][outcome] += 1
                slow[0] = max(slow[0], res.get("seconds", 0.0))
                if res.get("peak_kb", 0) > peak_max["kb"]:
                    peak_max.update(kb=res["peak_kb"], size=job["size"])
                if is_bad(outcome, job["forged"]):
                    ex = {"case": job["n"], "base": os.path.basename(bases[job["base"]]), "kind": job["kind"],
                          "forged": job["forged"], "outcome": outcome, "detail": res.get("detail", "")}
                    if keep:
                        os.makedirs(keep, exist_ok=True)
                        ex["file"] = os.path.join(keep, f"case{job['n']}.xsp")
                        with open(ex["file"], "wb") as f:
                            f.write(job["data"])
                    bad_examples.append(ex)
                done += 1
                if progress:
                    progress(done, counts, summary)
        for wk in pool:
            wk.proc.stdin.close()
            wk.proc.wait(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return summary()


def table(result: dict) -> list[dict]:
    rows = []
    for k in OUTCOMES:
        plain = result["counts"][k]
        forged = result["counts"][k + "/forged"]
        bad = k in ("traceback", "crash", "hang", "memory")
        rows.append({"outcome": k, "checksums untouched": plain, "checksums forged": forged,
                     "total": plain + forged,
                     "bad": plain + forged if bad else (plain if k == "different" else 0)})
    return rows


def markdown(result: dict) -> str:
    from ._report import markdown_table

    cols = [("outcome", "outcome", ""), ("checksums untouched", "checksums untouched", "d"),
            ("checksums forged", "checksums forged", "d"), ("total", "total", "d"), ("bad", "bad", "d")]
    return markdown_table(table(result), cols)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=1000, help="mutated files to try (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0)")
    p.add_argument("--workers", type=int, default=2, help="fork servers run in parallel (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--keep", metavar="DIR", help="save every file with a bad outcome here")
    p.set_defaults(run=main)


def main(args) -> int:
    from ._report import print_table, write_json, write_text

    t0 = time.perf_counter()
    last = [0.0]

    tty = sys.stderr.isatty()

    def progress(done: int, counts: dict, summary: Callable[[], dict]) -> None:
        now = time.perf_counter()
        step = max(1, args.cases // 50)
        if (tty and (now - last[0] > 1 or done == args.cases)) or (not tty and done % step == 0):
            last[0] = now
            bad = sum(v for (k, f), v in counts.items() if is_bad(k, f))
            line = f"fuzz {done}/{args.cases} cases, {bad} bad, {now - t0:.0f}s"
            sys.stderr.write("\r" + line if tty else line + "\n")
            sys.stderr.flush()
        if args.json and done % max(1, args.cases // 50) == 0 and done < args.cases:
            write_json(args.json, summary())  # a partial report survives an interrupted long run

    res = run(args.cases, args.seed, args.workers, progress, args.keep)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"{res['cases']} cases ({res['raw_cases']} raw, {res['cases'] - res['raw_cases']} structured) on "
          f"{len(res['bases'])} base files, seed {res['seed']}, {res['workers']} workers: {res['seconds']:.0f}s")
    cols = [("outcome", "outcome", ""), ("checksums untouched", "checksums untouched", "d"),
            ("checksums forged", "checksums forged", "d"), ("total", "total", "d"), ("bad", "bad", "d")]
    print_table(table(res), cols)
    print(f"bad outcomes: {res['bad']}; slowest case {res['slowest_case_s']:.2f}s; largest peak memory above the "
          f"server's {res['peak_extra_mb']:.1f} MiB (file of {res['peak_case_bytes']} bytes; bound "
          f"{res['memory_bound']})")
    for ex in res["bad_examples"][:10]:
        print(f"  case {ex['case']} {ex['base']} {ex['kind']} forged={ex['forged']}: {ex['outcome']}: {ex['detail']}")
    if args.json:
        write_json(args.json, res)
    if args.markdown:
        write_text(args.markdown, markdown(res))
    return 1 if res["bad"] else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz")
        add_arguments(ap)
        a = ap.parse_args()
        sys.exit(a.run(a))
