"""Shared fixtures for the verification tests: a tiny seeded checkpoint and an in-process cohort."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from nacl.signing import SigningKey

from cheatkit.cheats import make_behaviour, simulate_request
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.loader import load_segment

RANGES = [(0, 2), (2, 4), (4, 6)]
PROMPT = list(range(5, 17))
NEW_TOKENS = 6


def make_ckpt(root: Path) -> Path:
    return make_random_checkpoint(root, layers=6, hidden=64, heads=4, kv_heads=2, max_position=128, seed=11)


def keys() -> list[SigningKey]:
    return [SigningKey(bytes([k + 1]) * 32) for k in range(len(RANGES))]


def run(ckpt: Path, modes: list[str], *, dtype: str = "float32", request_id: str = "req-0",
        prompt: list[int] | None = None, fee: int = 1000):
    """Serve one request in process with ``modes[k]`` at segment k (fresh segments every time)."""
    segments = [load_segment(ckpt, a, b, device="cpu", dtype=dtype) for a, b in RANGES]
    behaviours = [make_behaviour(m) for m in modes]
    return simulate_request(segments, keys(), behaviours, prompt or PROMPT, NEW_TOKENS, request_id=request_id,
                            fee=fee)


def honest_modes() -> list[str]:
    return ["honest"] * len(RANGES)


def prompt_for(seed: int) -> list[int]:
    return torch.randint(0, 512, (9 + seed % 5,), generator=torch.Generator().manual_seed(seed)).tolist()


def wait_settled(client: Any, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """``GET /v1/requests/{id}`` once the lead's post-request hooks (audit, settlement) are done."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(f"/v1/requests/{request_id}").json()
        if "settlement" in info and not info.get("pending_hooks"):
            return info
        assert time.monotonic() < deadline, f"audit hook did not finish: {info}"
        time.sleep(0.1)
