"""Direct data path: provider k sends its boundary output, with its signed commitment, straight to k+1.

Per step (K providers): the lead sends the input to segment 0 only (``forward``) and a
``from_upstream`` frame to every other segment; segment k computes, yields its output and commitment
to the lead on its own stream (the record and the lead's checks, off the critical path) and at the
same time forwards the same bytes and commitment to segment k+1 (``Forward``); the last segment's
output (the logits) goes to the lead only. K + 1 one-way trips per token instead of 2K.

Invariants (docs/protocol.md "Direct data path"):
- A receiving provider runs the spec's ``check_forwarded`` (H1 signer = the neighbour the lead-signed
  opening named, H2 request/step/positions, H4 digest of the bytes received) before computing; on a
  failure it refuses the step, naming the sender and the reason, and computes nothing.
- The lead checks every link exactly as on the relay (``check_exchanged_link`` then H5 on the
  reported bytes, in link order) before ``direct_step`` returns, so before any token of the step
  reaches the client; on a failure it checks the links before the failing one first. A refusal by
  segment k whose sender's report passed aborts the request naming segment k-1 as ``provider_error``
  (no ejection: the lead cannot tell a false refusal from a bad forward; docs/protocol.md).
- Segment k returns the upstream commitment it accepted (``StepResult.upstream_commitment``); when
  link k breaks H3 and that commitment is k-1's valid signature over another output for the same
  slot, the lead blames k-1 with ``equivocation`` (``check_equivocation``), never the honest k. The
  step record keeps the upstream commitments so the chain analysis reaches the same verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

import grpc
import torch

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import FramingError, Reassembler, commitment_from_pb, open_channel
from verisplit.impl.node.hops import CohortError, output_byte_limit
from verisplit.impl.records.requests import StepRecord
from verisplit.spec.commitment import (BAD_SIGNATURE, INPUT_MISMATCH, OUTPUT_MISMATCH, REASONS, BoundaryCommitment,
                                       InvalidCommitment, StepContext, check_equivocation, check_exchanged_link,
                                       check_forwarded)
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import PROVIDER_ERROR, TIMEOUT

if TYPE_CHECKING:
    from verisplit.impl.node.hops import Hop
    from verisplit.impl.node.lead import Lead, RequestRun

REFUSAL = "upstream refused: "  # prefix of a receiver's refusal message: "upstream refused: <reason>: <detail>"


class UpstreamRefused(Exception):
    """The forwarded input failed ``check_forwarded`` (or never came): the step is refused."""


@dataclass
class _Link:
    request_id: str
    next_endpoint: str
    previous_key: bytes
    inbox: dict[int, asyncio.Future[tuple[bytes, pb.Commitment]]] = field(default_factory=dict)
    accepted: dict[int, pb.Commitment] = field(default_factory=dict)  # step -> the commitment check_forwarded passed


class DirectLinks:
    """A provider's direct-path state: per session, its neighbours and the inputs forwarded to it."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self.links: dict[str, _Link] = {}
        self._stubs: dict[str, pb_grpc.ProviderStub] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def open(self, session_id: str, request: pb.OpenSessionRequest) -> None:
        """Remember a direct-path opening's neighbours (the lead signed them); no-op for relayed ones."""
        if request.next_endpoint or request.previous_public_key:
            self.links[session_id] = _Link(request.request_id, request.next_endpoint, bytes(request.previous_public_key))

    def close(self, session_id: str) -> None:
        link = self.links.pop(session_id, None)
        if link is not None:
            for future in link.inbox.values():
                if not future.done():
                    future.cancel()

    def _future(self, link: _Link, step: int) -> asyncio.Future[tuple[bytes, pb.Commitment]]:
        future = link.inbox.get(step)
        if future is None:
            future = link.inbox[step] = asyncio.get_running_loop().create_future()
        return future

    async def receive(self, frames: AsyncIterator[pb.StepFrame]) -> AsyncIterator[pb.ForwardAck]:
        """The ``Forward`` RPC: reassemble each forwarded input, check it (``check_forwarded``) and hand
        it (or the refusal) to the step that waits for it."""
        reassembler = Reassembler("input")
        async for frame in frames:
            link = self.links.get(frame.session_id)
            if link is None:
                continue  # not a direct session here (closed, or never opened): nothing waits for it
            try:
                blob = reassembler.add(frame.input)
            except FramingError as exc:
                self._future(link, frame.step).set_exception(UpstreamRefused(f"{OUTPUT_MISMATCH}: forwarded bytes do not reassemble ({exc})"))
                continue
            if blob is None:
                continue
            future = self._future(link, frame.step)
            if future.done():
                continue
            try:
                c = commitment_from_pb(frame.upstream_commitment)
                failure = check_forwarded(c, link.previous_key, link.request_id, frame.step, frame.first_position,
                                          frame.num_positions, digest_encoded(blob))
            except (InvalidCommitment, ValueError) as exc:
                failure = (BAD_SIGNATURE, f"forwarded commitment does not decode ({exc})")
            if failure is not None:
                future.set_exception(UpstreamRefused(f"{failure[0]}: {failure[1]}"))
            else:
                future.set_result((blob, frame.upstream_commitment))
        yield pb.ForwardAck()

    async def upstream_input(self, frame: pb.StepFrame) -> bytes:
        """The checked input segment k-1 forwarded for ``frame.step`` (raises ``UpstreamRefused``)."""
        link = self.links.get(frame.session_id)
        if link is None:
            raise UpstreamRefused("from_upstream: this session was not opened for the direct path")
        future = self._future(link, frame.step)
        try:
            async with asyncio.timeout(self.timeout_s):
                blob, accepted = await future
                link.accepted = {frame.step: accepted}
                return blob
        except asyncio.TimeoutError:
            raise UpstreamRefused(f"from_upstream: no input from segment k-1 within {self.timeout_s:.0f}s") from None
        finally:
            link.inbox.pop(frame.step, None)

    def attach_upstream(self, frame: pb.StepFrame, results: list[pb.StepResult]) -> None:
        """Return to the lead, on the step's last chunk, the upstream commitment this step accepted (so
        the lead can prove an equivocating sender: ``check_equivocation``)."""
        link = self.links.get(frame.session_id)
        accepted = None if link is None else link.accepted.pop(frame.step, None)
        if accepted is not None and results:
            results[-1].upstream_commitment.CopyFrom(accepted)

    def forward(self, frame: pb.StepFrame, results: list[pb.StepResult]) -> None:
        """Send this step's output chunks and commitment to the next segment, in the background."""
        link = self.links.get(frame.session_id)
        if link is None or not link.next_endpoint:
            return
        frames = [pb.StepFrame(session_id=frame.session_id, step=frame.step, first_position=frame.first_position,
                               num_positions=frame.num_positions, input=r.output) for r in results]
        frames[-1].upstream_commitment.CopyFrom(results[-1].commitment)
        stub = self._stubs.get(link.next_endpoint)
        if stub is None:
            stub = self._stubs[link.next_endpoint] = pb_grpc.ProviderStub(open_channel(link.next_endpoint, None))
        task = asyncio.get_running_loop().create_task(self._send(stub, frames))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, stub: pb_grpc.ProviderStub, frames: list[pb.StepFrame]) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # the next segment is gone: the lead sees it time out
            call = stub.Forward(iter(frames), timeout=self.timeout_s)
            async for _ in call:
                pass


# --- the lead's side -----------------------------------------------------------------------------

def opening_fields(enabled: bool, hops: "list[Hop]", run: "RequestRun", index: int) -> dict[str, Any]:
    """The neighbours the lead signs into segment ``index``'s direct-path opening ({} on the relay)."""
    if not enabled:
        return {}
    assignments = run.cohort.assignments
    last = index == len(hops) - 1
    return {"next_endpoint": "" if last else hops[index + 1].offer.fields.endpoint,
            "next_public_key": b"" if last else assignments[index + 1].public_key,
            "previous_public_key": b"" if index == 0 else assignments[index - 1].public_key}


def _refusal(hop: "Hop", hops: "list[Hop]", error: CohortError) -> CohortError:
    """A receiver's refusal of its forwarded input, once the sender's own report passed every check of
    the lead: an abort at the sender's link naming the sender, as ``provider_error`` (an outage class
    reason, which ejects nobody): the lead cannot tell a bad forward from a false refusal, so neither
    side is punished on the receiver's word alone (a sender that also reported bad bytes already
    failed the lead's own check of its link, with that protocol reason)."""
    if REFUSAL not in error.detail or hop.index == 0:
        return error
    reason, _, detail = error.detail.split(REFUSAL, 1)[1].partition(": ")
    if reason not in REASONS:
        return error
    return hops[hop.index - 1].fail(PROVIDER_ERROR, f"refused by segment {hop.index}: {reason}: {detail} (unverifiable: "
                                                   "this sender's own report passed the lead's checks)")


def _upstream(hop: "Hop") -> BoundaryCommitment | None:
    """The upstream commitment ``hop`` returned with its last step (None: none, or it does not decode:
    then it proves nothing and the link is judged on its own commitment)."""
    if hop.index == 0 or hop.upstream_commitment is None:
        return None
    try:
        return commitment_from_pb(hop.upstream_commitment)
    except (InvalidCommitment, ValueError):
        return None


async def direct_step(lead: "Lead", run: "RequestRun", hops: "list[Hop]", session_id: str, context: StepContext,
                      first_blob: bytes) -> torch.Tensor:
    """One step over the direct path; every link checked (H1-H5, in order) before it returns the logits."""
    timings = run.timings
    first_digest = digest_encoded(first_blob)
    record = StepRecord(context.step, context.first_position, context.num_positions, first_digest, [], [], [])
    run.steps.append(record)
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(hop.exchange(
        session_id, context, first_blob if hop.index == 0 else b"",
        output_byte_limit(lead.config, context.num_positions, last=hop is hops[-1]),
        forward=hop is not hops[-1], from_upstream=hop.index > 0)) for hop in hops]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failing = next((i for i, task in enumerate(tasks) if task.done() and task.exception() is not None), None)
    if failing is not None:  # check the links before it first, as the relay would have (their reports are in flight)
        for task in tasks[failing + 1:]:
            task.cancel()
        if failing:
            await asyncio.wait(tasks[:failing], timeout=lead.step_timeout_s)
    t1 = time.perf_counter()
    blob, expected = first_blob, first_digest
    tensor = None
    for hop, task in zip(hops, tasks):
        if not task.done() or task.exception() is not None:
            for other in tasks:
                other.cancel()
            error = task.exception() if task.done() else hop.fail(TIMEOUT, "no report before a later link failed")
            raise _refusal(hop, hops, error) if isinstance(error, CohortError) else error
        out, wire = task.result()
        out_digest = digest_encoded(out)
        commitment = commitment_from_pb(wire)
        record.commitments.append(commitment)
        record.inputs.append(blob)
        record.outputs.append(out)
        upstream = _upstream(hop)
        record.upstream_commitments.append(upstream)
        failure = check_exchanged_link(run.cohort.assignments[hop.index], hop.index, commitment, expected, out_digest,
                                       context)
        if failure is not None and failure[0] == INPUT_MISMATCH and upstream is not None:
            proof = check_equivocation(record.commitments[hop.index - 1], upstream)  # k-1 signed two outputs?
            if proof is not None:
                raise hops[hop.index - 1].fail(proof[0], proof[1])
        if failure is not None:
            raise hop.fail(failure[0], failure[1])
        lead.commitments_checked += 1
        tensor = lead._check_boundary(hop, out, context.num_positions, len(hops))
        blob, expected = out, out_digest
    timings.round_trip += t1 - t0
    timings.verify += time.perf_counter() - t1
    timings.hops += len(hops)
    assert tensor is not None
    return tensor
