"""Verification deterrence (Proof-of-Sampling form) and the sharding corollary.

A provider cheats only if what it saves exceeds what it expects to lose. With audit probability p and
franchise F (future earnings forfeited on ejection), cheating on a job that would save ``savings`` is
deterred iff ``p*F - savings >= 0``. A shard can save at most its own slice ``C_k <= C`` of the whole
model's cost, so the whole-model condition ``p*F >= C`` implies every shard's (rule D1), and a smaller
shard has a larger margin (rule D2). Values may be ints, Fractions or Z3 terms (pass ``p*F`` named as
one term, ``expected_loss``, to keep Z3 queries linear).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

from verisplit.spec.arith import all_of


def segment_cost(layer_work: Sequence[Any], first_layer: int, end_layer: int) -> Any:
    """Cost of a shard = sum of its layers' work."""
    total: Any = 0
    for layer in range(first_layer, end_layer):
        total = total + layer_work[layer]
    return total


def margin_from_expected_loss(expected_loss: Any, savings: Any) -> Any:
    """``expected_loss - savings``; >= 0 means cheating does not pay."""
    return expected_loss - savings


def deterrence_margin(p: Any, franchise: Any, savings: Any) -> Any:
    """``p*franchise - savings`` (>= 0 means deterred).

    Z3: ``deterrence_corollary``, ``smaller_shard_more_deterred`` (proofs/z3/check_deterrence.py);
    Lean: ``Verisplit.shard_deterred_of_whole``, ``Verisplit.smaller_shard_larger_margin``.
    """
    return margin_from_expected_loss(p * franchise, savings)


def is_deterred(p: Any, franchise: Any, savings: Any) -> Any:
    """Whether the margin is non-negative."""
    return deterrence_margin(p, franchise, savings) >= 0


def shard_deterred_given_whole(expected_loss: Any, whole_cost: Any, shard_savings: Any, shard_cost: Any) -> Any:
    """Rule D1 as a predicate: premises ``expected_loss >= whole_cost`` and ``0 <= s_k <= C_k <= C``
    imply ``expected_loss - s_k >= 0``. Returns (premises, conclusion) so a prover can check the
    implication on the spec's own expression."""
    premises = all_of(expected_loss >= whole_cost, 0 <= shard_savings, shard_savings <= shard_cost, shard_cost <= whole_cost)
    conclusion = margin_from_expected_loss(expected_loss, shard_savings) >= 0
    return premises, conclusion


def rho(p: Fraction, audit_cost_by_segment: Sequence[Fraction | int], generation_cost: Fraction | int) -> Fraction:
    """Expected audit cost over generation cost: ``p * mean-free sum of per-segment audit costs / G``.

    Each segment is audited independently with probability p, so the expected audit cost is
    ``p * sum(audit_cost_k)``; rho is that divided by the cost of generating the request.
    """
    if generation_cost <= 0:
        raise ValueError(f"generation_cost: must be positive, got {generation_cost}")
    total = Fraction(0)
    for cost in audit_cost_by_segment:
        total += Fraction(cost)
    return Fraction(p) * total / Fraction(generation_cost)
