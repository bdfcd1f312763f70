"""OpenAI-compatible HTTP API of the lead (FastAPI).

Endpoints: ``GET /v1/models`` (and ``/v1/models/{id}``; with ``context_length``), ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream`` gives server-sent events ending in ``data: [DONE]``;
``stream_options.include_usage`` adds one last chunk with empty ``choices`` and the usage),
``GET /v1/requests/{id}`` (cohort, commitments, status, culprit, fee, and once the audit hook ran:
``audits``, ``settlement``, ``ejected``, ``ledger_seq``), ``GET /v1/cohort``, ``GET /v1/providers``,
``GET /v1/audit`` (p, probation and tolerance; no endpoint reveals a live request's audit seed: it
appears in ``/v1/requests/{id}`` only once the request's audits are done), ``GET /healthz``.

Keys, operator endpoints, concurrency and body limits are enforced in front of this app by
``api_limits.ApiGuard``; here a request record is shown only to the key that created it (others get
the 404 of an unknown id). Text with lone surrogates is a 400 naming the field; prompt size is
checked before tokenizing; templating, tokenizing and routing run off the event loop.

Invariants: every error is OpenAI-shaped ``{"error": {"message", "type", "param", "code"}}`` (a
broken link adds ``culprit``, ``reason`` and ``request_id``); bad input is a 4xx naming the field,
and a parameter that cannot be honoured is refused, never ignored (``api_models``); logprobs come
from the logits the lead sampled from (``api_logprobs``); every completion names its request id in
``id`` and in the ``X-Verisplit-Request-Id`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from verisplit.impl.node.api_logprobs import (TokenBytes, TokenLogprob, chat_logprobs, completion_logprobs,
                                             last_row_logits, token_logprob)
from verisplit.impl.node.api_models import (APIError, ChatBody, CompletionBody, SamplingBody, check_prompt_size,
                                           check_text, completion_budget, invalid, normalize_messages,
                                           refuse_unsupported)
from verisplit.impl.node.drain import guard_tokens  # ops: shutdown cut
from verisplit.impl.node.hops import CohortError
from verisplit.impl.node.lead import Lead, NoCohortError, RequestRun, SamplingParams
from verisplit.impl.runtime.tokenizer import decode, encode, format_chat, load_tokenizer, stop_token_ids
from verisplit.spec.faults import RESOURCE_EXHAUSTED

__all__ = ["APIError", "create_app", "REQUEST_ID_HEADER"]

REQUEST_ID_HEADER = "X-Verisplit-Request-Id"
MAX_STOP_SEQUENCES = 4
DEFAULT_COMPLETION_TOKENS = 16  # legacy completions' OpenAI default; chat defaults to all that fits


def cohort_error(exc: CohortError, request_id: str) -> APIError:
    status = 503 if exc.reason == RESOURCE_EXHAUSTED else 502
    return APIError(status, f"request {request_id} aborted: provider {exc.culprit!r} at segment {exc.link} failed "
                            f"({exc.reason}): {exc.detail}", "cohort_error", None, exc.reason,
                    {"culprit": exc.culprit, "reason": exc.reason, "link": exc.link, "request_id": request_id})


class SafeJSONResponse(JSONResponse):
    """JSON rendered ASCII-only and NaN-free (an error message quoting odd input can never fail to render)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def principal_of(request: Request) -> Any:
    """The caller as ``ApiGuard`` identified it (``api_auth.Principal``); None when the app runs unguarded."""
    return (request.scope.get("state") or {}).get("principal")


def visible_to(info: dict[str, Any], principal: Any) -> bool:
    """A request record is readable by the key that created it and by operator keys (anyone without keys)."""
    return principal is None or principal.role == "operator" or info.get("owner") == principal.owner


class Job:
    """One accepted request: the lead's run plus what the response needs (stops, logprobs, shape)."""

    def __init__(self, run: RequestRun, body: SamplingBody, stops: list[str], chat: bool, top: int | None,
                 prompt_chars: int) -> None:
        self.run, self.body, self.stops, self.chat = run, body, stops, chat
        self.top = top  # None: no logprobs; else how many alternatives per token
        self.prompt_chars = prompt_chars


def create_app(lead: Lead) -> FastAPI:
    """The HTTP app bound to ``lead`` (which must run on the same event loop as the server)."""
    app = FastAPI(title="verisplit lead", version="1")
    tokenizer = load_tokenizer(lead.checkpoint)
    token_bytes = TokenBytes(tokenizer)
    eos_ids = tuple(stop_token_ids(tokenizer, checkpoint_dir=lead.checkpoint))
    context_length = lead.config.max_position_embeddings
    vocab = lead.config.vocab_size
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return SafeJSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # loc is ("body", <char offset>), not a field
            detail = (first.get("ctx") or {}).get("error", "")
            offset = first.get("loc", ("body", "?"))[-1]
            return SafeJSONResponse(APIError(400, f"body: not valid JSON ({detail or 'decode error'} at character "
                                              f"{offset})", code="invalid_json").body(), status_code=400)
        # drop "body" and pydantic's union-branch names (e.g. "str", "list[int]") from the location
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and not (isinstance(p, str) and
                                                                            ("[" in p or p in ("str", "int")))]
        param = ".".join(loc) or None
        return SafeJSONResponse(APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param,
                                     code="invalid_value").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: still an OpenAI-shaped body (the traceback goes to the log, not the client).
        logging.getLogger("verisplit.lead").exception("internal error serving %s", request.url.path)
        return SafeJSONResponse(APIError(500, f"internal error: {exc.__class__.__name__}", "server_error",
                                     code="internal_error").body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return SafeJSONResponse(APIError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "model": lead.model_id, "providers": len(lead.registry.entries())}

    def model_card() -> dict[str, Any]:
        return {"id": lead.model_id, "object": "model", "created": created, "owned_by": "verisplit",
                "context_length": context_length, "max_model_len": context_length,
                "num_layers": lead.model_spec.num_layers}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return model_card()

    @app.get("/v1/providers")
    async def providers() -> dict[str, Any]:
        return {"object": "list", "data": lead.providers_view(), "banned": lead.registry.banned()}

    @app.get("/v1/cohort")
    async def cohort() -> dict[str, Any]:
        try:
            formed, offers = await asyncio.to_thread(lead.route)  # the router may be slow: off the event loop
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
    async def request_info(request_id: str, request: Request) -> dict[str, Any]:
        info = await asyncio.to_thread(lead.request_info, request_id)  # may read the record from disk
        if info is None or not visible_to(info, principal_of(request)):  # another key's: 404, existence not revealed
            raise APIError(404, f"request_id: no retained request {request_id!r}", "not_found_error", "request_id", "not_found")
        return {k: v for k, v in info.items() if k != "owner"}

    def check_model(model: str | None) -> None:
        if model is not None and model != lead.model_id:
            raise APIError(404, f"model: {model!r} is not served here (available: {lead.model_id!r})", "invalid_request_error",
                           "model", "model_not_found")

    def stops_of(stop: str | list[str] | None) -> list[str]:
        items = [stop] if isinstance(stop, str) else list(stop or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise invalid("stop", f"at most {MAX_STOP_SEQUENCES} sequences")
        if any(not s for s in items):
            raise invalid("stop", "sequences must be non-empty")
        return items

    async def begin(prompt_ids: list[int], max_tokens: int, body: SamplingBody, request: Request) -> RequestRun:
        seed = body.seed if body.seed is not None else int.from_bytes(os.urandom(4), "little")
        params = SamplingParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                                top_p=1.0 if body.top_p is None else body.top_p, seed=seed, stop_token_ids=eos_ids)
        principal = principal_of(request)
        try:  # routing runs the spec router over the registry: off the event loop
            return await asyncio.to_thread(lead.start, prompt_ids, params, principal.owner if principal else None)
        except ValueError as exc:
            raise invalid(str(exc).split(":", 1)[0], str(exc).split(":", 1)[-1].strip()) from None
        except NoCohortError as exc:
            raise APIError(503, f"no cohort: {exc}", "service_unavailable", None, "no_cohort") from None

    async def cohort_kv_capacity() -> int | None:
        """The smallest ``kv_capacity_tokens`` offered by the providers of the cohort a request gets now."""
        try:
            formed, _ = await asyncio.to_thread(lead.route)
        except NoCohortError:
            return None  # ``begin`` reports it
        entries = [lead.registry.get(a.provider_id) for a in formed.assignments]
        capacities = [e.fields.kv_capacity_tokens for e in entries if e is not None]
        return min(capacities) if capacities else None

    async def prompt_ids_of(prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        elif isinstance(prompt, list) and prompt and not all(isinstance(p, int) for p in prompt):
            raise invalid("prompt", "only one prompt per request is supported", "unsupported_value")
        is_ids = isinstance(prompt, list)
        if is_ids:  # before anything decodes them (the tokenizer overflows on ids outside its range)
            bad = [p for p in prompt if not isinstance(p, int) or not 0 <= p < vocab]
            if bad:
                raise invalid("prompt", f"token id {bad[0]} outside [0, {vocab})")
        check_prompt_size(0 if is_ids else len(prompt), len(prompt) if is_ids else 0, context_length, "prompt")
        ids = [int(p) for p in prompt] if is_ids else await asyncio.to_thread(encode, tokenizer, prompt)
        if not ids:
            raise invalid("prompt", "must not be empty")
        return ids

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Any:
        check_text(body.model_dump())
        refuse_unsupported(body)
        check_model(body.model)
        prompt_ids = await prompt_ids_of(body.prompt)
        stops = stops_of(body.stop)
        budget = completion_budget(len(prompt_ids), context_length, body.max_tokens, "max_tokens", "prompt",
                                   DEFAULT_COMPLETION_TOKENS)
        prompt_chars = len(decode(tokenizer, prompt_ids)) if body.logprobs is not None else 0
        job = Job(await begin(prompt_ids, budget, body, request), body, stops, False, body.logprobs, prompt_chars)
        return await respond(job)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request) -> Any:
        check_text(body.model_dump())
        refuse_unsupported(body)
        check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise invalid("top_logprobs", "requires logprobs to be true")
        messages = normalize_messages(body.messages)
        check_prompt_size(sum(len(m["content"]) for m in messages), 0, context_length, "messages")
        try:  # templating and tokenizing: off the event loop
            text = await asyncio.to_thread(format_chat, messages, checkpoint_dir=lead.checkpoint)
        except ValueError as exc:  # the template's raise_exception (e.g. roles out of order)
            raise APIError(400, f"messages: {exc}", "invalid_request_error", "messages", None) from None
        prompt_ids = await asyncio.to_thread(encode, tokenizer, text)
        stops = stops_of(body.stop)
        requested, name = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens is not None
                           else (body.max_tokens, "max_tokens"))
        budget = completion_budget(len(prompt_ids), context_length, requested, name, "messages", None)
        if requested is None:  # "what fits": also within the KV capacity every provider of the cohort offers
            capacity = await cohort_kv_capacity()
            if capacity is not None and 1 <= capacity - len(prompt_ids) < budget:
                budget = capacity - len(prompt_ids)
        top = (body.top_logprobs or 0) if body.logprobs else None
        return await respond(Job(await begin(prompt_ids, budget, body, request), body, stops, True, top, 0))

    def logprob_at(job: Job, index: int, token: int, start: int) -> TokenLogprob:
        # the lead appends a step's record (with the logits bytes) before it yields the step's tokens; plain
        # decoding draws token ``index`` from step ``index``'s last row, speculative names (step, row)
        rows = job.run.token_rows
        step, back = rows[index] if len(rows) > index else (index, 0)
        row = last_row_logits(job.run.steps[step].outputs[-1], vocab, back)
        return token_logprob(row, token, job.top or 0, start)

    async def generate(job: Job) -> AsyncIterator[tuple[str, list[TokenLogprob]]]:
        """Yield (text delta, logprobs of the tokens that delta completes); stop strings truncate the
        text, and a token whose text starts at or after the cut is not reported (special tokens, e.g.
        the eos token, are: their text is empty, their ``token`` the marker)."""
        run, stops = job.run, job.stops
        emitted, before = "", ""
        pending: list[TokenLogprob] = []
        held = max((len(s) for s in stops), default=1) - 1  # chars kept back in case a stop string is forming

        def take(upto: int) -> list[TokenLogprob]:
            nonlocal pending
            ready = [e for e in pending if e.start < upto]
            pending = [e for e in pending if e.start >= upto]
            return ready

        async with contextlib.aclosing(guard_tokens(lead, run)) as tokens:  # ops: shutdown cut (node/drain.py)
            async for token in tokens:
                if job.top is not None:
                    pending.append(logprob_at(job, len(run.generated) - 1, token, len(before)))
                text = decode(tokenizer, run.generated)
                before = text
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    delta, ready = text[len(emitted):cut], take(cut)
                    if delta or ready:
                        yield delta, ready
                    run.finish_reason = "stop"
                    return
                safe = len(text) - held if stops else len(text)
                if text.endswith("\ufffd"):
                    safe = min(safe, len(text) - 1)  # an incomplete UTF-8 sequence: wait for more bytes
                if safe > len(emitted) and text.startswith(emitted):
                    delta = text[len(emitted):safe]
                    emitted = text[:safe]
                    yield delta, take(len(emitted))
        text = decode(tokenizer, run.generated)
        delta = text[len(emitted):] if len(text) > len(emitted) and text.startswith(emitted) else ""
        ready, pending = pending, []  # every token but those of a cut stop string (so also the eos token)
        if delta or ready:
            yield delta, ready

    def usage(run: RequestRun) -> dict[str, int]:
        return {"prompt_tokens": len(run.prompt_ids), "completion_tokens": len(run.generated),
                "total_tokens": len(run.prompt_ids) + len(run.generated)}

    def logprobs_of(job: Job, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        if job.top is None:
            return None
        return chat_logprobs(entries, token_bytes) if job.chat else completion_logprobs(entries, token_bytes,
                                                                                        job.prompt_chars)

    def envelope(job: Job, choices: list[dict[str, Any]], streamed: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if streamed else "chat.completion") if job.chat else "text_completion"
        out = {"id": job.run.request_id, "object": kind, "created": int(time.time()), "model": lead.model_id,
               "system_fingerprint": None, "choices": choices, "verisplit": {"request_id": job.run.request_id}}
        if streamed and job.body.include_usage:
            out["usage"] = None  # OpenAI: every chunk but the last carries "usage": null
        return out

    def chunk(job: Job, delta: str | None, finish: str | None, entries: list[TokenLogprob],
              role: bool = False) -> dict[str, Any]:
        lp = logprobs_of(job, entries) if entries else None
        if job.chat:
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": lp}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": lp}
        return envelope(job, [choice], streamed=True)

    async def respond(job: Job) -> Any:
        run = job.run
        headers = {REQUEST_ID_HEADER: run.request_id}
        if not job.body.streaming:
            parts: list[str] = []
            entries: list[TokenLogprob] = []
            try:
                async for delta, ready in generate(job):
                    parts.append(delta)
                    entries += ready
            except CohortError as exc:
                err = cohort_error(exc, run.request_id)
                return JSONResponse(err.body(), status_code=err.status, headers=headers)
            text = "".join(parts)
            choice: dict[str, Any] = {"index": 0, "finish_reason": run.finish_reason, "logprobs": logprobs_of(job, entries)}
            if job.chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            body = envelope(job, [choice], streamed=False)
            body["usage"] = usage(run)
            body["verisplit"].update(fee=run.fee, commitments_checked=sum(len(s.commitments) for s in run.steps),
                                     completion_token_ids=run.generated, ledger_head=run.ledger_head)
            return JSONResponse(body, headers=headers)

        async def events() -> AsyncIterator[bytes]:
            try:
                if job.chat:
                    yield _sse(chunk(job, "", None, [], role=True))
                async for delta, ready in generate(job):
                    yield _sse(chunk(job, delta, None, ready))
                final = chunk(job, None if job.chat else "", run.finish_reason, [])
                final["verisplit"]["fee"] = run.fee
                final["verisplit"]["ledger_head"] = run.ledger_head  # issue 13: tail loss is detectable
                yield _sse(final)
                if job.body.include_usage:
                    last = envelope(job, [], streamed=True)
                    last["usage"] = usage(run)
                    yield _sse(last)
            except CohortError as exc:
                yield _sse(cohort_error(exc, run.request_id).body())
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers=headers | {"Cache-Control": "no-cache"})

    return app


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n"
