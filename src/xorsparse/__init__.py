"""xorsparse: fixed-rate, lossless XOR-gate coding of pruned and quantized weights.

The verbs people use:

    compress_tensor / decompress_tensor        one numpy array (CompressConfig)
    compress_checkpoint / decompress_checkpoint  a .safetensors / .pt file or a model folder
    compress_folder / decompress_folder        a Hugging Face model folder to an xorsparse one
    open_xsp, inspect_file, verify_checkpoint  reading .xsp files and folders back
    SelectOptions, RunOptions                  which tensors; executor, progress, force
    XorsparseError                             the base of every error xorsparse raises

Models in PyTorch (compress_model, load_compressed) are in `xorsparse.torch`.

Floors, from the bottom: `codec` (the XOR network and plane coding), `tensor` (pruning,
quantization, masks, whole tensors), `format` (safetensors, the .xsp container and its
validating reader), `checkpoint` (checkpoints and folders, one shard at a time), `jobs`
(whole jobs on executors), `integrations` and `torch` (frameworks), `cli`. The lower two are
numpy only; each floor imports only the floors below it.
"""

from .checkpoint.inspect import inspect_file
from .checkpoint.options import RunOptions, SelectOptions
from .checkpoint.verify import verify_checkpoint
from .checkpoint.xspset import XspSet, open_xsp
from .codec import EncodedPlane, XorDecoder, decode_plane, encode_plane, get_decoder
from .errors import XorsparseError
from .format.container import XspFile
from .integrations import hf as _hf
from .jobs.checkpoint import compress_checkpoint, decompress_checkpoint
from .jobs.folder import compress_folder, decompress_folder
from .tensor.pipeline import CompressConfig, CompressedTensor, compress_tensor, decompress_tensor
from .version import __version__

_hf.install()  # transformers and sentence-transformers load xorsparse folders (see xorsparse.integrations.hf)

__all__ = ["CompressConfig", "CompressedTensor", "EncodedPlane", "RunOptions", "SelectOptions", "XorDecoder",
           "XorsparseError", "XspFile", "XspSet", "__version__", "compress_checkpoint", "compress_folder",
           "compress_tensor", "decode_plane", "decompress_checkpoint", "decompress_folder", "decompress_tensor",
           "encode_plane", "get_decoder", "inspect_file", "open_xsp", "verify_checkpoint"]
