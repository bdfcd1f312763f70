"""Reference generation: prefill then decode through a chain of Segments in one process.

Sampling runs on CPU in fp32 so the same logits, seed and settings give the same token on any
device. Temperature 0 is greedy argmax (ties go to the lowest id).
"""

from __future__ import annotations

import math
import uuid
from typing import Iterable, Sequence

import torch

from verisplit.impl.runtime.errors import SegmentInputError
from verisplit.impl.runtime.segment import Segment


def sample_next(
    logits_row: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Next token id from one row of logits ``[vocab]``.

    temperature == 0 (or below fp32's smallest subnormal): argmax. Otherwise softmax(logits / temperature), keep the smallest set of
    most likely tokens whose mass reaches ``top_p`` (at least one), renormalise, draw with ``generator``.
    A temperature so small that ``logits / temperature`` overflows is computed as
    ``(logits - max) / temperature`` (the same softmax), which tends to argmax. NaN or +inf logits,
    or a row with no finite logit, raise ``SegmentInputError`` (never a draw from garbage).
    """
    if logits_row.dim() != 1:
        raise SegmentInputError(f"logits_row: expected shape [vocab], got {list(logits_row.shape)}")
    if not math.isfinite(temperature) or temperature < 0 or not 0 < top_p <= 1:
        raise SegmentInputError(
            f"sampling: temperature must be a finite number >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    row = logits_row.detach().to(device="cpu", dtype=torch.float32)
    if bool(torch.isnan(row).any()) or bool(torch.isposinf(row).any()) or not bool(torch.isfinite(row).any()):
        raise SegmentInputError("logits_row: logits contain NaN or +inf, or no finite value; cannot pick a token")
    if float(torch.tensor(temperature, dtype=torch.float32)) == 0:  # 0, or a temperature fp32 rounds to 0
        return int(torch.argmax(row))
    scaled = row / temperature
    if not bool(torch.isfinite(scaled.max())):  # tiny temperature overflowed to +-inf: shift first
        scaled = (row - row.max()) / temperature
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    if top_p < 1:
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = (cumulative - sorted_probs) < top_p  # mass before this token is still short of top_p
        keep[0] = True
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    sorted_probs = sorted_probs / sorted_probs.sum()
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return int(order[choice])


def run_chain(segments: Sequence[Segment], session_id: str, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One ``step`` through every segment in order; returns the last segment's output."""
    x = inputs
    for segment in segments:
        x = segment.step(session_id, x, positions)
    return x


def generate_reference(
    segment_or_segments: Segment | Sequence[Segment],
    token_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | Iterable[int] | None = None,
) -> list[int]:
    """Generated ids only (the prompt excluded); stops after ``max_new_tokens`` or after emitting an eos id.

    Opens one fresh session per segment, closes them on exit (also on error).
    """
    segments = [segment_or_segments] if isinstance(segment_or_segments, Segment) else list(segment_or_segments)
    _check_chain(segments)
    if not token_ids:
        raise SegmentInputError("token_ids: the prompt must hold at least one token")
    if max_new_tokens < 0:
        raise SegmentInputError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
    stops = set() if eos_token_id is None else ({eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id))
    generator = torch.Generator().manual_seed(seed)
    session_id = f"ref-{uuid.uuid4().hex}"
    max_length = len(token_ids) + max(max_new_tokens - 1, 0)  # the last sampled token is never fed back
    opened: list[Segment] = []
    out: list[int] = []
    try:
        for segment in segments:
            segment.open_session(session_id, max_length)
            opened.append(segment)
        inputs = torch.tensor(token_ids, dtype=torch.int64)
        positions = torch.arange(len(token_ids), dtype=torch.int64)
        for _ in range(max_new_tokens):
            logits = run_chain(segments, session_id, inputs, positions)
            token = sample_next(logits[-1], temperature=temperature, top_p=top_p, generator=generator)
            out.append(token)
            if token in stops:
                break
            next_pos = int(positions[-1]) + 1
            inputs = torch.tensor([token], dtype=torch.int64)
            positions = torch.tensor([next_pos], dtype=torch.int64)
    finally:
        for segment in opened:
            segment.close_session(session_id)
    return out


def _check_chain(segments: list[Segment]) -> None:
    """Segments must tile [0, num_layers) of one model in order."""
    if not segments:
        raise SegmentInputError("segments: at least one segment is needed")
    if not segments[0].is_first or not segments[-1].is_last:
        raise SegmentInputError("segments: the chain must start at layer 0 and end at the last layer")
    for before, after in zip(segments, segments[1:]):
        if before.end_layer != after.first_layer or before.model_id != after.model_id:
            raise SegmentInputError(
                f"segments: [{before.first_layer}, {before.end_layer}) of {before.model_id} is not followed by "
                f"[{after.first_layer}, {after.end_layer}) of {after.model_id}")


def cache_vs_prefill_drift(segment: Segment, inputs: torch.Tensor, prefill: int) -> float:
    """Max-abs difference (as float) between ``step`` outputs (prefill of ``prefill`` tokens, then
    one-token decode steps) and one stateless ``forward_full`` over the same inputs.

    ``inputs`` are token ids ``[T]`` for a first segment, hidden states ``[T, hidden]`` otherwise.
    Both paths are mathematically equal; the difference is pure floating-point drift.
    """
    total = inputs.shape[0]
    if not 1 <= prefill <= total:
        raise SegmentInputError(f"prefill: {prefill} must be in [1, {total}]")
    session_id = f"drift-{uuid.uuid4().hex}"
    segment.open_session(session_id, total)
    try:
        outs = [segment.step(session_id, inputs[:prefill], torch.arange(prefill))]
        for p in range(prefill, total):
            outs.append(segment.step(session_id, inputs[p:p + 1], torch.tensor([p])))
    finally:
        segment.close_session(session_id)
    full = segment.forward_full(inputs, torch.arange(total))
    return (torch.cat(outs).float() - full.float()).abs().max().item()
