"""PyTorch integration: compress a model in one call, load it back, or run it compressed.

    cm = compress_model(model, ModelConfig(sparsity=0.9, bits=2))
    cm.save("model.xsp")
    load_compressed(model, "model.xsp", mode="ondemand")   # Xor* modules decode in forward

With calibration data (one-shot, layer by layer) and, optionally, recovery by distillation:

    cm = compress_model(model, ModelConfig(sparsity=0.5, bits=4, method="sparsegpt"), calibration=data)
    cm = recover(cm.apply_(copy.deepcopy(model)), model, data, steps=200)
"""

from .calibrate import CalibrationData, CalibrationError, as_calibration, calibrate_model, text_calibration
from .compress import MODULE_TYPES, CompressedModel, ModelConfig, compress_model, reference_model_, selected_modules
from .modules import (
           DecodeWorkspace,
           XorConv2d,
           XorEmbedding,
           XorLinear,
           XorWeight,
           decoder_table,
           dense_torch,
           load_compressed,
           resident_bytes,
           shared_table_bytes,
           unpack_bits,
)
from .recover import levels_torch, recover

__all__ = ["MODULE_TYPES", "CalibrationData", "CalibrationError", "CompressedModel", "DecodeWorkspace", "ModelConfig",
           "XorConv2d", "XorEmbedding", "XorLinear", "XorWeight", "as_calibration", "calibrate_model", "compress_model",
           "decoder_table", "dense_torch", "levels_torch", "load_compressed", "recover", "reference_model_",
           "resident_bytes", "selected_modules", "shared_table_bytes", "text_calibration", "unpack_bits"]
