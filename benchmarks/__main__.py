"""Entry point: python -m benchmarks {codec,formats,tensor,rtl,ct,hf,speed,scale,rd,masks,mobilenet,fuzz,quality,gpu} ..."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="which", required=True)
    from . import codec, ct, formats, fuzz, gpu, hf, masks, mobilenet, quality, rd, rtl, scale, speed, tensor

    codec.add_arguments(sub.add_parser("codec", help="codec efficiency and speed on random masks"))
    formats.add_arguments(sub.add_parser("formats", help="xorsparse against the sparse formats in use"))
    tensor.add_arguments(sub.add_parser("tensor", help="one random tensor: bits against the bound"))
    rtl.add_arguments(sub.add_parser("rtl", help="hardware cost of the default decoders, with co-simulation"))
    ct.add_arguments(sub.add_parser("ct", help="compressed-tensors checkpoints through xorsparse and back"))
    hf.add_arguments(sub.add_parser("hf", help="the MiniLM folder through compress, loaded by transformers and "
                                              "sentence-transformers"))
    speed.add_arguments(sub.add_parser("speed", help="decode, on-demand forward and compression speed, as ratios"))
    scale.add_arguments(sub.add_parser("scale", help="a synthetic sharded checkpoint on several executors, "
                                                     "kill and resume"))
    rd.add_arguments(sub.add_parser("rd", help="rate-distortion: bits against weight error, every format"))
    masks.add_arguments(sub.add_parser("masks", help="mask coders alone against H(S)"))
    mobilenet.add_arguments(sub.add_parser("mobilenet", help="a MobileNetV2-shaped conv net: bits against the bound"))
    fuzz.add_arguments(sub.add_parser("fuzz", help="mutated .xsp files through the CLI: crashes, hangs, silent loss"))
    quality.add_arguments(sub.add_parser("quality", help="MiniLM quality against size: magnitude, wanda, sparsegpt, "
                                                      "one-shot and with recovery"))
    gpu.add_arguments(sub.add_parser("gpu", help="the Triton path on a GPU: decode, XorLinear against F.linear, "
                                                 "generation (--interpret: a CPU smoke run)"))
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
