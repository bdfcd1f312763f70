"""Fee settlement: each provider is paid for exactly the work it served.

Rules (docs/spec.md, "Settlement"):
- S1 provider i's slice is ``fee * w_i // W`` with ``W = sum(w)``, over work units actually served;
- S2 a provider that failed (audit or chain) gets 0 and its slice is refunded to the client;
- S3 the lead takes the rounding residual ``fee - sum(slices)``, which lies in [0, N-1];
- S4 conservation: ``sum(payouts) + residual + refund == fee`` exactly;
- S5 forfeit isolation: marking providers failed never changes another provider's payout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from verisplit.spec.arith import fdiv, ite


class SettlementError(ValueError):
    """Invalid settlement input (the message names the field)."""


@dataclass(frozen=True)
class Settlement:
    """Payout per provider (0 for failed ones), the lead's residual and the client's refund."""

    fee: int
    lead: str
    payouts: dict[str, int]
    residual: int
    refund: int
    failed: frozenset[str]


def provider_slice(fee: Any, work: Any, total_work: Any) -> Any:
    """Rule S1: ``fee * work // total_work`` (total_work >= 1)."""
    return fdiv(fee * work, total_work)


def settle_parts(fee: Any, works: Sequence[Any], failed_flags: Sequence[Any]) -> tuple[list[Any], Any, Any]:
    """Core of ``settle`` over parallel lists, runnable on ints or Z3 terms.

    Returns (payouts, residual, refund). Invariants S2-S5; Z3: ``fee_conservation``,
    ``residual_bound``, ``forfeit_isolation`` (proofs/z3/check_settlement.py); Lean:
    ``Verisplit.settle_conserves``, ``Verisplit.residual_lt_count``, ``Verisplit.forfeit_isolation``.
    """
    total_work: Any = 0
    for work in works:
        total_work = total_work + work
    payouts: list[Any] = []
    refund: Any = 0
    paid_slices: Any = 0
    for work, failed in zip(works, failed_flags):
        piece = provider_slice(fee, work, total_work)
        payouts.append(ite(failed, 0, piece))
        refund = refund + ite(failed, piece, 0)
        paid_slices = paid_slices + piece
    residual = fee - paid_slices
    return payouts, residual, refund


def settle(fee: int, work_by_provider: Mapping[str, int], lead: str, failed: Collection[str] = ()) -> Settlement:
    """Split ``fee`` by work served (S1-S5); invalid input raises ``SettlementError`` naming it."""
    if isinstance(fee, bool) or not isinstance(fee, int) or fee < 0:
        raise SettlementError(f"fee: must be a non-negative integer, got {fee!r}")
    if not work_by_provider:
        raise SettlementError("work_by_provider: no providers to pay")
    for provider_id, work in work_by_provider.items():
        if isinstance(work, bool) or not isinstance(work, int) or work < 0:
            raise SettlementError(f"work_by_provider['{provider_id}']: must be a non-negative integer, got {work!r}")
    if sum(work_by_provider.values()) < 1:
        raise SettlementError("work_by_provider: total work is 0, nothing was served")
    unknown = sorted(set(failed) - set(work_by_provider))
    if unknown:
        raise SettlementError(f"failed: unknown provider(s) {unknown}")
    ids = list(work_by_provider)
    payouts, residual, refund = settle_parts(fee, [work_by_provider[i] for i in ids], [i in failed for i in ids])
    return Settlement(fee, lead, dict(zip(ids, payouts)), residual, refund, frozenset(failed))


def conserved(settlement: Settlement) -> bool:
    """Rule S4 checked on a record (also used by ``ledger verify``)."""
    return sum(settlement.payouts.values()) + settlement.residual + settlement.refund == settlement.fee
