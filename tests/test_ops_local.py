"""``verisplit serve-local`` (issue 20): a lead and K providers from one command, logs per process,
a clean stop on SIGTERM. Real processes on loopback, bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from verisplit.impl.node.procs import free_port, verisplit_command
from verisplit.impl.runtime.checkpoint import make_random_checkpoint

pytestmark = pytest.mark.net


def test_serve_local_starts_a_ready_cohort_and_stops_cleanly(tmp_path):
    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=256, seed=5)
    http = f"127.0.0.1:{free_port()}"
    data = tmp_path / "local"
    stderr = open(tmp_path / "serve-local.err", "w+")
    process = subprocess.Popen(verisplit_command("serve-local", "--providers", "2", "--checkpoint", str(checkpoint),
                                                 "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}",
                                                 "--http", http, "--prices", "2,3"),
                               stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "cohort ready" not in (tmp_path / "serve-local.err").read_text():
            assert process.poll() is None, (tmp_path / "serve-local.err").read_text()
            assert time.monotonic() < deadline, "serve-local was not ready in time"
            time.sleep(0.2)
        ready = httpx.get(f"http://{http}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["cohort"] == ["provider-0", "provider-1"]
        done = httpx.post(f"http://{http}/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    text = (tmp_path / "serve-local.err").read_text()
    assert "Traceback" not in text and "layers 0:2" in text and "layers 2:4" in text
    for name in ("lead", "provider-0", "provider-1"):
        log = (data / "logs" / f"{name}.log").read_text()
        assert "stopped" in log and "Traceback" not in log, (name, log)
    assert (data / "lead" / "ledger.db").exists() and (data / "keys" / "provider-0.key").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{http}/healthz", timeout=2)
