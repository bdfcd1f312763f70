"""Speculative decoding without a draft model: prompt-lookup (n-gram) drafting and acceptance.

Pure functions (no I/O, no state beyond the generator passed in). Invariants:
- ``propose_ngram`` only copies tokens already in the history: it never invents a token, and returns
  at most ``k`` of them (none when no suffix of length ``min_ngram``..``max_ngram`` recurs).
- ``greedy_accept`` returns exactly what greedy decoding would emit from the same logits rows: the
  longest prefix of the draft that equals the rows' argmax, then the argmax after it (the correction,
  or the bonus token when every draft token was accepted). So the output equals non-speculative
  greedy decoding whenever the verification step's argmax per row equals that of single-token steps
  (fp drift between a [k+1]-row step and k+1 one-row steps can flip a near-tie; docs/BENCHMARKS.md).
- ``speculative_accept`` is speculative sampling (Leviathan et al. 2023) for a point-mass draft q:
  accept draft token x with probability p(x), on rejection sample from norm(max(0, p - q)), which is
  p with x removed, renormalised; after k acceptances sample the bonus from the last row. The
  emitted tokens are distributed exactly as sampling from p token by token.
- ``sampling_distribution`` is the distribution ``verisplit.impl.runtime.generate.sample_next`` draws
  from (softmax at the temperature, then the top-p nucleus, renormalised).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from verisplit.impl.runtime.errors import SegmentInputError
from verisplit.spec.speculative import DRAFT_WINDOW, lookup_draft


def propose_ngram(history: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1,
                  window: int = DRAFT_WINDOW) -> list[int]:
    """Up to ``k`` tokens that followed the most recent earlier occurrence of the history's last n
    tokens, longest match first, within the last ``window`` tokens (the drafting cost of one step is
    O(window x max_ngram), on the lead's event loop): exactly the spec's drafter ``lookup_draft``
    (rule K2), so the positions a speculative lead bills can be recomputed by anyone."""
    return lookup_draft(history, k, max_ngram, min_ngram, window)


def greedy_accept(draft: Sequence[int], rows: torch.Tensor) -> list[int]:
    """Greedy verification: ``rows`` [len(draft) + 1, vocab] are the logits after the last known token
    and after each draft token. Returns the accepted draft prefix plus the next greedy token."""
    _check_rows(draft, rows)
    targets = torch.argmax(rows.detach().to("cpu", torch.float32), dim=-1).tolist()
    out: list[int] = []
    for index, token in enumerate(draft):
        if targets[index] != token:
            out.append(int(targets[index]))
            return out
        out.append(int(token))
    out.append(int(targets[len(draft)]))
    return out


def sampling_distribution(row: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The probabilities [vocab] ``sample_next`` draws from at ``temperature`` > 0 and ``top_p``."""
    if not math.isfinite(temperature) or temperature <= 0 or not 0 < top_p <= 1:
        raise SegmentInputError(f"sampling: temperature must be finite and > 0 and top_p in (0, 1], got {temperature}, {top_p}")
    logits = row.detach().to("cpu", torch.float32)
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()) or not bool(torch.isfinite(logits).any()):
        raise SegmentInputError("logits_row: logits contain NaN or +inf, or no finite value; cannot pick a token")
    scaled = logits / temperature
    if not bool(torch.isfinite(scaled.max())):
        scaled = (logits - logits.max()) / temperature
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    if top_p < 1:
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = (cumulative - sorted_probs) < top_p
        keep[0] = True
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    sorted_probs = sorted_probs / sorted_probs.sum()
    out = torch.zeros_like(probs)
    out[order] = sorted_probs
    return out


def speculative_accept(draft: Sequence[int], rows: torch.Tensor, temperature: float, top_p: float,
                       generator: torch.Generator | None) -> list[int]:
    """Speculative sampling against a deterministic (point-mass) draft; see the module invariant."""
    _check_rows(draft, rows)
    out: list[int] = []
    for index, token in enumerate(draft):
        p = sampling_distribution(rows[index], temperature, top_p)
        u = float(torch.rand(1, generator=generator))
        if u < float(p[token]):
            out.append(int(token))
            continue
        residual = p.clone()
        residual[token] = 0.0
        total = float(residual.sum())
        if total <= 0:  # p was a point mass on the draft token, so u < 1 = p(x) always accepted it
            out.append(int(token))
            continue
        out.append(int(torch.multinomial(residual / total, 1, generator=generator)))
        return out
    last = sampling_distribution(rows[len(draft)], temperature, top_p)
    out.append(int(torch.multinomial(last, 1, generator=generator)))
    return out


def _check_rows(draft: Sequence[int], rows: torch.Tensor) -> None:
    if rows.dim() != 2 or rows.shape[0] != len(draft) + 1:
        raise SegmentInputError(f"rows: expected [{len(draft) + 1}, vocab] logits for {len(draft)} draft tokens, "
                                f"got {list(rows.shape)}")
    vocab = rows.shape[1]
    for token in draft:
        if not 0 <= token < vocab:
            raise SegmentInputError(f"draft: token id {token} outside [0, {vocab})")
