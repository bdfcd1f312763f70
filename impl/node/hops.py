"""One provider's session and stream inside one request, and how its failures are classified.

Invariants: every received commitment is checked on receipt by the spec's ``check_exchanged_link``
(H1-H4) before its bytes go anywhere; a failure of a signed rule names the provider as culprit with
the spec's reason code; anything else (unreachable, erroring, overloaded, slow, malformed output) is
one of the non-protocol reasons below, which blame nobody (docs/protocol.md "Aborts").

A hop's step deadline is derived from the step times it measured (``StepDeadline``): a decode step
that takes ``DEADLINE_FACTOR`` times the slowest one seen so far (at least ``DEADLINE_FLOOR_S``) is an
outage (``timeout``), so a frozen provider is noticed in seconds; prefills and a hop's first steps
get the configured ``step_timeout_s``. Its stream names the session in gRPC metadata at start
(``stream_meta``), so the provider frees the session whenever the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

import grpc
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import FramingError, Reassembler, chunk_tensor, open_session_request
from verisplit.impl.node.stream_meta import stream_metadata
from verisplit.impl.runtime.config import ModelConfig
from verisplit.spec.cohort import Assignment
from verisplit.impl.runtime.tensors import decode_boundary
from verisplit.spec.commitment import MISSING_LINK, StepContext, boundary_spec, check_boundary
from verisplit.spec.faults import MALFORMED_OUTPUT, PROVIDER_ERROR, RESOURCE_EXHAUSTED, TIMEOUT, UNAVAILABLE

if TYPE_CHECKING:
    from verisplit.impl.node.registry import RegisteredOffer

# Abort reasons, and which of them blame a provider, are the spec's (``verisplit.spec.faults``).


class CohortError(Exception):
    """A request was aborted at a link: ``culprit`` provider, ``reason`` code, ``link`` segment index."""

    def __init__(self, culprit: str, reason: str, detail: str, link: int | None = None) -> None:
        super().__init__(f"provider {culprit!r} (segment {link}): {reason}: {detail}")
        self.culprit = culprit
        self.reason = reason
        self.detail = detail
        self.link = link


@dataclass
class HopTimings:
    """Seconds spent by the lead per category, summed over a request's hops."""

    round_trip: float = 0.0   # write input .. last output chunk received (includes provider compute)
    digest: float = 0.0       # digests of received outputs
    verify: float = 0.0       # check_link + check_receipt
    hops: int = 0


DEADLINE_FACTOR = 20.0   # a decode step this many times slower than the slowest seen is a missed deadline
DEADLINE_FLOOR_S = 2.0   # never less than this (scheduler noise on a loaded machine)
DEADLINE_WARMUP = 2      # decode steps measured before the derived deadline applies
OPEN_TIMEOUT_S = 10.0    # OpenSession: a frozen provider must not stall a request for long


@dataclass
class StepDeadline:
    """The per-hop step deadline derived from measured decode step times (see the module docstring)."""

    cap_s: float
    slowest_s: float = 0.0
    measured: int = 0

    def limit(self, num_positions: int) -> float:
        if num_positions != 1 or self.measured < DEADLINE_WARMUP:
            return self.cap_s
        return min(self.cap_s, max(DEADLINE_FLOOR_S, DEADLINE_FACTOR * self.slowest_s))

    def observe(self, num_positions: int, seconds: float) -> None:
        if num_positions == 1:
            self.slowest_s = max(self.slowest_s, seconds)
            self.measured += 1


class Hop:
    """One provider's session and stream inside one request."""

    def __init__(self, index: int, offer: "RegisteredOffer", first_layer: int, end_layer: int, stub: pb_grpc.ProviderStub,
                 step_timeout_s: float) -> None:
        self.index = index
        self.offer = offer
        self.provider_id = offer.fields.provider_id
        self.first_layer = first_layer
        self.end_layer = end_layer
        self.assignment = Assignment(self.provider_id, offer.fields.public_key, first_layer, end_layer)
        self.stub = stub
        self.step_timeout_s = step_timeout_s
        self.opened = False
        self.call: Any = None
        self.frames_sent = 0
        self.deadline = StepDeadline(step_timeout_s)
        self.reassembler = Reassembler("output")
        self.upstream_commitment: pb.Commitment | None = None  # direct path: what the last step accepted from k-1

    def fail(self, reason: str, detail: str) -> CohortError:
        return CohortError(self.provider_id, reason, detail, self.index)

    def rpc_failure(self, exc: grpc.aio.AioRpcError, what: str) -> CohortError:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return self.fail(UNAVAILABLE, f"{what}: provider at {self.offer.fields.endpoint} is unreachable ({exc.details()})")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self.fail(RESOURCE_EXHAUSTED, f"{what}: {exc.details()}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self.fail(TIMEOUT, f"{what}: no answer in time")
        return self.fail(PROVIDER_ERROR, f"{what}: {code.name}: {exc.details()}")

    async def open(self, lead_key: SigningKey, session_id: str, request_id: str, model_id: str, max_length: int,
                   audit_seed_commitment: bytes, dtype: str, first_step: int = 0, **direct: Any) -> None:
        """Open the session with a lead-signed opening that fixes the request's audit-seed commitment
        and dtype before the first step, then its stream (bound to the session at once; a replacement
        starts at ``first_step``, its replay step). The opening names this hop's provider key and expires
        (``open_session_request``), so no other provider serves it and it cannot be replayed later."""
        request = open_session_request(lead_key, session_id=session_id, request_id=request_id, model_id=model_id,
                                       segment_index=self.index, first_layer=self.first_layer,
                                       end_layer=self.end_layer, max_length=max_length,
                                       audit_seed_commitment=audit_seed_commitment, dtype=dtype,
                                       recipient_public_key=self.offer.fields.public_key, **direct)
        try:
            await self.stub.OpenSession(request, timeout=min(OPEN_TIMEOUT_S, self.step_timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise self.rpc_failure(exc, "OpenSession") from None
        self.opened = True
        self.call = self.stub.Steps(metadata=stream_metadata(session_id, first_step))

    async def exchange(self, session_id: str, context: StepContext, blob: bytes,
                       max_output_bytes: int | None = None, **frame: bool) -> tuple[bytes, pb.Commitment]:
        """Send one step's input, return (output bytes, wire commitment). An output announced larger
        than ``max_output_bytes`` is refused at its first chunk (malformed_output), so a provider
        cannot make the lead buffer more than one boundary tensor's worth of bytes."""
        if max_output_bytes is not None:
            self.reassembler.max_tensor_bytes = max_output_bytes
        limit = self.deadline.limit(context.num_positions)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(limit):  # the whole exchange: a frozen provider also stalls writes
                result = await self._exchange(session_id, context, blob, **frame)
        except grpc.aio.AioRpcError as exc:
            raise self.rpc_failure(exc, "Steps") from None
        except asyncio.InvalidStateError:  # the provider already ended the stream
            raise await self._ended() from None
        except FramingError as exc:
            raise self.fail(MALFORMED_OUTPUT, str(exc)) from None
        except asyncio.TimeoutError:
            raise self.fail(TIMEOUT, f"Steps: no output within {limit:.1f}s (step deadline)") from None
        self.deadline.observe(context.num_positions, time.perf_counter() - started)
        return result

    async def _exchange(self, session_id: str, context: StepContext, blob: bytes,
                        **frame: bool) -> tuple[bytes, pb.Commitment]:
        for chunk in chunk_tensor(blob) if blob else [None]:  # no input: it comes from upstream (direct path)
            await self.call.write(pb.StepFrame(session_id=session_id, step=context.step,
                                               first_position=context.first_position,
                                               num_positions=context.num_positions, input=chunk, **frame))
            self.frames_sent += 1
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                raise await self._ended()
            if message.step != context.step:
                raise self.fail(PROVIDER_ERROR, f"Steps: output for step {message.step}, expected {context.step}")
            out = self.reassembler.add(message.output)
            if out is not None:
                if not message.HasField("commitment"):
                    raise self.fail(MISSING_LINK, "Steps: the last output chunk carries no commitment")
                self.upstream_commitment = message.upstream_commitment if message.HasField("upstream_commitment") else None
                return out, message.commitment

    async def _ended(self) -> CohortError:
        """The error for a stream the provider ended (its status, or a protocol error if it said OK)."""
        code = await self.call.code()
        details = await self.call.details()
        if code == grpc.StatusCode.OK:
            return self.fail(PROVIDER_ERROR, "Steps: stream ended without an output")
        return self.rpc_failure(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details), "Steps")

    async def close(self, session_id: str) -> None:
        """End the stream (the provider then frees the session it is bound to); also close explicitly if
        no frame was sent, in case the stream never reached the provider. Bounded in time."""
        if self.call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError, asyncio.TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.call.done_writing()
            self.call.cancel()
        if self.opened and self.frames_sent == 0:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=2)


OUTPUT_HEADER_SLACK = 4096  # bytes above the payload allowed for the canonical header (a few dozen in practice)


def output_byte_limit(config: ModelConfig, positions: int, last: bool) -> int:
    """Largest canonical output the lead accepts from a hop: ``positions`` rows of the boundary's width
    (vocab for the last segment, hidden otherwise) at 4 bytes per element (fp32, the widest allowed
    dtype), plus header slack. Anything larger cannot pass the boundary rule H5 anyway."""
    width = config.vocab_size if last else config.hidden_size
    return positions * width * 4 + OUTPUT_HEADER_SLACK


def check_hop_boundary(hop: Hop, out: bytes, positions: int, num_hops: int, dtype: str, config: ModelConfig) -> torch.Tensor:
    """Rule H5 on an output whose commitment passed H1-H4: a finite canonical tensor of the
    boundary's shape and the cohort's dtype, else ``bad_boundary`` blamed on its signer.
    Returns the decoded tensor."""
    expected = boundary_spec(hop.index, num_hops, dtype, positions, config.hidden_size, config.vocab_size)
    tensor, facts = decode_boundary(out)
    failure = check_boundary(*facts, expected)
    if failure is not None:
        raise hop.fail(failure[0], failure[1])
    assert tensor is not None  # H5 fails every blob that does not decode
    return tensor
