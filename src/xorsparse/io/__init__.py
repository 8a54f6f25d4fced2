"""Files: streaming safetensors, the .xsp container, checkpoints in the formats people have,
model folders, the transformers loader (`hf`) and compressed-tensors in and out."""

from .checkpoint import CheckpointError, CompressPlan, CompressReport, Prepared, ShardResult, XspSet, \
    compress_checkpoint, compress_shard, decompress_checkpoint, inspect_file, open_checkpoint, plan_compression, \
    select_tensors, verify_checkpoint
from .container import RawTensor, XspError, XspFile, write_xsp

__all__ = ["CheckpointError", "CompressPlan", "CompressReport", "Prepared", "RawTensor", "ShardResult", "XspError",
           "XspFile", "XspSet", "compress_checkpoint", "compress_shard", "decompress_checkpoint", "inspect_file",
           "open_checkpoint", "plan_compression", "select_tensors", "verify_checkpoint", "write_xsp"]
