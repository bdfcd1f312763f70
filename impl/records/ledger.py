"""The signed, hash-chained settlement ledger (SQLite, WAL, one transaction per record).

Record layout: ``body`` is canonical JSON (sorted keys, no whitespace, UTF-8, no NaN) holding
``seq``, ``request_id``, ``model_id``, ``cohort`` (provider ids, keys, ranges), ``work`` (units
served per provider), ``fee``, ``audits`` (verdicts with distances), ``chain`` (the chain or
receipt failure, if any), ``payouts``, ``residual``, ``refund``, ``failed``, ``lead``,
``lead_public_key`` and ``prev_hash``. ``hash = SHA-256(RECORD_DOMAIN || body)``; the lead signs
``hash`` with Ed25519. A signed head (count, last hash) in the ``meta`` table pins the tail.

Escrow (body version 3, ``verisplit.spec.escrow``): ``escrow.terms`` are the franchise settings the
lead used (base audit p, probation M, window V, forfeit destination); ``escrow.members`` is, per key of
the cohort, its probation state before the request (``served_before``, the ``audit_p`` its segment was
audited at), its payout (held), what vested and what was forfeited (each with the request it was earned
on) and what it holds afterwards. The caller supplies the terms; ``append`` computes the members with
the spec's ``settle_escrow`` from the escrow state replayed from the earlier records. Records of
versions 1-2 predate escrow: replayed as window 0 (their payouts vested when paid), they count as served
requests for probation.

Invariants:
- Append-only: the API has no update or delete; an append validates everything (conservation,
  agreement with the spec's ``settle``, canonical encodability) before its single transaction, so
  bad input raises ``LedgerError`` and leaves the file unchanged.
- ``verify`` re-checks, in ``seq`` order, numbering, the hash chain, every hash and signature,
  conservation and the spec settlement of every record, the escrow figures of every record against
  the spec's escrow replayed from the records before it, then the signed head and the escrow totals
  (held + vested + forfeited == paid, per key and in total); it reports the first bad record (naming
  a tampered escrow figure) and never writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from verisplit.spec.escrow import (EscrowMember, EscrowTerms, InvalidEscrowInput, KeyAccount, MemberEscrow,
                                   book_totals, settle_escrow, validate_terms)
from verisplit.spec.settlement import Settlement, SettlementError, settle

RECORD_DOMAIN = b"verisplit/ledger-record/v1\x00"
HEAD_DOMAIN = b"verisplit/ledger-head/v1\x00"
GENESIS_HASH = "00" * 32
LEDGER_VERSION = 3  # 3: escrow (terms, members); 2: per-provider prices and values, recorded_at_ms; 1: work alone

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
    escrow: dict[str, Any] | None = None  # on success: escrow totals, {"total": {...}, "keys": {key: {...}}}


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
                    recorded_at_ms: int | None = None, escrow_terms: EscrowTerms | None = None) -> dict[str, Any]:
    """The body of a ledger record (without seq, prev_hash, lead_public_key and the escrow members,
    which ``append`` sets).

    Per provider it holds the layers (``cohort``), the work units served (``work``), the price per
    work unit offered (``prices``), the value ``price x work`` the fee was split by (``values``) and
    the payout; ``recorded_at_ms`` is the lead's wall clock when it settled; ``escrow.terms`` the
    franchise settings in force (default: no probation, window 0, so payouts vest at once)."""
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
    body["escrow"] = {"terms": terms_to_json(escrow_terms if escrow_terms is not None else EscrowTerms())}
    return body


# ---- escrow (body version 3) ---------------------------------------------------------------------------

def _fraction_text(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def terms_to_json(terms: EscrowTerms) -> dict[str, Any]:
    return {"audit_p": _fraction_text(Fraction(terms.audit_p)), "probation_requests": terms.probation_requests,
            "escrow_window": terms.escrow_window, "forfeit_to": terms.forfeit_to}


def _parse_fraction(text: Any, name: str) -> Fraction:
    if not isinstance(text, str):
        raise LedgerError(f"record field '{name}': expected a fraction such as '1/10', got {text!r}")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise LedgerError(f"record field '{name}': {text!r} is not a fraction") from None


def terms_of(body: Mapping[str, Any]) -> EscrowTerms:
    """The escrow terms of a record: its ``escrow.terms`` (version 3), or window 0 and no probation for
    versions 1-2 (which paid out at once). Malformed terms raise ``LedgerError`` naming the field."""
    if body.get("version", 1) < 3 and "escrow" not in body:
        return EscrowTerms()
    escrow = body.get("escrow")
    if not isinstance(escrow, dict) or not isinstance(escrow.get("terms"), dict):
        raise LedgerError("record field 'escrow.terms': missing (version 3 records carry the escrow terms)")
    raw = escrow["terms"]
    if set(raw) != {"audit_p", "probation_requests", "escrow_window", "forfeit_to"}:
        raise LedgerError(f"record field 'escrow.terms': keys {sorted(raw)} are not the documented ones")
    for name in ("probation_requests", "escrow_window"):
        if isinstance(raw[name], bool) or not isinstance(raw[name], int):
            raise LedgerError(f"record field 'escrow.terms.{name}': expected int, got {raw[name]!r}")
    terms = EscrowTerms(_parse_fraction(raw["audit_p"], "escrow.terms.audit_p"), raw["probation_requests"],
                        raw["escrow_window"], raw["forfeit_to"])
    try:
        return validate_terms(terms)
    except InvalidEscrowInput as exc:
        raise LedgerError(f"record field 'escrow.terms': {exc}") from None


def escrow_members_of(body: Mapping[str, Any]) -> list[EscrowMember]:
    """The cohort members of a record as the escrow sees them: provider id, key, work, payout, failed."""
    out = []
    failed = set(body.get("failed") or [])
    for index, entry in enumerate(body.get("cohort") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("provider_id"), str) \
                or not isinstance(entry.get("public_key"), str):
            raise LedgerError(f"record field 'cohort[{index}]': needs provider_id and public_key strings")
        pid = entry["provider_id"]
        out.append(EscrowMember(pid, entry["public_key"], body["work"].get(pid, 0), body["payouts"].get(pid, 0),
                                pid in failed))
    return out


def member_to_json(member: MemberEscrow) -> dict[str, Any]:
    return {"public_key": member.public_key, "provider_ids": list(member.provider_ids),
            "served_before": member.served_before, "audit_p": _fraction_text(member.audit_p),
            "payout": member.payout, "failed": member.failed, "held_after": member.held_after,
            "vested": [{"request_id": m.request_id, "amount": m.amount} for m in member.vested],
            "forfeited": [{"request_id": m.request_id, "amount": m.amount} for m in member.forfeited]}


def escrow_step_of(book: Mapping[str, KeyAccount], body: Mapping[str, Any]) -> tuple[dict[str, KeyAccount], list[dict[str, Any]]]:
    """The spec's ``settle_escrow`` applied to one (already ``check_body``-valid) record: the book after
    it and the members' escrow as JSON. Raises ``LedgerError`` on malformed terms or cohort."""
    terms = terms_of(body)
    try:
        outcome = settle_escrow(book, str(body["request_id"]), escrow_members_of(body), terms)
    except InvalidEscrowInput as exc:
        raise LedgerError(f"record {body.get('request_id')!r}: escrow: {exc}") from None
    return outcome.book, [member_to_json(m) for m in outcome.members]


def _escrow_difference(recorded: Any, expected: list[dict[str, Any]]) -> str:
    """The first escrow figure in ``recorded`` that differs from ``expected``, named."""
    if not isinstance(recorded, list):
        return f"escrow field 'members': expected a list, got {type(recorded).__name__}"
    if len(recorded) != len(expected):
        return f"escrow field 'members': {len(recorded)} members recorded, the spec's escrow has {len(expected)}"
    for index, (got, want) in enumerate(zip(recorded, expected)):
        if not isinstance(got, dict):
            return f"escrow field 'members[{index}]': expected an object"
        who = f"{','.join(want['provider_ids'])} (key {want['public_key'][:16]}...)"
        for name in ("public_key", "provider_ids", "served_before", "audit_p", "payout", "failed", "held_after",
                     "vested", "forfeited"):
            if got.get(name) != want[name]:
                return (f"escrow field '{name}' of {who}: recorded {got.get(name)!r}, the spec's escrow transition "
                        f"gives {want[name]!r}")
        extra = sorted(set(got) - set(want))
        if extra:
            return f"escrow field 'members[{index}]': unexpected keys {extra}"
    return ""


class EscrowTally:
    """Escrow totals from the recorded figures alone (paid = payouts, vested / forfeited = the recorded
    movements, held = the last recorded ``held_after``), per key; version 1-2 payouts count as vested."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, int]] = {}

    def _row(self, key: str) -> dict[str, int]:
        return self.keys.setdefault(key, {"held": 0, "vested": 0, "forfeited": 0, "paid": 0})

    def add(self, body: Mapping[str, Any]) -> None:
        escrow = body.get("escrow")
        if body.get("version", 1) < 3 and not isinstance(escrow, dict):
            for member in escrow_members_of(body):
                row = self._row(member.public_key)
                row["paid"] += member.payout
                row["vested"] += member.payout
            return
        for member in escrow["members"]:
            row = self._row(member["public_key"])
            row["paid"] += member["payout"]
            row["vested"] += sum(m["amount"] for m in member["vested"])
            row["forfeited"] += sum(m["amount"] for m in member["forfeited"])
            row["held"] = member["held_after"]

    def problem(self) -> str:
        for key, row in sorted(self.keys.items()):
            if row["held"] + row["vested"] + row["forfeited"] != row["paid"]:
                return (f"escrow totals of key {key[:16]}...: held {row['held']} + vested {row['vested']} + forfeited "
                        f"{row['forfeited']} != paid {row['paid']}")
        total = self.total()
        if total["held"] + total["vested"] + total["forfeited"] != total["paid"]:
            return "escrow totals: held + vested + forfeited != paid"
        return ""

    def total(self) -> dict[str, int]:
        out = {"held": 0, "vested": 0, "forfeited": 0, "paid": 0}
        for row in self.keys.values():
            for name in out:
                out[name] += row[name]
        return out

    def summary(self) -> dict[str, Any]:
        return {"total": self.total(), "keys": {k: dict(v) for k, v in sorted(self.keys.items())}}


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
        self._book: dict[str, KeyAccount] = {}
        self._book_seq = 0  # the escrow book above is the state after this record

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
        if body.get("version") != LEDGER_VERSION:
            raise LedgerError(f"record field 'version': new records are version {LEDGER_VERSION}, got {body.get('version')!r}")
        escrow = body.get("escrow")
        if not isinstance(escrow, dict) or set(escrow) != {"terms"}:
            raise LedgerError("record field 'escrow': pass only the terms (settlement_body); the ledger computes the members")
        terms_of(body)
        public = bytes(signing_key.verify_key).hex()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (1, GENESIS_HASH) if row is None else (row[0] + 1, row[1])
                if self._db.execute("SELECT 1 FROM records WHERE request_id = ?", (body["request_id"],)).fetchone():
                    raise LedgerError(f"record: request {body['request_id']!r} is already settled in the ledger")
                book = self._synced_book(seq - 1)
                new_book, members = escrow_step_of(book, body)
                full = dict(body, seq=seq, prev_hash=prev, lead_public_key=public,
                            escrow={"terms": dict(escrow["terms"]), "members": members})
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
        self._book, self._book_seq = new_book, seq
        return LedgerRecord(seq, full, digest, signature)

    # --- escrow state ----------------------------------------------------------------------------
    def _synced_book(self, last_seq: int) -> dict[str, KeyAccount]:
        """The escrow book after record ``last_seq`` (the file's last), replayed from the records with the
        spec's ``settle_escrow`` unless the cached one is already there."""
        if self._book_seq != last_seq:
            book: dict[str, KeyAccount] = {}
            count = 0
            for record in self.records():
                if not isinstance(record.body, dict):
                    raise LedgerError(f"record seq {record.seq}: body is not a JSON object")
                try:
                    check_body(record.body)
                except LedgerError as exc:
                    raise LedgerError(f"record seq {record.seq}: cannot replay the escrow ({exc})") from None
                book, _ = escrow_step_of(book, record.body)
                count = record.seq
            if count != last_seq:
                raise LedgerError(f"{self.path}: changed while replaying the escrow")
            self._book, self._book_seq = book, count
        return self._book

    def escrow_book(self) -> dict[str, KeyAccount]:
        """Every key's escrow account (public key hex -> ``KeyAccount``) after the last record: held
        window, served requests, paid / vested / forfeited totals. Replayed from the file when another
        writer appended. Raises ``LedgerError`` if a record cannot be replayed."""
        try:
            row = self._db.execute("SELECT MAX(seq) FROM records").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: unreadable ({exc})") from None
        return dict(self._synced_book(row[0] or 0))

    def escrow_totals(self) -> dict[str, Any]:
        """``{"total": {held, vested, forfeited, paid}, "keys": {key: {...}}}`` from the spec's replay."""
        book = self.escrow_book()
        keys = {k: {"held": a.held, "vested": a.vested, "forfeited": a.forfeited, "paid": a.paid, "served": a.served}
                for k, a in sorted(book.items())}
        return {"total": book_totals(book), "keys": keys}

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
            if body.get("version", 1) >= 3 or "escrow" in body:
                escrow = body.get("escrow")
                recorded = escrow.get("members") if isinstance(escrow, dict) else None
                difference = _escrow_difference(recorded, members)
                if difference:
                    return bad(difference)
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
        problem = tally.problem()
        if problem:
            return VerifyReport(False, count, None, None, problem)
        total = tally.total()
        return VerifyReport(True, count, message=f"{count} records verified; escrow: held {total['held']} + vested "
                                                 f"{total['vested']} + forfeited {total['forfeited']} = paid {total['paid']}",
                            escrow=tally.summary())


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
