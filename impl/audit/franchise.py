"""Probation and escrow bookkeeping for the audit service: the franchise made real (issue 11).

The rules are the spec's (``verisplit.spec.escrow``): a key is audited at p = 1 for its first
``probation_requests`` served requests (P1), its payouts are held until it has served
``escrow_window`` later requests (E1), and a failure forfeits everything it holds (E2), refunded to the
clients of the requests the amounts were earned on. This module only connects them to the running
lead: it reads each key's history from the ledger's replayed escrow book (so probation survives a
restart and is exactly what ``ledger verify`` re-derives), gives the audit service one probability per
segment, and the escrow terms that go into each ledger record, whose ``append`` computes the held,
vested and forfeited amounts.

With auditing disabled (p = 0) there is no calibrated tolerance to audit with, so there is no
probation either (M is taken as 0); the escrow still holds and vests.

``check_startup`` is what ``lead serve`` calls before serving: it raises ``DeterrenceError`` when the
configured p, probation and window let some cheat kind profit (``spec.escrow.check_deterrence_config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

from verisplit.spec.escrow import (DEFAULT_ESCROW_WINDOW, DEFAULT_PROBATION_REQUESTS, DeterrenceError,
                                   DeterrenceReport, EscrowTerms, InvalidEscrowInput, KeyAccount, audit_probability,
                                   check_deterrence_config, validate_terms)

__all__ = ["DEFAULT_ESCROW_WINDOW", "DEFAULT_PROBATION_REQUESTS", "DeterrenceError", "Franchise", "InvalidEscrowInput",
           "check_startup", "describe", "probabilities_text"]


@dataclass(frozen=True)
class Franchise:
    """The operator's franchise settings: base audit probability, probation M and escrow window V (in
    requests). ``ValueError`` (``InvalidEscrowInput``) names a bad value."""

    audit_p: Fraction
    probation_requests: int = 0
    escrow_window: int = 0

    def __post_init__(self) -> None:
        validate_terms(EscrowTerms(Fraction(self.audit_p), self.probation_requests, self.escrow_window))

    @property
    def effective_probation(self) -> int:
        """M, or 0 when audits are disabled (p = 0: no tolerance to audit with)."""
        return 0 if self.audit_p == 0 else self.probation_requests

    def terms(self) -> EscrowTerms:
        """The terms recorded in every ledger record (``settlement_body(..., escrow_terms=...)``)."""
        return EscrowTerms(Fraction(self.audit_p), self.effective_probation, self.escrow_window)

    def segment_probabilities(self, cohort: Any, book: Mapping[str, KeyAccount]) -> list[Fraction]:
        """Rule P1 per segment of ``cohort``: ``audit_probability(p, served, M)`` with ``served`` the
        number of requests the segment's key has served according to ``book`` (the ledger's
        ``escrow_book()``; an unknown key has served none)."""
        out = []
        for assignment in cohort.assignments:
            account = book.get(bytes(assignment.public_key).hex())
            served = account.served if account is not None else 0
            out.append(audit_probability(Fraction(self.audit_p), served, self.effective_probation))
        return out

    def summary(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """What a ledger record's escrow did, per provider id, for the request summary: held (this
        request's payout), vested and forfeited amounts (with their source requests), held afterwards,
        and the probability its segment was audited at."""
        escrow = body.get("escrow") if isinstance(body, Mapping) else None
        members = escrow.get("members", []) if isinstance(escrow, Mapping) else []
        out: dict[str, Any] = {"terms": dict(escrow.get("terms", {})) if isinstance(escrow, Mapping) else {},
                               "providers": {}}
        for member in members:
            row = {"public_key": member["public_key"], "audit_p": member["audit_p"],
                   "served_before": member["served_before"], "held": member["payout"],
                   "vested": member["vested"], "forfeited": member["forfeited"], "held_after": member["held_after"]}
            for pid in member["provider_ids"]:
                out["providers"][pid] = row
        out["vested_total"] = sum(m["amount"] for member in members for m in member["vested"])
        out["forfeited_total"] = sum(m["amount"] for member in members for m in member["forfeited"])
        return out


def check_startup(p: Fraction, probation_requests: int = DEFAULT_PROBATION_REQUESTS,
                  escrow_window: int = DEFAULT_ESCROW_WINDOW,
                  savings: Mapping[str, Fraction] | None = None) -> DeterrenceReport:
    """The lead's startup check: ``check_deterrence_config(p, probation_requests, escrow_window)``.
    Returns the report when every cheat kind is deterred; raises ``DeterrenceError`` (a ValueError)
    whose message names the numbers and what to raise otherwise, and ``InvalidEscrowInput`` (a
    ValueError) for a value that is not a probability / count."""
    return check_deterrence_config(Fraction(p), probation_requests, escrow_window, savings)


def describe(report: DeterrenceReport) -> str:
    """One log line: the settings and the worst kind's margin."""
    worst = report.worst
    p = report.p
    return (f"franchise: p = {p.numerator}/{p.denominator}, probation {report.probation_requests} requests, escrow "
            f"window {report.escrow_window} requests: {'deters' if report.deterred else 'does NOT deter'} every cheat "
            f"kind (worst {worst.kind}: expected loss {float(worst.expected_loss):.3g} x value vs savings "
            f"{float(worst.savings):.3g} x value)")


def probabilities_text(probabilities: Sequence[Fraction]) -> list[str]:
    return [f"{q.numerator}/{q.denominator}" for q in probabilities]

