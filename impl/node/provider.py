"""A provider: serves one layer range over gRPC and signs a commitment for every step.

Invariants:
- Each step's commitment covers the digest of the exact canonical bytes the provider received
  (``input_digest``) and of the bytes of the tensor its behaviour commits to (``output_digest``);
  the honest behaviour sends exactly those bytes.
- Steps of a session are strictly sequential: step numbers 0, 1, 2... and positions continuing the
  cache (the segment enforces positions); anything else is INVALID_ARGUMENT and leaves the session as it was.
- KV memory is reserved at OpenSession (``max_length * kv_bytes_per_token``); a session that would
  exceed the budget, or the ``max_sessions``-th concurrent one, is refused with RESOURCE_EXHAUSTED
  before any allocation; only openings the registered lead signed are served, so strangers reserve
  nothing, and only those addressed to this provider's key (``recipient_public_key``) and not expired,
  so a cohort member cannot replay its own openings here. Unattached sessions are reclaimed after
  ``SESSION_UNATTACHED_S``, sessions idle between steps after ``SESSION_IDLE_S`` whether or not a stream
  is attached; never one mid-step (``reap_idle``, run every ``REAP_EVERY_S`` by provider_run).
- A malformed frame ends only its own stream (INVALID_ARGUMENT naming the field); the server keeps serving.
- A session may be opened for any non-empty sub-range of the loaded range (spec rule C1): it runs on a
  view of that range (``Segment.sub_segment``, cached per range) whose commitments declare the view's
  layer range and weights digest (equal to a fresh load of that range). A test-only cheat behaviour is
  applied to the assigned range itself: such a provider loads the range fresh and calls ``prepare`` on
  it, so "skip a layer / run a prefix of the assigned range" means exactly that range.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
import torch
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.node.direct import REFUSAL, DirectLinks, UpstreamRefused
from verisplit.impl.node.stream_meta import STREAM_FIRST_STEP_KEY, STREAM_SESSION_KEY
from verisplit.impl.node.framing import (DEFAULT_MAX_TENSOR_BYTES, FramingError, Reassembler, chunk_tensor,
                                         StreamRefused, commitment_to_pb, offer_fields_to_pb)
from verisplit.impl.records.keys import SignedFields, prove_signing_bytes, session_signature_valid, sign_offer
from verisplit.impl.runtime.errors import SegmentInputError, SessionError
from verisplit.impl.runtime.segment import Segment
from verisplit.impl.runtime.tensors import dtype_name, from_canonical, to_canonical
from verisplit.spec.commitment import PROTOCOL_VERSION, BoundaryCommitment, sign_commitment
from verisplit.spec.encoding import EncodingError, digest_encoded

log = logging.getLogger("verisplit.provider")

SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SESSION_IDLE_S = 30.0  # a session with no traffic for this long is reclaimed (reaper: every REAP_EVERY_S)
SESSION_UNATTACHED_S = 10.0  # an opened session no Steps frame named for this long is reclaimed (covers a
# later hop waiting for the earlier hops' prefill)
REAP_EVERY_S = 1.0
DEFAULT_MAX_SESSIONS = 64  # concurrent sessions the provider holds for its lead


@dataclass
class _Session:
    request_id: str
    segment_index: int
    max_length: int
    segment: Segment
    audit_seed_commitment: bytes = bytes(32)
    next_step: int = 0
    busy: bool = False      # a Steps stream is bound to this session (set once, for the stream's life)
    attached: bool = False  # a Steps stream has named this session
    stepping: bool = False  # a step is being computed right now: the reaper never closes such a session
    last_used: float = field(default_factory=time.monotonic)


class _Abort(StreamRefused):
    """Ends the Steps stream with ``code`` (the guard of ``framing.add_service`` answers it)."""


class _Sessions(dict[str, _Session]):
    """Open sessions by id. Indexing a missing id (a stream whose session the reaper reclaimed between
    its steps) ends that stream with NOT_FOUND instead of an unexpected KeyError (UNKNOWN)."""

    def __missing__(self, session_id: str) -> _Session:
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"session_id: {session_id!r} was reclaimed (idle) or closed")


class ProviderService(pb_grpc.ProviderServicer):
    """The Provider gRPC service around one loaded ``Segment``."""

    def __init__(self, segment: Segment, key: SigningKey, behaviour: Behaviour, offer: SignedFields,
                 kv_capacity_tokens: int, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
                 load_range: Callable[[int, int], Segment] | None = None,
                 max_sessions: int = DEFAULT_MAX_SESSIONS, require_recipient: bool = False) -> None:
        self.segment = segment
        self._views: dict[tuple[int, int], Segment] = {(segment.first_layer, segment.end_layer): segment}
        self._load_range = load_range
        self.key = key
        self.behaviour = behaviour
        self.offer = offer
        self.offer_signature = sign_offer(offer, key)
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_tensor_bytes = max_tensor_bytes
        self.sessions: dict[str, _Session] = _Sessions()
        self.max_sessions = max_sessions  # the provider serves one lead: this is its per-lead cap
        self.kv_tokens_reserved = 0
        # The key of the lead this provider registered with (from its RegisterResponse): only session
        # openings that key signed are served. None until registered: every OpenSession is refused.
        self.lead_public_key: bytes | None = None
        # Refuse openings not addressed to this provider's key (``recipient_public_key`` empty) too, not
        # only those addressed to another key; off until every lead signs the recipient.
        self.require_recipient = require_recipient
        self.dtype = dtype_name(segment.dtype)
        self.direct = DirectLinks()  # direct data path (impl/node/direct.py): neighbours and forwarded inputs

    # --- sub-ranges ---------------------------------------------------------------------------
    async def view(self, first_layer: int, end_layer: int) -> Segment:
        """The segment serving ``[first_layer, end_layer)`` (a non-empty sub-range of the loaded one),
        created once per range. Honest: a weight-sharing ``sub_segment`` view. A cheat behaviour with a
        ``load_range`` hook: a fresh load of the range with ``prepare`` applied to it."""
        key = (first_layer, end_layer)
        found = self._views.get(key)
        if found is not None:
            return found
        seg = self.segment
        if not seg.first_layer <= first_layer < end_layer <= seg.end_layer:
            raise SegmentInputError(f"first_layer/end_layer: [{first_layer}, {end_layer}) is not a non-empty sub-range "
                                    f"of the offered [{seg.first_layer}, {seg.end_layer})")
        if self.behaviour.name != "honest" and self._load_range is not None:
            view = await asyncio.to_thread(self._load_range, first_layer, end_layer)
            self.behaviour.prepare(view)
        else:
            view = seg.sub_segment(first_layer, end_layer)
        return self._views.setdefault(key, view)

    # --- unary RPCs -------------------------------------------------------------------------
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ProviderInfo:
        return pb.ProviderInfo(
            offer=pb.SignedOffer(offer=offer_fields_to_pb(self.offer), signature=self.offer_signature),
            open_sessions=len(self.sessions), kv_tokens_reserved=self.kv_tokens_reserved,
            dtype=self.dtype, device=str(self.segment.device),
            max_tensor_bytes=self.max_tensor_bytes)

    async def Prove(self, request: pb.ProveRequest, context: grpc.aio.ServicerContext) -> pb.ProveResponse:
        """Possession proof for a lead's probe: sign (asking lead's key, its challenge, own key)."""
        if len(request.challenge) != 32 or len(request.lead_public_key) != 32:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "challenge/lead_public_key: must be 32 bytes each")
        own = bytes(self.key.verify_key)
        signature = self.key.sign(prove_signing_bytes(bytes(request.lead_public_key), bytes(request.challenge), own)).signature
        return pb.ProveResponse(public_key=own, signature=signature)

    def use_offer(self, offer: SignedFields) -> None:
        """Serve ``offer`` (re-signed for each registration: fresh nonce, expiry, counter) on ``Info``."""
        self.offer = offer
        self.offer_signature = sign_offer(offer, self.key)

    async def OpenSession(self, request: pb.OpenSessionRequest, context: grpc.aio.ServicerContext) -> pb.OpenSessionResponse:
        loaded = self.segment
        if not SESSION_ID.match(request.session_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id: must match [A-Za-z0-9._-]{1,128}")
        if not request.request_id or len(request.request_id) > 128:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id: must be 1..128 characters")
        if len(request.audit_seed_commitment) != 32:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audit_seed_commitment: must be 32 bytes")
        if self.lead_public_key is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "lead_signature: this provider is not registered with a lead yet")
        if not session_signature_valid(self.lead_public_key, bytes(request.lead_signature),
                                       session_id=request.session_id, request_id=request.request_id,
                                       model_id=request.model_id, segment_index=request.segment_index,
                                       first_layer=request.first_layer, end_layer=request.end_layer,
                                       max_length=request.max_length,
                                       audit_seed_commitment=bytes(request.audit_seed_commitment), dtype=request.dtype,
                                       next_endpoint=request.next_endpoint, next_public_key=bytes(request.next_public_key),
                                       previous_public_key=bytes(request.previous_public_key),
                                       recipient_public_key=bytes(request.recipient_public_key),
                                       expires_at_ms=request.expires_at_ms):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "lead_signature: the session opening is not signed by the lead this provider serves")
        recipient = bytes(request.recipient_public_key)
        if (recipient or self.require_recipient) and recipient != bytes(self.key.verify_key):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "recipient_public_key: the session opening is addressed to another provider")
        if request.expires_at_ms <= time.time() * 1000:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "expires_at_ms: the session opening has expired")
        if request.dtype != self.dtype:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"dtype: this provider computes in {self.dtype}, the cohort in {request.dtype!r}")
        if request.model_id != loaded.model_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model_id: this provider serves {loaded.model_id!r}, not {request.model_id!r}")
        if not loaded.first_layer <= request.first_layer < request.end_layer <= loaded.end_layer:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"first_layer/end_layer: [{request.first_layer}, {request.end_layer}) is not a non-empty "
                                f"sub-range of the offered [{loaded.first_layer}, {loaded.end_layer})")
        try:
            seg = await self.view(request.first_layer, request.end_layer)
        except (SegmentInputError, OSError, ValueError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"first_layer/end_layer: {exc}")
        limit = seg.config.max_position_embeddings
        if not 1 <= request.max_length <= limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"max_length: {request.max_length} must be in [1, {limit}]")
        if request.session_id in self.sessions:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"session_id: {request.session_id!r} is already open")
        self.reap_idle()
        if len(self.sessions) >= self.max_sessions:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"session_id: {len(self.sessions)} of {self.max_sessions} sessions already open")
        if self.kv_tokens_reserved + request.max_length > self.kv_capacity_tokens:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"max_length: {request.max_length} KV positions requested, "
                                f"{self.kv_capacity_tokens - self.kv_tokens_reserved} of {self.kv_capacity_tokens} free")
        try:
            seg.open_session(request.session_id, request.max_length)
        except (SegmentInputError, SessionError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except torch.OutOfMemoryError:  # budget larger than the device really has
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_length: device out of memory allocating the KV cache")
        self.sessions[request.session_id] = _Session(request.request_id, request.segment_index, request.max_length, seg,
                                                     bytes(request.audit_seed_commitment))
        self.kv_tokens_reserved += request.max_length
        self.direct.open(request.session_id, request)
        return pb.OpenSessionResponse(weights_digest=seg.weights_digest,
                                      kv_bytes_reserved=request.max_length * seg.kv_bytes_per_token())

    async def CloseSession(self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext) -> pb.CloseSessionResponse:
        if not self._close(request.session_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session_id: {request.session_id!r} is not open")
        return pb.CloseSessionResponse()

    def _close(self, session_id: str) -> bool:
        state = self.sessions.pop(session_id, None)
        if state is None:
            return False
        self.kv_tokens_reserved -= state.max_length
        self.direct.close(session_id)
        try:
            state.segment.close_session(session_id)
        except SessionError:  # pragma: no cover - the two maps are kept in step
            pass
        return True

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Close sessions no stream attached to within ``SESSION_UNATTACHED_S`` of opening, and sessions
        idle for longer than ``SESSION_IDLE_S`` between steps, attached to a stream or not (never one
        mid-step: ``stepping``). A reclaimed session's stream ends with NOT_FOUND on its next frame
        (``_Sessions``)."""
        now = time.monotonic() if now is None else now
        stale = [sid for sid, s in self.sessions.items() if not s.stepping and
                 now - s.last_used > (SESSION_IDLE_S if s.attached else SESSION_UNATTACHED_S)]
        for sid in stale:
            self._close(sid)
        return stale

    # --- the step stream ----------------------------------------------------------------------
    async def Steps(self, request_iterator, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        """Bidirectional stream; the session it first names is closed when the stream ends."""
        reassembler = Reassembler("input", self.max_tensor_bytes)
        bound: str | None = None
        header: tuple[int, int, int] | None = None

        def bind(session_id: str) -> str:
            state = self.sessions.get(session_id)
            if state is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"session_id: {session_id!r} is not open")
            if state.busy:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                             f"session_id: {session_id!r} is already attached to another stream")
            state.busy = state.attached = True
            return session_id

        try:
            # The lead names the session in the stream's metadata (bound at once, so it is closed when
            # the stream ends even if no frame ever comes) and, for a replacement, its first step number.
            metadata = dict(context.invocation_metadata() or ())
            if STREAM_SESSION_KEY in metadata:
                bound = bind(str(metadata[STREAM_SESSION_KEY]))
                first_step = str(metadata.get(STREAM_FIRST_STEP_KEY, "0"))
                if first_step.isdigit() and self.sessions[bound].next_step == 0:
                    self.sessions[bound].next_step = int(first_step)
            async for frame in request_iterator:
                try:
                    if bound is None:
                        bound = bind(frame.session_id)
                    elif frame.session_id != bound:
                        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"session_id: this stream carries session {bound!r}, got {frame.session_id!r}")
                    this_header = (frame.step, frame.first_position, frame.num_positions)
                    if reassembler.in_progress and this_header != header:
                        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                     "step: step/first_position/num_positions changed inside one chunked tensor")
                    header = this_header
                    blob = await self.direct.upstream_input(frame) if frame.from_upstream else reassembler.add(frame.input)
                    if blob is None:
                        continue
                    results = await self._run_step(self.sessions[bound], frame, blob)
                    if frame.from_upstream:
                        self.direct.attach_upstream(frame, results)
                    if frame.forward:
                        self.direct.forward(frame, results)
                except FramingError as exc:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
                except UpstreamRefused as exc:  # the forwarded input failed check_forwarded: the sender's fault
                    raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, REFUSAL + str(exc)) from None
                for result in results:
                    yield result
        finally:
            if bound is not None:
                self._close(bound)

    async def Forward(self, request_iterator, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        """Direct path: segment k-1's output for one of this provider's sessions (``DirectLinks.receive``)."""
        async for ack in self.direct.receive(request_iterator):
            yield ack

    async def _run_step(self, state: _Session, frame: pb.StepFrame, blob: bytes) -> list[pb.StepResult]:
        seg = state.segment
        if frame.step != state.next_step:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"step: expected step {state.next_step}, got {frame.step}")
        if frame.num_positions < 1:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "num_positions: must be >= 1")
        try:
            inputs = from_canonical(blob)
        except EncodingError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input: {exc}") from None
        if inputs.dim() < 1 or inputs.shape[0] != frame.num_positions:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"num_positions: {frame.num_positions} does not match the input's shape {list(inputs.shape)}")
        if frame.first_position + frame.num_positions > state.max_length:  # also keeps torch.arange within int64
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"first_position: positions [{frame.first_position}, {frame.first_position + frame.num_positions}) "
                         f"exceed the session's max_length {state.max_length}")
        positions = torch.arange(frame.first_position, frame.first_position + frame.num_positions, dtype=torch.int64)
        session_id = frame.session_id
        state.last_used = time.monotonic()
        state.stepping = True
        try:
            if frame.num_positions == 1:
                out = seg.step(session_id, inputs, positions)  # decode: cheaper than a thread hop
            else:
                out = await asyncio.to_thread(seg.step, session_id, inputs, positions)
        except (SegmentInputError, SessionError) as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input: {exc}") from None
        finally:
            state.stepping = False
        step = frame.step
        committed = self.behaviour.output(step, inputs, out)
        committed_bytes = to_canonical(committed)
        sent = self.behaviour.sent(step, committed)
        sent_bytes = committed_bytes if sent is committed else to_canonical(sent)
        unsigned = BoundaryCommitment(
            protocol_version=PROTOCOL_VERSION, model_id=seg.model_id, weights_digest=seg.weights_digest,
            request_id=state.request_id, step=step, segment_index=state.segment_index,
            first_layer=seg.first_layer, end_layer=seg.end_layer, first_position=frame.first_position,
            num_positions=frame.num_positions, input_digest=digest_encoded(blob),
            output_digest=digest_encoded(committed_bytes), signer=bytes(32), dtype=self.dtype,
            audit_seed_commitment=state.audit_seed_commitment)
        signed = sign_commitment(unsigned, self.behaviour.signing_key(step, self.key))
        state.next_step += 1
        state.last_used = time.monotonic()
        chunks = chunk_tensor(sent_bytes)
        results = [pb.StepResult(step=step, output=chunk) for chunk in chunks]
        results[-1].commitment.CopyFrom(commitment_to_pb(signed))
        return results


# --- process wiring ----------------------------------------------------------------------------
