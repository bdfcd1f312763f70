"""Malformed HTTP at a real lead (issue 12): no input produces a 5xx, a hang or a non-OpenAI error.

One lead + 2 providers on loopback (a 2-layer random model), no API keys (loopback). A seeded
generator builds > 2,000 requests: bad JSON, wrong types, huge numbers, NaN/Infinity literals, deep
nesting, 10 MB bodies (with and without Content-Length), invalid UTF-8, lone surrogates, path tricks,
overlong headers, wrong methods and content types. They are sent 8 at a time with a raw socket
client. Checked: every answer is < 500 and arrives within the client timeout; every error body is
OpenAI-shaped (also the HTTP parser's own 400s, ``api_http``; a HEAD answer has no body); a valid
request is served afterwards.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Iterator

import httpx
import pytest

from api_raw import is_openai_error, request_bytes, send_raw
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort
from verisplit.impl.runtime.checkpoint import make_random_checkpoint

pytestmark = pytest.mark.net

CONTEXT = 64
CASES = 2100
WEIRD_VALUES = ["null", "true", "false", "-1", "0", "1", "1e308", "1e999", "-1e999", "NaN", "Infinity", "-Infinity",
                "123456789012345678901234567890", "9" * 5000, "\"\"", "\"x\"", "\"\\ud800\"", "\"\\udfff\\ud800\"",
                "\"a\\u0000b\"", "[]", "{}", "[[[]]]", "[1, \"a\", null]", "{\"type\": \"text\"}", "0.5", "-0.0",
                "2.5", "[-1]", "[99999999999]", "\"" + "y" * 300 + "\""]
CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
               "stream", "stream_options", "n", "logprobs", "top_logprobs", "user", "metadata", "tools",
               "response_format", "logit_bias", "presence_penalty", "unknown_field"]
COMPLETION_FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "echo",
                     "logprobs", "suffix", "best_of", "n", "user", "logit_bias", "unknown_field"]
PATHS = ["/v1/requests/../..", "/v1/requests/..%2f..", "/v1/requests/%2e%2e/%2e%2e", "/v1/requests/%00",
         "/v1/requests/a%00b", "/v1/requests/" + "r" * 600, "//v1/models", "/v1/models/%ff", "/%ff%fe",
         "/v1/requests/req-%uD800", "/v1/../v1/models", "/v1/models/../../etc/passwd", "/v1/chat/completions/",
         "/v1/requests/", "/v1/requests/%20", "/nope", "/v1/providers/x", "/healthz?%00=1", "/v1/models?a=%ff",
         "/v1/requests/req-" + "\u00e9".encode().decode("latin-1")]
CONTENT_TYPES = ["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", None,
                 "application/json; charset=latin-1", "application/json; charset=utf-16", "application/xml", "*/*"]


def chat_body(rng: random.Random) -> str:
    fields = {"messages": '[{"role": "user", "content": "hi"}]', "max_tokens": "1"}
    for name in rng.sample(CHAT_FIELDS, rng.randint(1, 3)):
        fields[name] = rng.choice(WEIRD_VALUES)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


def completion_body(rng: random.Random) -> str:
    fields = {"prompt": '"hello"', "max_tokens": "1"}
    for name in rng.sample(COMPLETION_FIELDS, rng.randint(1, 3)):
        fields[name] = rng.choice(WEIRD_VALUES)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


def message_body(rng: random.Random) -> str:
    content = rng.choice(['"\\ud800"', '"ok\\udbff"', '[{"type": "text", "text": "\\udc00"}]', '[{"type": 1}]',
                          '[{"type": "text", "text": NaN}]', '[]', '{"a": 1}', '"' + "z" * rng.randint(0, 400) + '"'])
    role = rng.choice(['"user"', '"system"', '"tool"', '"\\ud800"', 'null', '1', '"assistant"'])
    extra = rng.choice(["", ', "name": 5', ', "tool_calls": [{}]', ', "\\ud800": 1'])
    return f'{{"messages": [{{"role": {role}, "content": {content}{extra}}}], "max_tokens": 1}}'


def case(rng: random.Random, index: int) -> tuple[str, bytes, list[bytes]]:
    """The ``index``-th malformed request: (kind, head, body pieces)."""
    kind = ["chat-types", "completion-types", "messages", "bad-json", "nesting", "utf8", "path", "method",
            "content-type", "header", "big" if index % 110 == 10 else "chat-types"][index % 11]
    target = rng.choice(["/v1/chat/completions", "/v1/completions"])
    headers = {"Content-Type": "application/json"}
    chunked = False
    if kind == "chat-types":
        body, target = chat_body(rng).encode(), "/v1/chat/completions"
    elif kind == "completion-types":
        body, target = completion_body(rng).encode(), "/v1/completions"
    elif kind == "messages":
        body, target = message_body(rng).encode(), "/v1/chat/completions"
    elif kind == "bad-json":
        valid = chat_body(rng).encode()
        body = rng.choice([valid[:rng.randint(0, len(valid))], bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))),
                           b"{'single': 'quotes'}", b'{"a": 1,}', b"", b"null", b"[]", b"42", b'"str"', b"{" * 3])
    elif kind == "nesting":
        depth = rng.choice([100, 500, 800, 950, 990, 1100, 5000, 200000])
        inner = rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
        body = rng.choice([b'{"messages": [{"role": "user", "content": ' + inner + b'}], "max_tokens": 1}',
                           b'{"messages": [{"role": "user", "content": "hi"}], "metadata": {"k": ' + inner + b'}}',
                           b'{"prompt": ' + inner + b', "max_tokens": 1}', b'{"prompt": "x", "stop": ' + inner + b'}'])
        target = "/v1/completions" if body.startswith(b'{"prompt"') else "/v1/chat/completions"
        body = body if len(body) < (1 << 20) else inner[:(1 << 20) - 10]
    elif kind == "utf8":
        junk = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"])
        field = rng.choice([b"prompt", b"model", b"stop", b"user"])
        body = b'{"' + field + b'": "a' + junk + b'b", "prompt": "x", "max_tokens": 1}'
        target = "/v1/completions"
    elif kind == "path":
        return kind, *request_bytes(rng.choice(["GET", "POST", "DELETE"]), rng.choice(PATHS), b"{}", headers)
    elif kind == "method":
        method = rng.choice(["PUT", "DELETE", "PATCH", "GET", "OPTIONS", "HEAD", "TRACE", "FOO"])
        path = rng.choice(["/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/v1/requests/x"])
        return "HEAD" if method == "HEAD" else kind, *request_bytes(method, path, b'{"prompt": "x"}', headers)
    elif kind == "content-type":
        ctype = rng.choice(CONTENT_TYPES)
        headers = {} if ctype is None else {"Content-Type": ctype}
        body = rng.choice([completion_body(rng).encode(), b"prompt=hi&max_tokens=1", b"<x/>"])
        target = "/v1/completions"
    elif kind == "header":
        size = rng.choice([100, 4000, 12000, 40000])
        name = rng.choice(["X-Long", "Authorization", "Content-Type", "Cookie"])
        headers = {name: "v" * size} | ({} if name == "Content-Type" else headers)
        body = b'{"prompt": "x", "max_tokens": 1}'
    else:
        big = 10 * (1 << 20)
        body = rng.choice([b"[" + b"1," * (big // 2) + b"1]", b'{"prompt": "' + b"a" * big + b'"}', b" " * big])
        chunked = rng.random() < 0.5
    return kind, *request_bytes("POST", target, body, headers, chunked)


@pytest.fixture(scope="module")
def lead_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1, vocab=320,
                                        max_position=CONTEXT, seed=5)
    with ProcessGroup(root / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 1), (1, 2)], keys_dir=root / "keys", data_dir=root / "lead",
                                  lead_args=["--max-concurrent", "64"])
        yield info["http"]
        log = info["lead"].log_path.read_text()
        assert "Traceback" not in log, log[-3000:]


async def run_cases(url: str, cases: list[tuple[str, bytes, list[bytes]]]) -> list[tuple[str, Any]]:
    gate = asyncio.Semaphore(8)

    async def one(kind: str, head: bytes, pieces: list[bytes]) -> tuple[str, Any]:
        async with gate:
            try:
                return kind, await send_raw(url, head, pieces, timeout=30.0)
            except (TimeoutError, asyncio.TimeoutError):
                return kind, "timeout"

    return await asyncio.gather(*(one(*c) for c in cases))


def test_two_thousand_malformed_requests_get_named_4xx_answers(lead_url: str) -> None:
    rng = random.Random(20261202)
    cases = [case(rng, i) for i in range(CASES)]
    results = asyncio.run(run_cases(lead_url, cases))
    assert len(results) >= 2000
    hangs = [kind for kind, answer in results if answer == "timeout"]
    assert not hangs, f"{len(hangs)} requests hung: {hangs[:10]}"
    unanswered = [(kind, a.body[:100]) for kind, a in results if a.status == 0]
    assert not unanswered, unanswered[:10]
    server_errors = [(kind, a.status, a.body[:300]) for kind, a in results if a.status >= 500]
    assert not server_errors, server_errors[:5]
    unshaped = [(kind, a.status, a.body[:200]) for kind, a in results
                if a.status >= 400 and not is_openai_error(a) and not (kind == "HEAD" and not a.body)]
    assert not unshaped, unshaped[:5]
    statuses = {a.status for _, a in results}
    assert {400, 404, 405, 413}.issubset(statuses), statuses  # the generator reached every kind of refusal
    surrogates = [a for kind, a in results if kind == "messages" and a.status == 400
                  and "surrogate" in a.json()["error"]["message"]]
    assert surrogates  # lone surrogates are named, not a 500
    # ... and the lead still serves a valid request.
    answer = httpx.post(f"{lead_url}/v1/completions", json={"prompt": "hello", "max_tokens": 2, "temperature": 0}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


def test_lone_surrogates_and_invalid_utf8_are_400_naming_the_field(lead_url: str) -> None:
    for body in ('{"prompt": "\\ud800", "max_tokens": 1}', '{"prompt": ["ok", "\\udfff"], "max_tokens": 1}'):
        answer = httpx.post(f"{lead_url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["param"].startswith("prompt"), answer.text
    chat = json.dumps({"messages": [{"role": "user", "content": "\ud800"}], "max_tokens": 1})
    answer = httpx.post(f"{lead_url}/v1/chat/completions", content=chat, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "messages.0.content", answer.text
    answer = httpx.post(f"{lead_url}/v1/completions", content=b'{"prompt": "a\xffb", "max_tokens": 1}',
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", answer.text


def test_prompt_length_is_refused_before_tokenizing(lead_url: str) -> None:
    answer = httpx.post(f"{lead_url}/v1/completions", json={"prompt": "a" * (4 * CONTEXT + 1), "max_tokens": 1})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in answer.json()["error"]["message"]
    answer = httpx.post(f"{lead_url}/v1/completions", json={"prompt": [1] * (CONTEXT + 1), "max_tokens": 1})
    assert answer.status_code == 400 and "token ids" in answer.json()["error"]["message"]


def test_out_of_range_token_ids_are_400_before_anything_decodes_them(lead_url: str) -> None:
    """Token ids outside the vocabulary are refused naming the prompt, also with ``logprobs`` (which
    decodes the prompt) and for ids too large for the tokenizer's integer type."""
    for prompt in ([-1], [2 ** 70], [0, 10 ** 9]):
        for extra in ({}, {"logprobs": 0}):
            answer = httpx.post(f"{lead_url}/v1/completions", json={"prompt": prompt, "max_tokens": 1} | extra)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["param"] == "prompt" and "outside" in answer.json()["error"]["message"]
