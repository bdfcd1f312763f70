"""Direct data path: provider k sends its boundary output, with its signed commitment, straight to k+1.

Per step (K providers): the lead sends the input to segment 0 only (``forward``) and a
``from_upstream`` frame to every other segment; segment k computes, yields its output and commitment
to the lead on its own stream (the record and the lead's checks, off the critical path) and at the
same time forwards the same bytes and commitment to segment k+1 (``Forward``); the last segment's
output (the logits) goes to the lead only. K + 1 one-way trips per token instead of 2K.

Invariants (docs/protocol.md "Direct data path"):
- A receiving provider runs the spec's ``check_forwarded`` (H1 signer = the neighbour the lead-signed
  opening named, H2 request/step/positions, H4 digest of the bytes received) before computing, and
  computes only on a frame that passes. A failing frame is dropped and counted, never settling the
  step by itself (anyone can dial ``Forward``); only one carrying k-1's valid signature for this step
  over other bytes refuses the step (naming the sender and the reason) if no valid forward follows
  within ``reject_grace_s``; otherwise the step deadline decides. Only a session's next step and the
  one after have an inbox slot (memory bounded whatever a sender streams).
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
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

import grpc
import torch

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import FramingError, Reassembler, commitment_from_pb, open_channel
from verisplit.impl.node.hops import CohortError, check_hop_boundary, output_byte_limit
from verisplit.impl.records.requests import StepRecord
from verisplit.spec.commitment import (BAD_SIGNATURE, INPUT_MISMATCH, OUTPUT_MISMATCH, REASONS, STEP_GAP,
                                       BoundaryCommitment,
                                       InvalidCommitment, StepContext, check_equivocation, check_exchanged_link,
                                       check_forwarded)
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import PROVIDER_ERROR, TIMEOUT

if TYPE_CHECKING:
    from verisplit.impl.node.hops import Hop
    from verisplit.impl.node.lead import Lead, RequestRun

log = logging.getLogger("verisplit.direct")

REFUSAL = "upstream refused: "  # prefix of a receiver's refusal message: "upstream refused: <reason>: <detail>"


class UpstreamRefused(Exception):
    """The forwarded input failed ``check_forwarded`` (or never came): the step is refused."""


MAX_REJECTS_PER_STREAM = 64  # a Forward stream that sent this many bad frames is cut off


@dataclass
class _Link:
    request_id: str
    next_endpoint: str
    previous_key: bytes
    step: int = 0  # the next step this session consumes: only it and the one after have an inbox slot
    inbox: dict[int, asyncio.Future[tuple[bytes, pb.Commitment]]] = field(default_factory=dict)
    accepted: dict[int, pb.Commitment] = field(default_factory=dict)  # step -> the commitment check_forwarded passed
    timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)


class DirectLinks:
    """A provider's direct-path state: per session, its neighbours and the inputs forwarded to it.

    Invariants (finding "Forward inbox poisoning"): a frame that fails reassembly or ``check_forwarded``
    never settles a step's inbox by itself: it is dropped and counted (``rejected``), so the first
    frame that passes wins; only a frame that carries segment k-1's valid signature over this request,
    this step and these positions (failing only on the bytes, H4) arms a refusal, which fires after
    ``reject_grace_s`` if no valid forward came meanwhile; otherwise the step deadline (``timeout_s``)
    decides. Inbox slots exist only for a session's next step and the one after (at most two futures
    per session, whatever a sender streams), and a stream with ``MAX_REJECTS_PER_STREAM`` bad frames
    is cut off."""

    def __init__(self, timeout_s: float = 120.0, reject_grace_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.reject_grace_s = reject_grace_s
        self.rejected = 0  # bad Forward frames dropped, over all sessions
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
            for timer in link.timers.values():
                timer.cancel()

    def _future(self, link: _Link, step: int) -> asyncio.Future[tuple[bytes, pb.Commitment]] | None:
        """The inbox slot of ``step``, created on demand; None outside [link.step, link.step + 1]."""
        if not link.step <= step <= link.step + 1:
            return None
        future = link.inbox.get(step)
        if future is None:
            future = link.inbox[step] = asyncio.get_running_loop().create_future()
        return future

    def _reject(self, link: _Link | None, step: int, failure: tuple[str, str], signed: bool) -> None:
        """Drop one bad frame; a ``signed`` one (k-1's valid signature for this step) arms the refusal."""
        self.rejected += 1
        if link is None or not signed or step in link.timers:
            return
        future = self._future(link, step)
        if future is None or future.done():
            return

        def expire() -> None:
            if not future.done():
                future.set_exception(UpstreamRefused(f"{failure[0]}: {failure[1]}"))

        link.timers[step] = asyncio.get_running_loop().call_later(self.reject_grace_s, expire)

    def _check(self, link: _Link, frame: pb.StepFrame, blob: bytes) -> tuple[tuple[str, str] | None, bool]:
        """(``check_forwarded``'s failure or None, whether the commitment is k-1's own for this step)."""
        try:
            c = commitment_from_pb(frame.upstream_commitment)
            failure = check_forwarded(c, link.previous_key, link.request_id, frame.step, frame.first_position,
                                      frame.num_positions, digest_encoded(blob))
        except (InvalidCommitment, ValueError) as exc:
            return (BAD_SIGNATURE, f"forwarded commitment does not decode ({exc})"), False
        return failure, failure is not None and failure[0] == OUTPUT_MISMATCH

    async def receive(self, frames: AsyncIterator[pb.StepFrame]) -> AsyncIterator[pb.ForwardAck]:
        """The ``Forward`` RPC: reassemble each forwarded input, check it (``check_forwarded``) and hand
        it to the step that waits for it; bad frames are dropped (see the class invariants)."""
        reassembler = Reassembler("input")
        bad = 0
        async for frame in frames:
            link = self.links.get(frame.session_id)
            if link is None or self._future(link, frame.step) is None:
                bad += 1
                self._reject(None, frame.step, (STEP_GAP, "no open direct session waits for this step"), False)
            else:
                try:
                    blob = reassembler.add(frame.input)
                except FramingError as exc:
                    reassembler, bad = Reassembler("input"), bad + 1
                    self._reject(link, frame.step, (OUTPUT_MISMATCH, f"forwarded bytes do not reassemble ({exc})"), False)
                    blob = None
                if blob is not None:
                    failure, signed = self._check(link, frame, blob)
                    future = self._future(link, frame.step)
                    if failure is not None:
                        bad += 1
                        self._reject(link, frame.step, failure, signed)
                    elif future is not None and not future.done():
                        future.set_result((blob, frame.upstream_commitment))
            if bad >= MAX_REJECTS_PER_STREAM:
                break
        if bad:
            log.warning("Forward: dropped %d bad frame(s) on one stream (%d in all)", bad, self.rejected)
        yield pb.ForwardAck()

    async def upstream_input(self, frame: pb.StepFrame) -> bytes:
        """The checked input segment k-1 forwarded for ``frame.step`` (raises ``UpstreamRefused``)."""
        link = self.links.get(frame.session_id)
        if link is None:
            raise UpstreamRefused("from_upstream: this session was not opened for the direct path")
        future = self._future(link, frame.step)
        if future is None:
            raise UpstreamRefused(f"from_upstream: step {frame.step} is not this session's next step {link.step}")
        try:
            async with asyncio.timeout(self.timeout_s):
                blob, accepted = await future
                link.accepted = {frame.step: accepted}
                return blob
        except asyncio.TimeoutError:
            raise UpstreamRefused(f"from_upstream: no valid input from segment k-1 within {self.timeout_s:.0f}s") from None
        finally:
            link.inbox.pop(frame.step, None)
            timer = link.timers.pop(frame.step, None)
            if timer is not None:
                timer.cancel()
            link.step = max(link.step, frame.step + 1)

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
        tensor = check_hop_boundary(hop, out, context.num_positions, len(hops), lead.dtype, lead.config)
        blob, expected = out, out_digest
    timings.round_trip += t1 - t0
    timings.verify += time.perf_counter() - t1
    timings.hops += len(hops)
    assert tensor is not None
    return tensor
