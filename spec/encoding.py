"""Canonical tensor encoding and digest (the bytes every commitment is about).

Layout, all integers little-endian (documented byte-for-byte in ``docs/protocol.md``)::

    magic      4 bytes  b"VSTN"
    version    u8       ENCODING_VERSION (1)
    dtype      u8       DTYPE_CODES[dtype]
    rank       u8       number of dimensions (0..MAX_RANK)
    reserved   u8       0
    dims       rank x u64
    nbytes     u64      length of the data that follows
    data       nbytes   raw C-contiguous element bytes, little-endian (bf16 as its 2 raw bytes)

Digest: ``SHA-256(TENSOR_DOMAIN + encoding)``. The encoding is injective: the header fixes
dtype and shape, and ``nbytes`` must equal ``prod(dims) * itemsize``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Sequence

MAGIC = b"VSTN"
ENCODING_VERSION = 1
MAX_RANK = 8
TENSOR_DOMAIN = b"verisplit/tensor/v1\x00"

DTYPE_CODES: dict[str, int] = {
    "float32": 1,
    "float16": 2,
    "bfloat16": 3,
    "int64": 4,
    "int32": 5,
    "uint8": 6,
    "int8": 7,
}
DTYPE_ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "uint8": 1,
    "int8": 1,
}
_CODE_TO_DTYPE = {code: name for name, code in DTYPE_CODES.items()}
_FIXED = struct.Struct("<4sBBBB")


class EncodingError(ValueError):
    """A tensor frame is malformed; the message names the offending field."""


@dataclass(frozen=True)
class TensorFrame:
    """A decoded canonical tensor: dtype name, shape and raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


MAX_DIM = (1 << 64) - 1


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple of ints in [0, 2^64), else ``EncodingError`` naming shape (never bool/float)."""
    if not isinstance(shape, (list, tuple)):
        raise EncodingError(f"shape: must be a list or tuple of integers, got {type(shape).__name__}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise EncodingError(f"shape: dimension {dim!r} is not an integer")
        if dim < 0:
            raise EncodingError(f"shape: negative dimension {dim}")
        if dim > MAX_DIM:
            raise EncodingError(f"shape: dimension {dim} does not fit in 64 bits")
    return tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    """Product of the dims (1 for a scalar); ``EncodingError`` naming shape unless every dim is an
    int in [0, 2^64)."""
    count = 1
    for dim in _shape(shape):
        count *= dim
    return count


def encode_tensor(dtype: str, shape: Sequence[int], data: bytes) -> bytes:
    """Return the canonical encoding; rejects an unknown dtype or a length that disagrees with the shape.

    Invariant: ``decode_tensor(encode_tensor(d, s, b)) == TensorFrame(d, tuple(s), b)``.
    Every malformed argument raises ``EncodingError`` naming it (dtype, rank, shape, data, nbytes).
    """
    if not isinstance(dtype, str) or dtype not in DTYPE_CODES:
        raise EncodingError(f"dtype: unsupported {dtype!r} (supported: {sorted(DTYPE_CODES)})")
    if not isinstance(shape, (list, tuple)):
        raise EncodingError(f"shape: must be a list or tuple of integers, got {type(shape).__name__}")
    if len(shape) > MAX_RANK:
        raise EncodingError(f"rank: {len(shape)} exceeds the maximum {MAX_RANK}")
    shape = _shape(shape)
    if not isinstance(data, (bytes, bytearray)):
        raise EncodingError(f"data: must be bytes, got {type(data).__name__}")
    expected = element_count(shape) * DTYPE_ITEMSIZE[dtype]
    if len(data) != expected:
        raise EncodingError(f"nbytes: {len(data)} bytes given, shape {tuple(shape)} of {dtype} needs {expected}")
    header = _FIXED.pack(MAGIC, ENCODING_VERSION, DTYPE_CODES[dtype], len(shape), 0)
    dims = struct.pack(f"<{len(shape)}Q", *shape)
    return header + dims + struct.pack("<Q", len(data)) + bytes(data)


def decode_tensor(blob: bytes) -> TensorFrame:
    """Parse a canonical encoding; every malformed field raises ``EncodingError`` naming it
    (``frame`` if ``blob`` is not bytes)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise EncodingError(f"frame: must be bytes, got {type(blob).__name__}")
    if len(blob) < _FIXED.size:
        raise EncodingError(f"header: frame of {len(blob)} bytes is shorter than the {_FIXED.size}-byte header")
    magic, version, code, rank, reserved = _FIXED.unpack_from(blob, 0)
    if magic != MAGIC:
        raise EncodingError(f"magic: expected {MAGIC!r}, got {magic!r}")
    if version != ENCODING_VERSION:
        raise EncodingError(f"version: unsupported encoding version {version}")
    if code not in _CODE_TO_DTYPE:
        raise EncodingError(f"dtype: unknown dtype code {code}")
    if rank > MAX_RANK:
        raise EncodingError(f"rank: {rank} exceeds the maximum {MAX_RANK}")
    if reserved != 0:
        raise EncodingError("reserved: must be 0")
    offset = _FIXED.size
    if len(blob) < offset + 8 * rank + 8:
        raise EncodingError("dims: frame truncated inside the dims/nbytes fields")
    shape = struct.unpack_from(f"<{rank}Q", blob, offset)
    offset += 8 * rank
    (nbytes,) = struct.unpack_from("<Q", blob, offset)
    offset += 8
    dtype = _CODE_TO_DTYPE[code]
    expected = element_count(shape) * DTYPE_ITEMSIZE[dtype]
    if nbytes != expected:
        raise EncodingError(f"nbytes: header says {nbytes}, shape {shape} of {dtype} needs {expected}")
    if len(blob) - offset != nbytes:
        raise EncodingError(f"data: {len(blob) - offset} bytes follow the header, nbytes says {nbytes}")
    return TensorFrame(dtype=dtype, shape=tuple(shape), data=bytes(blob[offset:]))


def digest_encoded(encoded: bytes) -> bytes:
    """SHA-256 digest (32 bytes) of an already canonical encoding, domain-separated. The bytes are
    hashed as given (not parsed); ``EncodingError`` naming frame if they are not bytes."""
    if not isinstance(encoded, (bytes, bytearray)):
        raise EncodingError(f"frame: must be bytes, got {type(encoded).__name__}")
    return hashlib.sha256(TENSOR_DOMAIN + bytes(encoded)).digest()


def tensor_digest(dtype: str, shape: Sequence[int], data: bytes) -> bytes:
    """Digest of a tensor given as (dtype, shape, raw bytes). Equal tensors have equal digests;
    distinct (dtype, shape, bytes) triples have distinct encodings (digest assumed collision-free)."""
    return digest_encoded(encode_tensor(dtype, shape, data))
