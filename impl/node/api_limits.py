"""The API's front door (ASGI): authentication, concurrency limits and the request body bound.

``ApiGuard`` wraps the FastAPI app (inside ``OpsMiddleware``). Per HTTP request, in this order:
1. Authentication (``api_auth``): every path but ``/healthz`` and ``/readyz`` needs a valid key when
   keys are configured (401 ``invalid_api_key``); operator paths (``OPERATOR_PATHS``: the provider
   list with the banned keys, audit settings, metrics) need an operator key (403).
2. Concurrency: at most ``max_concurrent`` completion requests in flight per key (per client IP
   without keys); one more is answered 429 ``rate_limit_exceeded`` with ``Retry-After``.
3. Body: a ``Content-Length`` over ``max_body_bytes`` is refused (413) before a byte is read; any
   other body (also chunked, without a length) is read while counting and refused (413) as soon as
   the count passes the bound, so no request ever holds more than ``max_body_bytes`` of body in memory
   (the rest of a refused body, up to ``DRAIN_FACTOR`` times the bound, is read and dropped so the
   client sees the 413); a body not complete within ``body_timeout_s`` is refused (408). The app
   then reads the buffered body.
Every answer given here is an OpenAI-shaped error body; the principal is left in
``scope["state"]["principal"]`` for the app (record ownership).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from verisplit.impl.node.api_auth import OPERATOR, ApiKeys, Principal

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
OPERATOR_PATHS = frozenset({"/v1/providers", "/v1/audit", "/metrics"})
LIMITED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_CONCURRENT = 16
RETRY_AFTER_S = 1
DRAIN_FACTOR = 64  # a refused body up to 64x the bound is read and dropped (the client then sees the 413)


@dataclass
class ApiLimits:
    """The guard's settings (``lead serve --api-keys/--operator-keys/--max-body-bytes/--max-concurrent``)."""

    keys: ApiKeys = field(default_factory=ApiKeys)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    body_timeout_s: float = 30.0  # a body still arriving after this long is refused (408): no slot is held forever


def error_body(message: str, code: str, type_: str = "invalid_request_error", param: str | None = None) -> bytes:
    """An OpenAI-shaped error body, ASCII-only JSON."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}},
                      separators=(",", ":")).encode("ascii")


async def send_error(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with ``body`` (JSON) and close the connection (an unread body must not be parsed as
    the next request)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def path_kind(path: str) -> str:
    """``"public"``, ``"operator"`` or ``"client"`` for a (decoded) request path; trailing slashes
    and repeated slashes do not change the kind."""
    normal = "/" + "/".join(p for p in path.split("/") if p)
    if normal in PUBLIC_PATHS:
        return "public"
    if normal in OPERATOR_PATHS or any(normal.startswith(p + "/") for p in OPERATOR_PATHS):
        return OPERATOR
    return "client"


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ApiGuard:
    """ASGI middleware enforcing ``ApiLimits`` (see the module docstring for the order of checks)."""

    def __init__(self, app: Any, limits: ApiLimits) -> None:
        self.app = app
        self.limits = limits
        self.active: dict[str, int] = defaultdict(int)  # principal -> completion requests in flight

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        kind = path_kind(scope.get("path", ""))
        principal = Principal(None, OPERATOR)
        if kind != "public":
            found = self.limits.keys.identify(_header(scope, b"authorization"))
            if found is None:
                await send_error(send, 401, error_body(
                    "invalid or missing API key: send 'Authorization: Bearer <key>' with a key this lead accepts",
                    "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
                return
            if kind == OPERATOR and found.role != OPERATOR:
                await send_error(send, 403, error_body(
                    f"{scope.get('path')} is an operator endpoint: it needs an operator key (--operator-keys)",
                    "operator_key_required", "permission_error"))
                return
            principal = found
        scope.setdefault("state", {})["principal"] = principal
        slot = None
        if scope.get("path") in LIMITED_PATHS:
            client = scope.get("client") or ("unknown", 0)
            slot = principal.owner or f"ip:{client[0]}"
            if self.active[slot] >= self.limits.max_concurrent:
                await send_error(send, 429, error_body(
                    f"too many concurrent requests for this {'key' if principal.owner else 'client address'}: "
                    f"at most {self.limits.max_concurrent} at a time; retry after the others finish",
                    "rate_limit_exceeded", "requests"), [(b"retry-after", str(RETRY_AFTER_S).encode())])
                return
            self.active[slot] += 1
        try:
            replay = await self._read_body(scope, receive, send)
            if replay is not None:
                await self.app(scope, replay, send)
        finally:
            if slot is not None:
                self.active[slot] -= 1
                if self.active[slot] <= 0:
                    del self.active[slot]

    async def _read_body(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Read the whole body within the bound and return a ``receive`` replaying it, or answer the
        error (400 bad length, 413 too large) and return None; a client gone returns None."""
        limit = self.limits.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await send_error(send, 400, error_body(f"Content-Length: {length[:40]!r} is not a byte count",
                                                       "invalid_content_length"))
                return None
            if int(length) > limit:
                if int(length) <= DRAIN_FACTOR * limit:
                    await self._discard(receive)
                await send_error(send, 413, error_body(self._too_large(f"{int(length)} bytes"), "request_too_large"))
                return None
        chunks: list[bytes] = []
        total = 0
        deadline = asyncio.get_running_loop().time() + self.limits.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                await send_error(send, 408, error_body(f"request body not received within {self.limits.body_timeout_s:g} s",
                                                       "request_timeout"))
                return None
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                chunks.clear()
                if message.get("more_body", False):
                    await self._discard(receive, total)
                await send_error(send, 413, error_body(self._too_large(f"over {limit} bytes"), "request_too_large"))
                return None
            chunks.append(body)
            if not message.get("more_body", False):
                break
        pending: list[dict[str, Any]] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict[str, Any]:
            if pending:
                return pending.pop()
            return await receive()  # after the body: wait for the disconnect, as the server would

        return replay

    async def _discard(self, receive: Any, seen: int = 0) -> None:
        """Read and drop the rest of a refused body, up to ``DRAIN_FACTOR`` times the bound, so that the
        client (still sending) reads the 413 instead of a connection reset; nothing is kept. The drain
        ends within ``body_timeout_s`` however slowly the client sends, so it never holds a slot."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        while seen <= DRAIN_FACTOR * self.limits.max_body_bytes:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    def _too_large(self, size: str) -> str:
        return (f"request body too large: {size}; this lead accepts at most {self.limits.max_body_bytes} bytes "
                "(--max-body-bytes)")
