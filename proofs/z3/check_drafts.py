"""Rule K2 (spec/speculative.py): the positions a speculative lead bills are the lookup drafter's.

TESTED (concrete): ``draft_lengths_concrete`` simulates the lead's speculative loop
(impl/node/speculative.py: draft ``lookup_draft(history, min(k, max_tokens - generated - 1))``, keep
the accepted prefix plus one token, start the next step at the last generated token) over seeded
repetitive prompts, k in 1..5 and a deterministic toy "model" whose next token agrees with the draft
some of the time; ``check_draft_lengths`` must accept every honest trace and refuse every trace with
one step padded or trimmed by one position. Nothing here is PROVED: the drafter is a concrete
algorithm and the check replays it.
"""

from __future__ import annotations

import random
import time
from typing import Iterator

from verisplit.proofs_z3.core import Evidence, Obligation, concrete, register
from verisplit.spec import speculative as spec_speculative

EXPECTED = "verisplit.spec.speculative.expected_step_positions"
CHECK = "verisplit.spec.speculative.check_draft_lengths"
DRAFTER = "verisplit.spec.speculative.lookup_draft"


def _simulate(prompt: list[int], k: int, max_tokens: int, seed: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The lead's loop on a toy model: returns (completion, steps as (first_position, num_positions))."""
    rng = random.Random(seed)
    history, pending, generated, steps = list(prompt), list(prompt), [], []
    first = 0
    while len(generated) < max_tokens:
        draft = spec_speculative.lookup_draft(history, min(k, max_tokens - len(generated) - 1))
        steps.append((first, len(pending) + len(draft)))
        new: list[int] = []
        for token in draft:  # the toy model agrees with a draft token with probability 0.7
            if rng.random() < 0.7:
                new.append(token)
            else:
                break
        new.append(rng.randrange(6))  # the correction (or bonus) token
        new = new[:max_tokens - len(generated)]
        generated += new
        history += new
        first = first + len(pending) + len(new) - 1
        pending = [new[-1]]
    return generated, steps


@register("draft_lengths_concrete", spec_functions=(EXPECTED, CHECK, DRAFTER), evidence=Evidence.TESTED,
          bound="seeded: 60 simulated requests (repetitive prompts of 4-12 tokens over 6 symbols, k 1..5, "
                "max_tokens 4..24), every step padded and trimmed by one")
def draft_lengths_concrete() -> Iterator[Obligation]:
    """K2 accepts every honest speculative trace and refuses any step padded or trimmed by a position."""
    t0 = time.perf_counter()
    failures: list[str] = []
    for seed in range(60):
        rng = random.Random(1000 + seed)
        prompt = [rng.randrange(6) for _ in range(rng.randrange(4, 13))]
        k, max_tokens = 1 + seed % 5, rng.randrange(4, 25)
        completion, steps = _simulate(prompt, k, max_tokens, seed)
        if spec_speculative.check_draft_lengths(prompt, completion, steps, k, max_tokens) is not None:
            failures.append(f"honest trace refused (seed {seed})")
        for j in range(len(steps)):
            for delta in (1, -1):
                bad = list(steps)
                bad[j] = (bad[j][0], bad[j][1] + delta)
                if bad[j][1] >= 1 and spec_speculative.check_draft_lengths(prompt, completion, bad, k, max_tokens) is None:
                    failures.append(f"step {j} {'padded' if delta > 0 else 'trimmed'} accepted (seed {seed})")
    yield concrete("K2 replays the lead's drafts", not failures, time.perf_counter() - t0, "; ".join(failures[:3]))
