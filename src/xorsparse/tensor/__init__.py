"""Whole tensors: pruning, quantization, mask coding, coded order, and the pipeline that
puts them together around the codec. Pure numpy (torch tensors are accepted as input).
"""

from .config import CalibrationConfig, CodingConfig, ConfigError, PruningConfig, QuantizationConfig
from .pipeline import (
                       FLOAT_DTYPES,
                       CompressConfig,
                       CompressedTensor,
                       compress_quantized,
                       compress_tensor,
                       decompress_tensor,
                       prune_quantize,
                       reference_prune_quantize,
)

__all__ = ["FLOAT_DTYPES", "CalibrationConfig", "CodingConfig", "CompressConfig", "CompressedTensor", "ConfigError",
           "PruningConfig", "QuantizationConfig", "compress_quantized", "compress_tensor", "decompress_tensor",
           "prune_quantize", "reference_prune_quantize"]
