"""The signed, hash-chained settlement ledger (SQLite, WAL, one transaction per record).

Record layout: ``body`` is canonical JSON (sorted keys, no whitespace, UTF-8, no NaN) holding
``seq``, ``request_id``, ``model_id``, ``cohort`` (provider ids, keys, ranges), ``work`` (units
served per provider), ``fee``, ``audits`` (verdicts with distances), ``chain`` (the chain or
receipt failure, if any), ``payouts``, ``residual``, ``refund``, ``failed``, ``lead``,
``lead_public_key`` and ``prev_hash``. ``hash = SHA-256(RECORD_DOMAIN || body)``; the lead signs
``hash`` with Ed25519. A signed head (count, last hash) in the ``meta`` table pins the tail.

Invariants:
- Append-only: the API has no update or delete; an append validates everything (conservation,
  agreement with the spec's ``settle``, canonical encodability) before its single transaction, so
  bad input raises ``LedgerError`` and leaves the file unchanged.
- ``verify`` re-checks, in ``seq`` order, numbering, the hash chain, every hash and signature,
  conservation and the spec settlement of every record, then the signed head; it reports the first
  bad record and never writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from verisplit.spec.settlement import Settlement, SettlementError, settle

RECORD_DOMAIN = b"verisplit/ledger-record/v1\x00"
HEAD_DOMAIN = b"verisplit/ledger-head/v1\x00"
GENESIS_HASH = "00" * 32
LEDGER_VERSION = 2  # 2: per-provider prices and values, recorded_at_ms (1: settled by work alone)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LedgerError(ValueError):
    """Bad ledger input or an unreadable ledger file; the message names the field or the file."""


@dataclass(frozen=True)
class LedgerRecord:
    seq: int
    body: dict[str, Any]
    hash: str
    signature: str


@dataclass(frozen=True)
class VerifyReport:
    """``ok``, the number of records checked, and the first bad record (seq, request id, why)."""

    ok: bool
    count: int
    bad_seq: int | None = None
    bad_request_id: str | None = None
    message: str = ""


def canonical_json(obj: Any) -> str:
    """Sorted keys, compact separators, UTF-8 text, NaN/Infinity refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(body_text: str) -> str:
    return hashlib.sha256(RECORD_DOMAIN + body_text.encode("utf-8")).hexdigest()


def head_bytes(count: int, last_hash: str) -> bytes:
    return HEAD_DOMAIN + struct.pack("<Q", count) + bytes.fromhex(last_hash)


def settlement_body(*, request_id: str, model_id: str, cohort: Any, work: Mapping[str, int],
                    settlement: Settlement, prices: Mapping[str, int], audits: list[dict[str, Any]],
                    chain: dict[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                    recorded_at_ms: int | None = None) -> dict[str, Any]:
    """The body of a ledger record (without seq, prev_hash, lead_public_key, which ``append`` sets).

    Per provider it holds the layers (``cohort``), the work units served (``work``), the price per
    work unit offered (``prices``), the value ``price x work`` the fee was split by (``values``) and
    the payout; ``recorded_at_ms`` is the lead's wall clock when it settled."""
    body: dict[str, Any] = {
        "version": LEDGER_VERSION,
        "request_id": request_id,
        "model_id": model_id,
        "recorded_at_ms": int(time.time() * 1000) if recorded_at_ms is None else recorded_at_ms,
        "cohort": [{"provider_id": a.provider_id, "public_key": a.public_key.hex(), "first_layer": a.first_layer,
                    "end_layer": a.end_layer} for a in cohort.assignments],
        "work": dict(work),
        "prices": dict(prices),
        "values": dict(settlement.values),
        "fee": settlement.fee,
        "audits": list(audits),
        "chain": chain,
        "payouts": dict(settlement.payouts),
        "residual": settlement.residual,
        "refund": settlement.refund,
        "failed": sorted(settlement.failed),
        "lead": settlement.lead,
    }
    if extra:
        body["extra"] = dict(extra)
    return body


def check_body(body: Mapping[str, Any]) -> None:
    """Raise ``LedgerError`` naming the field if ``body`` is malformed, not conserved, or disagrees with
    the spec's ``settle`` over its own work, fee and failed set (a record whose total work is 0 must
    refund the whole fee)."""
    for name, kind in (("request_id", str), ("model_id", str), ("lead", str), ("fee", int), ("residual", int),
                       ("refund", int), ("work", dict), ("payouts", dict), ("failed", list), ("audits", list),
                       ("cohort", list)):
        if name not in body:
            raise LedgerError(f"record: missing field '{name}'")
        value = body[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LedgerError(f"record field '{name}': expected {kind.__name__}, got {type(value).__name__}")
    if not body["request_id"]:
        raise LedgerError("record field 'request_id': must be non-empty")
    work, payouts, fee = body["work"], body["payouts"], body["fee"]
    if set(work) != set(payouts):
        raise LedgerError(f"record field 'payouts': providers {sorted(payouts)} differ from work's {sorted(work)}")
    for field_name, mapping in (("work", work), ("payouts", payouts)):
        for pid, value in mapping.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LedgerError(f"record field '{field_name}[{pid!r}]': must be a non-negative integer, got {value!r}")
    if sum(payouts.values()) + body["residual"] + body["refund"] != fee:
        raise LedgerError(f"record {body['request_id']!r}: not conserved: payouts {sum(payouts.values())} + "
                          f"residual {body['residual']} + refund {body['refund']} != fee {fee}")
    failed = set(body["failed"])
    prices = _prices(body)
    try:
        expected = settle(fee, work, prices, body["lead"], failed)
    except SettlementError as exc:
        raise LedgerError(f"record {body['request_id']!r}: {exc}") from None
    if (dict(expected.payouts), expected.residual, expected.refund) != (payouts, body["residual"], body["refund"]):
        raise LedgerError(f"record {body['request_id']!r}: payouts/residual/refund differ from the spec's settle "
                          f"({dict(expected.payouts)}, {expected.residual}, {expected.refund})")
    if "values" in body and body["values"] != expected.values:
        raise LedgerError(f"record field 'values': {body['values']!r} differ from price x work {expected.values}")


def _prices(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The prices a record was settled at: its ``prices`` (version 2), or 1 per work unit for every
    provider in version-1 records (which split by bare work, the same as value at equal prices)."""
    if body.get("version", 1) == 1 and "prices" not in body:
        return {pid: 1 for pid in body["work"]}
    prices = body.get("prices")
    if not isinstance(prices, dict):
        raise LedgerError(f"record field 'prices': expected dict, got {type(prices).__name__}")
    return prices


class Ledger:
    """An append-only ledger in one SQLite file (WAL journal)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise LedgerError(f"{self.path}: no ledger file")
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if create:
                self._db.executescript(_SCHEMA)
            else:
                self._require_tables()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a readable ledger ({exc})") from None

    def _require_tables(self) -> None:
        names = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"records", "meta"} <= names:
            raise LedgerError(f"{self.path}: not a verisplit ledger (tables records/meta missing)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------
    def append(self, body: Mapping[str, Any], signing_key: SigningKey) -> LedgerRecord:
        """Validate ``body``, chain it to the last record, sign it and store it in one transaction.
        Raises ``LedgerError`` (file unchanged) on a malformed or duplicate record."""
        check_body(body)
        if "seq" in body or "prev_hash" in body or "lead_public_key" in body:
            raise LedgerError("record: seq, prev_hash and lead_public_key are set by the ledger, not the caller")
        public = bytes(signing_key.verify_key).hex()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (1, GENESIS_HASH) if row is None else (row[0] + 1, row[1])
                if self._db.execute("SELECT 1 FROM records WHERE request_id = ?", (body["request_id"],)).fetchone():
                    raise LedgerError(f"record: request {body['request_id']!r} is already settled in the ledger")
                full = dict(body, seq=seq, prev_hash=prev, lead_public_key=public)
                try:
                    text = canonical_json(full)
                except (TypeError, ValueError) as exc:
                    raise LedgerError(f"record: not encodable as canonical JSON ({exc})") from None
                digest = record_hash(text)
                signature = signing_key.sign(bytes.fromhex(digest)).signature.hex()
                head_sig = signing_key.sign(head_bytes(seq, digest)).signature.hex()
                self._db.execute("INSERT INTO records (seq, request_id, body, hash, signature) VALUES (?, ?, ?, ?, ?)",
                                 (seq, body["request_id"], text, digest, signature))
                self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                     [("head", canonical_json({"count": seq, "hash": digest, "signature": head_sig,
                                                               "lead_public_key": public}))])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: write failed ({exc})") from None
        return LedgerRecord(seq, full, digest, signature)

    # --- reading ---------------------------------------------------------------------------
    def records(self) -> Iterator[LedgerRecord]:
        """Every record in ``seq`` order (bodies parsed; an unparsable body raises ``LedgerError``)."""
        try:
            rows = self._db.execute("SELECT seq, body, hash, signature FROM records ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: unreadable ({exc})") from None
        for seq, text, digest, signature in rows:
            try:
                body = json.loads(text)
            except (TypeError, json.JSONDecodeError) as exc:
                raise LedgerError(f"record seq {seq}: body is not JSON ({exc})") from None
            yield LedgerRecord(seq, body, digest, signature)

    def get(self, request_id: str) -> LedgerRecord | None:
        for record in self.records():
            if record.body.get("request_id") == request_id:
                return record
        return None

    def verify(self, lead_public_key: bytes | None = None) -> VerifyReport:
        """Re-check numbering, hash chain, hashes, signatures (under ``lead_public_key`` if given,
        else the key of the first record, which every record must share), conservation and spec
        settlement of every record, then the signed head. Returns the first failure."""
        try:
            rows = self._db.execute("SELECT seq, request_id, body, hash, signature FROM records ORDER BY seq").fetchall()
            head_row = self._db.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
        except sqlite3.DatabaseError as exc:
            return VerifyReport(False, 0, None, None, f"{self.path}: unreadable ({exc})")
        expected_key = lead_public_key.hex() if lead_public_key is not None else None
        prev = GENESIS_HASH
        count = 0
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
            except LedgerError as exc:
                return bad(str(exc))
            prev = digest
            count += 1
        if head_row is None:
            if rows:
                return VerifyReport(False, count, None, None, "head: signed head is missing")
            return VerifyReport(True, 0, message="empty ledger")
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
        return VerifyReport(True, count, message=f"{count} records verified")


def _is_hex(text: object, nbytes: int) -> bool:
    if not isinstance(text, str) or len(text) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _signature_ok(key_hex: str, message: bytes, signature_hex: object) -> bool:
    if not _is_hex(key_hex, 32) or not _is_hex(signature_hex, 64) or not message:
        return False
    try:
        VerifyKey(bytes.fromhex(key_hex)).verify(message, bytes.fromhex(str(signature_hex)))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
