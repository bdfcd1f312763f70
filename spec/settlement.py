"""Fee settlement: each provider is paid for the work it served, at the price it offered.

Rules (docs/spec.md, "Settlement"):
- S0 the value of provider i's work is ``v_i = price_i * work_i`` (integer currency units, like the
  fee); if the total value ``V = sum(v)`` is 0 (nothing served, or only zero-price work) nothing is
  divided and the whole fee is refunded to the client;
- S1 otherwise provider i's slice is ``fee * v_i // V``: the fee split in proportion to value, so a
  fee equal to the quote ``V`` pays every provider exactly ``v_i`` with residual 0;
- S2 a provider that failed (audit or chain) gets 0 and its slice is refunded to the client;
- S3 the lead takes the rounding residual ``fee - sum(slices)``, which lies in [0, N-1];
- S4 conservation: ``sum(payouts) + residual + refund == fee`` exactly;
- S5 forfeit isolation: marking providers failed never changes another provider's payout.

``settle_parts`` is the generic core over arbitrary non-negative integer weights (S1-S5 hold for any
weights, so in particular for values); ``settle`` validates its input and feeds it values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

from verisplit.spec.arith import fdiv, ite


class SettlementError(ValueError):
    """Invalid settlement input (the message starts with the offending field)."""


@dataclass(frozen=True)
class Settlement:
    """Payout per provider (0 for failed ones), the lead's residual and the client's refund.

    ``values`` is the weight each slice was computed from (rule S0: price x work); it is last and
    defaults to empty only so that records read back from stores that predate it still construct.
    """

    fee: int
    lead: str
    payouts: dict[str, int]
    residual: int
    refund: int
    failed: frozenset[str]
    values: dict[str, int] = field(default_factory=dict)


def provider_value(price: Any, work: Any) -> Any:
    """Rule S0: the value of ``work`` units served at ``price`` per unit, ``price * work``.

    Runs on ints and Z3 terms. Z3: ``quote_paid_exactly`` (proofs/z3/check_settlement.py);
    Lean: ``Verisplit.value_eq_quotedShare``.
    """
    return price * work


def quoted_share(price: Any, work_per_position: Any, positions: Any) -> Any:
    """What the quote charges for one cohort member: ``price * work_per_position * positions``.

    Summed over the cohort this is ``cohort.quote_fee`` (cohort cost x positions); it equals
    ``provider_value(price, work_per_position * positions)``, the value of the work the member serves
    for that many positions. Z3: ``quote_paid_exactly``; Lean: ``Verisplit.value_eq_quotedShare``.
    """
    return price * work_per_position * positions


def provider_slice(fee: Any, weight: Any, total_weight: Any) -> Any:
    """Rule S1: ``fee * weight // total_weight`` (total_weight >= 1), floor division.

    Z3: ``residual_bound``, ``fee_conservation``, ``forfeit_isolation``, ``quote_paid_exactly``;
    Lean: ``Verisplit.residual_lt_count``, ``Verisplit.quote_paid_exactly``.
    """
    return fdiv(fee * weight, total_weight)


def settle_parts(fee: Any, weights: Sequence[Any], failed_flags: Sequence[Any]) -> tuple[list[Any], Any, Any]:
    """Core of ``settle`` over parallel lists of weights and failed flags, on ints or Z3 terms.

    Weights are any non-negative integers with a positive total (``settle`` passes values). Returns
    (payouts, residual, refund). Invariants S1-S5 and: a fee equal to ``sum(weights)`` pays every
    provider exactly its weight with residual 0. Z3: ``fee_conservation``, ``residual_bound``,
    ``forfeit_isolation``, ``quote_paid_exactly`` (proofs/z3/check_settlement.py); Lean:
    ``Verisplit.settle_conserves``, ``Verisplit.residual_lt_count``, ``Verisplit.forfeit_isolation``,
    ``Verisplit.quote_paid_exactly``.
    """
    total_weight: Any = 0
    for weight in weights:
        total_weight = total_weight + weight
    payouts: list[Any] = []
    refund: Any = 0
    paid_slices: Any = 0
    for weight, failed in zip(weights, failed_flags):
        piece = provider_slice(fee, weight, total_weight)
        payouts.append(ite(failed, 0, piece))
        refund = refund + ite(failed, piece, 0)
        paid_slices = paid_slices + piece
    residual = fee - paid_slices
    return payouts, residual, refund


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def work_values(work_by_provider: Mapping[str, int], price_by_provider: Mapping[str, int]) -> dict[str, int]:
    """Rule S0 per provider: ``{id: provider_value(price, work)}`` in ``work_by_provider``'s order.

    Raises ``SettlementError`` naming the field: a work or price that is not a non-negative int
    (bools and floats rejected), a provider of ``work_by_provider`` with no price, or a price for a
    provider with no work entry. Only concrete mappings (no Z3 terms); its arithmetic is
    ``provider_value``, which the proofs cover. Tests: tests/test_spec_settlement.py.
    """
    if not isinstance(work_by_provider, Mapping):
        raise SettlementError(f"work_by_provider: must be a mapping, got {type(work_by_provider).__name__}")
    if not isinstance(price_by_provider, Mapping):
        raise SettlementError(f"price_by_provider: must be a mapping, got {type(price_by_provider).__name__}")
    for provider_id, work in work_by_provider.items():
        if not _natural(work):
            raise SettlementError(f"work_by_provider['{provider_id}']: must be a non-negative integer, got {work!r}")
    for provider_id in work_by_provider:
        if provider_id not in price_by_provider:
            raise SettlementError(f"price_by_provider['{provider_id}']: missing (every provider needs its offered price)")
        price = price_by_provider[provider_id]
        if not _natural(price):
            raise SettlementError(f"price_by_provider['{provider_id}']: must be a non-negative integer, got {price!r}")
    extra = sorted(str(p) for p in price_by_provider if p not in work_by_provider)
    if extra:
        raise SettlementError(f"price_by_provider: price for provider(s) {extra} with no work entry")
    values: dict[str, int] = {}
    for provider_id, work in work_by_provider.items():
        values[provider_id] = provider_value(price_by_provider[provider_id], work)
    return values


def settle(fee: int, work_by_provider: Mapping[str, int], price_by_provider: Mapping[str, int], lead: str,
           failed: Collection[str] = ()) -> Settlement:
    """Split ``fee`` by the value of the work served (S0-S5); invalid input raises ``SettlementError``
    whose message starts with the field (``fee``, ``work_by_provider``, ``work_by_provider['id']``,
    ``price_by_provider``, ``price_by_provider['id']``, ``failed``).

    Total value 0 refunds the whole fee (S0); otherwise ``settle_parts`` over the values, whose
    properties the proofs establish (docs/proofs.md, "Settlement").
    """
    if not _natural(fee):
        raise SettlementError(f"fee: must be a non-negative integer, got {fee!r}")
    if isinstance(work_by_provider, Mapping) and not work_by_provider:
        raise SettlementError("work_by_provider: no providers to pay")
    values = work_values(work_by_provider, price_by_provider)
    unknown = sorted(str(p) for p in set(failed) - set(work_by_provider))
    if unknown:
        raise SettlementError(f"failed: unknown provider(s) {unknown}")
    ids = list(work_by_provider)
    failed_set = frozenset(failed)
    if sum(values.values()) == 0:
        return Settlement(fee, lead, {i: 0 for i in ids}, 0, fee, failed_set, values)
    payouts, residual, refund = settle_parts(fee, [values[i] for i in ids], [i in failed_set for i in ids])
    return Settlement(fee, lead, dict(zip(ids, payouts)), residual, refund, failed_set, values)


def billable_positions(prompt_tokens: int, completion_tokens: int, step_positions: Sequence[int] | None = None) -> int:
    """Rule F1: the token positions a client is charged for, the ones the cohort computed to produce the
    tokens it received: the sum of the positions of every step that completed (``step_positions``,
    each >= 1; speculative steps count their rejected drafts too, since the cohort computed them);
    nothing generated, nothing charged. Without ``step_positions`` the steps are those of plain decoding,
    ``[prompt, 1, ..., 1]`` (one step per generated token but the last, which no step consumed), whose
    sum is ``prompt + completion - 1`` (``plain_decoding_steps``). The fee is ``quote_fee(cohort, ...,
    billable_positions(...))``, so an honest request's fee equals the total value served and every
    provider gets exactly its own price x work (``quote_paid_exactly``). Invalid counts raise
    ``SettlementError`` naming them. Tests: tests/test_spec_settlement.py, tests/test_spec_speculative.py.
    Z3: ``billable_sum_plain`` (proofs/z3/check_rollback.py); Lean: ``Verisplit.billable_plain``."""
    for name, value in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
        if not _natural(value):
            raise SettlementError(f"{name}: must be a non-negative integer, got {value!r}")
    if completion_tokens == 0:
        return 0
    if prompt_tokens < 1:
        raise SettlementError("prompt_tokens: a request that generated tokens had at least one prompt token")
    steps = plain_decoding_steps(prompt_tokens, completion_tokens) if step_positions is None else step_positions
    total = 0
    for index, positions in enumerate(steps):
        if not _natural(positions) or positions < 1:
            raise SettlementError(f"step_positions[{index}]: must be an integer >= 1, got {positions!r}")
        total = total + positions
    return total


def plain_decoding_steps(prompt_tokens: int, completion_tokens: int) -> list[int]:
    """The positions of each step of plain (non-speculative) decoding that produced ``completion_tokens``
    tokens: the prompt, then one position per generated token but the last (``completion_tokens >= 1``).
    Z3: ``billable_sum_plain``; Lean: ``Verisplit.billable_plain``."""
    return [prompt_tokens] + [1] * (completion_tokens - 1)


def conserved(settlement: Settlement) -> bool:
    """Rule S4 checked on a record (also used by ``ledger verify``)."""
    return sum(settlement.payouts.values()) + settlement.residual + settlement.refund == settlement.fee
