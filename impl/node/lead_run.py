"""Run the lead: bind both ports, then build the lead (data folder, key, ledger), serve, drain, stop.

Order (each step only after the previous one succeeded): bind the HTTP socket and the Registry gRPC
port (``BindError`` naming the address, nothing written yet); ``build()`` the ``Lead`` (this is when
the data folder, lead key and ledger are created); settle every request an earlier run recorded but
never settled (crash recovery, ``AuditService.settle_pending``); start gRPC, then HTTP (the OpenAI API plus
``/readyz`` and ``/metrics``, behind ``OpsMiddleware``); log and write the ready file. On the first
signal: drain (``verisplit.impl.node.drain``), stop the registry, finish the post-request hooks (audits,
settlement) within ``hooks_timeout_s``, close the lead. The whole shutdown is bounded by
``grace_s + cut_timeout_s + hooks_timeout_s`` plus a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from verisplit.impl.node.drain import Drain, OpsMiddleware
from verisplit.impl.node.metrics import LeadMetrics
from verisplit.impl.node.ops import RequestLog, ops_router, request_hook
from verisplit.impl.node.ports import bind_grpc, bind_socket, install_stop

log = logging.getLogger("verisplit.lead")


@dataclass
class LeadServeSettings:
    """Where and how ``serve_lead`` listens and shuts down (see ``lead serve --help``)."""

    listen: str
    http_host: str
    http_port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ready_file: Path | None = None
    grace_s: float = 10.0
    cut_timeout_s: float = 5.0
    hooks_timeout_s: float = 30.0
    api: Any = None  # ApiLimits (keys, body bound, concurrency) of the HTTP API; None: the defaults, no keys


def build_http_app(lead: Any, drain: Drain, metrics: LeadMetrics, request_log: RequestLog, limits: Any = None) -> Any:
    """The ASGI app: the OpenAI API of ``verisplit.impl.node.api`` with ``/readyz`` and ``/metrics``
    added, behind ``ApiGuard`` (keys, limits; ``limits`` or the defaults) inside ``OpsMiddleware``.
    Also installs the lead's drain, metrics and request hook."""
    from verisplit.impl.node.api import create_app
    from verisplit.impl.node.api_limits import ApiGuard, ApiLimits

    lead.ops_drain = drain
    metrics.attach(lead, drain)
    lead.post_request_hooks.append(request_hook(lead, request_log))
    app = create_app(lead)
    app.include_router(ops_router(lead, drain, metrics))
    return OpsMiddleware(ApiGuard(app, limits or ApiLimits()), drain, request_log, metrics)


class _DropCancelNotice(logging.Filter):
    """uvicorn logs an ERROR when it cancels requests after its graceful timeout; ours says it better."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Cancel ")


async def serve_lead(settings: LeadServeSettings, build: Callable[[], Any], stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or a signal arrives); raises ``BindError`` before ``build()`` runs
    when a port is taken."""
    import grpc

    from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
    from verisplit.impl.node.framing import add_service, grpc_options
    from verisplit.impl.node.admission import AdmissionService
    from verisplit.impl.node.registry import RegistryService

    stop = stop or asyncio.Event()
    hard = asyncio.Event()
    install_stop(stop, hard)
    sock = bind_socket("--http", settings.http_host, settings.http_port)
    server = grpc.aio.server(options=grpc_options())
    started = False
    lead = None
    try:
        grpc_port = bind_grpc(server, "--listen", settings.listen, settings.tls_cert, settings.tls_key)
        lead = build()
        await settle_pending(lead)
        drain = Drain(settings.grace_s, settings.cut_timeout_s)
        metrics = LeadMetrics()
        request_log = RequestLog(metrics)
        app = build_http_app(lead, drain, metrics, request_log, settings.api)
        add_service(pb_grpc.add_RegistryServicer_to_server, RegistryService(lead.registry), server)
        add_service(pb_grpc.add_AdmissionServicer_to_server, AdmissionService(lead.registry), server)
        await server.start()
        started = True
        http_server, serve_task = await _start_http(app, sock, settings)
        http = f"http://{_show(settings.http_host, sock.getsockname()[1])}"
        registry = f"{settings.listen.rpartition(':')[0]}:{grpc_port}"
        log.info("lead for %s: registry %s, HTTP %s; ready once providers cover layers 0..%d (see /readyz)",
                 lead.model_id, registry, http, lead.model_spec.num_layers - 1,
                 extra={"fields": {"event": "serving", "registry": registry, "http": http, "model": lead.model_id}})
        if settings.ready_file is not None:
            _write_ready(settings.ready_file, {"grpc": registry, "http": http})
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({serve_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        await _drain(http_server, serve_task, drain, hard, settings)
        await server.stop(grace=1.0)
        try:
            await asyncio.wait_for(_finish_hooks(lead), settings.hooks_timeout_s)
        except asyncio.TimeoutError:
            log.warning("shutdown: post-request hooks (audits, settlement) still running after %.0fs; "
                        "their requests stay recorded but unsettled", settings.hooks_timeout_s)
        request_log.flush()
        log.info("lead stopped", extra={"fields": {"event": "stopped"}})
    finally:
        if not started:
            sock.close()
        with contextlib.suppress(Exception):
            await server.stop(None)
        if lead is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lead.close(), 10.0)


async def settle_pending(lead: Any) -> list[str]:
    """Before serving: settle every request recorded by an earlier run of this lead but never settled
    (it was killed between saving the record and appending the settlement), exactly once."""
    audit = getattr(lead, "audit", None)
    if audit is None or not hasattr(audit, "settle_pending"):
        return []
    settled = await audit.settle_pending(lead.store)
    if settled:
        log.info("settled %d request(s) recorded before a restart", len(settled),
                 extra={"fields": {"event": "settled_pending", "count": len(settled)}})
    return settled


async def _start_http(app: Any, sock: Any, settings: LeadServeSettings) -> tuple[Any, asyncio.Task[None]]:
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_DropCancelNotice())
    from verisplit.impl.node.api_http import OpenAIH11Protocol

    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, http=OpenAIH11Protocol,
                            timeout_graceful_shutdown=int(settings.grace_s + settings.cut_timeout_s + 1))
    http_server = _QuietServer(config)
    serve_task = asyncio.create_task(http_server.serve(sockets=[sock]))
    while not http_server.started:
        if serve_task.done():
            await serve_task
            raise OSError("--http: the HTTP server stopped during startup")
        await asyncio.sleep(0.02)
    return http_server, serve_task


async def _drain(http_server: Any, serve_task: asyncio.Task[None], drain: Drain, hard: asyncio.Event,
                 settings: LeadServeSettings) -> None:
    """Stop accepting, let requests end within the grace, cut the rest; bounded in time."""
    if drain.inflight:
        log.info("shutting down: waiting up to %.0fs for %d in-flight request(s) (signal again to cut them now)",
                 settings.grace_s, drain.inflight, extra={"fields": {"event": "draining", "inflight": drain.inflight}})
    else:
        log.info("shutting down", extra={"fields": {"event": "draining", "inflight": 0}})
    drain.begin()
    http_server.should_exit = True
    grace = asyncio.create_task(drain.wait_idle_or_grace())
    hard_task = asyncio.create_task(hard.wait())
    hard_task.add_done_callback(lambda _: drain.cut())
    limit = settings.grace_s + settings.cut_timeout_s + 5.0
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
        await asyncio.wait_for(asyncio.shield(serve_task), limit)
    for task in (grace, hard_task):
        task.cancel()
    for _ in range(40):  # cancelled requests finish their response and record in a few loop turns
        if drain.inflight <= 0:
            break
        await asyncio.sleep(0.05)


async def _finish_hooks(lead: Any) -> None:
    """Wait for the post-request hooks, also those of requests whose relay asyncio finalises late."""
    for _ in range(3):
        await lead.drain_hooks()
        await asyncio.sleep(0.1)
    await lead.drain_hooks()


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_ready(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


try:
    import uvicorn as _uvicorn

    class _QuietServer(_uvicorn.Server):
        """uvicorn server that leaves signal handling to us (one stop event for both servers)."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

        def install_signal_handlers(self) -> None:
            return None
except ImportError:  # pragma: no cover - the net extra is missing; lead serve reports it
    _QuietServer = None  # type: ignore[assignment,misc]
