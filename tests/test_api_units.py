"""Units of the API front door (issue 12): key files and matching, loopback exposure, path kinds,
text checks, and ``verifier audit`` on a compacted record (valid and tampered chains)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_api_retention import make_record
from verisplit.cli import main
from verisplit.impl.node.api_auth import CLIENT, OPERATOR, ApiKeys, KeyFileError, check_exposure, is_loopback, read_key_file
from verisplit.impl.node.api_limits import path_kind
from verisplit.impl.node.api_models import APIError, check_prompt_size, check_text
from verisplit.impl.records.requests import RequestStore

KEY = "sk-unit-0123456789abcdef"
OP = "sk-op-0123456789abcdef00"


def test_key_files_name_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\n  {KEY}  \n")
    assert read_key_file(path, "--api-keys") == [KEY]
    for text, problem in ((f"{KEY}\nshort\n", "line 2"), ("sk with spaces 0123456789\n", "printable ASCII"),
                          ("# only a comment\n", "holds no key")):
        path.write_text(text)
        with pytest.raises(KeyFileError, match=problem):
            read_key_file(path, "--api-keys")
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "missing", "--api-keys")


def test_keys_match_by_digest_with_roles() -> None:
    keys = ApiKeys.of([KEY], [OP])
    assert keys.identify(f"Bearer {KEY}").role == CLIENT and keys.identify(f"bearer  {OP}").role == OPERATOR
    assert keys.identify(f"Bearer {KEY}").owner == keys.identify(f"Bearer {KEY}").owner != keys.identify(f"Bearer {OP}").owner
    assert KEY not in repr(keys) and keys.identify(f"Bearer {KEY}").owner not in KEY
    for header in (None, "", "Bearer", f"Basic {KEY}", f"Bearer {KEY}x", KEY):
        assert keys.identify(header) is None
    assert ApiKeys().identify(None).role == OPERATOR  # no keys: open (loopback only)


def test_only_loopback_may_run_without_keys() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("lead.example")
    check_exposure("127.0.0.1", ApiKeys())
    check_exposure("0.0.0.0", ApiKeys.of([KEY]))
    with pytest.raises(ValueError, match="--api-keys"):
        check_exposure("0.0.0.0", ApiKeys())


def test_path_kinds_ignore_slash_tricks() -> None:
    assert path_kind("/healthz") == "public" and path_kind("/readyz/") == "public"
    for path in ("/v1/providers", "/v1/providers/", "//v1//providers", "/metrics", "/v1/audit/x"):
        assert path_kind(path) == OPERATOR, path
    for path in ("/v1/models", "/v1/requests/abc", "/v1/completions", "/docs", "/v1/providersx"):
        assert path_kind(path) == "client", path


def test_text_checks_name_the_field() -> None:
    check_text({"prompt": "héllo 😀", "stop": ["a"]})
    with pytest.raises(APIError) as info:
        check_text({"messages": [{"role": "user", "content": "ok\ud800"}]})
    assert info.value.status == 400 and info.value.param == "messages.0.content" and "U+D800" in info.value.message
    with pytest.raises(APIError):
        check_text({"metadata": {"\udfff": 1}})
    check_prompt_size(4 * 10, 0, 10, "prompt")
    for chars, tokens in ((4 * 10 + 1, 0), (0, 11)):
        with pytest.raises(APIError) as info:
            check_prompt_size(chars, tokens, 10, "prompt")
        assert info.value.code == "context_length_exceeded"


def test_verifier_audit_checks_a_compacted_records_chain(tmp_path: Path) -> None:
    store = RequestStore(tmp_path / "requests")
    store.save(make_record("req-good", 100))
    bad = make_record("req-bad", 100)
    commitment = bad.steps[1].commitments[0]
    bad.steps[1].commitments[0] = dataclasses.replace(commitment, signature=bytes(64))
    store.save(bad)
    for rid in ("req-good", "req-bad"):
        store.compact(rid)

    def audit(rid: str) -> tuple[int, list[dict]]:
        result = CliRunner().invoke(main, ["verifier", "audit", "--checkpoint", str(tmp_path / "none"), "--data-dir",
                                           str(tmp_path), "--request", rid, "--atol", "0"])
        return result.exit_code, [json.loads(line) for line in result.output.splitlines()]

    code, lines = audit("req-good")
    assert code == 0 and lines[0]["chain"] == {"valid": True, "steps": 3} and lines[1]["segment_index"] == 0
    code, lines = audit("req-bad")
    assert code == 1 and lines[0]["chain"]["culprit"] == "p0" and lines[0]["chain"]["step"] == 1


def test_info_cache_is_bounded_in_count_and_bytes() -> None:
    from verisplit.impl.node.lead_info import InfoCache

    cache = InfoCache(max_count=3, max_bytes=2500)
    for i in range(6):
        cache.put(f"req-{i}", {"blob": "x" * 1000})
        assert len(cache) <= 3 and sum(len(json.dumps(v)) for v in cache.values()) <= 2500
    assert list(cache) == ["req-4", "req-5"]  # oldest first; 2 views of ~1 kB fit 2.5 kB
    cache.put("req-6", {"blob": "y" * 5000})  # the newest always stays, alone if need be
    assert list(cache) == ["req-6"]
    cache.put("req-6", {"small": 1})  # replacing a view re-measures it
    cache.put("req-7", {"small": 2})
    assert list(cache) == ["req-6", "req-7"]


def test_guard_refuses_a_body_that_never_completes_with_408() -> None:
    import asyncio

    from verisplit.impl.node.api_limits import ApiGuard, ApiLimits

    reached: list[bytes] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append((await receive())["body"])  # type: ignore[operator]

    async def run(messages: list[dict]) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)  # the client stalls
            return {}

        async def send(message: dict) -> None:
            sent.append(message)

        guard = ApiGuard(app, ApiLimits(max_body_bytes=4096, body_timeout_s=0.2))
        scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": [], "client": ("1.2.3.4", 5)}
        await asyncio.wait_for(guard(scope, receive, send), 5)
        assert not guard.active  # the concurrency slot is released in every case
        return sent

    sent = asyncio.run(run([{"type": "http.request", "body": b'{"pro', "more_body": True}]))
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
    sent = asyncio.run(run([{"type": "http.request", "body": b"x" * 3000, "more_body": True},
                            {"type": "http.request", "body": b"x" * 3000, "more_body": False}]))
    assert sent[0]["status"] == 413 and not reached  # refused while counting, chunked (no Content-Length)
    asyncio.run(run([{"type": "http.request", "body": b"ab", "more_body": True},
                     {"type": "http.request", "body": b"cd", "more_body": False}]))
    assert reached == [b"abcd"]  # within the bound: the app reads the whole body at once


def test_info_cache_remeasures_a_view_that_grew() -> None:
    from verisplit.impl.node.lead_info import InfoCache

    cache = InfoCache(max_count=10, max_bytes=2500)
    cache.put("req-0", {"small": 0})
    cache.put("req-1", {"small": 1})
    cache["req-0"]["audits"] = "z" * 3000  # a hook adds to the view after it was put
    cache.remeasure("req-0")
    assert list(cache) == ["req-0"]  # the grown view is the newest; the bound holds again


def test_draining_a_refused_body_ends_within_the_body_timeout() -> None:
    """A client that trickles a refused (Content-Length over the bound) body holds no slot beyond
    ``body_timeout_s``: the 413 is sent and the slot released."""
    import asyncio

    from verisplit.impl.node.api_limits import ApiGuard, ApiLimits

    async def app(scope: dict, receive: object, send: object) -> None:
        raise AssertionError("a refused body never reaches the app")

    async def run() -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            await asyncio.sleep(0.05)  # 1 byte every 50 ms: far slower than the drain would need
            return {"type": "http.request", "body": b"x", "more_body": True}

        async def send(message: dict) -> None:
            sent.append(message)

        guard = ApiGuard(app, ApiLimits(max_body_bytes=4096, body_timeout_s=0.2))
        scope = {"type": "http", "path": "/v1/completions", "method": "POST",
                 "headers": [(b"content-length", b"8192")], "client": ("1.2.3.4", 5)}
        await asyncio.wait_for(guard(scope, receive, send), 5)
        assert not guard.active
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 413
