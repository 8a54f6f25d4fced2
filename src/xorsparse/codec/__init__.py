"""The bit-plane codec: the XOR-gate network, plane encoding and decoding, patches, rates.

Pure numpy and numba: planes in, streams and patch lists out (docs/FORMAT.md section 1).
"""

from .plane import EncodedPlane, decode_plane, decode_plane_packed, get_decoder
from .rates import (
           choose,
           encode_plane,  # decoder="auto" as well as a given XorDecoder
)
from .xornet import DEFAULT_SEED, XorDecoder

__all__ = ["DEFAULT_SEED", "EncodedPlane", "XorDecoder", "choose", "decode_plane", "decode_plane_packed",
           "encode_plane", "get_decoder"]
