"""Canonical tensor encoding: round trip, injectivity of the header, malformed frames named."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.encoding import (DTYPE_ITEMSIZE, EncodingError, decode_tensor, element_count, encode_tensor,
                                     tensor_digest)


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, tuple[int, ...], bytes]:
    dtype = draw(st.sampled_from(sorted(DTYPE_ITEMSIZE)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    data = draw(st.binary(min_size=element_count(shape) * DTYPE_ITEMSIZE[dtype], max_size=element_count(shape) * DTYPE_ITEMSIZE[dtype]))
    return dtype, shape, data


@settings(max_examples=200, deadline=None)
@given(frames())
def test_round_trip(frame: tuple[str, tuple[int, ...], bytes]) -> None:
    dtype, shape, data = frame
    decoded = decode_tensor(encode_tensor(dtype, shape, data))
    assert (decoded.dtype, decoded.shape, decoded.data) == (dtype, shape, data)


def test_same_bytes_different_dtype_or_shape_have_different_digests() -> None:
    data = bytes(range(8))
    digests = {tensor_digest("float32", (2,), data), tensor_digest("int64", (1,), data),
               tensor_digest("bfloat16", (4,), data), tensor_digest("bfloat16", (2, 2), data),
               tensor_digest("float16", (4,), data)}
    assert len(digests) == 5


def test_header_layout_is_little_endian_and_documented() -> None:
    blob = encode_tensor("bfloat16", (2, 3), bytes(12))
    assert blob[:4] == b"VSTN" and blob[4:8] == bytes([1, 3, 2, 0])
    assert struct.unpack("<QQQ", blob[8:32]) == (2, 3, 12)
    assert len(blob) == 32 + 12


@pytest.mark.parametrize("mutate,field", [
    (lambda b: b[:5], "header"),
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + b"\x09" + b[5:], "version"),
    (lambda b: b[:5] + b"\x63" + b[6:], "dtype"),
    (lambda b: b[:6] + b"\x09" + b[7:], "rank"),
    (lambda b: b[:7] + b"\x01" + b[8:], "reserved"),
    (lambda b: b[:-1], "data"),
    (lambda b: b[:24] + struct.pack("<Q", 11) + b[32:], "nbytes"),
])
def test_malformed_frames_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    blob = encode_tensor("bfloat16", (2, 3), bytes(12))
    with pytest.raises(EncodingError, match=field):
        decode_tensor(mutate(blob))


def test_encode_rejects_inconsistent_input() -> None:
    with pytest.raises(EncodingError, match="dtype"):
        encode_tensor("complex64", (1,), bytes(8))
    with pytest.raises(EncodingError, match="nbytes"):
        encode_tensor("float32", (2,), bytes(7))
