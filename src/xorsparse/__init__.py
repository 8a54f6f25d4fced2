"""xorsparse: fixed-rate, lossless XOR-gate coding of pruned and quantized weights.

Layers, from the bottom: `codec` (the XOR network and plane coding), `tensor` (pruning,
quantization, masks, whole tensors), `io` (safetensors, the .xsp container, checkpoints),
`torch` (models and modules). The lower two are numpy only.
"""

from .codec import EncodedPlane, XorDecoder, decode_plane, encode_plane, get_decoder

__version__ = "0.1.0"

from .io import hf as _hf  # noqa: E402

_hf.install()  # transformers and sentence-transformers load xorsparse folders (see xorsparse.io.hf)
__all__ = ["EncodedPlane", "XorDecoder", "decode_plane", "encode_plane", "get_decoder", "__version__"]
