"""Retention bounded in bytes, and records compacted to digests after their audits (issue 12).

Unit: ``RequestStore(max_bytes=...)`` keeps the bytes of its records and referenced tensors (counted
on disk) within the bound, evicting oldest first; a compacted record keeps its commitments and
loads with ``tensors_discarded``. Real processes: a lead with ``--retention-bytes 65536`` serves
requests; the data folder stays within the bound, early records are evicted (404), an audited record
is compacted at the next save, ``/v1/requests/{id}`` still serves it, and ``verisplit verifier audit``
checks its signed chain and reports the tensors as discarded (exit 0).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from nacl.signing import SigningKey

from verisplit.cli import main
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort
from verisplit.impl.records.requests import RequestRecord, RequestStore, StepRecord
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.commitment import PROTOCOL_VERSION, BoundaryCommitment, sign_commitment

BOUND = 1 << 16


def disk_bytes(root: Path) -> int:
    """Bytes of every record file and tensor under a store root (what the bound is about)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp"))


def make_record(request_id: str, size: int, steps: int = 3) -> RequestRecord:
    key = SigningKey(bytes(32))
    cohort = Cohort("m", (Assignment("p0", bytes(key.verify_key), 0, 1),))
    out = []
    for s in range(steps):
        commitment = sign_commitment(BoundaryCommitment(PROTOCOL_VERSION, "m", bytes(32), request_id, s, 0, 0, 1, s, 1,
                                                        bytes(32), bytes(32), bytes(32)), key)
        blob_in = request_id.encode() + bytes([s]) * size
        blob_out = request_id.encode() + bytes([s + 100]) * size
        out.append(StepRecord(s, s, 1, bytes(32), [commitment], [blob_in], [blob_out]))
    return RequestRecord(request_id, "m", cohort, out, "completed", None, None, 1, 1, steps)


def test_store_keeps_within_its_byte_bound_oldest_first(tmp_path: Path) -> None:
    store = RequestStore(tmp_path, max_bytes=40_000)
    for i in range(12):
        store.save(make_record(f"req-{i}", 2000))
        assert disk_bytes(tmp_path) <= 40_000
        assert store.retained_bytes() == disk_bytes(tmp_path)
    kept = store.list_ids()
    assert kept[-1] == "req-11" and "req-0" not in kept and len(kept) >= 2
    assert kept == [f"req-{i}" for i in range(12 - len(kept), 12)]  # a suffix: the oldest went first
    store.save_extras("req-11", {"audits": ["x" * 5000]})
    store.save(make_record("req-12", 2000))
    assert disk_bytes(tmp_path) <= 40_000  # extras count too


def test_compacted_record_keeps_commitments_not_tensors(tmp_path: Path) -> None:
    store = RequestStore(tmp_path)
    original = make_record("req-a", 5000)
    store.save(original)
    store.mark_compactable("req-a")
    assert store.load("req-a").steps[0].inputs  # not yet: compaction happens at the next save
    before = disk_bytes(tmp_path)
    store.save(make_record("req-b", 10))
    compacted = store.load("req-a")
    assert compacted.tensors_discarded and not original.tensors_discarded
    assert [s.commitments for s in compacted.steps] == [s.commitments for s in original.steps]
    assert all(s.inputs == [] and s.outputs == [] for s in compacted.steps)
    assert disk_bytes(tmp_path) < before - 25_000  # req-a's six 5 kB tensors are gone
    assert store.load("req-b").steps[0].inputs == make_record("req-b", 10).steps[0].inputs
    assert RequestStore(tmp_path).load("req-a").tensors_discarded  # also as re-read from disk


@pytest.mark.net
def test_lead_retention_bound_and_compacted_records_still_verify(tmp_path: Path) -> None:
    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1, vocab=320,
                                        max_position=64, seed=7)
    data = tmp_path / "lead"
    with ProcessGroup(tmp_path / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 1), (1, 2)], keys_dir=tmp_path / "keys", data_dir=data,
                                  lead_args=["--retention-bytes", str(BOUND)])
        with httpx.Client(base_url=info["http"], timeout=60) as client:
            ids = []
            for i in range(10):
                answer = client.post("/v1/completions", json={"prompt": f"request {i}", "max_tokens": 8})
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["id"])
                wait_hooks(client, ids[-1])
            assert disk_bytes(data / "requests") <= BOUND
            assert client.get(f"/v1/requests/{ids[0]}").status_code == 404  # evicted, oldest first
            audited = client.get(f"/v1/requests/{ids[-2]}").json()
            assert audited["tensors_discarded"] is True and audited["status"] == "completed"
            assert audited["commitments_checked"] == 2 * 8 and len(audited["steps"]) == 8
            assert client.get(f"/v1/requests/{ids[-1]}").status_code == 200
    assert RequestStore(data / "requests").load(ids[-2]).tensors_discarded  # compacted on disk by the last save
    result = CliRunner().invoke(main, ["verifier", "audit", "--checkpoint", str(checkpoint), "--data-dir", str(data),
                                       "--request", ids[-2], "--atol", "0", "--rtol", "0"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["chain"] == {"valid": True, "steps": 8} and lines[0]["tensors_discarded"] is True
    assert [line["segment_index"] for line in lines[1:]] == [0, 1]
    assert all("tensors discarded" in line["skipped"] for line in lines[1:])


def wait_hooks(client: httpx.Client, request_id: str) -> dict[str, Any]:
    """The request's info once its post-request hooks (settlement, audits) are done."""
    deadline = time.monotonic() + 20
    while True:
        answer = client.get(f"/v1/requests/{request_id}")
        if answer.status_code == 200 and answer.json().get("pending_hooks") == 0:
            return answer.json()
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)
