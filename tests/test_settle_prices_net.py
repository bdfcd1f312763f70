"""Settlement at offered prices, on real processes (issue 19): a cohort whose providers offer different
prices pays each one its own price x work x positions, the fee equals the quote, the residual is 0,
and the ledger record (prices, values, payouts, timestamp) verifies and shows per-provider totals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from verisplit.impl.audit.calibrate import calibrate, write_calibration
from verisplit.impl.cli.ledger import provider_totals
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort, verisplit_command
from verisplit.impl.records.ledger import Ledger
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.spec.settlement import billable_positions
from verify_helpers import wait_settled

pytestmark = pytest.mark.net

RANGES = [(0, 1), (1, 3), (3, 4)]
PRICES = [2, 1, 5]


def test_each_provider_is_paid_its_own_price(tmp_path: Path) -> None:
    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=5)
    calibration = write_calibration(calibrate(checkpoint, dtype="float32", device="cpu", split=RANGES, prompt_len=8,
                                              new_tokens=8, seeds=(0, 1)), tmp_path / "calibration.json")
    lead_args = ["--audit-p", "1", "--calibration", str(calibration), "--lead-key", str(tmp_path / "keys" / "lead.key")]
    with ProcessGroup(tmp_path / "logs") as group:
        info = start_local_cohort(group, checkpoint, RANGES, keys_dir=tmp_path / "keys", data_dir=tmp_path / "lead",
                                  prices=PRICES, lead_args=lead_args)
        with httpx.Client(base_url=info["http"], timeout=120) as client:
            reply = client.post("/v1/completions", json={"prompt": "mixed prices", "max_tokens": 6, "temperature": 0})
            assert reply.status_code == 200, reply.text
            record = wait_settled(client, reply.json()["id"])
    usage = record["usage"]
    positions = billable_positions(usage["prompt_tokens"], usage["completion_tokens"])
    assert positions > 0 and record["status"] == "completed"
    settlement = record["settlement"]
    expected = {f"provider-{i}": price * (end - first) * positions for i, ((first, end), price) in enumerate(zip(RANGES, PRICES))}
    # each provider paid exactly its own price x work x positions (not the cohort's average price)
    assert settlement["payouts"] == expected
    assert settlement["values"] == expected and settlement["residual"] == 0 and settlement["refund"] == 0
    assert record["fee"] == sum(expected.values())
    # the ledger record carries the prices and values, and verifies
    with Ledger(tmp_path / "lead" / "ledger.db", create=False) as ledger:
        bodies = [(r.seq, r.body) for r in ledger.records()]
    assert len(bodies) == 1
    body = bodies[0][1]
    assert body["prices"] == {f"provider-{i}": p for i, p in enumerate(PRICES)} and body["values"] == expected
    assert isinstance(body["recorded_at_ms"], int) and body["recorded_at_ms"] > 1_700_000_000_000
    totals = provider_totals(bodies)
    assert {pid: (row["work"], row["values"], row["payouts"]) for pid, row in totals.items()} == {
        pid: (value // PRICES[int(pid[-1])], value, value) for pid, value in expected.items()}
    verify = subprocess.run(verisplit_command("ledger", "verify", "--ledger", str(tmp_path / "lead" / "ledger.db")),
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    show = subprocess.run(verisplit_command("ledger", "show", "--ledger", str(tmp_path / "lead" / "ledger.db")),
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and "per-provider totals" in show.stdout and "Traceback" not in show.stderr
