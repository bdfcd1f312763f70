"""K-way splits chained by hand equal the un-split model (fp32, CPU).

What is measured: max-abs difference of the last segment's fp32 logits between the chained
segments and one un-split Segment, on the same prompt, both for one stateless full forward and for
a cached prefill + decode; and equality of greedy token sequences from generate_reference.
"""

from __future__ import annotations

import pytest
import torch

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.generate import generate_reference, run_chain
from verisplit.impl.runtime.loader import load_full, load_segment

LAYERS = 7  # odd, so every K > 1 split below is uneven
SPLITS = {
    1: [(0, 7)],
    2: [(0, 2), (2, 7)],
    3: [(0, 1), (1, 5), (5, 7)],
    4: [(0, 3), (3, 4), (4, 6), (6, 7)],
}
TOL = 1e-6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("split") / "m", arch="llama", layers=LAYERS, hidden=64,
                                  heads=4, kv_heads=2, shards=3, max_position=128, seed=3)


@pytest.fixture(scope="module")
def full(ckpt):
    return load_full(ckpt, device="cpu", dtype=torch.float32)


def _prompt(n: int = 11) -> torch.Tensor:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("k", sorted(SPLITS))
def test_chained_forward_full_equals_unsplit(ckpt, full, k):
    segments = [load_segment(ckpt, a, b, device="cpu", dtype="float32") for a, b in SPLITS[k]]
    ids, pos = _prompt(), torch.arange(11)
    x = ids
    for seg in segments:
        x = seg.forward_full(x, pos)
    ref = full.forward_full(ids, pos)
    assert x.shape == ref.shape == (11, 512) and x.dtype == torch.float32
    assert (x - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("k", sorted(SPLITS))
def test_chained_sessions_equal_unsplit_and_greedy_tokens_match(ckpt, full, k):
    segments = [load_segment(ckpt, a, b, device="cpu", dtype="float32") for a, b in SPLITS[k]]
    ids = _prompt()
    for seg in segments + [full]:
        seg.open_session("s", 32)
    chained = [run_chain(segments, "s", ids, torch.arange(11))]
    single = [full.step("s", ids, torch.arange(11))]
    for p in range(11, 16):
        tok = torch.tensor([int(single[-1][-1].argmax())])
        chained.append(run_chain(segments, "s", tok, torch.tensor([p])))
        single.append(full.step("s", tok, torch.tensor([p])))
    diff = (torch.cat(chained) - torch.cat(single)).abs().max().item()
    assert diff <= TOL
    for seg in segments + [full]:
        seg.close_session("s")
    greedy_split = generate_reference(segments, ids.tolist(), 12)
    greedy_full = generate_reference(full, ids.tolist(), 12)
    assert len(greedy_full) == 12 and greedy_split == greedy_full


def test_boundary_is_residual_stream_in_segment_dtype(ckpt):
    first = load_segment(ckpt, 0, 3, device="cpu", dtype="float32")
    out = first.forward_full(_prompt(), torch.arange(11))
    assert out.shape == (11, 64) and out.dtype == torch.float32
    assert first.is_first and not first.is_last and first.layer_indices == [0, 1, 2]


def test_sessions_are_isolated_and_freed(full):
    ids = _prompt()
    full.open_session("a", 20)
    full.open_session("b", 20)
    a1 = full.step("a", ids[:5], torch.arange(5))
    full.step("b", ids[5:], torch.arange(6))  # different history in b
    a2 = full.step("a", ids[5:6], torch.tensor([5]))
    ref = full.forward_full(ids[:6], torch.arange(6))
    assert (torch.cat([a1, a2]) - ref).abs().max().item() <= 1e-4  # cache-vs-prefill drift, docs/determinism.md
    assert full.session_count() == 2 and full.session_length("a") == 6
    full.close_session("a")
    full.close_session("b")
    assert full.session_count() == 0


def test_skipping_a_layer_changes_the_output(ckpt):
    """The layer list is what runs: removing one index (a cheat) changes logits by O(1)."""
    honest = load_full(ckpt, device="cpu")
    cheat = load_full(ckpt, device="cpu")
    cheat.layer_indices = [i for i in cheat.layer_indices if i != 3]
    ids, pos = _prompt(), torch.arange(11)
    assert (honest.forward_full(ids, pos) - cheat.forward_full(ids, pos)).abs().max().item() > 1e-2
