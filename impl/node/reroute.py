"""Opening a request's sessions, routing around providers that refuse them for capacity.

Invariant: a re-route happens only at OpenSession, before any step ran (nothing was committed or
relayed yet, so nothing is billed or judged twice); the provider that answered RESOURCE_EXHAUSTED
was unreachable or did not answer in time is suspended without blame (``Registry.report_outage``, back after a passing
health probe) and the cohort is formed again over the remaining offers, at most ``MAX_REROUTES``
times. Any other failure, or no cohort without it, is the original error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import grpc

from verisplit.impl.node import direct
from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node.hops import CohortError, Hop
from verisplit.spec.faults import RESOURCE_EXHAUSTED, TIMEOUT, UNAVAILABLE

if TYPE_CHECKING:
    from verisplit.impl.node.lead import Lead, RequestRun

MAX_REROUTES = 2
REROUTABLE = (RESOURCE_EXHAUSTED, UNAVAILABLE, TIMEOUT)  # full, gone or frozen


async def open_hops(lead: "Lead", run: "RequestRun", hops: list[Hop], session_id: str, max_length: int,
                    seed_commitment: bytes) -> list[Hop]:
    """Open every hop's session; on a capacity/unreachable refusal, suspend that provider, close the
    others, re-form the cohort (updating ``run.cohort``/``run.offers``) and try again. Returns the
    opened hops; raises the ``CohortError`` that ended the attempt."""
    for attempt in range(MAX_REROUTES + 1):
        results = await asyncio.gather(*(h.open(lead.session_key, session_id, run.request_id, lead.model_id, max_length,
                                                seed_commitment, lead.dtype,
                                                **direct.opening_fields(lead.direct, hops, run, h.index))
                                         for h in hops), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if not failures:
            return hops
        refused = [f for f in failures if isinstance(f, CohortError) and f.reason in REROUTABLE]
        await asyncio.gather(*(_release(h, session_id) for h in hops if h.opened), return_exceptions=True)
        if attempt == MAX_REROUTES or len(refused) != len(failures):
            raise failures[0]
        for failure in refused:
            lead.registry.report_outage(failure.culprit, f"{failure.reason} at OpenSession")
        try:
            run.cohort, run.offers = lead.route()
            hops = build_hops(lead, run)
        except Exception:  # no cohort without the refused provider(s): the refusal is the answer
            raise failures[0] from None
    raise AssertionError("unreachable")  # pragma: no cover


async def _release(hop: Hop, session_id: str) -> None:
    """Free an opened session no step used: end its (frame-less) stream and close it explicitly, so
    the provider can open the same session id again for the re-routed cohort."""
    await hop.close(session_id)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await hop.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=5)
    hop.opened, hop.call = False, None


def build_hops(lead: "Lead", run: "RequestRun") -> list[Hop]:
    """One ``Hop`` per assignment of ``run.cohort`` (KeyError-free: every provider is listed now)."""
    hops = []
    for index, assignment in enumerate(run.cohort.assignments):
        entry: Any = lead.registry.get(assignment.provider_id)
        if entry is None:
            raise LookupError(assignment.provider_id)
        hops.append(Hop(index, entry, assignment.first_layer, assignment.end_layer,
                        lead.stub_for(entry.fields.endpoint), lead.step_timeout_s))
    return hops
