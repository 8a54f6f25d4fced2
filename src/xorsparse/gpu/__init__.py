"""GPU decoding of compressed weights with Triton kernels (optional: `pip install xorsparse[gpu]`).

The API the torch modules build on:

- `ResidentWeight.from_compressed(ct, device=None)` / `ResidentWeight.from_xor_weight(xw,
  device=None)`: the GPU-resident layout of one weight, built once at load from validated
  data (a `ResidentLayoutError`, an XorsparseError, otherwise). `.to(device)`, `.device`,
  `.shape`, `.dtype` (the output dtype), `.nbytes` (everything it keeps), `.bits_per_weight`.
- `decode_dense(rw, out=None)`: the dense weight on rw's device, bit-exact with the numba
  decoder (tensor/fused.py) and docs/FORMAT.md.
- `linear(x, rw, bias=None)`: y = x @ W^T. Up to 16 rows of x, a fused kernel decodes tiles
  of W in registers and multiplies them (split over K), never writing W; larger batches
  decode into a shared workspace and call torch's matmul (cuBLAS).
- `embedding(indices, rw)`: the rows `indices` of W (any shape, repeats, any order); only
  those rows decode.
- `is_available()`: triton imports and a CUDA device (or TRITON_INTERPRET=1) is there;
  the kernels raise `GpuUnavailableError` (an XorsparseError) otherwise.

Floor: beside `torch` (it imports codec, tensor and errors only; torch and triton are
optional dependencies, triton imported at the first launch).

The kernels (gpu/kernels.py) read only what ResidentWeight built; the layout and its
size are described in docs/GPU.md. `import xorsparse.gpu` does not import triton: the
kernels load on first use.
"""

from .ops import (
           FUSED_MAX_BATCH,
           GpuUnavailableError,
           decode_dense,
           embedding,
           is_available,
           linear,
           release_workspaces,
)
from .resident import ResidentLayoutError, ResidentWeight

__all__ = ["FUSED_MAX_BATCH", "GpuUnavailableError", "ResidentLayoutError", "ResidentWeight", "decode_dense",
           "embedding", "is_available", "linear", "release_workspaces"]
