"""Files: streaming safetensors, the validating .xsp reader and container, safe outputs, and
checkpoints in the formats people have."""

from .checkpoint import CheckpointError, compress_checkpoint, decompress_checkpoint, inspect_file, \
    open_checkpoint, verify_checkpoint
from .container import RawTensor, XspError, XspFile, write_xsp
from .output import OutputError

__all__ = ["CheckpointError", "OutputError", "RawTensor", "XspError", "XspFile", "compress_checkpoint",
           "decompress_checkpoint", "inspect_file", "open_checkpoint", "verify_checkpoint", "write_xsp"]
