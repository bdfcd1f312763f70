"""KV rollback in the runtime (rule K1) and the verifier's replay with the same semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from verisplit.impl.audit.verifier import SegmentEvidence, reexecute
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.loader import load_full, load_segment


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("spec-rt") / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2,
                                  vocab=320, max_position=128, seed=5)


def test_rollback_overwrites_rejected_positions(ckpt: Path) -> None:
    """A step rolled back to position 7 computes what a session that never saw the rejected drafts
    computes (same step shapes: bitwise equal) and agrees with a full prefill of the final sequence up to
    fp32 drift (atol 1e-4, measured ~1e-6)."""
    seg = load_full(ckpt, device="cpu", dtype=torch.float32)
    prompt = torch.tensor([5, 17, 99, 260, 3])
    seg.open_session("a", 32)
    seg.open_session("b", 32)
    for sid in ("a", "b"):
        seg.step(sid, prompt, torch.arange(5))
    seg.step("a", torch.tensor([11, 12, 13, 14]), torch.arange(5, 9))    # drafts 12..14 at 6..8
    rolled = seg.step("a", torch.tensor([40, 41]), torch.arange(7, 9))   # 13, 14 rejected: overwrite from 7
    seg.step("b", torch.tensor([11, 12]), torch.arange(5, 7))
    clean = seg.step("b", torch.tensor([40, 41]), torch.arange(7, 9))
    assert seg.session_length("a") == 9
    full = seg.forward_full(torch.tensor([5, 17, 99, 260, 3, 11, 12, 40, 41]), torch.arange(9))
    assert torch.allclose(rolled, full[7:], atol=1e-4, rtol=0)
    assert torch.allclose(rolled, clean, atol=1e-5, rtol=0)


def test_verifier_replays_rollbacks_like_the_provider(ckpt: Path) -> None:
    first = load_segment(ckpt, 0, 2, device="cpu", dtype=torch.float32)
    steps = [(torch.tensor([5, 17, 99, 260, 3, 8, 9]), 0), (torch.tensor([21, 22, 23]), 6), (torch.tensor([30]), 8)]
    first.open_session("p", 32)
    outputs = [first.step("p", tokens, torch.arange(start, start + len(tokens))) for tokens, start in steps]
    evidence = SegmentEvidence(torch.cat([t for t, _ in steps]), torch.cat(outputs),
                               torch.cat([torch.arange(s, s + len(t)) for t, s in steps]), first.weights_digest,
                               len(steps), tuple(len(t) for t, _ in steps))
    assert evidence.rolls_back
    expected = reexecute(first, evidence)
    assert torch.equal(expected, evidence.outputs)  # same steps, same shapes: bitwise equal
    assert first.session_count() == 1  # the replay session was closed
    plain = SegmentEvidence(steps[0][0], outputs[0], torch.arange(7), first.weights_digest, 1, (7,))
    assert not plain.rolls_back
