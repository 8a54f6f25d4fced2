"""Files: streaming safetensors, the .xsp container, and checkpoints in the formats people have."""

from .checkpoint import CheckpointError, compress_checkpoint, decompress_checkpoint, inspect_file, \
    open_checkpoint, verify_checkpoint
from .container import RawTensor, XspError, XspFile, write_xsp

__all__ = ["CheckpointError", "RawTensor", "XspError", "XspFile", "compress_checkpoint", "decompress_checkpoint",
           "inspect_file", "open_checkpoint", "verify_checkpoint", "write_xsp"]
