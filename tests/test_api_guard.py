"""API keys, operator endpoints, concurrency and body limits of a real lead (issue 12).

A lead + 2 providers on loopback with client keys A and B, an operator key and ``--max-concurrent 1``.
Checked: no/wrong key is a 401 ``invalid_api_key`` (``/healthz`` needs none); a request record is
readable by its creator and the operator, a 404 for another key; operator endpoints refuse client
keys (403); a second concurrent completion of one key is a 429 with ``Retry-After`` while another
key is served; a 10 MB upload is refused with 413 and ``/healthz`` answers within 100 ms (median)
meanwhile; ``lead serve`` on a non-loopback address without keys refuses to start, naming the flag.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner

from api_raw import address, is_openai_error, parse_answer, request_bytes
from verisplit.cli import main
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort
from verisplit.impl.runtime.checkpoint import make_random_checkpoint

pytestmark = pytest.mark.net

KEY_A = "sk-client-a-0123456789abcdef"
KEY_B = "sk-client-b-0123456789abcdef"
OPERATOR = "sk-operator-0123456789abcdef"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("guard") / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1,
                                  vocab=320, max_position=64, seed=6)


@pytest.fixture(scope="module")
def lead(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("guard-lead")
    (root / "client.keys").write_text(f"# client keys\n{KEY_A}\n\n{KEY_B}\n")
    (root / "operator.keys").write_text(f"{OPERATOR}\n")
    with ProcessGroup(root / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 1), (1, 2)], keys_dir=root / "keys", data_dir=root / "lead",
                                  lead_args=["--api-keys", str(root / "client.keys"), "--operator-keys",
                                             str(root / "operator.keys"), "--max-concurrent", "1"])
        info["client"] = httpx.Client(base_url=info["http"], timeout=60)
        yield info
        info["client"].close()


def test_missing_or_wrong_key_is_401_and_healthz_needs_none(lead: dict[str, Any]) -> None:
    client = lead["client"]
    assert client.get("/healthz").status_code == 200
    for headers in ({}, auth("sk-not-a-key-of-this-lead"), {"Authorization": f"Basic {KEY_A}"},
                    {"Authorization": "Bearer"}):
        answer = client.get("/v1/models", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"] == {
            "message": answer.json()["error"]["message"], "type": "invalid_request_error", "param": None,
            "code": "invalid_api_key"}
        answer = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=headers)
        assert answer.status_code == 401
    assert client.get("/v1/models", headers=auth(KEY_A)).status_code == 200


def test_a_request_record_is_readable_only_by_its_creator(lead: dict[str, Any]) -> None:
    client = lead["client"]
    answer = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2}, headers=auth(KEY_A))
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["id"]
    deadline = time.monotonic() + 10
    mine = client.get(f"/v1/requests/{request_id}", headers=auth(KEY_A))
    while mine.status_code == 404 and time.monotonic() < deadline:  # recorded as the response ends
        time.sleep(0.05)
        mine = client.get(f"/v1/requests/{request_id}", headers=auth(KEY_A))
    assert mine.status_code == 200 and mine.json()["id"] == request_id and "owner" not in mine.json()
    other = client.get(f"/v1/requests/{request_id}", headers=auth(KEY_B))
    missing = client.get("/v1/requests/req-does-not-exist", headers=auth(KEY_B))
    assert other.status_code == missing.status_code == 404  # the same answer: existence is not revealed
    assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert client.get(f"/v1/requests/{request_id}").status_code == 401
    assert client.get(f"/v1/requests/{request_id}", headers=auth(OPERATOR)).status_code == 200


def test_operator_endpoints_need_the_operator_key(lead: dict[str, Any]) -> None:
    client = lead["client"]
    for path in ("/v1/providers", "/v1/audit", "/metrics", "/v1/providers/"):
        answer = client.get(path, headers=auth(KEY_A))
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "operator_key_required", path
        assert client.get(path).status_code == 401
    providers = client.get("/v1/providers", headers=auth(OPERATOR))
    assert providers.status_code == 200 and "banned" in providers.json() and len(providers.json()["data"]) == 2
    assert client.get("/v1/audit", headers=auth(OPERATOR)).status_code == 200
    assert client.get("/metrics", headers=auth(OPERATOR)).status_code == 200


def test_per_key_concurrency_limit_is_429_with_retry_after(lead: dict[str, Any]) -> None:
    client = lead["client"]
    head, _ = request_bytes("POST", "/v1/completions", b"x" * 100,
                            auth(KEY_A) | {"Content-Type": "application/json"})
    holder = socket.create_connection(address(lead["http"]), timeout=30)
    try:
        holder.sendall(head + b'{"prompt"')  # key A's slot is held while its body is still arriving
        time.sleep(0.3)
        busy = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=auth(KEY_A))
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded" and is_openai_error(
            parse_answer(b"HTTP/1.1 429 x\r\n\r\n" + busy.content))
        other = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=auth(KEY_B))
        assert other.status_code == 200, other.text
    finally:
        holder.close()
    deadline = time.monotonic() + 10
    again = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=auth(KEY_A))
    while again.status_code == 429 and time.monotonic() < deadline:  # the slot frees once the server sees the close
        time.sleep(0.1)
        again = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=auth(KEY_A))
    assert again.status_code == 200, again.text


def test_healthz_answers_fast_while_a_10_mb_body_is_uploaded(lead: dict[str, Any]) -> None:
    head, pieces = request_bytes("POST", "/v1/chat/completions", b"a" * (10 << 20),
                                 auth(KEY_B) | {"Content-Type": "application/json"}, chunked=True)
    result: dict[str, Any] = {}

    def upload() -> None:
        with socket.create_connection(address(lead["http"]), timeout=60) as sock:
            sock.sendall(head)
            try:
                for piece in pieces:
                    sock.sendall(piece)
                    time.sleep(0.004)  # ~160 pieces: the upload lasts well over a second
            except OSError:
                pass
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            result["answer"] = parse_answer(data)

    thread = threading.Thread(target=upload)
    thread.start()
    latencies = []
    with httpx.Client(base_url=lead["http"], timeout=10) as probe:
        probe.get("/healthz")  # connect first: measure the answer, not the TCP handshake
        time.sleep(0.2)
        while thread.is_alive() and len(latencies) < 15:
            started = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    thread.join(60)
    assert len(latencies) >= 5, "the upload ended before /healthz could be probed"
    assert statistics.median(latencies) < 0.1, latencies
    answer = result["answer"]
    assert answer.status == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_non_loopback_bind_without_keys_refuses_to_start(tmp_path: Path, checkpoint: Path) -> None:
    args = ["lead", "serve", "--checkpoint", str(checkpoint), "--data-dir", str(tmp_path / "data"),
            "--listen", "127.0.0.1:0"]
    result = CliRunner().invoke(main, [*args, "--http", "0.0.0.0:0"])
    assert result.exit_code == 1 and "not a loopback address" in result.output and "--api-keys" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "data").exists()  # nothing written
    (tmp_path / "bad.keys").write_text("short\n")
    result = CliRunner().invoke(main, [*args, "--http", "0.0.0.0:0", "--api-keys", str(tmp_path / "bad.keys")])
    assert result.exit_code == 1 and "line 1" in result.output and "16 to 256 characters" in result.output
