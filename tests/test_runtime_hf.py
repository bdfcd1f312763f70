"""Logits equal Hugging Face transformers (eager attention) on seeded random checkpoints, fp32 CPU.

Measured: max-abs difference of [T, vocab] fp32 logits for one 24-token prompt; bound 1e-4.
"""

from __future__ import annotations

import pytest
import torch

import transformers  # test-only dependency (the [test] extra); a missing one must fail, not skip

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.loader import load_full

CASES = {
    "llama": dict(arch="llama", layers=3, hidden=64, heads=4, kv_heads=2),  # llama3 rope scaling on
    "llama-tied-mha": dict(arch="llama", layers=2, hidden=64, heads=4, kv_heads=4, tie_embeddings=True),
    "qwen2": dict(arch="qwen2", layers=3, hidden=64, heads=4, kv_heads=2),  # q/k/v bias
    "mistral-window": dict(arch="mistral", layers=3, hidden=64, heads=4, kv_heads=1, sliding_window=6),
}
HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
T = 24


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    kw = CASES[request.param]
    path = make_random_checkpoint(tmp_path_factory.mktemp(request.param) / "m", shards=2, max_position=256,
                                  seed=11, **kw)
    return kw["arch"], path


def _hf_logits(arch, path, ids):
    cls = getattr(transformers, HF_CLASSES[arch])
    model = cls.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                attn_implementation="eager").eval()
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


def test_logits_match_transformers(case):
    arch, path = case
    ids = torch.randint(0, 512, (T,), generator=torch.Generator().manual_seed(5))
    ours = load_full(path, device="cpu", dtype=torch.float32).forward_full(ids, torch.arange(T))
    ref = _hf_logits(arch, path, ids)
    assert ours.shape == ref.shape == (T, 512)
    assert ref.abs().max().item() > 1.0  # logits are O(1), so 1e-4 is a meaningful bound
    assert (ours - ref).abs().max().item() <= 1e-4


def test_sliding_window_is_exercised(tmp_path):
    """A window shorter than the prompt must change late positions (else the parity test proves little)."""
    common = dict(arch="mistral", layers=2, hidden=64, heads=4, kv_heads=2, max_position=256, seed=2)
    windowed = load_full(make_random_checkpoint(tmp_path / "w", sliding_window=4, **common))
    plain = load_full(make_random_checkpoint(tmp_path / "p", **common))
    ids, pos = torch.randint(0, 512, (12,), generator=torch.Generator().manual_seed(1)), torch.arange(12)
    a, b = windowed.forward_full(ids, pos), plain.forward_full(ids, pos)
    assert torch.equal(a[:4], b[:4])
    assert (a[4:] - b[4:]).abs().max().item() > 1e-3
