"""Deterrence rules D1-D2 on ``verisplit.spec.deterrence``'s own functions, over ``z3.Real``.

``p*F`` (audit probability times franchise) is named as one real ``expected_loss`` so every query is
linear; the spec's ``deterrence_margin`` is shown to equal ``margin_from_expected_loss(p*F, s)`` with
``p*F`` as an opaque term, which is the only place the product appears.
"""

from __future__ import annotations

from typing import Iterator

import z3

from verisplit.proofs_z3.core import Kind, Obligation, assume, register, valid
from verisplit.spec.deterrence import (deterrence_margin, margin_from_expected_loss, segment_cost,
                                       shard_deterred_given_whole)

MAX_LAYERS = 8
D1 = "verisplit.spec.deterrence.shard_deterred_given_whole"
MARGIN = "verisplit.spec.deterrence.deterrence_margin"
FROM_LOSS = "verisplit.spec.deterrence.margin_from_expected_loss"
COST = "verisplit.spec.deterrence.segment_cost"
SAVINGS = assume(
    "shard_savings_bounded",
    "a cheating shard saves at most its own share of the compute: 0 <= s_k <= C_k (the cost model; in rule D2 "
    "the worst case s_k = C_k), with the same audit probability p and franchise F for every shard")


@register("deterrence_corollary", spec_functions=(D1, FROM_LOSS, COST, MARGIN),
          bound="unbounded reals; shard costs: every [a,b) of L<=8 layers",
          assumptions=("layer work is non-negative", "p*F named as one term (expected_loss)"),
          assumes=(SAVINGS,))
def deterrence_corollary() -> Iterator[Obligation]:
    """If p*F >= C (whole model) then p*F - s_k >= 0 for every shard with 0 <= s_k <= C_k <= C."""
    loss, whole, savings, shard = z3.Reals("pF C s_k C_k")
    premises, conclusion = shard_deterred_given_whole(loss, whole, savings, shard)
    yield valid("D1: premises -> margin >= 0", conclusion, [premises])
    p, franchise = z3.Reals("p F")
    yield valid("deterrence_margin(p,F,s) == margin_from_expected_loss(p*F, s)",
                deterrence_margin(p, franchise, savings) == margin_from_expected_loss(p * franchise, savings),
                [0 <= p, p <= 1, franchise >= 0])
    # C_k <= C: the spec's segment_cost of any sub-range is at most the whole model's cost.
    for num_layers in range(1, MAX_LAYERS + 1):
        work = [z3.Real(f"work{i}") for i in range(num_layers)]
        whole_cost = segment_cost(work, 0, num_layers)
        claims = [z3.And(0 <= segment_cost(work, a, b), segment_cost(work, a, b) <= whole_cost)
                  for a in range(num_layers) for b in range(a + 1, num_layers + 1)]
        yield valid(f"0 <= C_k <= C for all shards, L={num_layers}", z3.And(*claims), [w >= 0 for w in work])


@register("deterrence_corollary_mutant_savings_unbounded", kind=Kind.MUTANT, property="deterrence_corollary",
          spec_functions=(D1,), bound="unbounded reals")
def deterrence_corollary_mutant() -> Iterator[Obligation]:
    """Mutant: drop the premise s_k <= C_k (a shard that saves more than its cost)."""
    loss, whole, savings, shard = z3.Reals("pF C s_k C_k")
    _, conclusion = shard_deterred_given_whole(loss, whole, savings, shard)
    yield valid("mutant D1 without s_k <= C_k", conclusion, [loss >= whole, 0 <= savings, shard <= whole])


@register("deterrence_corollary_mutant_strict", kind=Kind.MUTANT, property="deterrence_corollary",
          spec_functions=(D1,), bound="unbounded reals")
def deterrence_corollary_mutant_strict() -> Iterator[Obligation]:
    """Mutant: claim a strictly positive margin (fails when s_k = C_k = C = p*F)."""
    loss, whole, savings, shard = z3.Reals("pF C s_k C_k")
    premises, _ = shard_deterred_given_whole(loss, whole, savings, shard)
    yield valid("mutant D1 strict margin", margin_from_expected_loss(loss, savings) > 0, [premises])


@register("smaller_shard_more_deterred", spec_functions=(MARGIN, FROM_LOSS), bound="unbounded reals",
          assumes=(SAVINGS,))
def smaller_shard_more_deterred() -> Iterator[Obligation]:
    """C_i < C_j implies margin_i > margin_j (rule D2), on named p*F and on the spec's p*F product."""
    loss, ci, cj = z3.Reals("pF C_i C_j")
    yield valid("D2 on margin_from_expected_loss",
                margin_from_expected_loss(loss, ci) > margin_from_expected_loss(loss, cj), [ci < cj])
    p, franchise = z3.Reals("p F")
    yield valid("D2 on deterrence_margin(p, F, C)",
                deterrence_margin(p, franchise, ci) > deterrence_margin(p, franchise, cj),
                [ci < cj, 0 <= p, p <= 1, franchise >= 0])


@register("smaller_shard_more_deterred_mutant_wrong_way", kind=Kind.MUTANT, property="smaller_shard_more_deterred",
          spec_functions=(FROM_LOSS,), bound="unbounded reals")
def smaller_shard_mutant() -> Iterator[Obligation]:
    """Mutant: margin monotone the wrong way (smaller shard, smaller margin)."""
    loss, ci, cj = z3.Reals("pF C_i C_j")
    yield valid("mutant D2 reversed",
                margin_from_expected_loss(loss, ci) < margin_from_expected_loss(loss, cj), [ci < cj])
