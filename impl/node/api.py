"""OpenAI-compatible HTTP API of the lead (FastAPI).

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream``
gives server-sent events ending in ``data: [DONE]``), ``GET /v1/requests/{id}`` (cohort,
commitments, status, culprit, fee, and once the audit hook ran: ``audits``, ``settlement``, ``ejected``,
``ledger_seq``), ``GET /v1/cohort``, ``GET /v1/providers``, ``GET /v1/audit`` (p, probation and tolerance; no endpoint
reveals a live request's audit seed: it appears in ``/v1/requests/{id}`` only once the request's audits
are done), ``GET /healthz``.

Invariants: every error is OpenAI-shaped ``{"error": {"message", "type", "param", "code"}}`` (a
broken link adds ``culprit``, ``reason`` and ``request_id``); bad input is a 4xx naming the field;
every completion names its request id in ``id`` and in the ``X-Verisplit-Request-Id`` header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from verisplit.impl.node.hops import CohortError
from verisplit.impl.node.drain import guard_tokens  # ops: shutdown cut
from verisplit.spec.faults import RESOURCE_EXHAUSTED
from verisplit.impl.node.lead import Lead, NoCohortError, RequestRun, SamplingParams
from verisplit.impl.runtime.tokenizer import decode, encode, format_chat, load_tokenizer, stop_token_ids

REQUEST_ID_HEADER = "X-Verisplit-Request-Id"
MAX_STOP_SEQUENCES = 4


class SamplingBody(BaseModel):
    """Fields shared by both completion endpoints (OpenAI names, defaults and bounds)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


class CompletionBody(SamplingBody):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(default=16, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}}


def cohort_error(exc: CohortError, request_id: str) -> APIError:
    status = 503 if exc.reason == RESOURCE_EXHAUSTED else 502
    return APIError(status, f"request {request_id} aborted: provider {exc.culprit!r} at segment {exc.link} failed "
                            f"({exc.reason}): {exc.detail}", "cohort_error", None, exc.reason,
                    {"culprit": exc.culprit, "reason": exc.reason, "link": exc.link, "request_id": request_id})


def create_app(lead: Lead) -> FastAPI:
    """The HTTP app bound to ``lead`` (which must run on the same event loop as the server)."""
    app = FastAPI(title="verisplit lead", version="1")
    tokenizer = load_tokenizer(lead.checkpoint)
    eos_ids = tuple(stop_token_ids(tokenizer, checkpoint_dir=lead.checkpoint))
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # loc is ("body", <char offset>), not a field
            detail = (first.get("ctx") or {}).get("error", "")
            offset = first.get("loc", ("body", "?"))[-1]
            return JSONResponse(APIError(400, f"body: not valid JSON ({detail or 'decode error'} at character "
                                              f"{offset})", code="invalid_json").body(), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param,
                                     code="invalid_value").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: still an OpenAI-shaped body (the traceback goes to the log, not the client).
        logging.getLogger("verisplit.lead").exception("internal error serving %s", request.url.path)
        return JSONResponse(APIError(500, f"internal error: {exc.__class__.__name__}", "server_error",
                                     code="internal_error").body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "model": lead.model_id, "providers": len(lead.registry.entries())}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": lead.model_id, "object": "model", "created": created,
                                            "owned_by": "verisplit", "num_layers": lead.model_spec.num_layers}]}

    @app.get("/v1/providers")
    async def providers() -> dict[str, Any]:
        return {"object": "list", "data": lead.providers_view(), "banned": lead.registry.banned()}

    @app.get("/v1/cohort")
    async def cohort() -> dict[str, Any]:
        try:
            formed, offers = lead.route()
        except NoCohortError as exc:
            raise APIError(503, f"no cohort: {exc}", "service_unavailable", None, "no_cohort") from None
        by_id = {o.provider_id: o for o in offers}
        from verisplit.impl.records.keys import fingerprint
        from verisplit.spec.cohort import cohort_cost
        return {"model": formed.model_id, "cost_per_position": cohort_cost(formed, lead.model_spec, offers),
                "assignments": [{"provider_id": a.provider_id, "first_layer": a.first_layer, "end_layer": a.end_layer,
                                 "endpoint": by_id[a.provider_id].endpoint, "fingerprint": fingerprint(a.public_key),
                                 "price_per_work_unit": by_id[a.provider_id].price_per_work_unit}
                                for a in formed.assignments]}

    @app.get("/v1/audit")
    async def audit() -> dict[str, Any]:
        return lead.audit_view()

    @app.get("/v1/requests/{request_id}")
    async def request_info(request_id: str) -> dict[str, Any]:
        info = lead.request_info(request_id)
        if info is None:
            raise APIError(404, f"request_id: no retained request {request_id!r}", "not_found_error", "request_id", "not_found")
        return info

    def check_model(model: str | None) -> None:
        if model is not None and model != lead.model_id:
            raise APIError(404, f"model: {model!r} is not served here (available: {lead.model_id!r})", "invalid_request_error",
                           "model", "model_not_found")

    def stops_of(stop: str | list[str] | None) -> list[str]:
        items = [stop] if isinstance(stop, str) else list(stop or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise APIError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences", param="stop", code="invalid_value")
        if any(not s for s in items):
            raise APIError(400, "stop: sequences must be non-empty", param="stop", code="invalid_value")
        return items

    def begin(prompt_ids: list[int], max_tokens: int, body: CompletionBody | ChatBody) -> RequestRun:
        if body.n != 1:
            raise APIError(400, "n: only n=1 is supported", param="n", code="invalid_value")
        seed = body.seed if body.seed is not None else int.from_bytes(os.urandom(4), "little")
        params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=seed,
                                stop_token_ids=eos_ids)
        try:
            return lead.start(prompt_ids, params)
        except ValueError as exc:
            param = str(exc).split(":", 1)[0]
            raise APIError(400, str(exc), param=param, code="invalid_value") from None
        except NoCohortError as exc:
            raise APIError(503, f"no cohort: {exc}", "service_unavailable", None, "no_cohort") from None

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> Any:
        check_model(body.model)
        if isinstance(body.prompt, list) and body.prompt and all(isinstance(p, int) for p in body.prompt):
            prompt_ids = [int(p) for p in body.prompt]
        elif isinstance(body.prompt, list):
            if not body.prompt:
                raise APIError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
            if len(body.prompt) != 1:
                raise APIError(400, "prompt: only one prompt per request is supported", param="prompt", code="invalid_value")
            prompt_ids = encode(tokenizer, str(body.prompt[0]))
        else:
            prompt_ids = encode(tokenizer, body.prompt)
        if not prompt_ids:
            raise APIError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
        stops = stops_of(body.stop)
        run = begin(prompt_ids, body.max_tokens or 16, body)
        return await respond(run, stops, body.stream, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody) -> Any:
        check_model(body.model)
        try:
            text = format_chat([m.model_dump() for m in body.messages], checkpoint_dir=lead.checkpoint)
        except ValueError as exc:  # the template's raise_exception (e.g. roles out of order)
            raise APIError(400, f"messages: {exc}", "invalid_request_error", "messages", None) from None
        prompt_ids = encode(tokenizer, text)
        stops = stops_of(body.stop)
        run = begin(prompt_ids, body.max_completion_tokens or body.max_tokens or 64, body)
        return await respond(run, stops, body.stream, chat=True)

    async def generate(run: RequestRun, stops: list[str]) -> AsyncIterator[tuple[str, str | None]]:
        """Yield (text delta, finish_reason or None); honours stop strings by truncating the text."""
        emitted = ""
        held = max((len(s) for s in stops), default=1) - 1  # chars kept back in case a stop string is forming
        async with contextlib.aclosing(guard_tokens(lead, run)) as tokens:  # ops: shutdown cut (node/drain.py)
            async for _ in tokens:
                text = decode(tokenizer, run.generated)
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    delta = text[len(emitted):cut]
                    if delta:
                        yield delta, None
                    run.finish_reason = "stop"
                    return
                safe = len(text) - held if stops else len(text)
                if text.endswith("\ufffd"):
                    safe = min(safe, len(text) - 1)  # an incomplete UTF-8 sequence: wait for more bytes
                if safe > len(emitted) and text.startswith(emitted):
                    delta = text[len(emitted):safe]
                    emitted = text[:safe]
                    yield delta, None
        text = decode(tokenizer, run.generated)
        if len(text) > len(emitted) and text.startswith(emitted):
            yield text[len(emitted):], None

    def usage(run: RequestRun) -> dict[str, int]:
        return {"prompt_tokens": len(run.prompt_ids), "completion_tokens": len(run.generated),
                "total_tokens": len(run.prompt_ids) + len(run.generated)}

    def chunk(run: RequestRun, delta: str | None, finish: str | None, chat: bool, role: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {}
            if role:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        return {"id": run.request_id, "object": obj, "created": int(time.time()), "model": lead.model_id,
                "choices": [choice], "verisplit": {"request_id": run.request_id}}

    async def respond(run: RequestRun, stops: list[str], stream: bool, chat: bool) -> Any:
        headers = {REQUEST_ID_HEADER: run.request_id}
        if not stream:
            parts: list[str] = []
            try:
                async for delta, _ in generate(run, stops):
                    parts.append(delta)
            except CohortError as exc:
                err = cohort_error(exc, run.request_id)
                return JSONResponse(err.body(), status_code=err.status, headers=headers)
            text = "".join(parts)
            choice: dict[str, Any]
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": run.finish_reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": run.finish_reason, "logprobs": None}
            body = {"id": run.request_id, "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": lead.model_id, "choices": [choice], "usage": usage(run),
                    "verisplit": {"request_id": run.request_id, "fee": run.fee,
                                  "commitments_checked": sum(len(s.commitments) for s in run.steps),
                                  "completion_token_ids": run.generated}}
            return JSONResponse(body, headers=headers)

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                if chat:
                    yield _sse(chunk(run, "", None, chat, role=True))
                    first = False
                async for delta, _ in generate(run, stops):
                    yield _sse(chunk(run, delta, None, chat, role=first and chat))
                final = chunk(run, None if chat else "", run.finish_reason, chat)
                final["usage"] = usage(run)
                final["verisplit"]["fee"] = run.fee
                yield _sse(final)
            except CohortError as exc:
                yield _sse(cohort_error(exc, run.request_id).body())
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers=headers | {"Cache-Control": "no-cache"})

    return app


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n"
