"""Mid-request recovery on the lead: replace a provider lost to an outage and rebuild its cache.

When a hop fails with an outage (``verisplit.spec.faults.is_outage``: unreachable, dead stream,
error status, missed step deadline...), ``replace_hop``:
1. takes the provider out of routing at once (``Registry.report_outage``) and closes its hop in the
   background (a frozen provider must not hold the request);
2. picks the replacement with the spec's rule R1 (``choose_replacement`` over the live offers,
   excluding every provider and key of the cohort and every provider already lost);
3. opens its session (the stream starts at the replay's step number) and, unless the outage hit the
   first step, replays the concatenation of the inputs the lost segment received at every earlier
   step in one prefill (rule R2), checking the replay's commitment with ``check_replay`` and its
   output with H5 before the request goes on;
4. records the replacement (``Replacement``) so that the audit and settlement see who signed what.
A replacement that is itself lost is replaced the same way (at most ``MAX_REPLACEMENTS`` per request);
a protocol failure (a culprit) is never recovered: it aborts and blames as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from verisplit.impl.node.framing import commitment_from_pb
from verisplit.impl.node.hops import CohortError, Hop, check_hop_boundary, output_byte_limit
from verisplit.impl.records.replacements import Replacement, spec_replacements
from verisplit.spec.cohort import segment_work
from verisplit.spec.commitment import StepContext
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import UNAVAILABLE, is_outage
from verisplit.spec.recovery import (RecoveryInputError, check_replay, choose_replacement, recovered_fee,
                                     replacement_work, replay_context, replay_input)

if TYPE_CHECKING:
    from verisplit.impl.node.lead import Lead, RequestRun

MAX_REPLACEMENTS = 4


async def replace_hop(lead: "Lead", run: "RequestRun", hops: list[Hop], index: int, error: CohortError,
                      context: StepContext, session_id: str, max_length: int) -> Hop:
    """Replace ``hops[index]`` after the outage ``error`` at ``context``'s step; returns the new hop
    (also stored in ``hops``) or raises ``error`` (or a protocol failure of the replacement)."""
    started = time.perf_counter()
    lost = hops[index]
    lead.registry.report_outage(lost.provider_id, error.reason)
    lead.spawn(_close_quietly(lost, session_id))
    excluded_ids = {h.provider_id for h in hops} | {r.failed_provider for r in run.replacements}
    excluded_keys = {h.assignment.public_key for h in hops} | {lost.assignment.public_key}
    replay = replay_context(context)
    while True:
        if len(run.replacements) >= MAX_REPLACEMENTS:
            raise error
        choice = choose_replacement(lead.registry.offers(), lost.assignment, excluded_ids, excluded_keys)
        entry = lead.registry.get(choice.provider_id) if choice is not None else None
        if choice is None or entry is None:
            raise error
        hop = Hop(index, entry, choice.first_layer, choice.end_layer, lead.stub_for(entry.fields.endpoint),
                  lead.step_timeout_s)
        replacement = Replacement(index, context.step, lost.provider_id, error.reason, error.detail, choice,
                                  entry.fields.price_per_work_unit)
        try:
            await hop.open(lead.session_key, session_id, run.request_id, lead.model_id, max_length,
                           run.seed_commitment, lead.dtype, first_step=replay.step if replay else context.step)
            if replay is not None:
                await _replay(lead, run, hop, replacement, replay, context, session_id, len(hops))
        except CohortError as exc:
            lead.spawn(_close_quietly(hop, session_id))
            if not is_outage(exc.reason):
                if replacement.replay_commitment is not None:  # a bad replay: recorded, so it is blamed
                    run.replacements.append(replacement)
                raise
            lead.registry.report_outage(choice.provider_id, exc.reason)
            excluded_ids.add(choice.provider_id)
            excluded_keys.add(choice.public_key)
            continue
        replacement.recovery_s = time.perf_counter() - started
        run.replacements.append(replacement)
        hops[index] = hop
        return hop


async def _replay(lead: "Lead", run: "RequestRun", hop: Hop, replacement: Replacement, replay: StepContext,
                  at: StepContext, session_id: str, num_hops: int) -> None:
    """Rule R2: one prefill of the recorded inputs of the lost segment, checked on receipt."""
    inputs = [step.inputs[hop.index] for step in run.steps[:at.step]]
    try:
        blob = replay_input(inputs)
    except RecoveryInputError as exc:  # the lead's own records: cannot happen for a chain it accepted
        raise CohortError(hop.provider_id, UNAVAILABLE, f"replay: {exc}", hop.index) from None
    limit = output_byte_limit(lead.config, replay.num_positions, last=hop.index == num_hops - 1)
    out, wire = await hop.exchange(session_id, replay, blob, limit)
    commitment = commitment_from_pb(wire)
    replacement.replay_commitment = commitment
    replacement.replay_output = out
    failure = check_replay(hop.assignment, hop.index, commitment, inputs, digest_encoded(blob), digest_encoded(out), at)
    if failure is not None:
        raise hop.fail(failure[0], failure[1])
    check_hop_boundary(hop, out, replay.num_positions, num_hops, lead.dtype, lead.config)


async def _close_quietly(hop: Hop, session_id: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(hop.close(session_id), 5.0)


def recovered_request_fee(lead: "Lead", run: "RequestRun", prices: dict[str, int]) -> int:
    """Rule R3 on the lead's side: the total value served over the steps that produced a token the
    client received (a replay counts once its step did), each link at its signer's price; equal to
    ``quote_fee`` when nothing was replaced."""
    from verisplit.spec.recovery import effective_cohort

    billed = len(run.generated)
    values: dict[str, int] = {}
    triples = spec_replacements(run.replacements)
    for step in run.steps[:billed]:
        cohort = effective_cohort(run.cohort, triples, step.step)
        for a in cohort.assignments[:len(step.commitments)]:
            work = segment_work(lead.model_spec, a.first_layer, a.end_layer) * step.num_positions
            values[a.provider_id] = values.get(a.provider_id, 0) + prices[a.provider_id] * work
    for r in run.replacements:
        if r.at_step < billed and r.replay_commitment is not None:
            units = segment_work(lead.model_spec, r.assignment.first_layer, r.assignment.end_layer)
            work = replacement_work(units, r.replay_commitment.num_positions, 0)
            values[r.assignment.provider_id] = values.get(r.assignment.provider_id, 0) + r.price * work
    return recovered_fee(list(values.values()))
