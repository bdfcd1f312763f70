"""Run one provider: load its layer range, bind its gRPC port, register with the lead, heartbeat.

Invariants: the signed offer names exactly the loaded range, its weights digest and the bound
(or advertised) endpoint; registration retries only while the lead is unreachable (any refusal is
final); on ``stop`` the provider says it is leaving and closes its server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tenacity
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.node.framing import (DEFAULT_MAX_TENSOR_BYTES, add_service, grpc_options, offer_fields_to_pb,
                                         open_channel, server_credentials)
from verisplit.impl.node.provider import ProviderService
from verisplit.impl.records.keys import SignedFields, heartbeat_signing_bytes
from verisplit.impl.runtime.segment import Segment
from verisplit.impl.runtime.tensors import dtype_name
from verisplit.spec.commitment import PROTOCOL_VERSION

log = logging.getLogger("verisplit.provider")


@dataclass
class ProviderSettings:
    """Everything ``verisplit provider serve`` needs (see cli_net)."""

    checkpoint: Path
    first_layer: int
    end_layer: int
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


async def serve_provider(settings: ProviderSettings, stop: asyncio.Event) -> None:
    """Load the slice, start the server, register with the lead, heartbeat until ``stop`` is set."""
    from verisplit.impl.runtime.loader import load_segment

    # A progress bar for an operator watching a terminal (large slices take minutes); none in logs.
    segment = await asyncio.to_thread(load_segment, settings.checkpoint, settings.first_layer, settings.end_layer,
                                      device=settings.device, dtype=settings.dtype, progress=sys.stderr.isatty())
    settings.behaviour.prepare(segment)
    per_token = segment.kv_bytes_per_token()
    capacity = int(settings.kv_budget_mb * (1 << 20)) // max(per_token, 1)
    server = grpc.aio.server(options=grpc_options())
    host = settings.listen.rpartition(":")[0].strip("[]")
    if settings.tls_cert is not None and settings.tls_key is not None:
        port = server.add_secure_port(settings.listen, server_credentials(settings.tls_cert, settings.tls_key))
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise RuntimeError(f"listen: could not bind {settings.listen}")
    advertise = settings.advertise or f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    offer = SignedFields(
        protocol_version=PROTOCOL_VERSION, provider_id=settings.provider_id, public_key=bytes(settings.key.verify_key),
        model_id=segment.model_id, weights_digest=segment.weights_digest, num_layers=segment.config.num_hidden_layers,
        first_layer=segment.first_layer, end_layer=segment.end_layer, price_per_work_unit=settings.price,
        endpoint=advertise, kv_capacity_tokens=capacity, issued_at_ms=int(time.time() * 1000),
        dtype=dtype_name(segment.dtype))
    def load_range(first_layer: int, end_layer: int) -> Segment:
        return load_segment(settings.checkpoint, first_layer, end_layer, device=settings.device, dtype=settings.dtype)

    service = ProviderService(segment, settings.key, settings.behaviour, offer, capacity, settings.max_tensor_bytes,
                              load_range=load_range)
    add_service(pb_grpc.add_ProviderServicer_to_server, service, server)
    await server.start()
    log.info("provider %s serving layers [%d, %d) of %s on %s", settings.provider_id, segment.first_layer,
             segment.end_layer, segment.model_id, advertise)
    channel = open_channel(settings.lead, settings.tls_ca)
    registry = pb_grpc.RegistryStub(channel)
    signed = pb.SignedOffer(offer=offer_fields_to_pb(offer), signature=service.offer_signature)
    try:
        interval = await _register(registry, signed, stop, service)
        if interval is None:
            return
        if settings.ready_file is not None:
            _write_ready(settings.ready_file, {"provider_id": settings.provider_id, "endpoint": advertise,
                                               "first_layer": segment.first_layer, "end_layer": segment.end_layer})
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                break
            except asyncio.TimeoutError:
                pass
            service.reap_idle()
            try:
                reply = await registry.Heartbeat(_heartbeat(settings.provider_id, settings.key, False), timeout=5)
                if not reply.known:
                    log.warning("lead no longer lists %s; registering again", settings.provider_id)
                    interval = await _register(registry, signed, stop, service) or interval
            except grpc.aio.AioRpcError as exc:
                log.warning("heartbeat to %s failed: %s %s", settings.lead, exc.code().name, exc.details())
        try:
            await registry.Heartbeat(_heartbeat(settings.provider_id, settings.key, True), timeout=2)
        except grpc.aio.AioRpcError:
            pass
    finally:
        await server.stop(grace=1.0)
        await channel.close()


def _lead_unreachable(exc: BaseException) -> bool:
    """Retry only while the lead cannot be reached; any other answer is final."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                                                    grpc.StatusCode.DEADLINE_EXCEEDED)


async def _register(registry: pb_grpc.RegistryStub, signed: pb.SignedOffer, stop: asyncio.Event,
                    service: ProviderService) -> float | None:
    """Register until accepted, retrying with exponential backoff (0.2 s doubling to 5 s, tenacity)
    while the lead is unreachable; None if ``stop`` is set first (the backoff sleep wakes on it).
    A refusal (bad signature, banned key, wrong model) is permanent and raises RuntimeError."""
    warned = False

    async def sleep_unless_stopped(seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    def report(state: tenacity.RetryCallState) -> None:
        nonlocal warned
        delay = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "?"
        # Say so once, loudly (a lead that never comes up must not look like a hang); then quietly.
        level = logging.WARNING if delay >= 5.0 and not warned else logging.INFO
        warned = warned or level == logging.WARNING
        log.log(level, "lead not reachable yet (%s); still retrying every %.1fs", code, delay)

    async def register_once() -> pb.RegisterResponse:
        return await registry.Register(signed, timeout=5)

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


def _heartbeat(provider_id: str, key: SigningKey, leaving: bool) -> pb.HeartbeatRequest:
    now = int(time.time() * 1000)
    signature = key.sign(heartbeat_signing_bytes(provider_id, now, leaving)).signature
    return pb.HeartbeatRequest(provider_id=provider_id, sent_at_ms=now, leaving=leaving, signature=signature)


def _write_ready(path: Path, data: dict[str, object]) -> None:
    """Atomically write the readiness file the parent process waits for."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
