"""Verification deterrence (Proof-of-Sampling form) and the sharding corollary.

A provider cheats only if what it saves exceeds what it expects to lose. With audit probability p and
franchise F (future earnings forfeited on ejection), cheating on a job that would save ``savings`` is
deterred iff ``p*F - savings >= 0``. A shard can save at most its own slice ``C_k <= C`` of the whole
model's cost, so the whole-model condition ``p*F >= C`` implies every shard's (rule D1), and a smaller
shard has a larger margin (rule D2). Values may be ints, Fractions or Z3 terms (pass ``p*F`` named as
one term, ``expected_loss``, to keep Z3 queries linear). Any other argument type (float, bool, str,
None, ...) raises ``InvalidDeterrenceInput`` (a ValueError) naming the argument.

Here F is a parameter. In an open network a key is free, so nothing makes F real; ``spec/escrow.py``
does (probation for new keys, a vesting escrow of each key's payouts) and puts the escrow exposure in
place of F: ``escrow_expected_loss``, ``franchise_margin`` and ``check_deterrence_config`` there.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

from verisplit.spec.arith import all_of
from verisplit.spec.validation import require_int, require_number, require_probability, require_sequence


class InvalidDeterrenceInput(ValueError):
    """An argument of a deterrence function is not an int, Fraction or Z3 term, or is out of range;
    the message starts with the argument's name."""


def _numbers(**named: Any) -> None:
    for name, value in named.items():
        require_number(value, name, InvalidDeterrenceInput)


def segment_cost(layer_work: Sequence[Any], first_layer: int, end_layer: int) -> Any:
    """Cost of a shard = sum of its layers' work. ``layer_work`` is a list or tuple of numbers (or Z3
    terms) and ``0 <= first_layer <= end_layer <= len(layer_work)`` (``InvalidDeterrenceInput``)."""
    works = require_sequence(layer_work, "layer_work", InvalidDeterrenceInput)
    require_int(first_layer, "first_layer", InvalidDeterrenceInput, minimum=0, maximum=len(works))
    require_int(end_layer, "end_layer", InvalidDeterrenceInput, minimum=first_layer, maximum=len(works))
    for index in range(first_layer, end_layer):
        require_number(works[index], f"layer_work[{index}]", InvalidDeterrenceInput)
    total: Any = 0
    for layer in range(first_layer, end_layer):
        total = total + layer_work[layer]
    return total


def margin_from_expected_loss(expected_loss: Any, savings: Any) -> Any:
    """``expected_loss - savings``; >= 0 means cheating does not pay."""
    _numbers(expected_loss=expected_loss, savings=savings)
    return expected_loss - savings


def deterrence_margin(p: Any, franchise: Any, savings: Any) -> Any:
    """``p*franchise - savings`` (>= 0 means deterred).

    Z3: ``deterrence_corollary``, ``smaller_shard_more_deterred`` (proofs/z3/check_deterrence.py);
    Lean: ``Verisplit.shard_deterred_of_whole``, ``Verisplit.smaller_shard_larger_margin``.
    """
    _numbers(p=p, franchise=franchise, savings=savings)
    return margin_from_expected_loss(p * franchise, savings)


def is_deterred(p: Any, franchise: Any, savings: Any) -> Any:
    """Whether the margin is non-negative."""
    return deterrence_margin(p, franchise, savings) >= 0


def shard_deterred_given_whole(expected_loss: Any, whole_cost: Any, shard_savings: Any, shard_cost: Any) -> Any:
    """Rule D1 as a predicate: premises ``expected_loss >= whole_cost`` and ``0 <= s_k <= C_k <= C``
    imply ``expected_loss - s_k >= 0``. Returns (premises, conclusion) so a prover can check the
    implication on the spec's own expression."""
    _numbers(expected_loss=expected_loss, whole_cost=whole_cost, shard_savings=shard_savings, shard_cost=shard_cost)
    premises = all_of(expected_loss >= whole_cost, 0 <= shard_savings, shard_savings <= shard_cost, shard_cost <= whole_cost)
    conclusion = margin_from_expected_loss(expected_loss, shard_savings) >= 0
    return premises, conclusion


def rho(p: Fraction, audit_cost_by_segment: Sequence[Fraction | int], generation_cost: Fraction | int) -> Fraction:
    """Expected audit cost over generation cost: ``p * mean-free sum of per-segment audit costs / G``.

    Each segment is audited independently with probability p, so the expected audit cost is
    ``p * sum(audit_cost_k)``; rho is that divided by the cost of generating the request.
    p must be an int or Fraction in [0, 1], every audit cost an int or Fraction >= 0 and the
    generation cost one > 0 (``InvalidDeterrenceInput`` naming the argument).
    """
    probability = require_probability(p, "p", InvalidDeterrenceInput)
    require_number(generation_cost, "generation_cost", InvalidDeterrenceInput, allow_symbolic=False)
    if generation_cost <= 0:
        raise InvalidDeterrenceInput(f"generation_cost: must be positive, got {generation_cost}")
    total = Fraction(0)
    for index, cost in enumerate(require_sequence(audit_cost_by_segment, "audit_cost_by_segment", InvalidDeterrenceInput)):
        require_number(cost, f"audit_cost_by_segment[{index}]", InvalidDeterrenceInput, allow_symbolic=False)
        if cost < 0:
            raise InvalidDeterrenceInput(f"audit_cost_by_segment[{index}]: must be >= 0, got {cost}")
        total += Fraction(cost)
    return probability * total / Fraction(generation_cost)
