"""Canonical tensor bytes: round trips, digests, bf16 raw bytes, malformed frames."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.impl.runtime.tensors import (TORCH_DTYPES, digest_named_tensors, digest_tensor, dtype_name,
                                    from_canonical, to_canonical)
from verisplit.spec.encoding import EncodingError, decode_tensor, digest_encoded


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(TORCH_DTYPES)),
       shape=st.lists(st.integers(0, 4), min_size=0, max_size=3), seed=st.integers(0, 2**16))
def test_round_trip_is_bitwise(name, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(torch.tensor(shape).prod()) * TORCH_DTYPES[name].itemsize,),
                        generator=gen, dtype=torch.uint8)
    t = raw.view(TORCH_DTYPES[name]).reshape(shape) if raw.numel() else torch.empty(shape, dtype=TORCH_DTYPES[name])
    blob = to_canonical(t)
    back = from_canonical(blob)
    assert back.dtype == t.dtype and tuple(back.shape) == tuple(shape)
    assert to_canonical(back) == blob  # bitwise, NaN payloads included
    assert digest_tensor(t) == digest_encoded(blob)
    assert decode_tensor(blob).dtype == dtype_name(t.dtype)


def test_bf16_bytes_are_raw_and_little_endian():
    t = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    frame = decode_tensor(to_canonical(t))
    assert frame.data == bytes([0x80, 0x3F, 0x00, 0xC0])


def test_non_contiguous_and_digest_sensitivity():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert to_canonical(t.t()) == to_canonical(t.t().contiguous())
    assert digest_tensor(t) != digest_tensor(t.reshape(4, 3))
    bumped = t.clone()
    bumped[1, 1] = torch.nextafter(bumped[1, 1], torch.tensor(100.0))  # one ulp
    assert digest_tensor(t) != digest_tensor(bumped)
    assert digest_tensor(t) != digest_tensor(t.to(torch.int32))


def test_malformed_frames_raise_encoding_error():
    blob = to_canonical(torch.ones(2, 2))
    with pytest.raises(EncodingError, match="magic"):
        from_canonical(b"XXXX" + blob[4:])
    with pytest.raises(EncodingError, match="data"):
        from_canonical(blob[:-1])
    with pytest.raises(EncodingError, match="dtype"):
        to_canonical(torch.ones(2, dtype=torch.float64))


def test_named_digest_ignores_dict_order_but_not_names():
    a, b = torch.ones(2), torch.zeros(3)
    assert digest_named_tensors({"x": a, "y": b}) == digest_named_tensors({"y": b, "x": a})
    assert digest_named_tensors({"x": a, "y": b}) != digest_named_tensors({"x": b, "y": a})
