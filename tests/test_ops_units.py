"""Units of the operator tooling (issue 20): automatic layer choice, rate-limited warnings, the joined
request log line, log formats, the shutdown guard, and gRPC options that never share a port."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math

import pytest

from verisplit.impl.node.drain import Drain, StreamCut, guard_tokens, shutdown_error
from verisplit.impl.node.framing import grpc_options
from verisplit.impl.node.ops import Every, JsonFormatter, RequestLog, TextFormatter
from verisplit.impl.node.placement import PlacementError, choose_range, default_length, parse_auto
from verisplit.spec.cohort import ModelSpec, Offer

MODEL = ModelSpec("m", 8)


def offer(pid: str, first: int, end: int, price: int = 1) -> Offer:
    return Offer(pid, pid.encode().ljust(32, b"k"), first, end, price, "127.0.0.1:1")


def test_auto_fills_the_gap_first():
    offers = [offer("a", 0, 3), offer("b", 6, 8)]
    choice = choose_range(offers, MODEL, price=1)
    assert (choice.first_layer, choice.end_layer, choice.uncovered) == (3, 6, 3)
    assert not math.isinf(choice.cost)  # the cohort is complete with it


def test_auto_length_given_prefers_most_uncovered_then_least_covered():
    offers = [offer("a", 0, 4), offer("b", 0, 4), offer("c", 4, 8)]
    choice = choose_range(offers, MODEL, price=1, length=4)
    assert (choice.first_layer, choice.end_layer) == (4, 8)  # layers 4..7 have one provider, 0..3 two
    assert choose_range([offer("a", 0, 2)], MODEL, price=1, length=2).first_layer == 2


def test_auto_breaks_coverage_ties_by_cheapest_cohort():
    # 0..3 by a cheap provider, 4..7 by an expensive one, both once: a 4-layer window at either end
    # has coverage 4; replacing the expensive half makes the cheaper cohort
    offers = [offer("cheap", 0, 4, price=1), offer("dear", 4, 8, price=9)]
    choice = choose_range(offers, MODEL, price=2, length=4)
    assert (choice.first_layer, choice.end_layer) == (4, 8)


def test_auto_defaults():
    assert default_length([], 8) == 8
    assert default_length([offer("a", 0, 2), offer("b", 2, 8)], 8) == 6
    assert default_length([offer("a", 0, 2), offer("b", 5, 8)], 8) == 3
    assert parse_auto("auto") == 0 and parse_auto("AUTO:3") == 3 and parse_auto("0:4") is None
    with pytest.raises(PlacementError):
        parse_auto("auto:x")
    with pytest.raises(PlacementError):
        choose_range([], MODEL, price=1, length=9)


def test_every_rate_limits_and_counts_what_it_held_back():
    now = [0.0]
    limiter = Every(30.0, clock=lambda: now[0])
    assert limiter.allow("lead") == 0
    for _ in range(5):
        now[0] += 1
        assert limiter.allow("lead") is None
    assert limiter.allow("other") == 0
    now[0] = 31.0
    assert limiter.allow("lead") == 5
    stream = io.StringIO()
    logger = logging.getLogger("verisplit.test.every")
    logger.handlers, logger.propagate = [logging.StreamHandler(stream)], False
    limiter = Every(30.0, clock=lambda: now[0])
    assert limiter.log(logger, logging.WARNING, "k", "lead %s unreachable", "x")
    assert not limiter.log(logger, logging.WARNING, "k", "lead %s unreachable", "x")
    now[0] += 31
    assert limiter.log(logger, logging.WARNING, "k", "lead %s unreachable", "x")
    assert stream.getvalue().splitlines() == ["lead x unreachable", "lead x unreachable (1 similar in the last 30s)"]


def test_request_log_joins_both_sides_once(caplog):
    log = RequestLog()
    with caplog.at_level(logging.INFO, logger="verisplit.requests"):
        log.record_done("r1", {"status": "completed", "fee": 7, "audit": "pass"})
        assert not caplog.records
        log.http_done("r1", {"latency_s": 0.5, "http_status": 200})
        log.http_done("r2", {"latency_s": 0.1, "http_status": 200})
        log.flush()
    lines = [r for r in caplog.records if r.name == "verisplit.requests"]
    assert [r.fields["request_id"] for r in lines] == ["r1", "r2"]
    assert lines[0].fields["fee"] == 7 and lines[0].fields["latency_s"] == 0.5 and lines[0].levelno == logging.INFO
    assert "status" not in lines[1].fields


def test_log_formats():
    record = logging.LogRecord("verisplit.requests", logging.INFO, __file__, 1, "request %s", ("r1",), None)
    record.fields = {"fee": 3, "cohort": ["a[0:2]"], "culprit": None}
    data = json.loads(JsonFormatter().format(record))
    assert data["msg"] == "request r1" and data["level"] == "info" and data["fee"] == 3 and data["ts"].endswith("Z")
    text = TextFormatter().format(record)
    assert text.endswith('request r1 fee=3 cohort=["a[0:2]"]')


def test_grpc_options_never_share_a_port_and_agree_on_keepalive():
    options = dict(grpc_options())
    assert options["grpc.so_reuseport"] == 0
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] <= options["grpc.keepalive_time_ms"]
    assert options["grpc.keepalive_permit_without_calls"] == 1


class _Run:
    def __init__(self) -> None:
        self.request_id, self.generated, self.finish_reason, self.closed = "req-1", [], None, False

    async def tokens(self):
        try:
            for token in range(100):
                self.generated.append(token)
                yield token
        finally:
            self.closed = True


class _Lead:
    def __init__(self, drain: Drain | None) -> None:
        self.ops_drain = drain

    def request_info(self, request_id: str) -> dict:
        return {"id": request_id}


def test_guard_passes_everything_without_a_drain_and_cuts_at_a_token_when_draining():
    async def consume(lead: _Lead, run: _Run, cut_after: int | None) -> list[int]:
        got = []
        async for token in guard_tokens(lead, run):
            got.append(token)
            if cut_after is not None and len(got) == cut_after:
                lead.ops_drain.cut()
        return got

    run = _Run()
    assert asyncio.run(consume(_Lead(None), run, None)) == list(range(100))
    run, drain = _Run(), Drain(grace_s=0.0)
    with pytest.raises(StreamCut) as info:
        asyncio.run(consume(_Lead(drain), run, 3))
    assert info.value.tokens == 3 and run.closed and run.finish_reason == "shutdown"
    assert shutdown_error("req-1", 3)["error"]["code"] == "shutting_down"


def _serve(app, drain: Drain, path: str = "/v1/completions") -> list[dict]:
    from verisplit.impl.node.drain import OpsMiddleware

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    asyncio.run(OpsMiddleware(app, drain)(scope, receive, send))
    return sent


def test_middleware_ends_cut_and_cancelled_responses_properly():
    sse = [(b"content-type", b"text/event-stream"), (b"x-verisplit-request-id", b"req-9")]

    async def cut_before_start(scope, receive, send):
        raise StreamCut("req-8", 2)

    sent = _serve(cut_before_start, Drain())
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"])["error"]["code"] == "shutting_down"

    async def cut_mid_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": sse})
        await send({"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True})
        raise BaseExceptionGroup("task group", [StreamCut("req-9", 1)])

    sent = _serve(cut_mid_stream, Drain())
    tail = sent[-1]["body"].decode()
    assert sent[-1]["more_body"] is False and tail.endswith("data: [DONE]\n\n") and '"shutting_down"' in tail

    async def cancelled(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": sse})
        raise asyncio.CancelledError()

    draining = Drain()
    draining.begin()
    sent = _serve(cancelled, draining, path="/v1/models")
    assert sent[-1]["more_body"] is False and "[DONE]" in sent[-1]["body"].decode()
    assert draining.inflight == 0

    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        _serve(broken, Drain())
    refused = _serve(broken, draining)  # draining: new completion requests are refused before the app runs
    assert refused[0]["status"] == 503
