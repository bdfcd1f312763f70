"""The lead: registry of signed offers, router (the spec's ``form_cohort``) and the relay.

The relay is lead-mediated: for every step it sends the input to segment 0, receives segment 0's
output and signed commitment, forwards those exact bytes to segment 1, and so on; the last segment's
logits are sampled here. Invariants:
- Every commitment is checked on receipt, before its bytes go anywhere: ``check_link`` (signature,
  signer == assigned key, protocol/model/request, step, layers and positions, input digest == previous
  output digest) and ``check_receipt`` (digests are of the bytes actually sent and received). The
  per-link checks in order are exactly ``check_chain``; the first failure aborts the request and
  names the culprit provider and the reason.
- Every request, completed or aborted, is saved to the ``RequestStore`` with the bytes exchanged,
  then the post-request hooks run in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import torch

from verisplit.impl import verisplit_pb2 as pb
from verisplit.impl import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.config import ModelConfig
from verisplit.impl.framing import (FramingError, Reassembler, chunk_tensor, commitment_from_pb, parse_endpoint)
from verisplit.impl.generate import sample_next
from verisplit.impl.keys import (SignedFields, fingerprint, heartbeat_signature_valid, offer_signature_valid)
from verisplit.impl.provider import offer_fields_from_pb, open_channel
from verisplit.impl.records import RecordError, RequestRecord, RequestStore, StepRecord, cohort_to_dict
from verisplit.impl.tensors import from_canonical, to_canonical
from verisplit.spec.cohort import (Cohort, InvalidOffer, ModelSpec, NoCoverage, Offer, form_cohort, quote_fee,
                                   validate_offer)
from verisplit.spec.commitment import REASONS as PROTOCOL_REASONS
from verisplit.spec.commitment import (PROTOCOL_VERSION, BoundaryCommitment, StepContext, check_link, check_receipt,
                                       commitment_to_dict, next_step_context)
from verisplit.spec.encoding import EncodingError, decode_tensor, digest_encoded

log = logging.getLogger("verisplit.lead")

# Abort reasons beyond the spec's link reasons (verisplit.spec.commitment.REASONS). These are *not*
# protocol failures: an unreachable, erroring, overloaded or slow provider (or one whose output is not a
# tensor of the boundary's shape) has broken no signed rule, so it is neither marked failed nor ejected;
# see ``is_protocol_failure`` and docs/protocol.md "Aborts".
UNAVAILABLE = "unavailable"            # the provider could not be reached or dropped the stream
PROVIDER_ERROR = "provider_error"      # the provider answered with an error status
MALFORMED_OUTPUT = "malformed_output"  # output bytes are not a canonical tensor of the expected shape
RESOURCE_EXHAUSTED = "resource_exhausted"
TIMEOUT = "timeout"

NON_PROTOCOL_REASONS = frozenset({UNAVAILABLE, PROVIDER_ERROR, MALFORMED_OUTPUT, RESOURCE_EXHAUSTED, TIMEOUT})


def is_protocol_failure(reason: str | None) -> bool:
    """True iff ``reason`` is one of the spec's chain/receipt reasons (rules H1-H4), the only aborts
    that make the named provider a culprit (failed, forfeiting, ejected)."""
    return reason in PROTOCOL_REASONS


PostRequestHook = Callable[[RequestRecord], Awaitable[dict[str, Any]]]


class RegistryError(Exception):
    """An offer or heartbeat was refused; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NoCohortError(Exception):
    """No cohort can be formed from the live offers (the message names the first uncovered layer)."""


class CohortError(Exception):
    """A request was aborted at a link: ``culprit`` provider, ``reason`` code, ``link`` segment index."""

    def __init__(self, culprit: str, reason: str, detail: str, link: int | None = None) -> None:
        super().__init__(f"provider {culprit!r} (segment {link}): {reason}: {detail}")
        self.culprit = culprit
        self.reason = reason
        self.detail = detail
        self.link = link


# --- registry --------------------------------------------------------------------------------------

@dataclass
class RegisteredOffer:
    """A verified offer and when the lead last heard from its provider."""

    fields: SignedFields
    signature: bytes
    last_seen: float
    last_heartbeat_ms: int = 0

    @property
    def offer(self) -> Offer:
        f = self.fields
        return Offer(f.provider_id, f.public_key, f.first_layer, f.end_layer, f.price_per_work_unit, f.endpoint)


class Registry:
    """Signed offers for one model, heartbeat expiry and banned keys.

    Invariant: ``offers()`` lists only offers whose signature verified, whose key is not banned, that
    match the model, and whose provider was heard from within ``offer_ttl_s``.
    """

    def __init__(self, model: ModelSpec, *, heartbeat_interval_s: float = 1.0, offer_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.heartbeat_interval_s = heartbeat_interval_s
        self.offer_ttl_s = offer_ttl_s
        self.clock = clock
        self._entries: dict[str, RegisteredOffer] = {}
        self._banned: dict[bytes, str] = {}

    def register(self, fields: SignedFields, signature: bytes) -> None:
        """Verify and list an offer (replacing the provider's older one); refusals raise ``RegistryError``."""
        who = f"offer from {fields.provider_id!r}"
        if not offer_signature_valid(fields, signature):
            raise RegistryError(grpc.StatusCode.UNAUTHENTICATED, f"signature: {who} does not verify under its public_key")
        if fields.public_key in self._banned:
            raise RegistryError(grpc.StatusCode.PERMISSION_DENIED,
                                f"public_key: {fingerprint(fields.public_key)} is banned ({self._banned[fields.public_key]})")
        if fields.protocol_version != PROTOCOL_VERSION:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"protocol_version: {who} speaks {fields.protocol_version}, the lead speaks {PROTOCOL_VERSION}")
        if fields.model_id != self.model.model_id:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model_id: {who} serves {fields.model_id!r}, the lead serves {self.model.model_id!r}")
        if fields.num_layers != self.model.num_layers or fields.end_layer > self.model.num_layers:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"num_layers: {who} claims layers [{fields.first_layer}, {fields.end_layer}) of "
                                f"{fields.num_layers}, the model has {self.model.num_layers}")
        if len(fields.provider_id.encode()) > 128:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, "provider_id: longer than 128 bytes")
        try:
            validate_offer(fields_to_offer(fields))
            parse_endpoint(fields.endpoint)
        except (InvalidOffer, ValueError) as exc:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._expire()
        existing = self._entries.get(fields.provider_id)
        if existing is not None:
            if existing.fields.public_key != fields.public_key:
                raise RegistryError(grpc.StatusCode.ALREADY_EXISTS,
                                    f"provider_id: {fields.provider_id!r} is registered with another key")
            if fields.issued_at_ms < existing.fields.issued_at_ms:
                raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"issued_at_ms: {who} is older than the offer already listed (replay?)")
        self._entries[fields.provider_id] = RegisteredOffer(fields, signature, self.clock())

    def heartbeat(self, provider_id: str, sent_at_ms: int, leaving: bool, signature: bytes) -> bool:
        """Refresh (or, when ``leaving``, remove) a listed offer; False if the provider is not listed."""
        self._expire()
        entry = self._entries.get(provider_id)
        if entry is None:
            return False
        if not heartbeat_signature_valid(entry.fields.public_key, provider_id, sent_at_ms, leaving, signature):
            raise RegistryError(grpc.StatusCode.UNAUTHENTICATED, f"signature: heartbeat for {provider_id!r} does not verify")
        if sent_at_ms < entry.last_heartbeat_ms:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "sent_at_ms: older than the last heartbeat (replay?)")
        entry.last_heartbeat_ms = sent_at_ms
        if leaving:
            del self._entries[provider_id]
            return True
        entry.last_seen = self.clock()
        return True

    def _expire(self) -> None:
        now = self.clock()
        for provider_id in [p for p, e in self._entries.items() if now - e.last_seen > self.offer_ttl_s]:
            del self._entries[provider_id]

    def entries(self) -> list[RegisteredOffer]:
        self._expire()
        return [self._entries[p] for p in sorted(self._entries)]

    def get(self, provider_id: str) -> RegisteredOffer | None:
        self._expire()
        return self._entries.get(provider_id)

    def offers(self) -> list[Offer]:
        """The live offers, sorted by provider id (the router's input)."""
        return [e.offer for e in self.entries()]

    def eject(self, provider_id: str, reason: str) -> None:
        """Remove the provider's offer and ban its key (future offers under that key are refused)."""
        entry = self._entries.pop(provider_id, None)
        if entry is None:
            raise KeyError(f"provider_id: {provider_id!r} is not registered")
        self._banned[entry.fields.public_key] = reason
        log.warning("ejected %s (%s): %s", provider_id, fingerprint(entry.fields.public_key), reason)

    def ban_key(self, public_key: bytes, reason: str) -> None:
        """Ban a key directly (and drop any offer under it)."""
        self._banned[public_key] = reason
        for provider_id in [p for p, e in self._entries.items() if e.fields.public_key == public_key]:
            del self._entries[provider_id]

    def banned(self) -> dict[str, str]:
        """Banned keys as {public key hex: reason}."""
        return {key.hex(): reason for key, reason in self._banned.items()}


def fields_to_offer(f: SignedFields) -> Offer:
    return Offer(f.provider_id, f.public_key, f.first_layer, f.end_layer, f.price_per_work_unit, f.endpoint)


class RegistryService(pb_grpc.RegistryServicer):
    """gRPC face of the ``Registry``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def Register(self, request: pb.SignedOffer, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        if not request.HasField("offer"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offer: missing")
        try:
            self.registry.register(offer_fields_from_pb(request.offer), bytes(request.signature))
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        return pb.RegisterResponse(provider_id=request.offer.provider_id,
                                   heartbeat_interval_ms=int(self.registry.heartbeat_interval_s * 1000),
                                   offer_ttl_ms=int(self.registry.offer_ttl_s * 1000))

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        try:
            known = self.registry.heartbeat(request.provider_id, request.sent_at_ms, request.leaving, bytes(request.signature))
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        return pb.HeartbeatResponse(known=known)


# --- relay -----------------------------------------------------------------------------------------

# torch.Generator.manual_seed accepts exactly this range; anything else is refused up front (400), not a
# ValueError deep inside the relay.
SEED_MIN = -(1 << 63)
SEED_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request (temperature 0 = greedy)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class HopTimings:
    """Seconds spent by the lead per category, summed over a request's hops."""

    round_trip: float = 0.0   # write input .. last output chunk received (includes provider compute)
    digest: float = 0.0       # digests of received outputs
    verify: float = 0.0       # check_link + check_receipt
    hops: int = 0


class _Hop:
    """One provider's session and stream inside one request."""

    def __init__(self, index: int, offer: RegisteredOffer, first_layer: int, end_layer: int, stub: pb_grpc.ProviderStub,
                 step_timeout_s: float) -> None:
        self.index = index
        self.offer = offer
        self.provider_id = offer.fields.provider_id
        self.first_layer = first_layer
        self.end_layer = end_layer
        self.stub = stub
        self.step_timeout_s = step_timeout_s
        self.opened = False
        self.call: Any = None
        self.reassembler = Reassembler("output")

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

    async def open(self, session_id: str, request_id: str, model_id: str, max_length: int) -> None:
        try:
            await self.stub.OpenSession(pb.OpenSessionRequest(
                session_id=session_id, request_id=request_id, model_id=model_id, segment_index=self.index,
                first_layer=self.first_layer, end_layer=self.end_layer, max_length=max_length), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise self.rpc_failure(exc, "OpenSession") from None
        self.opened = True
        self.call = self.stub.Steps()

    async def exchange(self, session_id: str, context: StepContext, blob: bytes,
                       max_output_bytes: int | None = None) -> tuple[bytes, pb.Commitment]:
        """Send one step's input, return (output bytes, wire commitment). An output announced larger
        than ``max_output_bytes`` is refused at its first chunk (malformed_output), so a provider
        cannot make the lead buffer more than one boundary tensor's worth of bytes."""
        if max_output_bytes is not None:
            self.reassembler.max_tensor_bytes = max_output_bytes
        try:
            for chunk in chunk_tensor(blob):
                await self.call.write(pb.StepFrame(session_id=session_id, step=context.step,
                                                   first_position=context.first_position,
                                                   num_positions=context.num_positions, input=chunk))
            while True:
                async with asyncio.timeout(self.step_timeout_s):  # no task per read, unlike wait_for
                    message = await self.call.read()
                if message is grpc.aio.EOF:
                    raise await self._ended()
                if message.step != context.step:
                    raise self.fail(PROVIDER_ERROR, f"Steps: output for step {message.step}, expected {context.step}")
                out = self.reassembler.add(message.output)
                if out is not None:
                    if not message.HasField("commitment"):
                        raise self.fail(MISSING_COMMITMENT, "Steps: the last output chunk carries no commitment")
                    return out, message.commitment
        except grpc.aio.AioRpcError as exc:
            raise self.rpc_failure(exc, "Steps") from None
        except asyncio.InvalidStateError:  # the provider already ended the stream
            raise await self._ended() from None
        except FramingError as exc:
            raise self.fail(MALFORMED_OUTPUT, str(exc)) from None
        except asyncio.TimeoutError:
            raise self.fail(TIMEOUT, f"Steps: no output within {self.step_timeout_s:.0f}s") from None

    async def _ended(self) -> CohortError:
        """The error for a stream the provider ended (its status, or a protocol error if it said OK)."""
        code = await self.call.code()
        details = await self.call.details()
        if code == grpc.StatusCode.OK:
            return self.fail(PROVIDER_ERROR, "Steps: stream ended without an output")
        return self.rpc_failure(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details), "Steps")

    async def close(self, session_id: str) -> None:
        """End the stream (the provider then frees the session); close explicitly if no stream ran."""
        if self.call is not None:
            try:
                await self.call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError):
                pass
            self.call.cancel()
        elif self.opened:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=5)


MISSING_COMMITMENT = "missing_link"
OUTPUT_HEADER_SLACK = 4096  # bytes above the payload allowed for the canonical header (a few dozen in practice)


def output_byte_limit(config: ModelConfig, positions: int, last: bool) -> int:
    """Largest canonical output the lead accepts from a hop: ``positions`` rows of the boundary's width
    (vocab for the last segment, hidden otherwise) at 4 bytes per element (fp32, the widest allowed
    dtype), plus header slack. Anything larger cannot pass ``_check_shape`` anyway."""
    width = config.vocab_size if last else config.hidden_size
    return positions * width * 4 + OUTPUT_HEADER_SLACK


def link_failure(assignment: Any, index: int, commitment: BoundaryCommitment, sent_digest: bytes,
                 received_digest: bytes, context: StepContext) -> tuple[str, str] | None:
    """``check_link`` then ``check_receipt`` on one received commitment, as (reason, detail) or None.

    A commitment whose fields do not fit their wire widths has no signing bytes, so the spec's
    ``signature_valid`` is False and it fails as ``bad_signature`` by its sender."""
    failure = check_link(assignment, index, commitment, sent_digest, context)
    if failure is None:
        failure = check_receipt(commitment, sent_digest, received_digest)
    return failure


@dataclass
class RequestRun:
    """One request in flight: its id, cohort and fee quote inputs; iterate ``tokens()`` to run it."""

    lead: "Lead"
    request_id: str
    cohort: Cohort
    offers: list[Offer]
    prompt_ids: list[int]
    params: SamplingParams
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    status: str = "running"
    error: CohortError | None = None
    timings: HopTimings = field(default_factory=HopTimings)
    steps: list[StepRecord] = field(default_factory=list)
    fee: int = 0

    async def tokens(self) -> AsyncIterator[int]:
        """Yield generated token ids as they come; raises ``CohortError`` when a link breaks.
        Closing the iterator early (e.g. a stop string matched) ends the request as completed."""
        async for token in self.lead._relay(self):
            yield token


class Lead:
    """Registry + router + relay + request store for one model (the lead runs no layers itself)."""

    def __init__(self, checkpoint: str | Path, data_dir: str | Path, *, retention: int = 1000,
                 tls_ca: Path | None = None, heartbeat_interval_s: float = 1.0, offer_ttl_s: float = 5.0,
                 step_timeout_s: float = 120.0) -> None:
        root = Path(checkpoint)
        self.checkpoint = root
        self.config = ModelConfig.from_dir(root)
        self.model_id = self.config.name_or_path or root.resolve().name
        self.model_spec = ModelSpec(self.model_id, self.config.num_hidden_layers)
        self.registry = Registry(self.model_spec, heartbeat_interval_s=heartbeat_interval_s, offer_ttl_s=offer_ttl_s)
        self.store = RequestStore(Path(data_dir) / "requests", max_requests=retention)
        self.tls_ca = tls_ca
        self.step_timeout_s = step_timeout_s
        self.post_request_hooks: list[PostRequestHook] = []
        self.audit: Any = None  # the AuditService, once ``attach_audit`` ran
        self.commitments_checked = 0
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.ProviderStub]] = {}
        self._info: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._retention = retention
        self._tasks: set[asyncio.Task[Any]] = set()

    def attach_audit(self, service: Any) -> None:
        """Install ``service`` (a ``verisplit.impl.audit_service.AuditService``) as a post-request hook:
        every finished request is then audited, settled, written to the ledger, and failed providers
        are ejected from ``self.registry`` (offer removed, key banned)."""
        self.audit = service
        self.post_request_hooks.append(service)

    def audit_view(self) -> dict[str, Any]:
        """What the lead publishes about auditing: the seed commitment, p, and whether it revealed."""
        service = self.audit
        if service is None:
            return {"enabled": False, "seed_commitment": None, "p": "0", "revealed": False}
        p = service.audit_p
        return {"enabled": p > 0, "seed_commitment": service.seed_commitment.hex(), "p": f"{p.numerator}/{p.denominator}",
                "revealed": bool(getattr(self, "_revealed", False)),
                "tolerance": {"dtype": service.tolerance.dtype, "atol": service.tolerance.atol,
                              "rtol": service.tolerance.rtol}}

    def reveal_audit_seed(self) -> bytes:
        """Reveal the audit seed (opens the published commitment). After this, audit selection of any
        later request is predictable: a production lead reveals per epoch and starts a new seed."""
        if self.audit is None:
            raise LookupError("auditing is not configured on this lead")
        self._revealed = True
        log.warning("audit seed revealed; selections under commitment %s are now predictable",
                    self.audit.seed_commitment.hex())
        return bytes(self.audit.reveal())

    # --- routing ------------------------------------------------------------------------------
    def route(self) -> tuple[Cohort, list[Offer]]:
        """The spec's cheapest cohort over the live offers, and the offers it was formed from."""
        offers = self.registry.offers()
        if not offers:
            raise NoCohortError("no provider has registered an offer (or all expired)")
        try:
            return form_cohort(offers, self.model_spec), offers
        except NoCoverage as exc:
            raise NoCohortError(str(exc)) from None
        except InvalidOffer as exc:  # pragma: no cover - the registry validated every offer
            raise NoCohortError(str(exc)) from None

    def start(self, prompt_ids: list[int], params: SamplingParams) -> RequestRun:
        """Form the cohort and allocate a request id; raises ``NoCohortError`` or ValueError for bad input."""
        if not prompt_ids:
            raise ValueError("prompt: must hold at least one token")
        bad = [t for t in prompt_ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt: token id {bad[0]} outside [0, {self.config.vocab_size})")
        if not SEED_MIN <= params.seed <= SEED_MAX:
            raise ValueError(f"seed: {params.seed} outside [{SEED_MIN}, {SEED_MAX}] (a 64-bit generator seed)")
        if len(prompt_ids) + max(params.max_tokens, 1) > self.config.max_position_embeddings:
            raise ValueError(f"max_tokens: prompt ({len(prompt_ids)}) + max_tokens ({params.max_tokens}) exceeds the "
                             f"context length {self.config.max_position_embeddings}")
        cohort, offers = self.route()
        return RequestRun(self, f"req-{uuid.uuid4().hex}", cohort, offers, list(prompt_ids), params)

    def _stub(self, endpoint: str) -> pb_grpc.ProviderStub:
        entry = self._channels.get(endpoint)
        if entry is None:
            channel = open_channel(endpoint, self.tls_ca)
            entry = (channel, pb_grpc.ProviderStub(channel))
            self._channels[endpoint] = entry
        return entry[1]

    # --- relay -------------------------------------------------------------------------------
    async def _relay(self, run: RequestRun) -> AsyncIterator[int]:
        params = run.params
        hops = []
        for index, assignment in enumerate(run.cohort.assignments):
            entry = self.registry.get(assignment.provider_id)
            if entry is None:
                run.error = CohortError(assignment.provider_id, UNAVAILABLE, "offer expired before the request started", index)
                await self._finish(run, hops)
                raise run.error
            hops.append(_Hop(index, entry, assignment.first_layer, assignment.end_layer,
                             self._stub(entry.fields.endpoint), self.step_timeout_s))
        session_id = run.request_id
        max_length = len(run.prompt_ids) + max(params.max_tokens, 1)
        generator = torch.Generator().manual_seed(params.seed)
        stops = set(params.stop_token_ids)
        try:
            results = await asyncio.gather(*(h.open(session_id, run.request_id, self.model_id, max_length) for h in hops),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            context = StepContext(self.model_id, run.request_id, 0, 0, len(run.prompt_ids))
            blob = to_canonical(torch.tensor(run.prompt_ids, dtype=torch.int64))
            for _ in range(params.max_tokens):
                logits = await self._step(run, hops, session_id, context, blob)
                token = sample_next(logits[-1], temperature=params.temperature, top_p=params.top_p, generator=generator)
                run.generated.append(token)
                yield token
                if token in stops:
                    run.finish_reason = "stop"
                    break
                context = next_step_context(context, 1)
                blob = to_canonical(torch.tensor([token], dtype=torch.int64))
            if run.finish_reason is None:
                run.finish_reason = "length"
            run.status = "completed"
        except CohortError as exc:
            run.error = exc
            raise
        except GeneratorExit:
            run.finish_reason = run.finish_reason or "stop"
            run.status = "completed"
            raise
        finally:
            await self._finish(run, hops)

    async def _step(self, run: RequestRun, hops: list[_Hop], session_id: str, context: StepContext,
                    first_blob: bytes) -> torch.Tensor:
        """One step through every hop, checking each link on receipt; returns the logits [T, vocab]."""
        timings = run.timings
        first_digest = digest_encoded(first_blob)
        record = StepRecord(context.step, context.first_position, context.num_positions, first_digest, [], [], [])
        run.steps.append(record)
        blob, expected = first_blob, first_digest
        for hop in hops:
            t0 = time.perf_counter()
            limit = output_byte_limit(self.config, context.num_positions, last=hop is hops[-1])
            out, wire = await hop.exchange(session_id, context, blob, limit)
            t1 = time.perf_counter()
            out_digest = digest_encoded(out)
            t2 = time.perf_counter()
            commitment = commitment_from_pb(wire)
            record.commitments.append(commitment)
            record.inputs.append(blob)
            record.outputs.append(out)
            failure = link_failure(run.cohort.assignments[hop.index], hop.index, commitment, expected, out_digest,
                                   context)
            t3 = time.perf_counter()
            timings.round_trip += t1 - t0
            timings.digest += t2 - t1
            timings.verify += t3 - t2
            timings.hops += 1
            if failure is not None:
                raise hop.fail(failure[0], failure[1])
            self.commitments_checked += 1
            self._check_shape(hop, out, context.num_positions, last=hop is hops[-1])
            blob, expected = out, out_digest
        return from_canonical(blob)

    def _check_shape(self, hop: _Hop, out: bytes, positions: int, last: bool) -> None:
        """Outputs must be canonical tensors of the boundary's shape, so a malformed one is blamed on its sender."""
        try:
            frame = decode_tensor(out)
        except EncodingError as exc:
            raise hop.fail(MALFORMED_OUTPUT, f"output: {exc}") from None
        width = self.config.vocab_size if last else self.config.hidden_size
        if frame.shape != (positions, width):
            raise hop.fail(MALFORMED_OUTPUT, f"output: shape {list(frame.shape)}, expected [{positions}, {width}]")
        allowed = ("float32",) if last else ("float32", "float16", "bfloat16")
        if frame.dtype not in allowed:
            raise hop.fail(MALFORMED_OUTPUT, f"output: dtype {frame.dtype}, expected one of {allowed}")

    async def _finish(self, run: RequestRun, hops: list[_Hop]) -> None:
        """Close every session, save the record, publish its info and schedule the hooks."""
        await asyncio.gather(*(h.close(run.request_id) for h in hops), return_exceptions=True)
        if run.error is not None:
            run.status = "aborted"
            run.finish_reason = "error"
        elif run.status == "running":
            run.status = "aborted"
        positions = len(run.prompt_ids) + len(run.generated)
        # The client pays for what it received: the quote over prompt + generated tokens, also when a
        # request aborts after some tokens (a failed provider's slice of it is refunded at settlement);
        # nothing generated, nothing charged.
        run.fee = quote_fee(run.cohort, self.model_spec, run.offers, positions) if run.generated else 0
        err = run.error
        record = RequestRecord(
            request_id=run.request_id, model_id=self.model_id, cohort=run.cohort, steps=run.steps,
            status=run.status, culprit=err.culprit if err else None, reason=err.reason if err else None,
            fee=run.fee, prompt_tokens=len(run.prompt_ids), completion_tokens=len(run.generated),
            extra={"prompt_token_ids": run.prompt_ids, "completion_token_ids": run.generated,
                   "finish_reason": run.finish_reason, "detail": err.detail if err else None,
                   "link": err.link if err else None, "params": run.params.__dict__ | {"stop_token_ids": list(run.params.stop_token_ids)}})
        try:
            await asyncio.to_thread(self.store.save, record)
        except (OSError, RecordError) as exc:  # never lose the response because the disk failed
            log.error("could not save record %s: %s", run.request_id, exc)
        self._info[run.request_id] = self._public_info(record, run)
        while len(self._info) > self._retention:
            self._info.popitem(last=False)
        if self.post_request_hooks:
            self._info[run.request_id]["pending_hooks"] = len(self.post_request_hooks)
            task = asyncio.get_running_loop().create_task(self._run_hooks(record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_hooks(self, record: RequestRecord) -> None:
        info = self._info.get(record.request_id)
        merged: dict[str, Any] = {}
        for hook in list(self.post_request_hooks):
            try:
                result = await hook(record)
                if result:
                    merged.update(result)
            except Exception as exc:  # a hook bug must not take the lead down
                log.exception("post-request hook %r failed for %s", hook, record.request_id)
                merged.setdefault("hook_errors", []).append(f"{getattr(hook, '__name__', hook)}: {exc}")
            if info is not None:
                info.update(merged)
                info["pending_hooks"] = max(0, info.get("pending_hooks", 1) - 1)
        with contextlib.suppress(OSError, RecordError):
            await asyncio.to_thread(self.store.save_extras, record.request_id, merged)

    async def drain_hooks(self) -> None:
        """Wait for the background hooks scheduled so far."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- public views ------------------------------------------------------------------------
    def _public_info(self, record: RequestRecord, run: RequestRun | None = None) -> dict[str, Any]:
        endpoints = {o.provider_id: o.endpoint for o in (run.offers if run else [])}
        cohort = cohort_to_dict(record.cohort)
        for a in cohort["assignments"]:
            a["endpoint"] = endpoints.get(a["provider_id"])
            a["fingerprint"] = fingerprint(bytes.fromhex(a["public_key"]))
        return {
            "id": record.request_id, "object": "verisplit.request", "model": record.model_id, "status": record.status,
            "culprit": record.culprit, "reason": record.reason, "detail": record.extra.get("detail"),
            "link": record.extra.get("link"), "fee": record.fee, "cohort": cohort,
            "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                      "total_tokens": record.prompt_tokens + record.completion_tokens},
            "prompt_token_ids": record.extra.get("prompt_token_ids"),
            "completion_token_ids": record.extra.get("completion_token_ids"),
            "finish_reason": record.extra.get("finish_reason"),
            "commitments_checked": sum(len(s.commitments) for s in record.steps) - (1 if record.status == "aborted" and record.reason in _LINK_REASONS else 0),
            "steps": [{"step": s.step, "first_position": s.first_position, "num_positions": s.num_positions,
                       "first_input_digest": s.first_input_digest.hex(),
                       "commitments": [commitment_to_dict(c) for c in s.commitments]} for s in record.steps],
        }

    def request_info(self, request_id: str) -> dict[str, Any] | None:
        """Public info of a recent request (memory first, then the store), or None."""
        info = self._info.get(request_id)
        if info is not None:
            return info
        try:
            record = self.store.load(request_id)
        except RecordError:
            return None
        info = self._public_info(record)
        info.update(self.store.load_extras(request_id))
        return info

    def providers_view(self) -> list[dict[str, Any]]:
        out = []
        for e in self.registry.entries():
            f = e.fields
            out.append({"provider_id": f.provider_id, "first_layer": f.first_layer, "end_layer": f.end_layer,
                        "price_per_work_unit": f.price_per_work_unit, "endpoint": f.endpoint,
                        "public_key": f.public_key.hex(), "fingerprint": fingerprint(f.public_key),
                        "weights_digest": f.weights_digest.hex(), "kv_capacity_tokens": f.kv_capacity_tokens,
                        "protocol_version": f.protocol_version,
                        "last_seen_s_ago": round(self.registry.clock() - e.last_seen, 3)})
        return out

    async def close(self) -> None:
        await self.drain_hooks()
        if self.audit is not None:
            with contextlib.suppress(Exception):
                self.audit.ledger.close()
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()


_LINK_REASONS = {"bad_signature", "wrong_signer", "wrong_request", "duplicate_or_replay", "step_gap", "range_mismatch",
                 "input_mismatch", "missing_link", "output_mismatch"}
