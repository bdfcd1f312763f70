"""Run one provider: bind its ports, choose (``--layers auto``) and load its layer range, register
with the lead, heartbeat; stop cleanly.

Invariants: the gRPC port (and the ``--metrics`` port) are bound before anything slow or stateful
happens, so a used port fails in milliseconds (``BindError`` naming the address); the signed offer
names exactly the loaded range, its weights digest and the bound (or advertised) endpoint;
registration retries only while the lead is unreachable (any refusal is final), and "lead
unreachable" is logged at most once per ``UNREACHABLE_LOG_S``; on ``stop`` the provider says it is
leaving, then lets in-flight streams end within ``shutdown_grace_s`` (a second signal: at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

import grpc
import tenacity
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.node.framing import DEFAULT_MAX_TENSOR_BYTES, add_service, grpc_options, offer_fields_to_pb, open_channel
from verisplit.impl.node.ops import Every
from verisplit.impl.node.ports import bind_grpc
from verisplit.impl.node.provider import ProviderService
from verisplit.impl.records.keys import CounterFile, SignedFields, heartbeat_signing_bytes
from verisplit.impl.runtime.segment import Segment
from verisplit.impl.runtime.tensors import dtype_name
from verisplit.spec.commitment import PROTOCOL_VERSION

if TYPE_CHECKING:
    from verisplit.impl.node.metrics import ProviderMetrics

log = logging.getLogger("verisplit.provider")

UNREACHABLE_LOG_S = 30.0


@dataclass
class ProviderSettings:
    """Everything ``verisplit provider serve`` needs (see ``impl/cli/provider_cmd.py``). ``first_layer``
    and ``end_layer`` are None with ``auto_length`` set (0: length chosen) for ``--layers auto``."""

    checkpoint: Path
    first_layer: int | None
    end_layer: int | None
    key: SigningKey
    listen: str
    lead: str
    provider_id: str
    price: int = 1
    kv_budget_mb: float = 256.0
    device: str | None = None
    dtype: str | None = None
    advertise: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA for the lead's registry when it uses TLS
    behaviour: Behaviour = field(default_factory=Behaviour)
    ready_file: Path | None = None
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    auto_length: int | None = None
    lead_http: str | None = None
    metrics: str | None = None  # HOST:PORT of the Prometheus listener
    shutdown_grace_s: float = 10.0
    counter_file: Path | None = None  # the persistent heartbeat counter (next to the key file)
    max_sessions: int = 64            # concurrent sessions held for the lead
    offer_lifetime_ms: int = 60_000   # how long each signed offer may wait to be listed
    require_recipient: bool = False   # refuse session openings that do not name this provider's key


async def serve_provider(settings: ProviderSettings, stop: asyncio.Event, hard: asyncio.Event | None = None) -> None:
    """Bind, load the slice, start the server, register with the lead, heartbeat until ``stop`` is set."""
    from verisplit.impl.node.metrics import ProviderMetrics, start_metrics_listener
    from verisplit.impl.node.ports import BindError

    metrics = ProviderMetrics()
    server = grpc.aio.server(options=grpc_options(), interceptors=[metrics.interceptor()])
    metrics_server = None
    try:
        port = bind_grpc(server, "--listen", settings.listen, settings.tls_cert, settings.tls_key)
        if settings.metrics:
            from verisplit.impl.node.framing import parse_host_port

            m_host, m_port = parse_host_port(settings.metrics, "--metrics")
            try:
                metrics_server, m_bound = start_metrics_listener(m_host, m_port, metrics)
            except OSError as exc:
                raise BindError(f"--metrics {settings.metrics}: {exc.strerror or exc}") from None
            log.info("metrics on http://%s:%d/metrics", m_host, m_bound)
        await _serve(settings, stop, hard or asyncio.Event(), server, port, metrics)
    finally:
        with contextlib.suppress(Exception):
            await server.stop(None)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


async def _choose_layers(settings: ProviderSettings) -> tuple[int, int]:
    if settings.first_layer is not None and settings.end_layer is not None:
        return settings.first_layer, settings.end_layer
    from verisplit.impl.node.placement import PlacementError, choose_range, fetch_offers
    from verisplit.impl.runtime.config import ModelConfig
    from verisplit.spec.cohort import ModelSpec

    if not settings.lead_http:
        raise PlacementError("--layers auto needs --lead-http URL (the lead's HTTP API lists the live offers)")
    config = ModelConfig.from_dir(settings.checkpoint)
    model_id = config.name_or_path or settings.checkpoint.resolve().name
    offers, num_layers = await fetch_offers(settings.lead_http, model_id)
    if num_layers != config.num_hidden_layers:
        raise PlacementError(f"--lead-http: the lead's model has {num_layers} layers, this checkpoint "
                             f"{config.num_hidden_layers}")
    choice = choose_range(offers, ModelSpec(model_id, num_layers), settings.price, settings.auto_length or 0,
                          me=settings.provider_id)
    log.info("--layers auto: chose %s from %d live offer(s)", choice.describe(), len(offers),
             extra={"fields": {"event": "auto_layers", "first_layer": choice.first_layer, "end_layer": choice.end_layer}})
    return choice.first_layer, choice.end_layer


async def _serve(settings: ProviderSettings, stop: asyncio.Event, hard: asyncio.Event, server: grpc.aio.Server,
                 port: int, metrics: "ProviderMetrics") -> None:
    from verisplit.impl.runtime.loader import load_segment

    first_layer, end_layer = await _choose_layers(settings)
    # A progress bar for an operator watching a terminal (large slices take minutes); none in logs.
    segment = await asyncio.to_thread(load_segment, settings.checkpoint, first_layer, end_layer,
                                      device=settings.device, dtype=settings.dtype, progress=sys.stderr.isatty())
    settings.behaviour.prepare(segment)
    per_token = segment.kv_bytes_per_token()
    capacity = int(settings.kv_budget_mb * (1 << 20)) // max(per_token, 1)
    host = settings.listen.rpartition(":")[0].strip("[]")
    advertise = settings.advertise or f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    offer = SignedFields(
        protocol_version=PROTOCOL_VERSION, provider_id=settings.provider_id, public_key=bytes(settings.key.verify_key),
        model_id=segment.model_id, weights_digest=segment.weights_digest, num_layers=segment.config.num_hidden_layers,
        first_layer=segment.first_layer, end_layer=segment.end_layer, price_per_work_unit=settings.price,
        endpoint=advertise, kv_capacity_tokens=capacity, issued_at_ms=int(time.time() * 1000),
        dtype=dtype_name(segment.dtype))

    def load_range(first: int, end: int) -> Segment:
        return load_segment(settings.checkpoint, first, end, device=settings.device, dtype=settings.dtype)

    service = ProviderService(segment, settings.key, settings.behaviour, offer, capacity, settings.max_tensor_bytes,
                              load_range=load_range, max_sessions=settings.max_sessions,
                              require_recipient=settings.require_recipient)
    counter = CounterFile(settings.counter_file)
    metrics.attach(service)
    metrics.info.labels(provider_id=settings.provider_id, model=segment.model_id,
                        first_layer=str(segment.first_layer), end_layer=str(segment.end_layer)).set(1)
    add_service(pb_grpc.add_ProviderServicer_to_server, service, server)
    await server.start()
    log.info("provider %s serving layers [%d, %d) of %s on %s (%s, %s); registering with %s", settings.provider_id,
             segment.first_layer, segment.end_layer, segment.model_id, advertise, segment.device, segment.dtype,
             settings.lead, extra={"fields": {"event": "serving", "endpoint": advertise}})
    channel = open_channel(settings.lead, settings.tls_ca)
    registry = pb_grpc.RegistryStub(channel)
    admission = pb_grpc.AdmissionStub(channel)
    limiter = Every(UNREACHABLE_LOG_S)
    reaper = asyncio.create_task(_reap(service, stop))

    async def signed() -> pb.SignedOffer:
        return await _fresh_offer(admission, service, counter, settings.offer_lifetime_ms)

    try:
        interval = await _register(registry, signed, stop, service, limiter, settings.lead, metrics)
        if interval is None:
            return
        metrics.registered.set(1)
        log.info("registered with the lead at %s", settings.lead, extra={"fields": {"event": "registered"}})
        if settings.ready_file is not None:
            _write_ready(settings.ready_file, {"provider_id": settings.provider_id, "endpoint": advertise,
                                               "first_layer": segment.first_layer, "end_layer": segment.end_layer})
        failures = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                break
            except asyncio.TimeoutError:
                pass
            try:
                reply = await registry.Heartbeat(_heartbeat(settings.provider_id, settings.key, False, counter.next()),
                                                 timeout=5)
                if failures:
                    limiter.reset("lead")
                    log.info("lead at %s reachable again after %d failed heartbeat(s)", settings.lead, failures)
                    failures = 0
                if not reply.known:
                    metrics.registered.set(0)
                    log.warning("lead no longer lists %s; registering again", settings.provider_id)
                    interval = await _register(registry, signed, stop, service, limiter, settings.lead,
                                               metrics) or interval
                    metrics.registered.set(1)
            except grpc.aio.AioRpcError as exc:
                failures += 1
                metrics.lead_unreachable.inc()
                limiter.log(log, logging.WARNING, "lead", "heartbeat to the lead at %s failed: %s %s; retrying every %.1fs",
                            settings.lead, exc.code().name, exc.details(), interval)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await registry.Heartbeat(_heartbeat(settings.provider_id, settings.key, True, counter.next()), timeout=2)
        metrics.registered.set(0)
    finally:
        reaper.cancel()
        await _stop_server(server, service, settings.shutdown_grace_s, hard)
        await channel.close()


async def _stop_server(server: grpc.aio.Server, service: ProviderService, grace: float, hard: asyncio.Event) -> None:
    """Refuse new RPCs, let open streams end within ``grace`` (or until ``hard``), then close."""
    if service.sessions:
        log.info("shutting down: %d open session(s); waiting up to %.0fs (signal again to stop now)",
                 len(service.sessions), grace)
    else:
        log.info("shutting down")
    stopping = asyncio.create_task(server.stop(grace=grace))
    hard_wait = asyncio.create_task(hard.wait())
    await asyncio.wait({stopping, hard_wait}, return_when=asyncio.FIRST_COMPLETED)
    hard_wait.cancel()
    if not stopping.done():
        await server.stop(grace=0)
        with contextlib.suppress(Exception):
            await stopping
    log.info("provider stopped", extra={"fields": {"event": "stopped"}})


def _lead_unreachable(exc: BaseException) -> bool:
    """Retry only while the lead cannot be reached, when its nonce was spent or dropped before the
    offer arrived (a Challenge flood can evict it: a fresh one is asked for), or while the lead holds
    its maximum of offers awaiting a possession proof (RESOURCE_EXHAUSTED); any other answer is final."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and (exc.details() or "").startswith("nonce:"):
        return True
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return True
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def _reap(service: ProviderService, stop: asyncio.Event) -> None:
    """Reclaim unattached and idle sessions every ``REAP_EVERY_S`` until ``stop``."""
    from verisplit.impl.node.provider import REAP_EVERY_S

    while not stop.is_set():
        service.reap_idle()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=REAP_EVERY_S)


async def _fresh_offer(admission: pb_grpc.AdmissionStub, service: ProviderService, counter: CounterFile,
                       lifetime_ms: int) -> pb.SignedOffer:
    """The offer re-signed for one registration: the lead's fresh nonce and key (``Admission.Challenge``),
    an expiry ``lifetime_ms`` ahead and the next counter value. A lead without the Admission service
    (UNIMPLEMENTED) gets the offer without a nonce; a lead that enforces admission refuses that."""
    import dataclasses

    nonce, lead_key = b"", bytes(32)
    try:
        reply = await admission.Challenge(pb.ChallengeRequest(public_key=service.offer.public_key), timeout=5)
        nonce, lead_key = bytes(reply.nonce), bytes(reply.lead_public_key)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    now = int(time.time() * 1000)
    service.use_offer(dataclasses.replace(service.offer, issued_at_ms=now, lead_public_key=lead_key, nonce=nonce,
                                          expires_at_ms=now + lifetime_ms, heartbeat_counter=counter.next()))
    return pb.SignedOffer(offer=offer_fields_to_pb(service.offer), signature=service.offer_signature)


async def _register(registry: pb_grpc.RegistryStub, signed: Callable[[], Awaitable[pb.SignedOffer]], stop: asyncio.Event,
                    service: ProviderService, limiter: Every, lead: str, metrics: "ProviderMetrics") -> float | None:
    """Register until accepted, retrying with exponential backoff (0.2 s doubling to 5 s, tenacity)
    while the lead is unreachable; None if ``stop`` is set first (the backoff sleep wakes on it).
    A refusal (bad signature, banned key, wrong model) is permanent and raises RuntimeError."""

    async def sleep_unless_stopped(seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    def report(state: tenacity.RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "?"
        metrics.lead_unreachable.inc()
        # A lead that never comes up must not look like a hang: one WARNING per UNREACHABLE_LOG_S.
        level = logging.WARNING if delay >= 5.0 else logging.INFO
        limiter.log(log, level, f"lead-{level}", "lead at %s not reachable (%s); retrying registration every %.1fs",
                    lead, code, delay)

    async def register_once() -> pb.RegisterResponse:
        return await registry.Register(await signed(), timeout=5)

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(_lead_unreachable),
        wait=tenacity.wait_exponential(multiplier=0.2, min=0.2, max=5.0),
        stop=tenacity.stop_when_event_set(stop),  # type: ignore[arg-type]  # duck-typed is_set()
        sleep=sleep_unless_stopped, before_sleep=report, reraise=True)
    try:
        reply = await retrying(register_once)
    except grpc.aio.AioRpcError as exc:
        if _lead_unreachable(exc):  # stopped while the lead was still unreachable
            return None
        raise RuntimeError(f"lead refused the offer: {exc.code().name}: {exc.details()}") from None
    if len(reply.lead_public_key) != 32:
        raise RuntimeError("lead answered the registration without its 32-byte session key")
    service.lead_public_key = bytes(reply.lead_public_key)  # only this lead's session openings are served
    return max(reply.heartbeat_interval_ms / 1000.0, 0.05)


def _heartbeat(provider_id: str, key: SigningKey, leaving: bool, counter: int) -> pb.HeartbeatRequest:
    now = int(time.time() * 1000)
    signature = key.sign(heartbeat_signing_bytes(provider_id, now, leaving, counter)).signature
    return pb.HeartbeatRequest(provider_id=provider_id, sent_at_ms=now, leaving=leaving, signature=signature,
                               counter=counter)


def _write_ready(path: Path, data: dict[str, object]) -> None:
    """Atomically write the readiness file the parent process waits for."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
