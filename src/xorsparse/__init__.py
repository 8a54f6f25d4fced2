"""xorsparse: fixed-rate, lossless XOR-gate coding of pruned and quantized weights."""

from .codec import EncodedPlane, decode_plane, encode_plane, get_decoder
from .xornet import XorDecoder

__version__ = "0.1.0"
__all__ = ["EncodedPlane", "XorDecoder", "decode_plane", "encode_plane", "get_decoder", "__version__"]
