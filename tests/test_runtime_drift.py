"""KV-cache decode vs one full prefill: drift per dtype stays within the bounds in docs/determinism.md.

Measured: max-abs over [T, vocab] fp32 logits (full model) and over the [T, hidden] residual stream
leaving layers [0, 2), prefill of 8 tokens then 24 one-token decode steps, CPU. The bounds are
roughly 10x the values measured with ``python bench/runtime.py --drift`` (recorded in the doc).
"""

from __future__ import annotations

import pytest
import torch

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.generate import cache_vs_prefill_drift
from verisplit.impl.runtime.loader import load_full, load_segment

BOUNDS = {"float32": 1e-4, "float16": 0.1, "bfloat16": 0.75}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("drift") / "m", layers=4, hidden=128, heads=4,
                                  kv_heads=2, seed=6)


@pytest.mark.parametrize("dtype", sorted(BOUNDS))
def test_cache_vs_prefill_drift_within_documented_bound(ckpt, dtype):
    ids = torch.randint(0, 512, (32,), generator=torch.Generator().manual_seed(0))
    logits = cache_vs_prefill_drift(load_full(ckpt, device="cpu", dtype=dtype), ids, 8)
    resid = cache_vs_prefill_drift(load_segment(ckpt, 0, 2, device="cpu", dtype=dtype), ids, 8)
    assert logits <= BOUNDS[dtype] and resid <= BOUNDS[dtype], (logits, resid)


def test_fp32_forward_full_is_bitwise_repeatable(ckpt):
    seg = load_full(ckpt, device="cpu")
    ids = torch.randint(0, 512, (16,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(seg.forward_full(ids, torch.arange(16)), seg.forward_full(ids, torch.arange(16)))
