"""One step of the lead's relay through every hop, with mid-request recovery (``recovery``).

Invariants (as in ``verisplit.impl.node.lead``): every commitment is checked on receipt by the spec's
``check_exchanged_link`` against the hop's own assignment (the cohort's, or its replacement's, rule R1)
before its bytes go anywhere, then rule H5 on the output; the first protocol failure aborts the
request blaming its signer. An outage at a hop is recovered by ``replace_hop`` (the same input is then
sent to the replacement, so the step record stays one commitment per segment, in order); only when no
replacement can be found does the outage abort the request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from verisplit.impl.node.framing import commitment_from_pb
from verisplit.impl.node.hops import CohortError, Hop, check_hop_boundary, output_byte_limit
from verisplit.impl.node.recovery import replace_hop
from verisplit.impl.records.requests import StepRecord
from verisplit.spec.commitment import StepContext, check_exchanged_link
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import is_outage

if TYPE_CHECKING:
    from verisplit.impl.node.lead import Lead, RequestRun


async def run_step(lead: "Lead", run: "RequestRun", hops: list[Hop], session_id: str, context: StepContext,
                   first_blob: bytes, max_length: int) -> torch.Tensor:
    """One step through every hop, checking each link on receipt; returns the logits [T, vocab]."""
    timings = run.timings
    first_digest = digest_encoded(first_blob)
    record = StepRecord(context.step, context.first_position, context.num_positions, first_digest, [], [], [])
    run.steps.append(record)
    blob, expected = first_blob, first_digest
    index = 0
    tensor: torch.Tensor | None = None
    while index < len(hops):
        hop = hops[index]
        t0 = time.perf_counter()
        limit = output_byte_limit(lead.config, context.num_positions, last=index == len(hops) - 1)
        try:
            out, wire = await hop.exchange(session_id, context, blob, limit)
        except CohortError as exc:
            if not (lead.recover and is_outage(exc.reason)):
                raise
            await replace_hop(lead, run, hops, index, exc, context, session_id, max_length)
            continue  # the same input to the replacement
        t1 = time.perf_counter()
        out_digest = digest_encoded(out)
        t2 = time.perf_counter()
        commitment = commitment_from_pb(wire)
        record.commitments.append(commitment)
        record.inputs.append(blob)
        record.outputs.append(out)
        failure = check_exchanged_link(hop.assignment, hop.index, commitment, expected, out_digest, context)
        t3 = time.perf_counter()
        timings.round_trip += t1 - t0
        timings.digest += t2 - t1
        timings.verify += t3 - t2
        timings.hops += 1
        if failure is not None:
            raise hop.fail(failure[0], failure[1])
        lead.commitments_checked += 1
        tensor = check_hop_boundary(hop, out, context.num_positions, len(hops), lead.dtype, lead.config)
        blob, expected = out, out_digest
        index += 1
    assert tensor is not None
    return tensor  # the last hop's logits, decoded once by the boundary check
