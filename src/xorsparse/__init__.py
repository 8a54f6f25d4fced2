"""xorsparse: fixed-rate, lossless XOR-gate coding of pruned and quantized weights.

Floors, from the bottom: `codec` (the XOR network and plane coding), `tensor` (pruning,
quantization, masks, whole tensors), `format` (safetensors, the .xsp container and its
validating reader), `checkpoint` (checkpoints and folders, one shard at a time), `jobs`
(whole jobs on executors), `integrations` and `torch` (frameworks), `cli`. The lower two are
numpy only; each floor imports only the floors below it.
"""

from .codec import EncodedPlane, XorDecoder, decode_plane, encode_plane, get_decoder

from .version import __version__

from .integrations import hf as _hf  # noqa: E402

_hf.install()  # transformers and sentence-transformers load xorsparse folders (see xorsparse.integrations.hf)
__all__ = ["EncodedPlane", "XorDecoder", "decode_plane", "encode_plane", "get_decoder", "__version__"]
