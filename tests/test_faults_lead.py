"""Crash-safe settlement (issue 13): ``kill -9`` of the lead at seeded random points during 100
requests from 4 concurrent clients. After a restart (same data folder and ports; providers register
again by themselves) every request whose client received a completion is in the ledger exactly once,
``ledger verify`` passes (against the head kept outside the database too) and every record is
conserved; requests in flight when the lead died fail cleanly (a transport error, never a 200)."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from verisplit.impl.node.procs import ProcessGroup, free_port, start_local_cohort, verisplit_command
from verisplit.impl.records.ledger import Ledger
from verisplit.impl.records.ledger_head import read_head_file
from verisplit.impl.runtime.checkpoint import make_random_checkpoint

pytestmark = pytest.mark.net

TOTAL, CLIENTS = 100, 4


def start_lead(group: ProcessGroup, name: str, checkpoint: Path, data_dir: Path, grpc_addr: str, http_addr: str) -> Any:
    child = group.spawn(name, verisplit_command("lead", "serve", "--listen", grpc_addr, "--http", http_addr,
                                                "--checkpoint", str(checkpoint), "--data-dir", str(data_dir)))
    group.wait_ready([child], timeout=120)
    return child


def test_lead_killed_during_requests_loses_no_settlement(tmp_path: Path) -> None:
    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=128, seed=9)
    data_dir = tmp_path / "lead"
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    rng = random.Random(2013)
    kill_at = sorted(rng.sample(range(10, 90), 3))  # attempts after which the lead is killed
    received: list[str] = []
    failures: list[str] = []
    attempts = 0
    lock = threading.Lock()
    with ProcessGroup(tmp_path / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4)], keys_dir=tmp_path / "keys", data_dir=data_dir,
                                  lead_listen=grpc_addr, lead_http_listen=http_addr)
        lead = info["lead"]

        def client_loop(index: int) -> None:
            nonlocal attempts
            with httpx.Client(base_url=info["http"], timeout=30) as client:
                while True:
                    with lock:
                        if attempts >= TOTAL:
                            return
                        attempts += 1
                    try:
                        response = client.post("/v1/completions", json={"prompt": [index + 1, 7, 9], "max_tokens": 4,
                                                                        "temperature": 0})
                    except httpx.TransportError as exc:
                        failures.append(type(exc).__name__)
                        if isinstance(exc, httpx.ConnectError):  # the lead is down: not a request
                            with lock:
                                attempts -= 1
                        time.sleep(0.05)
                        continue
                    if response.status_code == 200:
                        with lock:
                            received.append(response.json()["id"])
                    else:  # no cohort yet (providers registering again): not a request either
                        failures.append(str(response.status_code))
                        with lock:
                            attempts -= 1
                        time.sleep(0.05)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for restart, mark in enumerate(kill_at):
            while attempts < mark:
                time.sleep(0.005)
            group.stop(lead, sig=signal.SIGKILL)
            lead = start_lead(group, f"lead-r{restart}", checkpoint, data_dir, grpc_addr, http_addr)
        for thread in threads:
            thread.join(timeout=300)
        # One last crash right after the last completion: whatever was not settled yet is settled by
        # the recovery pass of the next start (before it serves), exactly once.
        group.stop(lead, sig=signal.SIGKILL)
        lead = start_lead(group, "lead-final", checkpoint, data_dir, grpc_addr, http_addr)
        group.stop(lead, sig=signal.SIGTERM, timeout=60)
    assert attempts == TOTAL and len(received) >= TOTAL - 4 * len(kill_at), (len(received), failures[:10])
    assert all(f in ("ConnectError", "RemoteProtocolError", "ReadError", "503", "502") for f in failures), failures
    print(f"{len(received)} completions, kills after attempts {kill_at}, failures {sorted(set(failures))}")
    ledger_path = data_dir / "ledger.db"
    with Ledger(ledger_path, read_only=True) as ledger:
        ids = [record.body["request_id"] for record in ledger.records()]
        report = ledger.verify(expect_head=read_head_file(ledger_path))
    assert report.ok, report.message
    assert len(ids) == len(set(ids))  # exactly once
    missing = sorted(set(received) - set(ids))
    assert missing == [], f"{len(missing)} completed requests never reached the ledger"
