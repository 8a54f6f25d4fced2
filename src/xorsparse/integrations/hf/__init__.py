"""Loading xorsparse model folders with transformers and sentence-transformers.

After `import xorsparse`, `AutoModel*.from_pretrained(folder)` and
`SentenceTransformer(folder)` load a folder written by `xorsparse compress MODEL_DIR OUT_DIR`:
its config.json names `"quant_method": "xorsparse"`, and xorsparse registers a quantizer
and its config class for that method through transformers' own extension points
(`register_quantization_config`, `register_quantizer`); the quantizer decodes the .xsp
tensors as transformers reads them. Nothing in transformers is patched.

Registration waits until transformers' quantizer registry is imported (transformers takes
seconds to import, and `import xorsparse` should not): an import hook runs `register()`
right after `transformers.quantizers.auto` loads, or at once if it is loaded already.

    with load_mode("ondemand"):          # Linear/Conv2d/Embedding weights stay compressed
        model = AutoModel.from_pretrained(folder)
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Iterator

QUANT_METHOD = "xorsparse"
_TARGET = "transformers.quantizers.auto"
_override: list[str] = []


def register() -> bool:
    """Register the xorsparse quantizer with transformers (idempotent); False if this
    transformers has no quantizer registry to register with."""
    try:
        from transformers.quantizers import auto
    except ImportError:
        return False
    if not hasattr(auto, "register_quantizer"):
        return False
    if QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING:
        return True
    half_imported = sys.modules.get(__name__ + ".quantizer")
    if half_imported is not None and not hasattr(half_imported, "XorsparseHfQuantizer"):
        return False  # importing .quantizer imported transformers' registry: it registers when done
    from .quantizer import XorsparseConfig, XorsparseHfQuantizer  # its last line may register already

    if QUANT_METHOD not in getattr(auto, "AUTO_QUANTIZATION_CONFIG_MAPPING", {}):
        auto.register_quantization_config(QUANT_METHOD)(XorsparseConfig)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(XorsparseHfQuantizer)
    return True


@contextlib.contextmanager
def load_mode(mode: str) -> Iterator[None]:
    """Override the folder's load mode for the loads inside the block: "decode" (every
    weight decoded once into the model) or "ondemand" (Xor* modules decode in forward)."""
    if mode not in ("decode", "ondemand"):
        raise ValueError(f"load mode must be 'decode' or 'ondemand', got {mode!r}")
    _override.append(mode)
    try:
        yield
    finally:
        _override.pop()


def current_load_mode(default: str) -> str:
    return _override[-1] if _override else default


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        try:
            register()
        except Exception as e:  # never break transformers' import
            warnings.warn(f"xorsparse: could not register its transformers quantizer ({e})", stacklevel=2)


class _Hook(importlib.abc.MetaPathFinder):
    """Runs `register()` right after transformers' quantizer registry module loads."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers' registry is loaded, else when it is (import hook)."""
    if _TARGET in sys.modules:
        try:
            register()
        except Exception as e:
            warnings.warn(f"xorsparse: could not register its transformers quantizer ({e})", stacklevel=2)
        return
    if not any(isinstance(f, _Hook) for f in sys.meta_path) and importlib.util.find_spec("transformers"):
        sys.meta_path.insert(0, _Hook())


__all__ = ["QUANT_METHOD", "install", "load_mode", "register"]
