"""Operating a node: structured logging, rate-limited warnings, the per-request log line, readiness.

- ``setup_logging(fmt, verbose)``: one handler on stderr, ``text`` (``TIME LEVEL LOGGER: message
  key=value...``) or ``json`` (one object per line: ``ts``, ``level``, ``logger``, ``msg`` and the
  record's structured ``fields``). verisplit loggers log at INFO (DEBUG with ``verbose``); uvicorn and
  other libraries at WARNING.
- ``Every``: at most one message per key per interval, counting what it held back (e.g. "lead
  unreachable" at most once per 30 s, then "... (12 similar in the last 30 s)").
- ``RequestLog``: joins what the HTTP layer saw of a request (latency, time to first token, status
  code) with what the lead recorded after its post-request hooks (cohort, tokens, fee, audits,
  ejections, ledger sequence), then logs exactly one ``request`` line per request on logger
  ``verisplit.requests`` and updates the metrics.
- ``ops_router(lead, ops)``: ``GET /readyz`` (200 once ``lead.route()`` forms a cohort, 503 before
  and while draining) and ``GET /metrics`` (Prometheus text format).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections import OrderedDict
from typing import Any, Callable

log = logging.getLogger("verisplit.ops")
request_log = logging.getLogger("verisplit.requests")

LOG_FORMATS = ("text", "json")
_QUIET_LIBRARIES = ("uvicorn", "uvicorn.error", "uvicorn.access", "grpc", "httpx", "httpcore", "asyncio")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the record's ``fields`` (``extra={"fields": {...}}``) are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        out: dict[str, Any] = {"ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message key=value ...`` (values with spaces are JSON-quoted)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        return text


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str, separators=(",", ":"))


def setup_logging(fmt: str = "text", verbose: bool = False, stream: Any = None) -> None:
    """Configure the root logger for a serving process (idempotent: replaces earlier handlers)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format: {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("verisplit").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)


class Every:
    """Rate limit per key: ``allow(key)`` is the number of messages held back since the last one that
    was allowed (0 or more) when one may be logged now, else None (and the held-back count grows)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def reset(self, key: str) -> int:
        """Forget ``key`` (the condition cleared); returns how many messages were held back."""
        self._last.pop(key, None)
        return self._held.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg`` unless one with ``key`` was logged less than ``seconds`` ago; True if logged."""
        held = self.allow(key)
        if held is None:
            return False
        suffix = f" ({held} similar in the last {self.seconds:.0f}s)" if held else ""
        logger.log(level, msg + suffix, *args)
        return True


class RequestLog:
    """Joins the HTTP side and the record side of each request; logs one line and feeds the metrics."""

    def __init__(self, metrics: Any = None, max_pending: int = 1000, stale_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self.stale_s = stale_s
        self.clock = clock
        self._pending: OrderedDict[str, tuple[float, dict[str, Any] | None, dict[str, Any] | None]] = OrderedDict()

    def http_done(self, request_id: str, fields: dict[str, Any]) -> None:
        """What the HTTP layer saw: ``latency_s``, ``ttft_s``, ``http_status``, ``stream``, ``cut``."""
        if self.metrics is not None:
            self.metrics.observe_http_request(fields)
        self._join(request_id, http=fields)

    def record_done(self, request_id: str, fields: dict[str, Any]) -> None:
        """What the lead recorded, after its post-request hooks (see ``record_fields``)."""
        if self.metrics is not None:
            self.metrics.observe_record(fields)
        self._join(request_id, record=fields)

    def _join(self, request_id: str, http: dict[str, Any] | None = None, record: dict[str, Any] | None = None) -> None:
        started, old_http, old_record = self._pending.pop(request_id, (self.clock(), None, None))
        http, record = http or old_http, record or old_record
        if http is not None and record is not None:
            self._emit(request_id, http, record)
        else:
            self._pending[request_id] = (started, http, record)
        self._flush_stale()

    def _flush_stale(self, everything: bool = False) -> None:
        now = self.clock()
        while self._pending:
            request_id, (started, http, record) = next(iter(self._pending.items()))
            if not everything and len(self._pending) <= self.max_pending and now - started < self.stale_s:
                break
            del self._pending[request_id]
            self._emit(request_id, http or {}, record or {})

    def flush(self) -> None:
        """Log whatever is still half-joined (at shutdown)."""
        self._flush_stale(everything=True)

    def _emit(self, request_id: str, http: dict[str, Any], record: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"request_id": request_id, **record, **http}
        level = logging.INFO
        if record.get("status") == "aborted" or record.get("audit") == "fail" or http.get("cut"):
            level = logging.WARNING
        request_log.log(level, "request %s %s", request_id, record.get("status", "unrecorded"),
                        extra={"fields": fields})


def record_fields(record: Any, info: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of the ``request`` log line that come from a finished record and its hook results."""
    info = info or {}
    audits = [a for a in info.get("audits") or [] if isinstance(a, dict)]
    failed = [a for a in audits if not a.get("passed")]
    if not audits:
        audit = "none"
    else:
        audit = "fail" if failed else "pass"
    errors = list(info.get("errors") or []) + list(info.get("hook_errors") or [])
    return {
        "status": record.status, "finish_reason": (record.extra or {}).get("finish_reason"),
        "cohort": [f"{a.provider_id}[{a.first_layer}:{a.end_layer}]" for a in record.cohort.assignments],
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "fee": record.fee, "culprit": record.culprit, "reason": record.reason,
        "audit": audit, "audited_segments": [a.get("segment_index") for a in audits],
        "audit_failures": len(failed), "ejected": list(info.get("ejected") or []),
        "ledger_seq": info.get("ledger_seq"), "settled": info.get("ledger_seq") is not None,
        "errors": errors,
    }


def request_hook(lead: Any, request_log_: RequestLog) -> Callable[[Any], Any]:
    """A post-request hook for ``lead.post_request_hooks``; append it after the audit service so the
    audit results are in ``lead.request_info`` when it runs. It returns nothing to merge."""

    async def ops_request_hook(record: Any) -> dict[str, Any]:
        request_log_.record_done(record.request_id, record_fields(record, lead.request_info(record.request_id)))
        return {}

    return ops_request_hook


def ops_router(lead: Any, drain: Any, metrics: Any) -> Any:
    """``GET /readyz`` and ``GET /metrics`` for the lead's FastAPI app."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse, Response

    from verisplit.impl.node.lead import NoCohortError

    router = APIRouter()

    @router.get("/readyz")
    async def readyz() -> Any:
        if drain is not None and drain.draining:
            return JSONResponse({"ready": False, "model": lead.model_id, "reason": "shutting down"}, status_code=503)
        try:
            formed, _ = lead.route()
        except NoCohortError as exc:
            return JSONResponse({"ready": False, "model": lead.model_id, "reason": f"no cohort: {exc}"},
                                status_code=503)
        return {"ready": True, "model": lead.model_id, "cohort": list(formed.provider_ids)}

    @router.get("/metrics")
    async def metrics_endpoint() -> Any:
        body, content_type = metrics.exposition()
        return Response(content=body, media_type=content_type)

    return router
