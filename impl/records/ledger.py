"""The signed, hash-chained settlement ledger (SQLite, WAL, one transaction per record).

Record layout: ``body`` is canonical JSON (sorted keys, no whitespace, UTF-8, no NaN) holding
``seq``, ``request_id``, ``model_id``, ``cohort`` (provider ids, keys, ranges), ``work`` (units
served per provider), ``fee``, ``audits`` (verdicts with distances), ``chain`` (the chain or
receipt failure, if any), ``payouts``, ``residual``, ``refund``, ``failed``, ``lead``,
``lead_public_key`` and ``prev_hash``. ``hash = SHA-256(RECORD_DOMAIN || body)``; the lead signs
``hash`` with Ed25519. A signed head (count, last hash) in the ``meta`` table pins the tail; since it
is written in the record's own transaction, a torn WAL tail loses both together, so the head is also
kept outside the database (``<ledger>.head``, replaced and fsynced after each commit) and published in
every response: ``verify(expect_head=...)`` then names the first missing seq.

Escrow (version 3, layout in ``ledger_escrow``): the caller supplies ``escrow.terms`` (base audit p,
probation M, window V, forfeit destination); ``append`` computes ``escrow.members`` (per key: probation
state, payout held, vested, forfeited, held afterwards) with the spec's ``settle_escrow`` from the state
the earlier records left. Versions 1-2 are still read (replayed as window 0: paid out at once).

Invariants:
- Append-only: the API has no update or delete; an append validates everything (conservation,
  agreement with the spec's ``settle``, canonical encodability) before its single transaction, so
  bad input raises ``LedgerError`` and leaves the file unchanged.
- ``verify`` re-checks, in ``seq`` order, numbering, the hash chain, every hash and signature,
  conservation and the spec settlement of every record, the escrow figures of every record against
  the spec's escrow replayed from the records before it, then the signed head and the escrow totals
  (held + vested + forfeited == paid, per key and in total); it reports the first bad record (naming
  a tampered escrow figure) and never writes: ``Ledger(path, read_only=True)`` opens the file with
  SQLite's ``mode=ro`` (no journal-mode pragma, no checkpoint), so the database and its WAL stay
  byte-identical (SQLite may create the shared-memory index ``-shm`` next to them).
- Tail loss is detectable: an expected head ``(seq, hash)`` (from a response, the head file or an
  operator's note) must name a record present in the file with that hash; the first seq past the
  file's end is reported missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import struct
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from verisplit.impl.records.ledger_head import GENESIS_HASH, _is_hex, canonical_json, write_head_file
from verisplit.impl.records.ledger_escrow import (EscrowTally, LedgerError, escrow_step_of, record_problem, replay,
                                                  terms_of, terms_to_json, totals_view)
from verisplit.spec.escrow import EscrowTerms, KeyAccount
from verisplit.spec.settlement import Settlement, SettlementError, settle

RECORD_DOMAIN = b"verisplit/ledger-record/v1\x00"
HEAD_DOMAIN = b"verisplit/ledger-head/v1\x00"
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


__all__ = ["LedgerError"]  # defined in ledger_escrow (shared by the escrow codec), raised by everything here

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


def record_hash(body_text: str) -> str:
    return hashlib.sha256(RECORD_DOMAIN + body_text.encode("utf-8")).hexdigest()


def head_bytes(count: int, last_hash: str) -> bytes:
    return HEAD_DOMAIN + struct.pack("<Q", count) + bytes.fromhex(last_hash)


def settlement_body(*, request_id: str, model_id: str, cohort: Any, work: Mapping[str, int],
                    settlement: Settlement, prices: Mapping[str, int], audits: list[dict[str, Any]],
                    chain: dict[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                    recorded_at_ms: int | None = None, escrow_terms: EscrowTerms | None = None,
                    forfeited: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The body of a ledger record (without seq, prev_hash, lead_public_key and the escrow members,
    which ``append`` sets).

    Per provider it holds the layers (``cohort``), the work units served (``work``), the price per
    work unit offered (``prices``), the value ``price x work`` the fee was split by (``values``) and
    the payout; ``recorded_at_ms`` is the lead's wall clock when it settled; ``escrow.terms`` the
    franchise settings in force (default: no probation, window 0, so payouts vest at once).
    ``forfeited`` are providers lost to an outage and replaced (rule R3): their slice is refunded like
    a failed one's (S2), but they are listed apart from ``failed``, so the escrow does not forfeit what
    they hold (E2 is for culprits) and nobody ejects them."""
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
        "failed": sorted(settlement.failed - forfeited),
        "lead": settlement.lead,
    }
    if forfeited:
        body["forfeited"] = sorted(forfeited)
    if extra:
        body["extra"] = dict(extra)
    body["escrow"] = {"terms": terms_to_json(escrow_terms if escrow_terms is not None else EscrowTerms())}
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
    forfeited = body.get("forfeited", [])
    if not isinstance(forfeited, list) or not all(isinstance(p, str) for p in forfeited):
        raise LedgerError("record field 'forfeited': expected a list of provider ids")
    failed |= set(forfeited)  # rule R3: an outage-lost provider's slice is refunded (S2), without E2
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
    """An append-only ledger in one SQLite file (WAL journal, ``synchronous=FULL``: a commit is on disk
    when ``append`` returns). ``read_only=True`` opens it with SQLite's ``mode=ro`` and never writes."""

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if (read_only or not create) and not self.path.is_file():
            raise LedgerError(f"{self.path}: no ledger file")
        try:
            if read_only:
                uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                self._require_tables()
            else:
                self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                if create:
                    self._db.executescript(_SCHEMA)
                else:
                    self._require_tables()
            row = self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a readable ledger ({exc})") from None
        # The last committed (seq, hash): published in responses so a lost tail is detectable.
        self.head: tuple[int, str] = (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
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
        Raises ``LedgerError`` (file unchanged) on a malformed or duplicate record. After the commit the
        head file is replaced (fsynced) and ``self.head`` moves to the new record."""
        if self.read_only:
            raise LedgerError(f"{self.path}: opened read-only")
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
        self.head = (seq, digest)
        try:
            write_head_file(self.path, {"seq": seq, "hash": digest, "signature": head_sig, "lead_public_key": public})
        except OSError as exc:  # the record is committed; the head is also published in responses
            logging.getLogger("verisplit.ledger").warning("ledger %s: could not write the head file (%s)", self.path, exc)
        return LedgerRecord(seq, full, digest, signature)

    def request_ids(self) -> set[str]:
        """The ids of every settled request (a request is settled at most once: the column is UNIQUE)."""
        try:
            return {row[0] for row in self._db.execute("SELECT request_id FROM records")}
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: unreadable ({exc})") from None

    # --- escrow state ----------------------------------------------------------------------------
    def _synced_book(self, last_seq: int) -> dict[str, KeyAccount]:
        """The escrow book after record ``last_seq`` (the file's last), replayed from the records with the
        spec's ``settle_escrow`` unless the cached one is already there."""
        if self._book_seq != last_seq:
            book, count = replay(self.records(), check_body)
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
        """``{"total": {held, vested, forfeited, paid}, "keys": {key: {..., served}}}`` from the spec's replay."""
        return totals_view(self.escrow_book())

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

    def verify(self, lead_public_key: bytes | None = None, expect_head: tuple[int, str] | None = None) -> VerifyReport:
        """Re-check numbering, hash chain, hashes, signatures (under ``lead_public_key`` if given,
        else the key of the first record, which every record must share), conservation and spec
        settlement of every record, then the signed head, then ``expect_head`` (a head published
        earlier: the record at its seq must exist with its hash; else the first missing seq is named).
        Returns the first failure; reads only."""
        from verisplit.impl.records.ledger_verify import check_expected_head, verify_records

        report = verify_records(self._db, self.path, lead_public_key)
        if expect_head is None or not report.ok:
            return report
        return check_expected_head(self._db, report, expect_head)

def _signature_ok(key_hex: str, message: bytes, signature_hex: object) -> bool:
    if not _is_hex(key_hex, 32) or not _is_hex(signature_hex, 64) or not message:
        return False
    try:
        VerifyKey(bytes.fromhex(key_hex)).verify(message, bytes.fromhex(str(signature_hex)))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
