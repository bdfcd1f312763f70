"""Clean shutdown of the lead's HTTP side, and what the HTTP layer measures of each request.

Sequence on the first SIGINT/SIGTERM (``Drain``): stop accepting (``/readyz`` answers 503, new
completion requests get 503 ``shutting_down``, uvicorn closes its listening socket); let in-flight
requests end by themselves for ``grace_s``; then *cut* those still running at their next token
(``guard_tokens``): the relay is closed (its record is saved, ``finish_reason`` "shutdown"), a
streaming client gets an SSE ``error`` event then ``data: [DONE]``, a non-streaming one a 503 error
body. A second signal cuts at once. A request still inside a provider step ``cut_timeout_s`` after
the cut is cancelled by uvicorn; ``OpsMiddleware`` ends its response the same way, without a traceback.

``StreamCut`` is a ``BaseException`` (like ``CancelledError``) so that it passes the app's
``Exception`` handlers and reaches ``OpsMiddleware``, the outermost layer, which answers for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator

log = logging.getLogger("verisplit.lead")

REQUEST_ID_HEADER = b"x-verisplit-request-id"
COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")


class StreamCut(BaseException):
    """A request cut at a token boundary by a shutdown (after its relay was closed and recorded)."""

    def __init__(self, request_id: str, tokens: int) -> None:
        super().__init__(f"request {request_id} cut by shutdown after {tokens} tokens")
        self.request_id = request_id
        self.tokens = tokens


class Drain:
    """Shutdown state shared by the HTTP middleware, the token guard and ``/readyz``."""

    def __init__(self, grace_s: float = 10.0, cut_timeout_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.cut_timeout_s = cut_timeout_s
        self.draining = False
        self.cutting = False
        self.inflight = 0

    def begin(self) -> None:
        self.draining = True

    def cut(self) -> None:
        self.draining = True
        self.cutting = True

    async def wait_idle_or_grace(self) -> None:
        """Return when no request is in flight, or after ``grace_s`` (then cut the rest), or on ``cut()``."""
        deadline = time.monotonic() + self.grace_s
        while self.inflight > 0 and not self.cutting and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.inflight > 0 and not self.cutting:
            log.info("shutdown: grace of %.1fs over; cutting %d in-flight request(s) at their next token",
                     self.grace_s, self.inflight)
        self.cut()


def shutdown_error(request_id: str | None, tokens: int | None) -> dict[str, Any]:
    """The OpenAI-shaped error body of a request cut (or refused) by a shutdown."""
    what = f"request {request_id} was cut after {tokens} tokens" if request_id else "request refused"
    return {"error": {"message": f"the lead is shutting down: {what}; retry on another lead or later",
                      "type": "server_error", "param": None, "code": "shutting_down", "request_id": request_id}}


async def guard_tokens(lead: Any, run: Any) -> AsyncIterator[int]:
    """``run.tokens()``, cut at the next token once the lead's drain cuts: the relay is closed first
    (so the request is recorded), then ``StreamCut`` is raised. Without a drain (a lead not started by
    ``serve_lead``) this is exactly ``run.tokens()``."""
    drain = getattr(lead, "ops_drain", None)
    inner = run.tokens()
    try:
        async for token in inner:
            yield token
            if drain is not None and drain.cutting:
                run.finish_reason = run.finish_reason or "shutdown"
                await inner.aclose()
                await _recorded(lead, run.request_id, drain.cut_timeout_s)
                raise StreamCut(run.request_id, len(run.generated))
    finally:
        await inner.aclose()


async def _recorded(lead: Any, request_id: str, timeout: float) -> None:
    """Wait (bounded) until the lead has saved the request: closing ``run.tokens()`` leaves the relay
    generator to asyncio's finaliser, which records it a few loop turns later."""
    deadline = time.monotonic() + timeout
    while lead.request_info(request_id) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def _find_cut(exc: BaseException) -> StreamCut | None:
    if isinstance(exc, StreamCut):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_cut(inner)
            if found is not None:
                return found
    return None


class OpsMiddleware:
    """Outermost ASGI layer: counts in-flight requests, refuses new completions while draining, ends
    cut or cancelled responses properly, and reports each request's HTTP side to ``request_log``."""

    def __init__(self, app: Any, drain: Drain, request_log: Any = None, metrics: Any = None) -> None:
        self.app = app
        self.drain = drain
        self.request_log = request_log
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        started = time.perf_counter()
        state: dict[str, Any] = {"started": False, "status": 500, "request_id": None, "sse": False,
                                 "ttft": None, "complete": False}
        if self.drain.draining and path in COMPLETION_PATHS:
            await _send_json(send, 503, shutdown_error(None, None))
            self._count(scope, 503)
            return

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"], state["status"] = True, message.get("status", 200)
                for name, value in message.get("headers") or ():
                    if name.lower() == REQUEST_ID_HEADER:
                        state["request_id"] = value.decode("latin-1")
                    elif name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        state["sse"] = True
            elif message["type"] == "http.response.body":
                if state["sse"] and state["ttft"] is None and _has_text(message.get("body", b"")):
                    state["ttft"] = time.perf_counter() - started
                if not message.get("more_body", False):
                    state["complete"] = True
            await send(message)

        cut: StreamCut | None = None
        self.drain.inflight += 1
        try:
            await self.app(scope, receive, tracked_send)
        except BaseException as exc:  # noqa: BLE001 - StreamCut, CancelledError at shutdown; others re-raised
            cut = _find_cut(exc)
            cancelled = isinstance(exc, asyncio.CancelledError) and self.drain.draining
            if cut is None and not cancelled:
                raise
            if cancelled:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
            await self._end_cut(send, state, cut)
        finally:
            self.drain.inflight -= 1
            self._count(scope, state["status"])
            if state["request_id"] is not None and self.request_log is not None and path in COMPLETION_PATHS:
                self.request_log.http_done(state["request_id"], {
                    "latency_s": round(time.perf_counter() - started, 6),
                    "ttft_s": None if state["ttft"] is None else round(state["ttft"], 6),
                    "http_status": state["status"], "stream": state["sse"], "cut": cut is not None or None,
                    "path": path})

    async def _end_cut(self, send: Any, state: dict[str, Any], cut: StreamCut | None) -> None:
        """Finish a response that a shutdown interrupted (nothing is raised from here)."""
        request_id = cut.request_id if cut is not None else state["request_id"]
        body = shutdown_error(request_id, cut.tokens if cut is not None else None)
        with contextlib.suppress(Exception):
            if not state["started"]:
                state["status"] = 503
                await _send_json(send, 503, body)
            elif not state["complete"]:
                tail = b""
                if state["sse"]:
                    tail = b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"
                await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _count(self, scope: dict[str, Any], status: int) -> None:
        if self.metrics is None:
            return
        route = getattr(scope.get("route"), "path", None) or ("unmatched" if status == 404 else scope.get("path", ""))
        self.metrics.http.labels(method=scope.get("method", ""), route=route, code=str(status)).inc()


def _has_text(body: bytes) -> bool:
    """Whether an SSE chunk carries generated text (a completion's ``text`` or a chat ``delta.content``)."""
    if not body.startswith(b"data: {"):
        return False
    try:
        choices = json.loads(body[6:]).get("choices") or [{}]
    except (ValueError, AttributeError):
        return False
    first = choices[0] if isinstance(choices[0], dict) else {}
    delta = first.get("delta") if isinstance(first.get("delta"), dict) else {}
    return bool(first.get("text") or delta.get("content"))


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data, "more_body": False})
