"""A provider may be assigned any sub-range of its offer: views of a loaded range match fresh loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.errors import SegmentInputError
from verisplit.impl.runtime.loader import load_segment


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("sub") / "ckpt", layers=6, hidden=64, heads=4, kv_heads=2,
                                  shards=2, seed=3, tie_embeddings=True)


@pytest.mark.parametrize("loaded,view", [((0, 6), (0, 2)), ((0, 6), (2, 4)), ((0, 6), (3, 6)), ((2, 6), (4, 6)), ((1, 5), (1, 5))])
def test_view_equals_fresh_load_bitwise(checkpoint: Path, loaded: tuple[int, int], view: tuple[int, int]) -> None:
    parent = load_segment(checkpoint, *loaded)
    sub = parent.sub_segment(*view)
    fresh = load_segment(checkpoint, *view)
    assert sub.weights_digest == fresh.weights_digest
    assert (sub.is_first, sub.is_last, sub.layer_indices) == (fresh.is_first, fresh.is_last, fresh.layer_indices)
    torch.manual_seed(0)
    positions = torch.arange(5)
    inputs = torch.randint(0, fresh.config.vocab_size, (5,)) if fresh.is_first else torch.randn(5, fresh.config.hidden_size)
    # fp32 CPU, identical kernels and weights: the outputs are bitwise equal (max-abs 0).
    assert torch.equal(sub.forward_full(inputs, positions), fresh.forward_full(inputs, positions))
    sub.open_session("s", 8)
    assert torch.equal(sub.step("s", inputs, positions), fresh.forward_full(inputs, positions))
    assert parent.session_count() == (1 if sub is parent else 0)  # views keep their own sessions


def test_view_outside_loaded_range_is_rejected(checkpoint: Path) -> None:
    parent = load_segment(checkpoint, 2, 4)
    with pytest.raises(SegmentInputError, match="sub-range of the loaded"):
        parent.sub_segment(1, 3)
    with pytest.raises(SegmentInputError, match="sub-range"):
        parent.sub_segment(3, 3)
