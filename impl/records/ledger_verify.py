"""``Ledger.verify``'s record pass: numbering, chain, hashes, signatures, settlement, escrow, head.

Reads only (``SELECT``s on the connection it is given). Invariants: ``verify_records`` returns the first
bad record in ``seq`` order, or ok with the escrow totals; ``check_expected_head`` passes only if the
record at the expected seq is in the file with the expected hash (the ledger is append-only, so any
head published earlier must still be there), otherwise it names the first missing seq (tail lost) or
the rewritten one.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from verisplit.impl.records.ledger import (GENESIS_HASH, VerifyReport, _is_hex, _signature_ok, canonical_json,
                                           check_body, head_bytes, record_hash)
from verisplit.impl.records.ledger_escrow import EscrowTally, LedgerError, escrow_step_of, record_problem
from verisplit.spec.escrow import KeyAccount


def verify_records(db: sqlite3.Connection, path: Path, lead_public_key: bytes | None) -> VerifyReport:
    """Every record in seq order, then the signed in-database head (``Ledger.verify``'s first part)."""
    try:
        rows = db.execute("SELECT seq, request_id, body, hash, signature FROM records ORDER BY seq").fetchall()
        head_row = db.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
    except sqlite3.DatabaseError as exc:
        return VerifyReport(False, 0, None, None, f"{path}: unreadable ({exc})")
    expected_key = lead_public_key.hex() if lead_public_key is not None else None
    prev = GENESIS_HASH
    count = 0
    book: dict[str, KeyAccount] = {}
    tally = EscrowTally()
    for index, (seq, request_id, text, digest, signature) in enumerate(rows, start=1):
        def bad(why: str) -> VerifyReport:
            return VerifyReport(False, count, seq, request_id, f"record seq {seq} (request {request_id!r}): {why}")

        if seq != index:
            return bad(f"expected seq {index}: a record is missing or out of order")
        try:
            body = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            return bad("body is not JSON")
        if not isinstance(body, dict):
            return bad("body is not a JSON object")
        try:
            canonical = canonical_json(body)
        except (TypeError, ValueError):  # NaN/Infinity (json.loads accepts them) or other non-canonical values
            return bad("body is not in canonical form (holds NaN/Infinity or non-JSON values)")
        if not isinstance(text, str) or canonical != text:
            return bad("body is not in canonical form")
        if body.get("seq") != seq or body.get("request_id") != request_id:
            return bad("seq/request_id columns disagree with the signed body")
        if body.get("prev_hash") != prev:
            return bad("prev_hash does not match the previous record's hash (chain broken)")
        if record_hash(text) != digest:
            return bad("hash does not match the body (body or hash altered)")
        key_hex = body.get("lead_public_key")
        if expected_key is None:
            expected_key = key_hex
        if key_hex != expected_key:
            return bad("signed by a different lead key")
        if not _signature_ok(str(key_hex), bytes.fromhex(digest) if _is_hex(digest, 32) else b"", signature):
            return bad("lead signature does not verify")
        try:
            check_body(body)
            book, members = escrow_step_of(book, body)
        except LedgerError as exc:
            return bad(str(exc))
        if record_problem(body, members):
            return bad(record_problem(body, members))
        tally.add(body)
        prev = digest
        count += 1
    if head_row is None:
        if rows:
            return VerifyReport(False, count, None, None, "head: signed head is missing")
        return VerifyReport(True, 0, message="empty ledger", escrow=tally.summary())
    try:
        head = json.loads(head_row[0])
        head_count, head_hash, head_sig = int(head["count"]), str(head["hash"]), str(head["signature"])
    except (TypeError, ValueError, KeyError, json.JSONDecodeError):
        return VerifyReport(False, count, None, None, "head: malformed signed head")
    if head_count != count or head_hash != prev:
        return VerifyReport(False, count, head_count if head_count > count else None, None,
                            f"head: signed head says {head_count} records ending in {head_hash[:16]}..., "
                            f"the file has {count} (records deleted from the tail?)")
    if expected_key is None or not _is_hex(head_hash, 32) or not _signature_ok(
            expected_key, head_bytes(head_count, head_hash), head_sig):
        return VerifyReport(False, count, None, None, "head: signature does not verify")
    if tally.problem():
        return VerifyReport(False, count, None, None, tally.problem())
    return VerifyReport(True, count, message=tally.message(count), escrow=tally.summary())


def check_expected_head(db: sqlite3.Connection, report: VerifyReport, expect: tuple[int, str]) -> VerifyReport:
    """Tail-loss check: the expected head's record must be in the file with the expected hash."""
    seq, digest = expect
    if seq == 0:
        return report
    if seq > report.count:
        return VerifyReport(False, report.count, report.count + 1, None,
                            f"head: expected head seq {seq} ({digest[:16]}...) but the file ends at seq {report.count}: "
                            f"record seq {report.count + 1} is missing (tail lost)")
    row = db.execute("SELECT hash, request_id FROM records WHERE seq = ?", (seq,)).fetchone()
    if row is None or row[0] != digest:
        return VerifyReport(False, report.count, seq, row[1] if row else None,
                            f"head: record seq {seq} has hash {(row[0] if row else '-')[:16]}..., "
                            f"the expected head says {digest[:16]}... (ledger rewritten)")
    return VerifyReport(True, report.count, message=report.message + f"; expected head seq {seq} present",
                        escrow=report.escrow)
