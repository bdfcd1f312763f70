"""Canonical bytes of torch tensors (the spec's tensor encoding, ``verisplit.spec.encoding``).

Invariant: ``from_canonical(to_canonical(t))`` equals ``t`` bit for bit (dtype, shape and element
bytes), and ``digest_tensor(t) == digest_encoded(to_canonical(t))``. Bytes are little-endian and
C-contiguous; bfloat16 is carried as its two raw bytes (via ``view(torch.uint8)``), never converted.
"""

from __future__ import annotations

import sys

import torch

from verisplit.spec.encoding import EncodingError, decode_tensor, digest_encoded, encode_tensor

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,
}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("verisplit.impl.runtime.tensors assumes a little-endian host")


def dtype_name(dtype: torch.dtype) -> str:
    """The spec's name for a torch dtype; raises ``EncodingError`` for dtypes the spec lacks."""
    name = _NAMES.get(dtype)
    if name is None:
        raise EncodingError(f"dtype: torch dtype {dtype} has no canonical encoding (supported: {sorted(TORCH_DTYPES)})")
    return name


def raw_bytes(t: torch.Tensor) -> bytes:
    """The C-contiguous little-endian element bytes of ``t`` (moved to CPU first)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def to_canonical(t: torch.Tensor) -> bytes:
    """Spec encoding of ``t``: header (dtype, shape, nbytes) followed by the raw element bytes."""
    return encode_tensor(dtype_name(t.dtype), tuple(t.shape), raw_bytes(t))


def from_canonical(blob: bytes, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse of ``to_canonical``; a malformed frame raises ``EncodingError`` naming the field."""
    frame = decode_tensor(blob)
    dtype = TORCH_DTYPES[frame.dtype]
    if len(frame.data) == 0:
        return torch.empty(frame.shape, dtype=dtype, device=device)
    flat = torch.frombuffer(bytearray(frame.data), dtype=torch.uint8)
    return flat.view(dtype).reshape(frame.shape).to(device)


def digest_tensor(t: torch.Tensor) -> bytes:
    """32-byte digest of the canonical encoding of ``t``."""
    return digest_encoded(to_canonical(t))


WEIGHTS_DOMAIN = b"verisplit/weights/v1\x00"


def digest_named_tensors(tensors: "dict[str, torch.Tensor]") -> bytes:
    """32-byte digest of a set of named tensors, independent of dict order.

    SHA-256 over WEIGHTS_DOMAIN, then for each name in sorted (code point) order:
    ``u32 len(name) || name (UTF-8) || digest_tensor(tensor)``; the tensor digest fixes dtype,
    shape and bytes.
    """
    import hashlib
    import struct

    h = hashlib.sha256(WEIGHTS_DOMAIN)
    for name in sorted(tensors):
        encoded = name.encode("utf-8")
        h.update(struct.pack("<I", len(encoded)))
        h.update(encoded)
        h.update(digest_tensor(tensors[name]))
    return h.digest()


BoundaryFacts = tuple[str | None, tuple[int, ...] | None, bool]


def decode_boundary(blob: bytes) -> tuple[torch.Tensor | None, BoundaryFacts]:
    """Decode received bytes once: the tensor (None when they are not a canonical tensor) and what rule H5
    (``verisplit.spec.commitment.check_boundary``) judges of them: dtype, shape, and whether every
    element is finite (integer tensors always are)."""
    try:
        t = from_canonical(blob)
    except EncodingError:
        return None, (None, None, False)
    finite = bool(torch.isfinite(t).all()) if t.is_floating_point() else True
    return t, (dtype_name(t.dtype), tuple(int(d) for d in t.shape), finite)


def boundary_facts(blob: bytes) -> BoundaryFacts:
    """``decode_boundary``'s facts alone (for recorded bytes, where the tensor is not needed)."""
    return decode_boundary(blob)[1]
