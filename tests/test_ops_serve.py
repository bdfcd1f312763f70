"""Running a cohort as an operator would (issue 20): real lead and provider processes on loopback.

One module-scoped lead (configured by a TOML file, environment variables and flags at once) and three
providers (two with fixed ranges leaving a gap, one with ``--layers auto`` set through the
environment) are shared by the tests, which run in file order; the SIGTERM test stops the lead and
runs last. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from verisplit.impl.node.procs import ProcessGroup, free_port, verisplit_command
from verisplit.impl.records.keys import create_key_file
from verisplit.impl.records.requests import RequestStore
from verisplit.impl.runtime.checkpoint import make_random_checkpoint

pytestmark = pytest.mark.net


def snapshot(folder: Path) -> list[tuple[str, int]]:
    """Every file under ``folder`` with its size (what "nothing changed on disk" compares)."""
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def metrics(url: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}; parsing fails loudly on malformed output."""
    text = httpx.get(url, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ops")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=6, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=512, seed=3)
    grpc_port, file_http, env_http = free_port(), free_port(), free_port()
    config = root / "conf" / "verisplit.toml"
    config.parent.mkdir()
    # file: listen (kept), http (the environment overrides it), data-dir (the flag overrides it), grace
    config.write_text(f'[lead]\nlisten = "127.0.0.1:{grpc_port}"\nhttp = "127.0.0.1:{file_http}"\n'
                      f'data-dir = "file-data"\nshutdown_grace = 0.5\nlog-format = "text"\nno-audit = true\n'
                      f'checkpoint = "{checkpoint}"\n')
    env = dict(os.environ)
    with ProcessGroup(root / "logs", env=env) as group:
        lead = group.spawn("lead", verisplit_command("lead", "serve", "--config", str(config), "--data-dir",
                                                     str(root / "flag-data")),
                           extra_env={"VERISPLIT_LEAD_SERVE_HTTP": f"127.0.0.1:{env_http}",
                                      "VERISPLIT_LEAD_SERVE_LOG_FORMAT": "json",
                                      "VERISPLIT_LEAD_SERVE_DATA_DIR": str(root / "env-data")})
        ready = group.wait_ready([lead], timeout=120)["lead"]
        keys = root / "keys"
        keys.mkdir()
        for name in ("a", "b", "auto", "dup"):
            create_key_file(keys / f"{name}.key")
        yield {"root": root, "checkpoint": checkpoint, "group": group, "lead": lead, "ready": ready,
               "grpc_port": grpc_port, "file_http": file_http, "env_http": env_http, "keys": keys,
               "http": ready["http"], "grpc": ready["grpc"], "data": root / "flag-data"}


def provider_args(ops: dict[str, Any], name: str, layers: str, *extra: str) -> list[str]:
    return verisplit_command("provider", "serve", "--checkpoint", str(ops["checkpoint"]), "--layers", layers,
                             "--key", str(ops["keys"] / f"{name}.key"), "--lead", ops["grpc"], "--provider-id", name,
                             *extra)


def test_settings_follow_flag_env_file_default(ops):
    assert ops["grpc"] == f"127.0.0.1:{ops['grpc_port']}"            # file only
    assert ops["http"] == f"http://127.0.0.1:{ops['env_http']}"       # env over file
    assert (ops["data"] / "lead.key").exists()                        # flag over env over file
    assert not (ops["root"] / "env-data").exists() and not (ops["root"] / "conf" / "file-data").exists()
    lines = [json.loads(line) for line in ops["lead"].log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "serving" and line["level"] == "info" for line in lines)  # env: json logs


def test_readyz_is_503_until_a_cohort_covers_the_model(ops):
    ready = httpx.get(ops["http"] + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["ready"] is False and "no cohort" in ready.json()["reason"]
    health = httpx.get(ops["http"] + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["ok"] is True


def test_a_second_lead_on_used_ports_fails_and_writes_nothing(ops):
    other = ops["root"] / "second-lead"
    before = snapshot(ops["data"])
    cases = [("--listen", f"127.0.0.1:{ops['grpc_port']}", "--http", f"127.0.0.1:{free_port()}"),
             ("--http", ops["http"].removeprefix("http://"), "--listen", f"127.0.0.1:{free_port()}")]
    for used_flag, used, free_flag, free in cases:
        done = subprocess.run(verisplit_command("lead", "serve", "--checkpoint", str(ops["checkpoint"]), "--data-dir",
                                                str(other), used_flag, used, free_flag, free, "--no-audit"),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert f"Error: {used_flag} {used}: address already in use" in done.stderr
        assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
        assert not other.exists(), "nothing may be written before every port is bound"
    assert snapshot(ops["data"]) == before


def test_layers_auto_fills_the_gap_left_by_other_providers(ops):
    group: ProcessGroup = ops["group"]
    port_a, metrics_port = free_port(), free_port()
    a = group.spawn("p-a", provider_args(ops, "a", "0:2", "--listen", f"127.0.0.1:{port_a}", "--price", "2",
                                         "--metrics", f"127.0.0.1:{metrics_port}"))
    b = group.spawn("p-b", provider_args(ops, "b", "4:6", "--price", "3"))
    group.wait_ready([a, b], timeout=120)
    ops.update(port_a=port_a, provider_metrics=f"http://127.0.0.1:{metrics_port}/metrics")
    assert httpx.get(ops["http"] + "/readyz", timeout=10).status_code == 503  # layers 2..3 missing
    # every setting of the automatic provider through the environment
    auto = group.spawn("p-auto", verisplit_command("provider", "serve"), extra_env={
        "VERISPLIT_PROVIDER_SERVE_CHECKPOINT": str(ops["checkpoint"]), "VERISPLIT_PROVIDER_SERVE_LAYERS": "auto",
        "VERISPLIT_PROVIDER_SERVE_KEY": str(ops["keys"] / "auto.key"), "VERISPLIT_PROVIDER_SERVE_LEAD": ops["grpc"],
        "VERISPLIT_PROVIDER_SERVE_LEAD_HTTP": ops["http"], "VERISPLIT_PROVIDER_SERVE_PROVIDER_ID": "auto"})
    info = group.wait_ready([auto], timeout=120)["p-auto"]
    assert (info["first_layer"], info["end_layer"]) == (2, 4)
    deadline = time.monotonic() + 20
    while httpx.get(ops["http"] + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readyz never became 200"
        time.sleep(0.1)
    assert httpx.get(ops["http"] + "/readyz", timeout=10).json()["cohort"] == ["a", "auto", "b"]


def test_a_second_provider_on_a_used_port_fails_fast(ops):
    started = time.monotonic()
    done = subprocess.run(provider_args(ops, "dup", "0:2", "--listen", f"127.0.0.1:{ops['port_a']}", "--price", "0"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"Error: --listen 127.0.0.1:{ops['port_a']}: address already in use" in done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - started < 30
    providers = httpx.get(ops["http"] + "/v1/providers", timeout=10).json()
    assert sorted(p["provider_id"] for p in providers["data"]) == ["a", "auto", "b"] and providers["banned"] == {}


def test_metrics_parse_and_move_with_traffic(ops):
    before = metrics(ops["http"] + "/metrics")
    provider_before = metrics(ops["provider_metrics"])
    assert before["verisplit_lead_ready{}"] == 1 and before["verisplit_lead_providers{}"] == 3
    with httpx.Client(base_url=ops["http"], timeout=60) as client:
        for stream in (False, True):
            response = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 4, "temperature": 0,
                                                            "stream": stream})
            assert response.status_code == 200
        assert client.post("/v1/completions", json={"prompt": "", "max_tokens": 4}).status_code == 400
    key = "verisplit_lead_requests_total{reason=,status=completed}"
    deadline = time.monotonic() + 20
    while metrics(ops["http"] + "/metrics").get(key, 0) < before.get(key, 0) + 2:
        assert time.monotonic() < deadline, "the request counter did not move"
        time.sleep(0.1)
    after = metrics(ops["http"] + "/metrics")
    assert after["verisplit_lead_tokens_total{kind=completion}"] >= before.get(
        "verisplit_lead_tokens_total{kind=completion}", 0) + 8
    assert after["verisplit_lead_settlements_total{}"] >= before.get("verisplit_lead_settlements_total{}", 0) + 2
    assert after["verisplit_lead_request_seconds_count{stream=true}"] >= 1
    assert after["verisplit_lead_time_to_first_token_seconds_count{}"] >= 1
    assert after["verisplit_lead_commitments_checked_total{}"] > before.get("verisplit_lead_commitments_checked_total{}", 0)
    assert after.get("verisplit_lead_http_requests_total{code=400,method=POST,route=/v1/completions}", 0) >= 1
    provider_after = metrics(ops["provider_metrics"])
    assert provider_after["verisplit_provider_steps_total{}"] >= provider_before["verisplit_provider_steps_total{}"] + 8
    assert provider_after["verisplit_provider_registered{}"] == 1
    # one structured (JSON) line per request with the operator's fields
    lines = [json.loads(line) for line in ops["lead"].log_path.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "verisplit.requests"]
    assert len(requests) >= 2
    for line in requests[-2:]:
        assert line["status"] == "completed" and line["completion_tokens"] == 4 and line["fee"] > 0
        assert line["cohort"] == ["a[0:2]", "auto[2:4]", "b[4:6]"] and line["latency_s"] > 0
        assert line["audit"] == "none" and line["settled"] is True and line["request_id"].startswith("req-")


def test_sigterm_during_a_stream_ends_it_with_an_error_event_and_exits_cleanly(ops):
    lead = ops["lead"]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 480, "temperature": 0, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", ops["http"] + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) >= 5:
                break
        os.kill(lead.process.pid, signal.SIGTERM)
        stopped = time.monotonic()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "shutting_down" and error["type"] == "server_error"
    request_id = error["request_id"]
    assert all("error" not in json.loads(e) for e in events[:-2])
    assert lead.process.wait(timeout=30) == 0
    assert time.monotonic() - stopped < 25
    log = lead.log_path.read_text()
    assert "Traceback" not in log and "CancelledError" not in log
    record = RequestStore(ops["data"] / "requests").load(request_id)
    assert record.extra["finish_reason"] == "shutdown" and 0 < record.completion_tokens < 480
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    cut = [line for line in lines if line.get("request_id") == request_id and line["logger"] == "verisplit.requests"]
    assert len(cut) == 1 and cut[0]["cut"] is True and cut[0]["status"] == "completed"
    assert any(line.get("event") == "stopped" for line in lines)
