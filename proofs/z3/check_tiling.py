"""Cohort tiling (rule C2), ``cohort_violations`` (C1-C3) and the router's output.

PROVED (Z3, bounded):
- ``tiling_iff``: the spec's ``tiles_exactly``, run on symbolic firsts/ends and a symbolic layer count
  L in [1, 32], is equivalent to "segments are listed in increasing order, each is non-empty and
  inside [0, L), and every layer of [0, L) is covered by exactly one segment", for every n <= 8.
  The ordering clause is needed: C2 demands an *ordered* tiling (a cohort is a chain).
- ``violations_iff_tiling``: the layer-range part of ``cohort_violations``
  (``range_violation_conditions``, which ``cohort_violations`` itself calls) reports nothing iff
  ``tiles_exactly`` holds, for every n <= 8 and symbolic L <= 32 (firsts/ends any integers).
- ``router_reconstruction``: ``firsts_from_ends`` (the step of ``form_cohort`` that turns chosen end
  boundaries into assignments) yields an exact tiling from any strictly increasing ends ending at L,
  n <= 16.

TESTED (concrete):
- ``cohort_violations_bridge``: exhaustively over n <= 3 segments with bounds in [-1, L+1], L <= 3:
  with valid offers/keys/distinct providers, ``cohort_violations == []`` iff ``tiles_exactly``.
- ``router_valid``: ``form_cohort`` is a search over concrete offers and cannot run on Z3 terms, so it
  runs exhaustively over every set of <= 3 offers drawn from all intervals of a model of L <= 4 layers
  (prices 1 or 2), plus 300 seeded random registries (L <= 32, <= 8 offers); each output must have
  ``cohort_violations == []`` and ``tiles_exactly`` on its boundaries; NoCoverage must be raised
  exactly when a layer is uncovered.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, Iterator, Sequence

import z3

from verisplit.proofs_z3.core import Evidence, Kind, Obligation, concrete, register, valid
from verisplit.spec.cohort import (Assignment, Cohort, ModelSpec, NoCoverage, Offer, cohort_violations,
                                   first_uncovered_layer, firsts_from_ends, form_cohort, range_violation_conditions,
                                   tiles_exactly)

MAX_SEGMENTS = 8
MAX_LAYERS = 32
MAX_ROUTER_SEGMENTS = 16
TILES = "verisplit.spec.cohort.tiles_exactly"
CONDITIONS = "verisplit.spec.cohort.tiling_conditions"
RANGE = "verisplit.spec.cohort.range_violation_conditions"
VIOLATIONS = "verisplit.spec.cohort.cohort_violations"
FORM = "verisplit.spec.cohort.form_cohort"
CANDIDATES = "verisplit.spec.cohort.router_candidates"
FIRSTS = "verisplit.spec.cohort.firsts_from_ends"
KEY = bytes(32)


def coverage(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any, ordered: bool = True) -> Any:
    """The independent characterisation: ordered, non-empty, in-bounds segments covering each layer of
    [0, L) exactly once (L <= MAX_LAYERS, so layers are enumerated concretely)."""
    n = len(firsts)
    clauses = [z3.And(0 <= firsts[k], firsts[k] < ends[k], ends[k] <= num_layers) for k in range(n)]
    if ordered:
        clauses += [firsts[k] < firsts[k + 1] for k in range(n - 1)]
    for layer in range(MAX_LAYERS):
        hits = z3.Sum([z3.If(z3.And(firsts[k] <= layer, layer < ends[k]), 1, 0) for k in range(n)]) if n else z3.IntVal(0)
        clauses.append(z3.Implies(layer < num_layers, hits == 1))
    return z3.And(*clauses)


def as_z3(value: Any) -> Any:
    """A Python bool (what the spec returns for a concrete answer) as a Z3 Bool."""
    return z3.BoolVal(value) if isinstance(value, bool) else value


def _symbols(n: int) -> tuple[list[Any], list[Any], Any, list[Any]]:
    firsts = [z3.Int(f"first{k}") for k in range(n)]
    ends = [z3.Int(f"end{k}") for k in range(n)]
    num_layers = z3.Int("L")
    return firsts, ends, num_layers, [1 <= num_layers, num_layers <= MAX_LAYERS]


@register("tiling_iff", spec_functions=(TILES, CONDITIONS), bound="every n<=8 segments (n=0 included), symbolic L<=32",
          assumptions=("segments are half-open [first, end)",))
def tiling_iff() -> Iterator[Obligation]:
    """tiles_exactly(firsts, ends, L) <=> ordered exact coverage of [0, L) by non-empty segments."""
    for n in range(0, MAX_SEGMENTS + 1):
        firsts, ends, num_layers, hyps = _symbols(n)
        claim = as_z3(tiles_exactly(firsts, ends, num_layers)) == coverage(firsts, ends, num_layers)
        yield valid(f"tiles_exactly <=> coverage, n={n}", claim, hyps, "bounded")


@register("tiling_iff_mutant_unordered", kind=Kind.MUTANT, property="tiling_iff",
          spec_functions=(TILES,), bound="n=2, L<=32")
def tiling_mutant_unordered() -> Iterator[Obligation]:
    """Mutant claim: coverage without the ordering clause is not what tiles_exactly means."""
    firsts, ends, num_layers, hyps = _symbols(2)
    claim = tiles_exactly(firsts, ends, num_layers) == coverage(firsts, ends, num_layers, ordered=False)
    yield valid("mutant unordered coverage, n=2", claim, hyps)


def no_range_violation(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> Any:
    """True iff none of ``range_violation_conditions``' conditions holds (the spec's own conditions)."""
    holds = [as_z3(condition) for row in range_violation_conditions(firsts, ends, num_layers) for _, condition in row]
    return z3.Not(z3.Or(*holds))


@register("violations_iff_tiling", spec_functions=(RANGE, TILES),
          bound="every n<=8 segments (n=0 included), symbolic L<=32, firsts/ends any integers")
def violations_iff_tiling() -> Iterator[Obligation]:
    """range_violation_conditions (the layer-range rules of cohort_violations) reports nothing iff
    tiles_exactly holds."""
    for n in range(0, MAX_SEGMENTS + 1):
        firsts, ends, num_layers, hyps = _symbols(n)
        claim = no_range_violation(firsts, ends, num_layers) == as_z3(tiles_exactly(firsts, ends, num_layers))
        yield valid(f"no range violation <=> tiles_exactly, n={n}", claim, hyps, "bounded")


@register("violations_iff_tiling_mutant_no_bounds", kind=Kind.MUTANT, property="violations_iff_tiling",
          spec_functions=(RANGE,), bound="n=2, L<=32")
def violations_mutant_no_bounds() -> Iterator[Obligation]:
    """Mutant claim: gap and overlap alone (no empty_range, out_of_bounds or trailing gap) imply a tiling."""
    firsts, ends, num_layers, hyps = _symbols(2)
    rows = range_violation_conditions(firsts, ends, num_layers)
    holds = [condition for row in rows[:-1] for kind, condition in row if kind in ("gap", "overlap")]
    yield valid("mutant gap/overlap only, n=2", z3.Not(z3.Or(*holds)) == as_z3(tiles_exactly(firsts, ends, num_layers)), hyps)


@register("cohort_violations_bridge", spec_functions=(VIOLATIONS, TILES), evidence=Evidence.TESTED,
          bound="exhaustive: n<=3 segments, bounds in [-1, L+1], L<=3")
def cohort_violations_bridge() -> Iterator[Obligation]:
    """With valid offers (reaching past the model)/keys/distinct providers, cohort_violations == [] iff
    tiles_exactly (the whole function, offers included, on concrete inputs)."""
    start = time.perf_counter()
    for num_layers in range(1, 4):
        model = ModelSpec("m", num_layers)
        values = range(-1, num_layers + 2)
        for n in range(1, 4):
            # offers reach past the model (legal), so out_of_bounds, not outside_offer, must catch end > L
            offers = [Offer(f"p{k}", bytes([k + 1]) * 32, 0, num_layers + 2, 1, "e") for k in range(n)]
            for bounds in itertools.product(values, repeat=2 * n):
                firsts, ends = list(bounds[0::2]), list(bounds[1::2])
                assignments = tuple(Assignment(f"p{k}", bytes([k + 1]) * 32, firsts[k], ends[k]) for k in range(n))
                empty = cohort_violations(Cohort("m", assignments), model, offers) == []
                if empty != tiles_exactly(firsts, ends, num_layers):
                    yield concrete("cohort_violations bridge", False, time.perf_counter() - start,
                                   f"L={num_layers} firsts={firsts} ends={ends}: violations empty={empty}")
                    return
    yield concrete("cohort_violations == [] <=> tiles_exactly (exhaustive n<=3, L<=3)", True,
                   time.perf_counter() - start)


# ---- router ------------------------------------------------------------------------------------

def _router_ends(n: int) -> tuple[list[Any], Any, list[Any]]:
    ends = [z3.Int(f"end{k}") for k in range(n)]
    num_layers = z3.Int("L")
    hyps = [ends[0] >= 1] + [ends[k] < ends[k + 1] for k in range(n - 1)] + [ends[-1] == num_layers]
    return ends, num_layers, hyps


@register("router_reconstruction", spec_functions=(FIRSTS, TILES), bound="every n<=16 segments, symbolic ends")
def router_reconstruction() -> Iterator[Obligation]:
    """firsts_from_ends (form_cohort's reconstruction step) tiles [0, L) for strictly increasing ends
    that end at L."""
    for n in range(1, MAX_ROUTER_SEGMENTS + 1):
        ends, num_layers, hyps = _router_ends(n)
        yield valid(f"rebuilt assignments tile [0, L), n={n}",
                    tiles_exactly(firsts_from_ends(ends), ends, num_layers), hyps, "bounded")


@register("router_reconstruction_mutant_unsorted_ends", kind=Kind.MUTANT, property="router_reconstruction",
          spec_functions=(FIRSTS,), bound="n=2")
def router_mutant() -> Iterator[Obligation]:
    """Mutant claim: the reconstruction tiles even when the ends are not increasing."""
    ends, num_layers, _ = _router_ends(2)
    yield valid("mutant without ends[0] < ends[1], n=2", tiles_exactly(firsts_from_ends(ends), ends, num_layers),
                [ends[0] >= 1, ends[1] == num_layers, num_layers >= 1])


def _check_router_once(offers: list[Offer], model: ModelSpec) -> str:
    """'' if form_cohort behaves on these offers, else a description of the failure."""
    gap = first_uncovered_layer(offers, model.num_layers)
    try:
        cohort = form_cohort(offers, model)
    except NoCoverage as exc:
        return "" if gap is not None and exc.layer == gap else f"NoCoverage({exc.layer}) but gap={gap}"
    if gap is not None:
        return f"returned a cohort although layer {gap} is uncovered"
    problems = cohort_violations(cohort, model, offers)
    if problems:
        return f"violations {problems}"
    if not tiles_exactly([a.first_layer for a in cohort.assignments], [a.end_layer for a in cohort.assignments],
                         model.num_layers):
        return "tiles_exactly is false on its boundaries"
    return ""


@register("router_valid", spec_functions=(FORM, CANDIDATES, VIOLATIONS, TILES), evidence=Evidence.TESTED,
          bound="exhaustive: <=3 offers, L<=4, prices 1-2; 300 seeded random registries, L<=32, <=8 offers; "
                "40 hostile registries of 60 overlapping offers (candidate pruning and the C3 search)")
def router_valid() -> Iterator[Obligation]:
    """form_cohort's output always satisfies cohort_violations == [] (C1-C3); NoCoverage exactly when
    some layer is uncovered, naming the first."""
    start = time.perf_counter()
    for num_layers in range(1, 5):
        model = ModelSpec("m", num_layers)
        intervals = [(a, b) for a in range(num_layers) for b in range(a + 1, num_layers + 1)]
        for k in range(1, 4):
            for chosen in itertools.product(intervals, repeat=k):
                for prices in itertools.product((1, 2), repeat=k):
                    offers = [Offer(f"p{i}", bytes([i]) * 32, a, b, prices[i], "e") for i, (a, b) in enumerate(chosen)]
                    failure = _check_router_once(offers, model)
                    if failure:
                        yield concrete("form_cohort exhaustive", False, time.perf_counter() - start, f"{offers}: {failure}")
                        return
    yield concrete("form_cohort output valid (exhaustive L<=4, <=3 offers)", True, time.perf_counter() - start)
    start = time.perf_counter()
    rng = random.Random(20240603)
    for _ in range(300):
        num_layers = rng.randint(1, MAX_LAYERS)
        model = ModelSpec("m", num_layers, tuple(rng.randint(1, 5) for _ in range(num_layers)))
        offers = []
        for i in range(rng.randint(1, 8)):
            a = rng.randrange(num_layers)
            b = rng.randint(a + 1, num_layers)
            offers.append(Offer(f"p{i}", bytes([i]) * 32, a, b, rng.randint(0, 9), "e"))
        failure = _check_router_once(offers, model)
        if failure:
            yield concrete("form_cohort random", False, time.perf_counter() - start, f"{offers}: {failure}")
            return
    yield concrete("form_cohort output valid (300 seeded random registries)", True, time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(40):  # more offers per layer than the router keeps: candidate pruning + the C3 search
        num_layers = rng.randint(4, 16)
        model = ModelSpec("m", num_layers)
        offers = [Offer("p000", bytes(32), 0, num_layers, 9, "e")]
        for i in range(1, 60):
            a = rng.randrange(num_layers)
            b = rng.randint(a + 1, num_layers)
            offers.append(Offer(f"p{i:03d}", i.to_bytes(32, "big"), a, b, rng.randint(0, 2) if b - a < 3 else 9, "e"))
        failure = _check_router_once(offers, model)
        if failure:
            yield concrete("form_cohort hostile", False, time.perf_counter() - start, f"{offers}: {failure}")
            return
    yield concrete("form_cohort output valid (40 hostile registries, 60 offers)", True, time.perf_counter() - start)
