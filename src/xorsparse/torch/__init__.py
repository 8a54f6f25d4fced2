"""PyTorch integration: compress a model in one call, load it back, or run it compressed.

    cm = compress_model(model, ModelConfig(sparsity=0.9, bits=2))
    cm.save("model.xsp")
    load_compressed(model, "model.xsp", mode="ondemand")   # Xor* modules decode in forward
"""

from .compress import MODULE_TYPES, CompressedModel, ModelConfig, compress_model, reference_model_, \
    selected_modules
from .modules import DecodeWorkspace, XorConv2d, XorEmbedding, XorLinear, XorWeight, decoder_table, dense_torch, \
    load_compressed, resident_bytes, shared_table_bytes, unpack_bits

__all__ = ["MODULE_TYPES", "CompressedModel", "DecodeWorkspace", "ModelConfig", "XorConv2d", "XorEmbedding",
           "XorLinear", "XorWeight", "compress_model", "decoder_table", "dense_torch", "load_compressed",
           "reference_model_", "resident_bytes", "selected_modules", "shared_table_bytes", "unpack_bits"]
