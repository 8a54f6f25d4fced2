"""Compile every kernel variant for an H100 (sm_90) with Triton's ptxas, no GPU needed.

Run as a script without TRITON_INTERPRET (test_compile.py does, when
XORSPARSE_COMPILE_CHECK=1): it fails on anything the interpreter accepts but a real
compilation does not, and prints registers and stack per variant (a stack means spills).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from xorsparse.gpu import kernels, ops

POINTERS = {"row_idx_ptr": "*i64", "part_ptr": "*fp32", "mask_ptr": "*i64", "streams_ptr": "*i64", "g_ptr": "*i64",
            "params_ptr": "*i64", "patch_pos_ptr": "*i32", "patch_xor_ptr": "*u8", "patch_chunk_ptr": "*i32",
            "word_rank_ptr": "*i32", "scales_ptr": "*fp32", "inv_nfull_ptr": "*fp64"}
OUT_POINTER = {0: "*fp32", 1: "*fp64", 2: "*fp16", 3: "*i16"}
X_POINTER = {0: "*fp32", 2: "*fp16", 3: "*bf16"}


def resources(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=False).stdout
    return " ".join(line.strip() for line in out.splitlines() if "REG:" in line)


def compile_variant(fn, consts: dict, num_warps: int, fp_fusion: bool) -> str:
    names = list(fn.arg_names)
    sig = {}
    for name in names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "out_ptr":
            sig[name] = OUT_POINTER[consts["OUT"]]
        elif name == "x_ptr":
            sig[name] = X_POINTER[consts["OUT"]]
        else:
            sig[name] = POINTERS.get(name, "i32")
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "enable_fp_fusion": fp_fusion})
    return resources(k.asm["cubin"])


def main() -> int:
    base = {"Q": 2, "WW": 2, "PACKED": 0, "SHARED": True, "KIND": 0, "SCALE_K": 2, "GROUPED": False, "IDX": tl.int32, "MULMOD_F64": True}
    decode = [{"OUT": 2}, {"OUT": 3, "KIND": 6, "SCALE_K": 4, "SHARED": False, "PACKED": 1, "GROUPED": True},
              {"OUT": 0, "KIND": 5, "IDX": tl.int64, "MULMOD_F64": False, "Q": 4, "WW": 4},
              {"OUT": 1, "KIND": 2, "Q": 3, "SHARED": False}]
    bad = 0
    for extra in decode:
        c = {**base, **extra, "GATHER": extra["OUT"] == 3, "BN": 4, "BK": 256}
        res = compile_variant(kernels.decode_rows_kernel, c, ops.DECODE_WARPS, False)
        print("decode", extra, res, flush=True)
        bad += "STACK:0 " not in res
    for extra in [{"OUT": 2, "BM": 1}, {"OUT": 2, "BM": 16}, {"OUT": 3, "BM": 16}, {"OUT": 0, "BM": 4, "KIND": 1, "Q": 3, "SCALE_K": 1}]:
        c = {**base, **extra, "BN": ops.FUSED_BN, "BK": ops.FUSED_BK, "BF16_VIA_F32": False}
        res = compile_variant(kernels.linear_fused_kernel, c, ops.FUSED_WARPS, True)
        print("linear", extra, res, flush=True)
        bad += "STACK:0 " not in res
    print(f"{bad} variants spill")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
