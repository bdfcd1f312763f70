"""Escrow sections of ledger records (body version 3): the JSON codec and the replay of
``verisplit.spec.escrow.settle_escrow`` over records, used by ``ledger.Ledger`` (append and verify).

A record's ``escrow`` is ``{"terms": {audit_p, probation_requests, escrow_window, forfeit_to},
"members": [...]}``; per key of the cohort a member holds ``public_key``, ``provider_ids``,
``served_before``, ``audit_p`` (the probability its segment was audited at, rule P1), ``payout`` (now
held), ``vested`` and ``forfeited`` (lists of ``{request_id, amount}``, the request each amount was
earned on) and ``held_after``. Records of versions 1-2 have no escrow and replay as window 0 with no
probation (their payouts vested when paid). Malformed input raises ``LedgerError`` naming the field
(the ledger's error, defined here so that both modules raise the same one; ``ledger`` re-exports it).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping

from verisplit.spec.escrow import (EscrowMember, EscrowTerms, InvalidEscrowInput, KeyAccount, MemberEscrow,
                                   book_totals, settle_escrow, validate_terms)


class LedgerError(ValueError):
    """Bad ledger input or an unreadable ledger file; the message names the field or the file."""


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


def escrow_difference(recorded: Any, expected: list[dict[str, Any]]) -> str:
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

    def message(self, count: int) -> str:
        total = self.total()
        return (f"{count} records verified; escrow: held {total['held']} + vested {total['vested']} + forfeited "
                f"{total['forfeited']} = paid {total['paid']}")


def record_problem(body: Mapping[str, Any], members: list[dict[str, Any]]) -> str:
    """For a version-3 record: the first recorded escrow figure that differs from the spec's ``members``."""
    if body.get("version", 1) < 3 and "escrow" not in body:
        return ""
    escrow = body.get("escrow")
    return escrow_difference(escrow.get("members") if isinstance(escrow, dict) else None, members)


def replay(records: Iterable[Any], check: Callable[[Mapping[str, Any]], None]) -> tuple[dict[str, KeyAccount], int]:
    """The escrow book after ``records`` (each with ``seq`` and ``body``, in order, ``check``-ed first)
    and the last seq replayed."""
    book: dict[str, KeyAccount] = {}
    last = 0
    for record in records:
        if not isinstance(record.body, dict):
            raise LedgerError(f"record seq {record.seq}: body is not a JSON object")
        try:
            check(record.body)
        except LedgerError as exc:
            raise LedgerError(f"record seq {record.seq}: cannot replay the escrow ({exc})") from None
        book, _ = escrow_step_of(book, record.body)
        last = record.seq
    return book, last


def totals_view(book: Mapping[str, KeyAccount]) -> dict[str, Any]:
    """``{"total": {held, vested, forfeited, paid}, "keys": {key: {held, vested, forfeited, paid, served}}}``."""
    keys = {k: {"held": a.held, "vested": a.vested, "forfeited": a.forfeited, "paid": a.paid, "served": a.served}
            for k, a in sorted(book.items())}
    return {"total": book_totals(book), "keys": keys}
