"""Compressed weights attached to a model: written into its modules and remembered there
(masks, codes, config, calibration record), so that recovery and re-encoding find them. Its
own module so that compress (which attaches) and recover (which reads and re-encodes) do not
import each other."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .calibrate import Prepared

PREPARED_ATTR = "_xorsparse_prepared"


def attach_prepared(model: nn.Module, prepared: Mapping[str, Prepared], config: Any = None,
                    record: dict | None = None) -> nn.Module:
    """Write the prepared weights into `model` and remember them (and the config) there, so
    that `recover(model, teacher, data)` knows each weight's mask and quantizer."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, p in prepared.items():
            if name not in mods or getattr(mods[name], "weight", None) is None:
                raise ValueError(f"model has no module {name!r} with a weight")
            mods[name].weight.copy_(p.torch_weight().to(mods[name].weight.device))
    setattr(model, PREPARED_ATTR, (dict(prepared), config, record))
    return model


__all__ = ["PREPARED_ATTR", "attach_prepared"]
