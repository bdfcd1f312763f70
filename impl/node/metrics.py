"""Prometheus metrics of the lead (served on its HTTP ``/metrics``) and of a provider (``--metrics``).

Each role has its own ``CollectorRegistry`` (several leads or providers may live in one test process).
Names follow Prometheus conventions: ``_total`` counters, ``_seconds`` histograms, base units.

Lead: ``verisplit_lead_requests_total{status,reason}``, ``..._tokens_total{kind}``,
``..._fee_total``, ``..._request_seconds{stream}``, ``..._time_to_first_token_seconds``,
``..._http_requests_total{method,route,code}``, ``..._audits_total{result}``,
``..._ejections_total``, ``..._settlements_total``, ``..._cut_requests_total``, and read at scrape
time: ``..._providers``, ``..._banned_keys``, ``..._ready``, ``..._inflight_requests``,
``..._commitments_checked_total``.

Provider: ``verisplit_provider_rpcs_total{method,code}``, ``..._rpc_seconds{method}``,
``..._steps_total``, ``..._positions_total``, ``..._step_seconds``, ``..._lead_unreachable_total``,
``..._registered``, ``..._info{provider_id,model,first_layer,end_layer}``, and read at scrape
time: ``..._sessions_open``, ``..._kv_tokens_reserved``, ``..._kv_capacity_tokens``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no *_created series: they double the output and no dashboard uses them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Callback:
    """A collector whose samples are read from live state at scrape time."""

    def __init__(self, read: Callable[[], Iterator[Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        yield from self._read()


class LeadMetrics:
    """Counters and histograms of one lead; ``attach(lead, drain)`` adds the scrape-time gauges."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("verisplit_lead_requests", "Finished requests by status and abort reason.",
                                ["status", "reason"], registry=r)
        self.tokens = Counter("verisplit_lead_tokens", "Tokens of finished requests (prompt, completion).",
                              ["kind"], registry=r)
        self.fee = Counter("verisplit_lead_fee", "Fees charged (work units x price, summed).", registry=r)
        self.latency = Histogram("verisplit_lead_request_seconds", "Completion request latency, arrival to last byte.",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("verisplit_lead_time_to_first_token_seconds", "Streamed requests: arrival to first token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.http = Counter("verisplit_lead_http_requests", "HTTP requests by method, route and status code.",
                            ["method", "route", "code"], registry=r)
        self.audits = Counter("verisplit_lead_audits", "Audited segments by result (pass, fail).", ["result"], registry=r)
        self.ejections = Counter("verisplit_lead_ejections", "Providers ejected (offer removed, key banned).", registry=r)
        self.settlements = Counter("verisplit_lead_settlements", "Settlement records written to the ledger.", registry=r)
        self.settlement_errors = Counter("verisplit_lead_settlement_errors",
                                         "Finished requests whose settlement or hooks reported errors.", registry=r)
        self.cut = Counter("verisplit_lead_cut_requests", "Requests cut short by a shutdown.", registry=r)

    def attach(self, lead: Any, drain: Any) -> None:
        def read() -> Iterator[Any]:
            entries = lead.registry.entries()
            yield GaugeMetricFamily("verisplit_lead_providers", "Live provider offers.", value=len(entries))
            yield GaugeMetricFamily("verisplit_lead_banned_keys", "Banned provider keys.",
                                    value=len(lead.registry.banned()))
            try:
                lead.route()
                ready = 1.0
            except Exception:  # noqa: BLE001 - NoCohortError (or anything else): not ready
                ready = 0.0
            if drain is not None and drain.draining:
                ready = 0.0
            yield GaugeMetricFamily("verisplit_lead_ready", "1 when a cohort covers the model.", value=ready)
            yield GaugeMetricFamily("verisplit_lead_inflight_requests", "HTTP requests being served.",
                                    value=drain.inflight if drain is not None else 0)
            yield CounterMetricFamily("verisplit_lead_commitments_checked", "Commitments that passed receipt checks.",
                                      value=lead.commitments_checked)

        self.registry.register(_Callback(read))

    def observe_http_request(self, fields: dict[str, Any]) -> None:
        if fields.get("latency_s") is not None:
            self.latency.labels(stream=str(bool(fields.get("stream"))).lower()).observe(fields["latency_s"])
        if fields.get("ttft_s") is not None:
            self.ttft.observe(fields["ttft_s"])
        if fields.get("cut"):
            self.cut.inc()

    def observe_record(self, fields: dict[str, Any]) -> None:
        self.requests.labels(status=fields.get("status") or "unknown", reason=fields.get("reason") or "").inc()
        self.tokens.labels(kind="prompt").inc(fields.get("prompt_tokens") or 0)
        self.tokens.labels(kind="completion").inc(fields.get("completion_tokens") or 0)
        self.fee.inc(max(0, int(fields.get("fee") or 0)))
        audits = len(fields.get("audited_segments") or [])
        failures = int(fields.get("audit_failures") or 0)
        if audits:
            self.audits.labels(result="pass").inc(audits - failures)
            self.audits.labels(result="fail").inc(failures)
        self.ejections.inc(len(fields.get("ejected") or []))
        if fields.get("settled"):
            self.settlements.inc()
        if fields.get("errors"):
            self.settlement_errors.inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ProviderMetrics:
    """Counters and histograms of one provider; ``attach(service, ...)`` adds the scrape-time gauges."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.rpcs = Counter("verisplit_provider_rpcs", "Provider RPCs by method and status code.", ["method", "code"],
                            registry=r)
        self.rpc_seconds = Histogram("verisplit_provider_rpc_seconds", "Unary RPC handling time.", ["method"],
                                     buckets=STEP_BUCKETS, registry=r)
        self.steps = Counter("verisplit_provider_steps", "Steps computed (one per request step).", registry=r)
        self.positions = Counter("verisplit_provider_positions", "Token positions computed by this provider.",
                                 registry=r)
        self.step_seconds = Histogram("verisplit_provider_step_seconds", "Input received to output committed, per step.",
                                      buckets=STEP_BUCKETS, registry=r)
        self.lead_unreachable = Counter("verisplit_provider_lead_unreachable",
                                        "Registrations or heartbeats that could not reach the lead.", registry=r)
        self.registered = Gauge("verisplit_provider_registered", "1 while the lead lists this provider's offer.",
                                registry=r)
        self.info = Gauge("verisplit_provider_info", "The served layer range (value 1).",
                          ["provider_id", "model", "first_layer", "end_layer"], registry=r)

    def attach(self, service: Any) -> None:
        def read() -> Iterator[Any]:
            yield GaugeMetricFamily("verisplit_provider_sessions_open", "Open sessions.",
                                    value=len(getattr(service, "sessions", {})))
            yield GaugeMetricFamily("verisplit_provider_kv_tokens_reserved", "KV-cache positions reserved.",
                                    value=getattr(service, "kv_tokens_reserved", 0))
            yield GaugeMetricFamily("verisplit_provider_kv_capacity_tokens", "KV-cache positions available in all.",
                                    value=getattr(service, "kv_capacity_tokens", 0))

        self.registry.register(_Callback(read))

    def interceptor(self) -> Any:
        """A ``grpc.aio.ServerInterceptor`` counting RPCs, timing unary calls and steps."""
        return _interceptor(self)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _code(context: Any, failed: bool) -> str:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - an aio context without a code
        code = None
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return getattr(code, "name", str(code))


def _interceptor(metrics: ProviderMetrics) -> Any:
    import grpc

    class MetricsInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = await continuation(details)
            if handler is None:
                return None
            method = details.method.rsplit("/", 1)[-1]
            if handler.unary_unary is not None:
                return handler._replace(unary_unary=_unary(handler.unary_unary, method))
            if handler.stream_stream is not None:
                return handler._replace(stream_stream=_stream(handler.stream_stream, method))
            return handler

    def _unary(inner: Any, method: str) -> Any:
        async def call(request: Any, context: Any) -> Any:
            started, failed = time.perf_counter(), True
            try:
                reply = await inner(request, context)
                failed = False
                return reply
            finally:
                metrics.rpc_seconds.labels(method=method).observe(time.perf_counter() - started)
                metrics.rpcs.labels(method=method, code=_code(context, failed)).inc()
        return call

    def _stream(inner: Any, method: str) -> Any:
        async def call(request_iterator: Any, context: Any) -> Any:
            received: list[float] = []

            async def timed() -> Any:
                async for frame in request_iterator:
                    received.append(time.perf_counter())
                    yield frame

            failed = True
            try:
                async for reply in inner(timed(), context):
                    commitment = getattr(reply, "commitment", None)
                    if commitment is not None and reply.HasField("commitment"):
                        metrics.steps.inc()
                        metrics.positions.inc(commitment.num_positions)
                        if received:
                            metrics.step_seconds.observe(time.perf_counter() - received[-1])
                        received.clear()
                    yield reply
                failed = False
            finally:
                metrics.rpcs.labels(method=method, code=_code(context, failed)).inc()
        return call

    return MetricsInterceptor()


def start_metrics_listener(host: str, port: int, metrics: Any) -> tuple[Any, int]:
    """Serve ``metrics.registry`` on http://HOST:PORT/metrics (a thread); returns (server, bound port).
    A used port raises OSError (``prometheus_client.start_http_server`` binds without SO_REUSEPORT)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server, int(server.server_address[1])
