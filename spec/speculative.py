"""Rule K2: a speculative lead's drafts are the lookup drafter's, so the positions it bills are checkable.

A speculative step computes the pending token(s) plus a draft, and every computed position is billed
(rule F1 over steps). If the lead could choose its drafts freely it could pad every step with junk
draft tokens and bill up to k + 1 times the plain fee for the same output, and each padded step would
still pass K1, F1 and the audit. K2 closes that: the draft of every step is ``lookup_draft`` of the
token history known at that step, capped at ``min(k, max_tokens - generated - 1)``. The drafter is
deterministic in the history, and the history at each step follows from public data: the prompt and
completion token ids and each step's first position (step j >= 1 starts at the position of the last
token generated so far, ``first_position = prompt + generated - 1``). So anyone holding a request's
public view (``GET /v1/requests/{id}``: token ids, steps, and the ``speculative`` parameters k,
max_ngram and max_tokens) recomputes every step's positions with ``expected_step_positions``; a step
that computed more (or fewer) positions than that fails ``check_draft_lengths``.
"""

from __future__ import annotations

from typing import Sequence

DRAFT_MISMATCH = "draft_mismatch"  # a speculative step's positions are not the lookup drafter's (K2)
DRAFT_WINDOW = 4096  # tokens of history searched for a match: bounds the drafting cost of one step


def lookup_draft(history: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1,
                 window: int = DRAFT_WINDOW) -> list[int]:
    """Rule K2's drafter: up to ``k`` tokens that followed the most recent earlier occurrence of the
    history's last n tokens, trying n = ``max_ngram`` down to ``min_ngram`` (longest match first),
    within the last ``window`` tokens; ``[]`` when nothing matches or ``k <= 0``. It only copies
    tokens already in the history. Z3: ``draft_lengths_concrete`` (TESTED). Lean: none (a concrete
    algorithm, checked by replaying it)."""
    if k <= 0 or min_ngram < 1 or max_ngram < min_ngram:
        return []
    tokens = list(history[-window:]) if window > 0 else list(history)
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n:]
        for start in range(length - n - 1, -1, -1):  # most recent earlier occurrence first
            if tokens[start:start + n] == suffix:
                follow = tokens[start + n:start + n + k]
                if follow:
                    return follow
    return []


def expected_step_positions(prompt: Sequence[int], completion: Sequence[int], step_firsts: Sequence[int], k: int,
                            max_tokens: int, max_ngram: int = 3) -> list[int]:
    """The positions each step of a speculative request computes under K2: step 0 holds the prompt
    and the draft of the prompt; step j >= 1 starts at ``step_firsts[j]``, the position of the last
    token generated before it, and holds that token and the draft of everything known then. Z3:
    ``draft_lengths_concrete`` (TESTED, against the lead's own loop on simulated requests)."""
    expected = []
    for j, first in enumerate(step_firsts):
        generated = 0 if j == 0 else first - len(prompt) + 1
        history = list(prompt) + list(completion[:generated])
        draft = lookup_draft(history, min(k, max_tokens - generated - 1), max_ngram=max_ngram)
        expected.append((len(prompt) if j == 0 else 1) + len(draft))
    return expected


def check_draft_lengths(prompt: Sequence[int], completion: Sequence[int], steps: Sequence[tuple[int, int]], k: int,
                        max_tokens: int, max_ngram: int = 3) -> tuple[str, str] | None:
    """Rule K2 on a request's steps ``(first_position, num_positions)``: None when every step computed
    exactly the positions ``expected_step_positions`` gives, else ``(draft_mismatch, detail)`` naming
    the first step that did not (a lead padding or trimming drafts). Z3: ``draft_lengths_concrete``."""
    if not steps:
        return None
    if steps[0][0] != 0:
        return DRAFT_MISMATCH, f"step 0 starts at position {steps[0][0]}, not 0"
    for j, (first, _) in enumerate(steps[1:], start=1):
        generated = first - len(prompt) + 1
        if not 1 <= generated <= len(completion):
            return DRAFT_MISMATCH, f"step {j} starts at position {first}, after no generated token of the completion"
    expected = expected_step_positions(prompt, completion, [f for f, _ in steps], k, max_tokens, max_ngram)
    for j, ((_, positions), want) in enumerate(zip(steps, expected)):
        if positions != want:
            return DRAFT_MISMATCH, (f"step {j} computed {positions} positions; the lookup drafter's draft of the "
                                    f"history then gives {want} (k={k})")
    return None
