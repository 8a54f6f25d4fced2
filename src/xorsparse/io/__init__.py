"""Files: streaming safetensors, the validating .xsp reader and container, safe outputs,
checkpoints in the formats people have, model folders, the transformers loader (`hf`) and
compressed-tensors in and out."""

from .checkpoint import CheckpointError, CompressPlan, CompressReport, Prepared, ShardResult, XspSet, \
    compress_checkpoint, compress_shard, decompress_checkpoint, inspect_file, open_checkpoint, plan_compression, \
    select_tensors, verify_checkpoint
from .container import RawTensor, XspError, XspFile, write_xsp
from .output import OutputError

__all__ = ["CheckpointError", "CompressPlan", "CompressReport", "OutputError", "Prepared", "RawTensor", "ShardResult",
           "XspError", "XspFile", "XspSet", "compress_checkpoint", "compress_shard", "decompress_checkpoint",
           "inspect_file", "open_checkpoint", "plan_compression", "select_tensors", "verify_checkpoint", "write_xsp"]
