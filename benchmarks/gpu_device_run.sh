#!/usr/bin/env bash
# The GPU checks of issue 19 in one command, for a machine with an NVIDIA GPU (H100/H200):
#   bash benchmarks/gpu_device_run.sh        (from the repository root; results under $OUT)
# 1. the Triton kernel tests (tests/gpu) and the Xor* module tests on CUDA;
# 2. python -m benchmarks gpu: JSON and Markdown tables.
# Installs nothing: needs torch, triton and numba; pytest for step 1 (skipped, said so, if
# absent); transformers for the end-to-end row (skipped with a reason if absent).
# Budget: at most 8 minutes on an H100 with 16 cores: tests <= 200 s, bench <= 270 s (each
# cut by timeout; the bench writes its JSON after every row). Expected: bench ~3.5 min
# (compressing the nine 7B-shaped weights on the CPU ~25-45 s of it).
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET XORSPARSE_TRITON_ON_CPU  # the real GPU path
BENCH=benchmarks  # python -m benchmarks, from the repository root

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  nproc
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  for m in triton numba transformers accelerate safetensors scipy pytest hypothesis; do
    $PY -c "import $m; print('$m', getattr($m, '__version__', '?'))" 2>/dev/null || echo "$m: not installed"
  done
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

start=$(date +%s)
if $PY -c "import pytest" 2>/dev/null; then
  tests="tests/torch/test_modules_triton.py"  # first: the kernel tests compile many variants
  [ -d tests/gpu ] && tests="$tests tests/gpu"
  timeout 200 $PY -m pytest -q -p no:cacheprovider -rs --durations=15 --junitxml="$OUT/pytest-gpu.xml" $tests \
    > "$OUT/pytest-gpu.txt" 2>&1
  echo "pytest exit $? after $(( $(date +%s) - start )) s" >> "$OUT/pytest-gpu.txt"
else
  echo "pytest is not installed here: tests skipped (the bench's bit-exact column still checks the decode)" \
    > "$OUT/pytest-gpu.txt"
fi
tail -n 25 "$OUT/pytest-gpu.txt"

start=$(date +%s)
timeout 270 $PY -m $BENCH gpu --e2e-budget 90 --json "$OUT/bench-gpu.json" --markdown "$OUT/bench-gpu.md" \
  > "$OUT/bench-gpu.log" 2>&1
echo "bench exit $? after $(( $(date +%s) - start )) s" >> "$OUT/bench-gpu.log"
tail -n 45 "$OUT/bench-gpu.log"
