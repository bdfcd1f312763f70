"""Speculative decoding across the cohort: the lead drafts, the cohort verifies in one traversal.

The lead drafts up to k tokens by prompt lookup (``verisplit.impl.runtime.draft.propose_ngram``, no
draft model), sends ``[pending tokens, d1..dk]`` as one step through the unchanged per-step relay
(``Lead._step``: every link checked on receipt, H1-H5, recorded and audited like any other step),
and keeps the longest accepted prefix plus one token from the cohort's own logits. The next step
starts at the first rejected position (rule K1, ``next_step_context(previous, n, first_position)``),
so providers overwrite their KV cache from there. Invariants:
- greedy (temperature 0): the emitted tokens are the argmax of the cohort's logits at every kept
  position, i.e. what plain greedy decoding emits unless fp drift between a [k+1]-row step and
  single-row steps flips an argmax (measured: docs/BENCHMARKS.md, WAN section);
- temperature > 0: speculative sampling for a point-mass draft (``speculative_accept``), so each
  token is distributed as in plain sampling (the random stream differs, so seeded outputs differ);
- never more than ``max_tokens`` tokens: the draft is capped at the tokens still allowed minus one;
- ``run.step_positions`` lists the positions of every completed step, the request's billable
  positions (rule F1 over steps, ``billable_positions(..., step_positions)``);
- ``run.token_rows[i]`` names the step and logits row (counted from the step's last row) that
  generated token i was drawn from, so its logprobs come from exactly those logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, AsyncIterator

import torch

from verisplit.impl.runtime.draft import greedy_accept, propose_ngram, speculative_accept
from verisplit.impl.runtime.tensors import to_canonical
from verisplit.spec.commitment import StepContext, next_step_context

if TYPE_CHECKING:
    from verisplit.impl.node.hops import Hop
    from verisplit.impl.node.lead import Lead, RequestRun


@dataclass
class SpeculativeStats:
    """Counts of one request: steps, drafted and accepted tokens."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        """Accepted / drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance": round(self.acceptance, 4)}


async def speculative_tokens(lead: "Lead", run: "RequestRun", hops: "list[Hop]", session_id: str,
                             first_context: StepContext, generator: torch.Generator, k: int,
                             max_ngram: int = 3) -> AsyncIterator[int]:
    """Run ``run`` to completion with drafts of up to ``k`` tokens; yields tokens as they are accepted
    and sets ``run.finish_reason`` ("stop" or "length"). Link failures propagate as ``CohortError``."""
    params = run.params
    stops = set(params.stop_token_ids)
    history = list(run.prompt_ids)   # every token known so far
    pending = list(run.prompt_ids)   # tokens not yet in the providers' KV caches
    stats = SpeculativeStats()
    run.step_positions = []
    context: StepContext | None = None
    next_first = 0
    try:
        while len(run.generated) < params.max_tokens:
            budget = params.max_tokens - len(run.generated) - 1
            draft = propose_ngram(history, min(k, budget), max_ngram=max_ngram)
            tokens = pending + draft
            if context is None:
                context = replace(first_context, num_positions=len(tokens))
            else:
                context = next_step_context(context, len(tokens), next_first)
            blob = to_canonical(torch.tensor(tokens, dtype=torch.int64))
            logits = await lead._step(run, hops, session_id, context, blob)
            run.step_positions.append(len(tokens))
            rows = logits[len(pending) - 1:]
            if params.temperature == 0 or float(torch.tensor(params.temperature, dtype=torch.float32)) == 0:
                new = greedy_accept(draft, rows)
            else:
                new = speculative_accept(draft, rows, params.temperature, params.top_p, generator)
            stats.steps += 1
            stats.drafted += len(draft)
            stats.accepted += len(new) - 1
            for i, token in enumerate(new):  # token i was drawn from row len(pending) - 1 + i of this step
                run.generated.append(token)
                run.token_rows.append((len(run.steps) - 1, len(tokens) - len(pending) - i))
                yield token
                if token in stops:
                    run.finish_reason = "stop"
                    return
            history.extend(new)
            next_first = context.first_position + len(pending) + len(new) - 1
            pending = [new[-1]]
        run.finish_reason = "length"
    finally:  # K2's parameters with the counts: the public view lets anyone recompute every step's positions
        run.speculative = stats.as_dict() | {"k": k, "max_ngram": max_ngram, "max_tokens": params.max_tokens}
