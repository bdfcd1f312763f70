"""Bad inputs raise clear errors and leave sessions untouched."""

from __future__ import annotations

import pytest
import torch

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.errors import SegmentInputError, SessionError
from verisplit.impl.runtime.loader import load_segment


@pytest.fixture(scope="module")
def segs(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("inp") / "m", layers=4, hidden=64, heads=4,
                                  kv_heads=2, max_position=32, seed=4)
    return load_segment(path, 0, 2), load_segment(path, 2, 4)


def test_middle_or_last_segment_input_checks(segs):
    _, last = segs
    last.open_session("s", 16)
    pos = torch.arange(3)
    with pytest.raises(SegmentInputError, match=r"shape \[3, 64\].*\[3, 65\]"):
        last.step("s", torch.zeros(3, 65), pos)
    with pytest.raises(SegmentInputError, match="expected hidden states in torch.float32, got torch.bfloat16"):
        last.step("s", torch.zeros(3, 64, dtype=torch.bfloat16), pos)
    with pytest.raises(SegmentInputError, match="expected hidden states in torch.float32, got torch.int64"):
        last.step("s", torch.zeros(3, dtype=torch.int64), pos)
    with pytest.raises(SegmentInputError, match=r"shape \[3, 64\]"):
        last.step("s", torch.zeros(2, 64), pos)
    assert last.session_length("s") == 0  # nothing was written
    out = last.step("s", torch.randn(3, 64), pos)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    last.close_session("s")


def test_first_segment_token_checks(segs):
    first, _ = segs
    first.open_session("t", 8)
    with pytest.raises(SegmentInputError, match="int64 token ids"):
        first.step("t", torch.zeros(2, 64), torch.arange(2))
    with pytest.raises(SegmentInputError, match=r"token ids must be in \[0, 512\)"):
        first.step("t", torch.tensor([1, 512]), torch.arange(2))
    with pytest.raises(SegmentInputError, match="int64 tensor"):
        first.step("t", torch.tensor([1, 2]), torch.tensor([0.0, 1.0]))
    first.close_session("t")


def test_position_rules(segs):
    first, _ = segs
    first.open_session("p", 6)
    with pytest.raises(SegmentInputError, match="must start at 0"):
        first.step("p", torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(SegmentInputError, match="consecutive"):
        first.step("p", torch.tensor([1, 2]), torch.tensor([0, 2]))
    first.step("p", torch.tensor([1, 2, 3, 4]), torch.arange(4))
    with pytest.raises(SegmentInputError, match="must start at 4"):
        first.step("p", torch.tensor([1]), torch.tensor([0]))  # replaying the previous step's start is refused (K1)
    with pytest.raises(SegmentInputError, match="must start at 4"):
        first.step("p", torch.tensor([1]), torch.tensor([5]))  # a gap is refused
    first.step("p", torch.tensor([4]), torch.tensor([3]))  # a rollback to position 3 (K1) overwrites it
    assert first.session_length("p") == 4
    with pytest.raises(SegmentInputError, match="beyond the max_length 6 of session 'p'"):
        first.step("p", torch.tensor([1, 2, 3]), torch.arange(4, 7))
    first.step("p", torch.tensor([1, 2]), torch.arange(4, 6))
    assert first.session_length("p") == 6
    first.close_session("p")
    with pytest.raises(SegmentInputError, match="beyond max_position_embeddings 32"):
        first.forward_full(torch.tensor([1, 2]), torch.tensor([31, 32]))
    with pytest.raises(SegmentInputError, match=r"max_length: 33 must be an integer in \[1, 32\]"):
        first.open_session("q", 33)


def test_session_errors(segs):
    first, _ = segs
    with pytest.raises(SessionError, match="unknown session 'nope'") as info:
        first.step("nope", torch.tensor([1]), torch.tensor([0]))
    assert str(info.value).startswith("unknown session 'nope'")  # no KeyError quoting
    with pytest.raises(SessionError, match="unknown session"):
        first.close_session("nope")
    first.open_session("dup", 4)
    with pytest.raises(SessionError, match="already open"):
        first.open_session("dup", 4)
    first.close_session("dup")
    with pytest.raises(SessionError):
        first.close_session("dup")


def test_kv_bytes_per_token(segs):
    first, _ = segs
    # 2 layers x (K + V) x 2 kv heads x head_dim 16 x 4 bytes
    assert first.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 4
