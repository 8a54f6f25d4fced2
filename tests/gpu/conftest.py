"""GPU kernel tests: on a CUDA device if there is one, else under the Triton interpreter.

TRITON_INTERPRET must be set before triton decorates the kernels (xorsparse.gpu.kernels is
imported lazily, at the first launch), so it is set here, at collection.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # the gpu extra is not installed
    HAVE_TRITON = False


def pytest_collection_modifyitems(config, items):
    if HAVE_TRITON:
        return
    skip = pytest.mark.skip(reason="triton is not installed (pip install xorsparse[gpu])")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
