"""Accuracy study on Fashion-MNIST: train, prune gradually, quantize with fine-tuning, compress;
and, on the same dense models, one-shot compression without any fine-tuning.

    python examples/fashion_mnist.py                 # the full study (~10 minutes on 2 cores)
    python examples/fashion_mnist.py --tiny          # a smoke run (a few hundred images)

For LeNet-5 and LeNet-300-100 it reports the test accuracy of the dense model, the pruned
model, the pruned-and-quantized model (binary coding, q = 1 and 2, fine-tuned with a
straight-through estimator) and the model loaded back from the .xsp file, which must equal
the previous column exactly; and the value / total bits per weight of every layer. The
second table compresses the dense model in one shot at the same per-layer sparsities and
q: data-free magnitude pruning, and SparseGPT calibrated on training images (no labels, no
gradient steps), again checked bit for bit through the .xsp file.

Data: Debian's dataset-fashion-mnist package (`apt-get install dataset-fashion-mnist`),
files under /usr/share/datasets/fashion-mnist/.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from xorsparse.tensor.dequant import dequantize
from xorsparse.tensor.maskcode import binary_entropy
from xorsparse.tensor.prune import magnitude_mask
from xorsparse.tensor.variants import quantize
from xorsparse.torch import ModelConfig, compress_model, load_compressed, reference_model_

DATA_DIR = "/usr/share/datasets/fashion-mnist"
PAPER_ROWS = [
    ("Kwon et al. CVPR 2020 (quoted)", "AlexNet FC, ImageNet", "91%", "1", "0.28 (mask not counted)"),
    ("Deep Compression (quoted)", "AlexNet fc6, ImageNet", "91%", "5", "~0.76 (index + Huffman)"),
]


def load_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data_dir: str):
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    paths = [os.path.join(data_dir, n) for n in names]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        sys.exit(f"fashion_mnist: {missing[0]} not found. Install Debian's package:\n"
                 "    sudo apt-get install dataset-fashion-mnist\n"
                 "or pass --data-dir with the four *-ubyte.gz files.")
    xtr, ytr, xte, yte = (load_idx(p) for p in paths)
    to_t = lambda x: torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    return to_t(xtr), torch.from_numpy(ytr.astype(np.int64)), to_t(xte), torch.from_numpy(yte.astype(np.int64))


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet300(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


def layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


class BCQ(nn.Module):
    """Forward: the library's binary-coding quantizer on the kept weights; backward: straight through."""

    def __init__(self, keep: torch.Tensor, bits: int):
        super().__init__()
        self.register_buffer("keep", keep)
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        keep = self.keep.numpy()
        qz = quantize(w.detach().numpy(), keep, "bcq", self.bits)
        wq = torch.from_numpy(dequantize(qz, keep).reshape(w.shape))
        return w * self.keep + (wq - w * self.keep).detach()


def train(model, data, epochs, lr, masks=None, batch=128, seed=0, log=None):
    xtr, ytr = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    mods = layers(model)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        total = 0.0
        for i in range(0, len(xtr), batch):
            idx = perm[i: i + batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            if masks is not None:
                with torch.no_grad():
                    for n, m in mods.items():
                        if not parametrize.is_parametrized(m):
                            m.weight.mul_(masks[n])
        if log:
            log(f"    epoch {ep + 1}/{epochs}: loss {total / len(xtr):.4f}")
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, x, y, batch=2000) -> tuple[float, torch.Tensor]:
    model.eval()
    logits = torch.cat([model(x[i: i + batch]) for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).float().mean()), logits


def study(name, make, data, args, log, oneshot_rows):
    xtr, ytr, xte, yte = data
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    log(f"{name}: training dense ({args.epochs} epochs)")
    dense = train(make(), (xtr, ytr), args.epochs, 1e-3, seed=args.seed, log=log)
    acc_dense, _ = accuracy(dense, xte, yte)

    # gradual magnitude pruning (cubic schedule), fine-tuning after every step; layers with
    # under 2% of the weights (the first conv, the output layer) are the most sensitive and
    # save the least, so they go to a lower final sparsity
    pruned = copy.deepcopy(dense)
    masks = None
    sizes = {n: m.weight.numel() for n, m in layers(pruned).items()}
    small = {n for n, k in sizes.items() if k < 0.02 * sum(sizes.values())}
    final = {n: args.small_sparsity if n in small else args.sparsity for n in sizes}
    for k in range(1, args.prune_steps + 1):
        frac = 1 - (1 - k / args.prune_steps) ** 3
        masks = {n: torch.from_numpy(magnitude_mask(m.weight.detach().numpy(), final[n] * frac))
                 for n, m in layers(pruned).items()}
        with torch.no_grad():
            for n, m in layers(pruned).items():
                m.weight.mul_(masks[n])
        log(f"  pruning step {k}/{args.prune_steps}: {frac:.0%} of the way to the final sparsity")
        train(pruned, (xtr, ytr), args.finetune_epochs, 5e-4, masks=masks, seed=args.seed + k, log=log)
    acc_pruned, _ = accuracy(pruned, xte, yte)

    rows, layer_rows = [], []
    for q in args.bits:
        log(f"  quantization-aware fine-tuning, binary coding q={q} ({args.qat_epochs} epochs)")
        qat = copy.deepcopy(pruned)
        for n, m in layers(qat).items():
            parametrize.register_parametrization(m, "weight", BCQ(masks[n], q))
        train(qat, (xtr, ytr), args.qat_epochs, 2e-4, masks=masks, seed=args.seed + 100 + q, log=log)
        for m in layers(qat).values():
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        cfg = ModelConfig(sparsity=args.sparsity, bits=q, quantizer="bcq")
        np_masks = {n: mk.numpy().astype(bool) for n, mk in masks.items()}
        ref = reference_model_(copy.deepcopy(qat), cfg, masks=np_masks)
        acc_ref, logits_ref = accuracy(ref, xte, yte)
        cm = compress_model(qat, cfg, masks=np_masks)
        path = os.path.join(args.out_dir, f"{name.lower().replace('-', '')}_q{q}.xsp")
        cm.save(path)
        loaded = load_compressed(make(), path, mode="decode")
        acc_xsp, logits_xsp = accuracy(loaded, xte, yte)
        identical = torch.equal(logits_ref, logits_xsp)
        kept = sum(ct.kept for ct in cm.tensors.values())
        n = cm.weights
        sp = 1 - kept / n
        v, tb = cm.bits_per_weight()
        rows.append({"model": name, "q": q, "dense": acc_dense, "pruned": acc_pruned, "pq": acc_ref,
                     "xsp": acc_xsp, "identical": identical, "sparsity": sp, "value": v, "total": tb,
                     "bound": binary_entropy(sp) + (1 - sp) * q + sum(ct.scale_bits for ct in cm.tensors.values()) / n,
                     "bytes": os.path.getsize(path)})
        for lname, ct in cm.tensors.items():
            layer_rows.append({"model": name, "q": q, "layer": lname, "shape": "x".join(map(str, ct.shape)),
                               "sparsity": 1 - ct.kept / ct.numel, "value": ct.value_bits / ct.numel,
                               "total": ct.total_bits / ct.numel, "eff": ct.efficiency})
    # one-shot from the dense model: the same per-layer sparsities and q, no fine-tuning
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))[:args.calibration]]
    layer_sp = tuple((n, final[n]) for n in sizes)
    for q in args.bits:
        log(f"  one-shot q={q}: magnitude, and sparsegpt calibrated on {len(calib)} training images")
        r = {"model": name, "q": q, "dense": acc_dense}
        for method in ("magnitude", "sparsegpt"):
            cfg = ModelConfig(sparsity=args.sparsity, bits=q, quantizer="bcq", method=method, layer_sparsity=layer_sp)
            t1 = time.perf_counter()
            cm = compress_model(dense, cfg, calibration=calib if method != "magnitude" else None)
            secs = time.perf_counter() - t1
            ref = cm.apply_(copy.deepcopy(dense))
            acc_ref, logits_ref = accuracy(ref, xte, yte)
            r[method] = acc_ref
            r[f"{method}_s"] = secs
            if method == "sparsegpt":
                path = os.path.join(args.out_dir, f"{name.lower().replace('-', '')}_oneshot_q{q}.xsp")
                cm.save(path)
                acc_xsp, logits_xsp = accuracy(load_compressed(make(), path, mode="decode"), xte, yte)
                kept = sum(ct.kept for ct in cm.tensors.values())
                r.update({"xsp": acc_xsp, "identical": torch.equal(logits_ref, logits_xsp),
                          "sparsity": 1 - kept / cm.weights, "total": cm.bits_per_weight()[1],
                          "samples": len(calib)})
        oneshot_rows.append(r)
    log(f"{name}: done in {time.perf_counter() - t0:.0f}s")
    return rows, layer_rows


def render(rows, layer_rows, command, seconds, oneshot_rows=()) -> str:
    out = ["# Fashion-MNIST accuracy study", "",
           f"Produced by `{command}` in {seconds:.0f} s on this project's CI machine kind "
           "(2 CPU cores, no GPU).", "",
           "Accuracy on the 10,000 test images. *pruned+quantized* is the model computed by the "
           "reference pruning and binary-coding quantization (no codec); *from .xsp* is the model "
           "loaded back from the compressed file, whose logits must equal it exactly. Bits are per "
           "weight of the compressed layers: value = stream + patches + scales, total = value + "
           "mask; the bound is H(S) + (1 - S) q plus the same float16 scales.", "",
           "| model | q | dense | pruned | pruned+quantized | from .xsp | logits identical | sparsity "
           "| value b/w | total b/w | bound | .xsp bytes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['q']} | {100 * r['dense']:.2f}% | {100 * r['pruned']:.2f}% | "
                   f"{100 * r['pq']:.2f}% | {100 * r['xsp']:.2f}% | {'yes' if r['identical'] else 'NO'} | "
                   f"{r['sparsity']:.3f} | {r['value']:.3f} | {r['total']:.3f} | {r['bound']:.3f} | {r['bytes']} |")
    if oneshot_rows:
        out += ["", "## One-shot, without fine-tuning", "",
                "The same dense models compressed in one shot at the same per-layer sparsities and q, "
                "with no gradient step: data-free magnitude pruning plus binary coding, and SparseGPT "
                "(mask and codes chosen with error feedback, `method=\"sparsegpt\"`) calibrated on unlabeled "
                "training images. *from .xsp* is the SparseGPT model loaded back from its file.", "",
                "| model | q | dense | one-shot magnitude | one-shot sparsegpt | from .xsp | logits identical "
                "| sparsity | total b/w | calibration images | sparsegpt seconds |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in oneshot_rows:
            out.append(f"| {r['model']} | {r['q']} | {100 * r['dense']:.2f}% | {100 * r['magnitude']:.2f}% | "
                       f"{100 * r['sparsegpt']:.2f}% | {100 * r['xsp']:.2f}% | {'yes' if r['identical'] else 'NO'} | "
                       f"{r['sparsity']:.3f} | {r['total']:.3f} | {r['samples']} | {r['sparsegpt_s']:.1f} |")
    out += ["", "Published figures for scale (quoted from the papers, other models and data):", "",
            "| source | network | pruned | bits | bits/weight |", "|---|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in PAPER_ROWS]
    out += ["", "## Per layer", "", "| model | q | layer | shape | sparsity | value b/w | total b/w | efficiency |",
            "|---|---|---|---|---|---|---|---|"]
    for r in layer_rows:
        out.append(f"| {r['model']} | {r['q']} | {r['layer']} | {r['shape']} | {r['sparsity']:.3f} | "
                   f"{r['value']:.3f} | {r['total']:.3f} | {r['eff']:.3f} |")
    out.append("")
    out.append("Small layers pay more per weight: one float16 scale per row and q is spread over few "
               "columns, and a short plane has little room to average out its care bits.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--models", nargs="*", default=["lenet5", "lenet300"], choices=["lenet5", "lenet300"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--prune-steps", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--sparsity", type=float, default=0.93, help="final sparsity of the layers")
    p.add_argument("--small-sparsity", type=float, default=0.7,
                   help="final sparsity of layers holding under 2%% of the weights")
    p.add_argument("--bits", type=int, nargs="*", default=[1, 2])
    p.add_argument("--calibration", type=int, default=1024, help="training images to calibrate the one-shot rows on")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="a few hundred images, one epoch each (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="out")
    p.add_argument("--results", default=None, help="write the Markdown tables here (e.g. docs/RESULTS.md)")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_limit, args.test_limit = 600, 300
        args.epochs = args.finetune_epochs = args.qat_epochs = 1
        args.prune_steps = 2
        args.calibration = 128
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = load_fashion_mnist(args.data_dir)
    xtr, ytr = xtr[: args.train_limit], ytr[: args.train_limit]
    xte, yte = xte[: args.test_limit], yte[: args.test_limit]
    log = lambda s: print(s, flush=True)  # noqa: E731
    models = {"lenet5": ("LeNet-5", LeNet5), "lenet300": ("LeNet-300-100", LeNet300)}
    rows, layer_rows, oneshot_rows = [], [], []
    for key in args.models:
        r, lr = study(*models[key], (xtr, ytr, xte, yte), args, log, oneshot_rows)
        rows += r
        layer_rows += lr
    command = "python examples/fashion_mnist.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(rows, layer_rows, command.strip(), time.perf_counter() - t0, oneshot_rows)
    print()
    print(text)
    if args.results:
        from xorsparse.format.output import write_bytes

        write_bytes(args.results, text.encode())
        print(f"wrote {args.results}")
    ok = all(r["identical"] and r["pq"] == r["xsp"] for r in rows)
    ok &= all(r["identical"] and r["sparsegpt"] == r["xsp"] for r in oneshot_rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
