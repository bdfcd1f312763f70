"""Deterrence rules D1-D2 on ``verisplit.spec.deterrence``'s own functions, over ``z3.Real``.

``p*F`` (audit probability times franchise) is named as one real ``expected_loss`` so every query is
linear; the spec's ``deterrence_margin`` is shown to equal ``margin_from_expected_loss(p*F, s)`` with
``p*F`` as an opaque term, which is the only place the product appears.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any, Iterator

import z3

from verisplit.proofs_z3.core import Evidence, Kind, Obligation, assume, concrete, register, valid
from verisplit.spec.deterrence import (deterrence_margin, margin_from_expected_loss, segment_cost,
                                       shard_deterred_given_whole)
from verisplit.spec.escrow import (SAVINGS_BOUND, DeterrenceError, account_step, audit_probability,
                                   check_deterrence_config, escrow_expected_loss, escrow_margin, franchise_margin)
from verisplit.spec.threats import CAUGHT_BY, CHAIN

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


# ---- the franchise made real: escrow exposure in place of F (rules D3-D5, spec/escrow.py) ---------------

LOSS = "verisplit.spec.escrow.escrow_expected_loss"
ESCROW_MARGIN = "verisplit.spec.escrow.escrow_margin"
EXPOSURE = "verisplit.spec.escrow.exposure_requests"
FRANCHISE_MARGIN = "verisplit.spec.escrow.franchise_margin"
PROBATION = "verisplit.spec.escrow.audit_probability"
ACCOUNT_STEP = "verisplit.spec.escrow.account_step"
CHECK_CONFIG = "verisplit.spec.escrow.check_deterrence_config"
MAX_TERMS = 6
SAVINGS_IN_VALUE = assume(
    "savings_within_value",
    "the cost model: cheating on work of value v = price x work saves at most the provider's own compute cost for "
    "it, which is at most v (no provider offers below cost): savings s <= sigma_k * v with sigma_k <= 1 per cheat "
    "kind (spec/escrow.py SAVINGS_BOUND)")
UNIFORM_VALUE = assume(
    "uniform_request_value",
    "the requests a key serves have equal value v, so an escrow of h held requests is h * v (escrow counted in "
    "requests); a key that serves cheap requests and then cheats on a much larger one is not covered")


@register("escrow_expected_loss_bound", spec_functions=(LOSS, PROBATION),
          bound="unbounded reals: p in [0, 1], escrow E >= 0, payout x >= 0; integers served, M >= 0",
          assumes=(SAVINGS_IN_VALUE,))
def escrow_expected_loss_bound() -> Iterator[Obligation]:
    """D3: with escrow E held and detection probability p the expected loss is at least p*E (= p*E + p*x);
    during probation (P1) it is at least E + x, so at least any savings s <= x."""
    p, held, payout, savings = z3.Reals("p E x s")
    dom = [0 <= p, p <= 1, held >= 0, payout >= 0]
    loss = escrow_expected_loss(p, held, payout)
    yield valid("D3 expected loss >= p*E", loss >= p * held, dom)
    yield valid("D3 expected loss == p*E + p*x", loss == p * held + p * payout, dom)
    served, probation = z3.Ints("served M")
    during = escrow_expected_loss(audit_probability(p, served, probation), held, payout)
    yield valid("D3 during probation the expected loss is E + x >= any savings s <= x",
                z3.And(during == held + payout, during >= savings),
                dom + [served >= 0, served < probation, 0 <= savings, savings <= payout])


@register("escrow_expected_loss_bound_mutant_unscaled", kind=Kind.MUTANT, property="escrow_expected_loss_bound",
          spec_functions=(LOSS,), bound="unbounded reals")
def escrow_expected_loss_mutant() -> Iterator[Obligation]:
    """Mutant claim: the expected loss is at least the whole escrow E (refuted for p < 1)."""
    p, held, payout = z3.Reals("p E x")
    yield valid("mutant D3 loss >= E", escrow_expected_loss(p, held, payout) >= held,
                [0 <= p, p <= 1, held >= 0, payout >= 0])


def _held_after(probation: int, window: int, value: Any) -> Any:
    """What a key holds after ``probation`` served requests of value ``value`` each from a fresh window
    of ``window`` slots, by the spec's ``account_step`` (no failure)."""
    slots: list[Any] = [0] * window
    vested: Any = 0
    forfeited: Any = 0
    paid: Any = 0
    for _ in range(probation):
        slots, vested, forfeited, paid = account_step(slots, vested, forfeited, paid, value, False)
    total: Any = 0
    for amount in slots:
        total = total + amount
    return total


@register("escrow_shard_corollary", spec_functions=(ESCROW_MARGIN, LOSS, EXPOSURE, FRANCHISE_MARGIN, PROBATION,
                                                    ACCOUNT_STEP, D1, FROM_LOSS),
          bound="unbounded reals (D1/D2 with escrow); the tie to the escrow mechanism for every M, V <= 6",
          assumptions=("p*(E+x) is the only nonlinear term in D1/D2",),
          assumes=(SAVINGS, SAVINGS_IN_VALUE, UNIFORM_VALUE))
def escrow_shard_corollary() -> Iterator[Obligation]:
    """D1/D2 with the escrow exposure p*(E + x) in place of p*F; D4/D5: at the first p-audited request a
    key holds min(M, V) requests' worth (the spec's own account_step), and the margin there is
    franchise_margin(p, M, V, sigma) * v for every shard value v, so it deters every shard size or none."""
    p, held, payout, whole, savings, shard = z3.Reals("p E x C s_k C_k")
    dom = [0 <= p, p <= 1, held >= 0, payout >= 0]
    loss = escrow_expected_loss(p, held, payout)
    premises, conclusion = shard_deterred_given_whole(loss, whole, savings, shard)
    yield valid("D1 with escrow: p*(E+x) >= C and s_k <= C_k <= C imply a non-negative margin", conclusion,
                dom + [premises])
    yield valid("D1 with escrow on escrow_margin", escrow_margin(p, held, payout, savings) >= 0,
                dom + [loss >= whole, 0 <= savings, savings <= shard, shard <= whole])
    c_i, c_j = z3.Reals("C_i C_j")
    yield valid("D2 with escrow: at the same exposure a smaller shard has a larger margin",
                escrow_margin(p, held, payout, c_i) > escrow_margin(p, held, payout, c_j), dom + [c_i < c_j])
    sigma, value, cheat = z3.Reals("sigma v s")
    served, probation_int = z3.Ints("served M")
    yield valid("P1 + D3: during probation every kind with s <= x is deterred whatever the escrow",
                escrow_margin(audit_probability(p, served, probation_int), held, payout, cheat) >= 0,
                dom + [served >= 0, served < probation_int, 0 <= cheat, cheat <= payout])
    for probation in range(MAX_TERMS + 1):
        for window in range(MAX_TERMS + 1):
            held_m = _held_after(probation, window, value)
            scaled = franchise_margin(p, probation, window, sigma) * value
            yield valid(f"D4 tie to the mechanism, M={probation}, V={window}: margin at the first sampled request == "
                        f"franchise_margin * v, and deters every shard value v iff franchise_margin >= 0",
                        z3.And(escrow_margin(p, held_m, value, sigma * value) == scaled,
                               z3.Implies(franchise_margin(p, probation, window, sigma) >= 0,
                                          escrow_margin(p, held_m, value, cheat) >= 0)),
                        [0 <= p, p <= 1, value > 0, 0 <= sigma, sigma <= 1, 0 <= cheat, cheat <= sigma * value])


@register("escrow_shard_corollary_mutant_no_margin", kind=Kind.MUTANT, property="escrow_shard_corollary",
          spec_functions=(ESCROW_MARGIN,), bound="M=V=2")
def escrow_shard_corollary_mutant() -> Iterator[Obligation]:
    """Mutant claim: every shard is deterred whatever p (refuted at p*(min(M,V)+1) < sigma)."""
    p, sigma, value = z3.Reals("p sigma v")
    held = _held_after(2, 2, value)
    yield valid("mutant D5 without franchise_margin >= 0", escrow_margin(p, held, value, sigma * value) >= 0,
                [0 <= p, p <= 1, value > 0, 0 <= sigma, sigma <= 1])


def _deters_by_mechanism(p: Fraction, probation: int, window: int, held: int | None = None) -> bool:
    """Brute force from the escrow mechanism (not the closed form): for each kind, detection d (1 for
    chain kinds) times what is held at the first p-audited request plus that request's value (v = 1)
    must cover its savings bound."""
    held = _held_after(probation, window, 1) if held is None else held
    for kind, caught_by in CAUGHT_BY.items():
        detection = Fraction(1) if caught_by == CHAIN else p
        if detection * (held + 1) < SAVINGS_BOUND[kind]:
            return False
    return True


@register("deterrence_config_concrete", spec_functions=(CHECK_CONFIG, FRANCHISE_MARGIN), evidence=Evidence.TESTED,
          bound="exhaustive: p in {0, 1/k for k<=16, 2/7, 3/10}, M, V in 0..16", assumes=(SAVINGS_IN_VALUE, UNIFORM_VALUE))
def deterrence_config_concrete() -> Iterator[Obligation]:
    """check_deterrence_config raises DeterrenceError exactly when the escrow mechanism leaves some kind
    profitable at the first sampled audit; its message names p, M, V, the kind, loss and savings; the
    advice it gives deters; the defaults deter."""
    start = time.perf_counter()
    ps = [Fraction(0), Fraction(2, 7), Fraction(3, 10)] + [Fraction(1, k) for k in range(1, 17)]
    held = {(m, v): _held_after(m, v, 1) for m in range(17) for v in range(17)}
    for p in ps:
        for probation in range(17):
            for window in range(17):
                expected = _deters_by_mechanism(p, probation, window, held[(probation, window)])
                try:
                    check_deterrence_config(p, probation, window)
                    raised = ""
                except DeterrenceError as exc:
                    raised = str(exc)
                if bool(raised) == expected:
                    yield concrete("check_deterrence_config vs the mechanism", False, time.perf_counter() - start,
                                   f"p={p} M={probation} V={window}: mechanism deters={expected}, raised={raised!r}")
                    return
                if raised and not (raised.startswith(f"p = {p.numerator}") and f"probation {probation} requests" in raised
                                   and f"window of {window} requests" in raised and " x value < savings " in raised):
                    yield concrete("DeterrenceError message", False, time.perf_counter() - start, raised)
                    return
                if raised:
                    needed = Fraction(raised.split("raise p to at least ")[1].split()[0])
                    if not _deters_by_mechanism(needed, probation, window):
                        yield concrete("advised p deters", False, time.perf_counter() - start, raised)
                        return
    check_deterrence_config(Fraction(1, 10))
    yield concrete("check_deterrence_config == mechanism (exhaustive), messages, advice, defaults", True,
                   time.perf_counter() - start)
