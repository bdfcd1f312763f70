"""Ledger: append/verify round trip; tampering with the SQLite file is caught and named; bad input
never changes the file."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from nacl.signing import SigningKey

from verisplit.impl.cli.ledger import ledger_group
from verisplit.impl.records.ledger import Ledger, LedgerError, settlement_body
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.settlement import settle

LEAD = SigningKey(b"K" * 32)
COHORT = Cohort("m", (Assignment("a", b"\x01" * 32, 0, 2), Assignment("b", b"\x02" * 32, 2, 5)))


def body(i: int, failed=()):
    work = {"a": 2 * (10 + i), "b": 3 * (10 + i)}
    s = settle(1000 + i, work, {p: 1 for p in work}, "lead", failed)
    audits = [{"segment_index": 1, "provider_id": "b", "passed": "b" not in failed, "max_abs": 0.5, "ratio": 3.0,
               "reason": "", "request_id": f"r{i}", "source": "audit"}]
    return settlement_body(request_id=f"r{i}", model_id="m", cohort=COHORT, work=work, settlement=s,
                           prices={p: 1 for p in work}, audits=audits)


@pytest.fixture
def ledger_path(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        for i in range(5):
            ledger.append(body(i, failed=("b",) if i == 2 else ()), LEAD)
    return path


def _verify(path):
    with Ledger(path, create=False) as ledger:
        return ledger.verify(bytes(LEAD.verify_key))


def test_round_trip(ledger_path):
    report = _verify(ledger_path)
    assert report.ok and report.count == 5
    with Ledger(ledger_path, create=False) as ledger:
        records = list(ledger.records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[1].body["prev_hash"] == records[0].hash
    assert records[2].body["payouts"]["b"] == 0 and records[2].body["refund"] > 0
    assert records[0].body["lead_public_key"] == bytes(LEAD.verify_key).hex()


def _edit(path, sql, params=()):
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


def test_edited_payout_is_caught(ledger_path):
    db = sqlite3.connect(ledger_path)
    text = db.execute("SELECT body FROM records WHERE seq = 3").fetchone()[0]
    db.close()
    b = json.loads(text)
    b["payouts"]["a"] += 1
    b["residual"] -= 1  # still conserved: only the hash/signature can catch it
    new = json.dumps(b, sort_keys=True, separators=(",", ":"))
    _edit(ledger_path, "UPDATE records SET body = ? WHERE seq = 3", (new,))
    report = _verify(ledger_path)
    assert not report.ok and report.bad_seq == 3 and report.bad_request_id == "r2"
    assert "hash does not match" in report.message


def test_deleted_record_is_caught(ledger_path):
    _edit(ledger_path, "DELETE FROM records WHERE seq = 2")
    report = _verify(ledger_path)
    assert not report.ok and report.bad_seq == 3 and "missing" in report.message


def test_deleted_tail_is_caught_by_signed_head(ledger_path):
    _edit(ledger_path, "DELETE FROM records WHERE seq = 5")
    report = _verify(ledger_path)
    assert not report.ok and "head" in report.message


def test_flipped_signature_byte_is_caught(ledger_path):
    db = sqlite3.connect(ledger_path)
    sig = db.execute("SELECT signature FROM records WHERE seq = 4").fetchone()[0]
    db.close()
    flipped = bytearray(bytes.fromhex(sig))
    flipped[0] ^= 1
    _edit(ledger_path, "UPDATE records SET signature = ? WHERE seq = 4", (bytes(flipped).hex(),))
    report = _verify(ledger_path)
    assert not report.ok and report.bad_seq == 4 and "signature" in report.message


def test_resigned_by_other_key_is_caught(ledger_path):
    with Ledger(ledger_path) as ledger:
        ledger.append(body(9), SigningKey(b"Z" * 32))
    report = _verify(ledger_path)
    assert not report.ok and report.bad_seq == 6 and "different lead key" in report.message


def test_bad_input_leaves_file_unchanged(ledger_path):
    with Ledger(ledger_path) as ledger:
        b = body(7)
        b["refund"] += 1
        with pytest.raises(LedgerError, match="not conserved"):
            ledger.append(b, LEAD)
        b = body(7)
        b["payouts"]["a"] += 1
        b["residual"] -= 1
        with pytest.raises(LedgerError, match="spec's settle"):
            ledger.append(b, LEAD)
        with pytest.raises(LedgerError, match="already settled"):
            ledger.append(body(1), LEAD)
        b = body(7)
        del b["fee"]
        with pytest.raises(LedgerError, match="'fee'"):
            ledger.append(b, LEAD)
        b = body(7)
        b["audits"][0]["ratio"] = float("inf")
        with pytest.raises(LedgerError, match="canonical JSON"):
            ledger.append(b, LEAD)
    assert _verify(ledger_path).ok and _verify(ledger_path).count == 5
    with Ledger(ledger_path, create=False) as ledger:
        assert [r.seq for r in ledger.records()] == [1, 2, 3, 4, 5]


def test_cli_show_verify_export(ledger_path, tmp_path):
    runner = CliRunner()
    result = runner.invoke(ledger_group, ["verify", "--ledger", str(ledger_path)])
    assert result.exit_code == 0 and "5 records verified" in result.output
    result = runner.invoke(ledger_group, ["show", "--ledger", str(ledger_path)])
    assert result.exit_code == 0 and "r4" in result.output
    out = tmp_path / "export.jsonl"
    result = runner.invoke(ledger_group, ["export", "--ledger", str(ledger_path), "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert result.exit_code == 0 and [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[2]["body"]["failed"] == ["b"]
    unwritable = tmp_path / "no-such-dir" / "export.jsonl"
    result = runner.invoke(ledger_group, ["export", "--ledger", str(ledger_path), "--out", str(unwritable)])
    assert result.exit_code == 1 and "cannot write the export" in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)  # a clear error, not an OSError traceback
    _edit(ledger_path, "DELETE FROM records WHERE seq = 2")
    result = runner.invoke(ledger_group, ["verify", "--ledger", str(ledger_path)])
    assert result.exit_code == 1 and "record seq 3 (request 'r2')" in result.output


def test_cli_clear_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(ledger_group, ["verify", "--ledger", str(tmp_path / "nope.db")])
    assert result.exit_code == 1 and "no ledger file" in result.output
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    result = runner.invoke(ledger_group, ["show", "--ledger", str(junk)])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(ledger_group, ["verify", "--ledger", str(junk), "--lead-public-key", "zz"])
    assert result.exit_code == 2
