"""Probation and the vesting escrow in the lead and its ledger (issue 11).

In process (fast): ``Ledger.append`` computes each record's escrow with the spec's ``settle_escrow``;
``verify`` replays it and names an escrow figure that a lead signed wrongly (a re-signed record, so
hashes and signatures still verify); version-2 ledgers still verify and their records count for
probation. On real processes (``net``): 40 requests at p = 1/2 with probation 2 and window 3 against a
cheater that re-joins under a fresh key after every ban and is honest for each key's probation, then
skips a layer (bench/franchise.py's launchers): new keys are audited at p = 1, an ejected key forfeits
exactly what it held (its unvested payouts), banned keys never return, ``ledger verify`` passes and
held + vested + forfeited = paid per key and in total.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from verisplit.impl.audit.franchise import Franchise, check_startup, describe
from verisplit.impl.records.ledger import (LEDGER_VERSION, Ledger, LedgerError, canonical_json, head_bytes, record_hash,
                                           settlement_body)
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.escrow import DeterrenceError, EscrowTerms
from verisplit.spec.settlement import settle

ROOT = Path(__file__).resolve().parent.parent
LEAD = SigningKey(b"F" * 32)
KEY_A, KEY_B = b"\x0a" * 32, b"\x0b" * 32
COHORT = Cohort("m", (Assignment("a", KEY_A, 0, 2), Assignment("b", KEY_B, 2, 4)))
TERMS = EscrowTerms(Fraction(1, 2), 1, 2)


def _body(i: int, failed: tuple[str, ...] = (), terms: EscrowTerms = TERMS) -> dict:
    work = {"a": 2 * (5 + i), "b": 2 * (5 + i)}
    prices = {"a": 3, "b": 2}
    s = settle(5 * 2 * (5 + i), work, prices, "lead", failed)
    return settlement_body(request_id=f"r{i}", model_id="m", cohort=COHORT, work=work, settlement=s, prices=prices,
                           audits=[], escrow_terms=terms)


def test_append_computes_the_escrow_and_verify_replays_it(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        records = [ledger.append(_body(i, ("b",) if i == 3 else ()), LEAD) for i in range(5)]
        report = ledger.verify(bytes(LEAD.verify_key))
        totals = ledger.escrow_totals()
    assert LEDGER_VERSION == 3 and records[0].body["version"] == 3
    b = [next(m for m in r.body["escrow"]["members"] if m["provider_ids"] == ["b"]) for r in records]
    assert [m["audit_p"] for m in b] == ["1/1", "1/2", "1/2", "1/2", "1/2"]  # probation: 1 request
    assert [m["served_before"] for m in b] == [0, 1, 2, 3, 3]
    paid_b = [records[i].body["payouts"]["b"] for i in range(5)]
    assert b[2]["vested"] == [{"request_id": "r0", "amount": paid_b[0]}]
    assert b[3]["failed"] and b[3]["held_after"] == 0
    assert b[3]["forfeited"] == [{"request_id": "r1", "amount": paid_b[1]}, {"request_id": "r2", "amount": paid_b[2]}]
    assert report.ok, report.message
    assert "escrow: held" in report.message and report.escrow["total"] == totals["total"]
    for row in [*totals["keys"].values(), totals["total"]]:
        assert row["held"] + row["vested"] + row["forfeited"] == row["paid"]
    assert totals["keys"][KEY_B.hex()]["forfeited"] == paid_b[1] + paid_b[2]


def test_append_refuses_caller_supplied_members_and_bad_terms(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        body = _body(0)
        body["escrow"]["members"] = []
        with pytest.raises(LedgerError, match="computes the members"):
            ledger.append(body, LEAD)
        body = _body(0)
        body["escrow"]["terms"]["escrow_window"] = -1
        with pytest.raises(LedgerError, match="escrow.terms"):
            ledger.append(body, LEAD)
        assert list(ledger.records()) == []


def _resign(path: Path, seq: int, edit) -> None:  # type: ignore[no-untyped-def]
    """Edit record ``seq``'s body and re-sign it and every later record and the head with the lead key
    (what a lying lead could do): hashes, chain and signatures all verify afterwards."""
    db = sqlite3.connect(path)
    rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    prev = None
    for number, text in rows:
        body = json.loads(text)
        if number == seq:
            edit(body)
        if prev is not None:
            body["prev_hash"] = prev
        text = canonical_json(body)
        digest = record_hash(text)
        db.execute("UPDATE records SET body = ?, hash = ?, signature = ? WHERE seq = ?",
                   (text, digest, LEAD.sign(bytes.fromhex(digest)).signature.hex(), number))
        prev = digest
    head = {"count": len(rows), "hash": prev, "signature": LEAD.sign(head_bytes(len(rows), prev)).signature.hex(),
            "lead_public_key": bytes(LEAD.verify_key).hex()}
    db.execute("UPDATE meta SET value = ? WHERE key = 'head'", (canonical_json(head),))
    db.commit()
    db.close()


@pytest.mark.parametrize("field,edit", [
    ("vested", lambda m: m["vested"][0].update(amount=m["vested"][0]["amount"] + 1)),
    ("held_after", lambda m: m.update(held_after=m["held_after"] - 1)),
    ("audit_p", lambda m: m.update(audit_p="1/1")),
    ("forfeited", lambda m: m.update(forfeited=[])),
])
def test_a_wrongly_signed_escrow_figure_is_named(tmp_path: Path, field: str, edit) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        for i in range(5):
            ledger.append(_body(i, ("b",) if i == 3 else ()), LEAD)
    seq = 4 if field == "forfeited" else 3

    def change(body: dict) -> None:
        edit(next(m for m in body["escrow"]["members"] if m["provider_ids"] == ["b"]))

    _resign(path, seq, change)
    with Ledger(path, create=False) as ledger:
        report = ledger.verify(bytes(LEAD.verify_key))
    assert not report.ok and report.bad_seq == seq
    assert f"escrow field '{field}' of b" in report.message and "spec's escrow transition" in report.message
    done = subprocess.run([sys.executable, "-c", "from verisplit.cli import main; main()", "ledger", "verify", "--ledger",
                           str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"escrow field '{field}'" in done.stderr


def _write_v2(path: Path, bodies: list[dict]) -> None:
    """Records as the version-2 ledger wrote them (no escrow section)."""
    Ledger(path).close()
    db = sqlite3.connect(path)
    prev = "00" * 32
    for seq, body in enumerate(bodies, start=1):
        body = {k: v for k, v in body.items() if k != "escrow"}
        full = dict(body, version=2, seq=seq, prev_hash=prev, lead_public_key=bytes(LEAD.verify_key).hex())
        text = canonical_json(full)
        digest = record_hash(text)
        db.execute("INSERT INTO records (seq, request_id, body, hash, signature) VALUES (?, ?, ?, ?, ?)",
                   (seq, full["request_id"], text, digest, LEAD.sign(bytes.fromhex(digest)).signature.hex()))
        prev = digest
    head = {"count": len(bodies), "hash": prev, "signature": LEAD.sign(head_bytes(len(bodies), prev)).signature.hex(),
            "lead_public_key": bytes(LEAD.verify_key).hex()}
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)", (canonical_json(head),))
    db.commit()
    db.close()


def test_version_2_ledgers_still_verify_and_count_for_probation(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _write_v2(path, [_body(i) for i in range(2)])
    with Ledger(path) as ledger:
        assert ledger.verify(bytes(LEAD.verify_key)).ok
        record = ledger.append(_body(2, terms=EscrowTerms(Fraction(1, 2), 3, 2)), LEAD)
        report = ledger.verify(bytes(LEAD.verify_key))
        totals = ledger.escrow_totals()
    members = record.body["escrow"]["members"]
    assert [m["served_before"] for m in members] == [2, 2] and [m["audit_p"] for m in members] == ["1/1", "1/1"]
    assert report.ok, report.message
    old_paid = sum(_body(i)["payouts"]["a"] for i in range(2))
    assert totals["keys"][KEY_A.hex()]["vested"] == old_paid  # version 2 paid out at once
    assert totals["keys"][KEY_A.hex()]["held"] == record.body["payouts"]["a"]


def test_franchise_probabilities_and_startup_check() -> None:
    franchise = Franchise(Fraction(1, 10), 20, 10)
    assert franchise.terms() == EscrowTerms(Fraction(1, 10), 20, 10)
    assert franchise.segment_probabilities(COHORT, {}) == [1, 1]
    assert Franchise(Fraction(0), 20, 10).terms().probation_requests == 0  # audits off: no probation
    report = check_startup(Fraction(1, 10))
    assert report.deterred and "deters every cheat kind" in describe(report)
    with pytest.raises(DeterrenceError, match="p = 1/20"):
        check_startup(Fraction(1, 20), 20, 5)


# ---- real processes --------------------------------------------------------------------------------------

@pytest.mark.net
def test_fresh_key_cheater_forfeits_its_unvested_escrow(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import franchise as bench  # bench/franchise.py: the lead and re-joining cheater launchers

    from verisplit.impl.audit.calibrate import calibrate, write_calibration
    from verisplit.impl.node.procs import ProcessGroup, verisplit_command
    from verisplit.impl.runtime.checkpoint import make_random_checkpoint

    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=21)
    calibration = write_calibration(calibrate(checkpoint, dtype="float32", device="cpu", split=[(0, 2), (2, 4)],
                                              prompt_len=8, new_tokens=8, seeds=(0, 1)), tmp_path / "calibration.json")
    probation, window = 2, 3
    with ProcessGroup(tmp_path / "logs") as group:
        net = bench.start_net(tmp_path, group, checkpoint, calibration, p=Fraction(1, 2), probation=probation,
                              window=window, mode="franchise:PatientSkipLayer", honest_requests=probation)
        infos = bench.drive(net, 40, rejoin_timeout=10)
    done = subprocess.run(verisplit_command("ledger", "verify", "--ledger", str(net["ledger"])), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "escrow: held" in done.stdout, done.stdout + done.stderr
    with Ledger(net["ledger"], create=False) as ledger:
        bodies = [r.body for r in ledger.records()]
        report = ledger.verify()
    assert report.ok and len(bodies) == 40
    held: dict[str, int] = {}
    banned: set[str] = set()
    forfeits = []
    for body, info in zip(bodies, infos):
        assert sum(body["payouts"].values()) + body["residual"] + body["refund"] == body["fee"]
        audited = {a["segment_index"] for a in body["audits"]}
        for index, member in enumerate(body["escrow"]["members"]):
            key = member["public_key"]
            assert key not in banned, "a banned key served again"
            expected_p = "1/1" if member["served_before"] < probation else "1/2"
            assert member["audit_p"] == expected_p
            if member["audit_p"] == "1/1" and body["work"][member["provider_ids"][0]] > 0:
                assert index in audited, f"{body['request_id']}: a key on probation was not audited"
            if member["failed"]:
                assert sum(m["amount"] for m in member["forfeited"]) == held.get(key, 0) + member["payout"]
                assert member["held_after"] == 0 and member["payout"] == 0
                forfeits.append(sum(m["amount"] for m in member["forfeited"]))
                banned.add(key)
            held[key] = member["held_after"]
        assert info["escrow"]["audit_p"] == [m["audit_p"] for m in body["escrow"]["members"]]
    assert banned and all(pid.startswith("sybil") for b in bodies for pid in b["failed"])
    assert any(amount > 0 for amount in forfeits), "no ejection forfeited held escrow"
    for row in [*report.escrow["keys"].values(), report.escrow["total"]]:
        assert row["held"] + row["vested"] + row["forfeited"] == row["paid"]
    assert report.escrow["total"]["forfeited"] == sum(forfeits)
