"""Cohort tiling (rule C2) and the router's output (C1-C3).

``tiling_iff``: the spec's ``tiles_exactly``, run on symbolic firsts/ends and a symbolic layer count
L in [1, 32], is equivalent to "segments are listed in increasing order, each is non-empty and inside
[0, L), and every layer of [0, L) is covered by exactly one segment", for every n <= 8 segments. The
ordering clause is needed: C2 demands an *ordered* tiling (a cohort is a chain), and a mutant without
it is refuted. A concrete exhaustive companion shows that ``cohort_violations`` is empty iff
``tiles_exactly`` holds when the other rules (offers, keys, no repeats) are satisfied.

``router_valid``: ``form_cohort`` is a search over concrete offers, so it is checked (a) symbolically
on its reconstruction step (RESTATED below: assignments are rebuilt from strictly increasing end
boundaries ending at L), and (b) concretely: exhaustively over every set of <= 3 offers drawn from
all intervals of a model of L <= 4 layers (prices 1 or 2), plus 300 seeded random registries with
L <= 32 and <= 8 offers; each output must have ``cohort_violations == []`` and Z3 must evaluate
``tiles_exactly`` on its boundaries to true; NoCoverage must be raised exactly when a layer is uncovered.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, Iterator, Sequence

import z3

from verisplit.proofs_z3.core import Kind, Obligation, concrete, register, valid
from verisplit.spec.arith import all_of
from verisplit.spec.cohort import (Assignment, Cohort, ModelSpec, NoCoverage, Offer, cohort_violations,
                                   first_uncovered_layer, form_cohort, tiles_exactly)

MAX_SEGMENTS = 8
MAX_LAYERS = 32
TILES = "verisplit.spec.cohort.tiles_exactly"
CONDITIONS = "verisplit.spec.cohort.tiling_conditions"
VIOLATIONS = "verisplit.spec.cohort.cohort_violations"
FORM = "verisplit.spec.cohort.form_cohort"
KEY = bytes(32)


def coverage(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any, ordered: bool = True) -> Any:
    """The independent characterisation: ordered, non-empty, in-bounds segments covering each layer of
    [0, L) exactly once (L <= MAX_LAYERS, so layers are enumerated concretely)."""
    n = len(firsts)
    clauses = [z3.And(0 <= firsts[k], firsts[k] < ends[k], ends[k] <= num_layers) for k in range(n)]
    if ordered:
        clauses += [firsts[k] < firsts[k + 1] for k in range(n - 1)]
    for layer in range(MAX_LAYERS):
        hits = z3.Sum([z3.If(z3.And(firsts[k] <= layer, layer < ends[k]), 1, 0) for k in range(n)])
        clauses.append(z3.Implies(layer < num_layers, hits == 1))
    return z3.And(*clauses)


def _symbols(n: int) -> tuple[list[Any], list[Any], Any, list[Any]]:
    firsts = [z3.Int(f"first{k}") for k in range(n)]
    ends = [z3.Int(f"end{k}") for k in range(n)]
    num_layers = z3.Int("L")
    return firsts, ends, num_layers, [1 <= num_layers, num_layers <= MAX_LAYERS]


@register("tiling_iff", spec_functions=(TILES, CONDITIONS, VIOLATIONS),
          bound="n<=8 segments, symbolic L<=32; cohort_violations bridge: exhaustive n<=3, L<=3",
          assumptions=("segments are half-open [first, end)",))
def tiling_iff() -> Iterator[Obligation]:
    """tiles_exactly(firsts, ends, L) <=> ordered exact coverage of [0, L) by non-empty segments."""
    for n in range(1, MAX_SEGMENTS + 1):
        firsts, ends, num_layers, hyps = _symbols(n)
        claim = tiles_exactly(firsts, ends, num_layers) == coverage(firsts, ends, num_layers)
        yield valid(f"tiles_exactly <=> coverage, n={n}", claim, hyps, "bounded")
    yield _violations_bridge()


def _violations_bridge() -> Obligation:
    """Exhaustive: with valid offers/keys/distinct providers, cohort_violations == [] iff tiles_exactly."""
    start = time.perf_counter()
    for num_layers in range(1, 4):
        model = ModelSpec("m", num_layers)
        values = range(-1, num_layers + 2)
        for n in range(1, 4):
            offers = [Offer(f"p{k}", KEY, 0, num_layers, 1, "e") for k in range(n)]
            for bounds in itertools.product(values, repeat=2 * n):
                firsts, ends = list(bounds[0::2]), list(bounds[1::2])
                inside = all(0 <= f and e <= num_layers for f, e in zip(firsts, ends))
                assignments = tuple(Assignment(f"p{k}", KEY, firsts[k], ends[k]) for k in range(n))
                empty = cohort_violations(Cohort("m", assignments), model, offers) == []
                if empty != (inside and tiles_exactly(firsts, ends, num_layers)):
                    return concrete("cohort_violations bridge", False, time.perf_counter() - start,
                                    f"L={num_layers} firsts={firsts} ends={ends}: violations empty={empty}")
    return concrete("cohort_violations == [] <=> tiles_exactly (exhaustive n<=3, L<=3)", True,
                    time.perf_counter() - start)


def _tiles_without_nonempty(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> Any:
    """MUTANT of tiling_conditions: the non-empty clause ``first < end`` dropped."""
    conditions: list[Any] = []
    previous_end: Any = 0
    for first, end in zip(firsts, ends):
        conditions.append(first == previous_end)
        previous_end = end
    conditions.append(previous_end == num_layers)
    return all_of(*conditions)


@register("tiling_iff_mutant_no_nonempty", kind=Kind.MUTANT, property="tiling_iff",
          spec_functions=(CONDITIONS,), bound="n=2, L<=32")
def tiling_mutant_nonempty() -> Iterator[Obligation]:
    """Mutant: a tiling predicate without the non-empty clause admits an empty segment."""
    firsts, ends, num_layers, hyps = _symbols(2)
    claim = _tiles_without_nonempty(firsts, ends, num_layers) == coverage(firsts, ends, num_layers)
    yield valid("mutant without first < end, n=2", claim, hyps)


@register("tiling_iff_mutant_unordered", kind=Kind.MUTANT, property="tiling_iff",
          spec_functions=(TILES,), bound="n=2, L<=32")
def tiling_mutant_unordered() -> Iterator[Obligation]:
    """Mutant: coverage without the ordering clause is not what tiles_exactly means."""
    firsts, ends, num_layers, hyps = _symbols(2)
    claim = tiles_exactly(firsts, ends, num_layers) == coverage(firsts, ends, num_layers, ordered=False)
    yield valid("mutant unordered coverage, n=2", claim, hyps)


# ---- router ------------------------------------------------------------------------------------

def rebuild_firsts(ends: Sequence[Any], advance: bool = True) -> list[Any]:
    """RESTATEMENT of form_cohort's reconstruction: ``start = 0``; each assignment is [start, end),
    then ``start = end``."""
    firsts: list[Any] = []
    start: Any = z3.IntVal(0)
    for end in ends:
        firsts.append(start)
        if advance:
            start = end
    return firsts


def _router_ends(n: int) -> tuple[list[Any], Any, list[Any]]:
    ends = [z3.Int(f"end{k}") for k in range(n)]
    num_layers = z3.Int("L")
    hyps = [ends[0] >= 1] + [ends[k] < ends[k + 1] for k in range(n - 1)] + [ends[-1] == num_layers]
    return ends, num_layers, hyps


@register("router_valid", spec_functions=(FORM, VIOLATIONS, TILES),
          bound="reconstruction: n<=16 symbolic; form_cohort: exhaustive <=3 offers, L<=4; 300 random, L<=32",
          assumptions=("the search only extends a prefix by a non-empty range of an unused covering offer",))
def router_valid() -> Iterator[Obligation]:
    """form_cohort's output always satisfies cohort_violations == [] (C1-C3)."""
    for n in range(1, 17):
        ends, num_layers, hyps = _router_ends(n)
        yield valid(f"rebuilt assignments tile [0, L), n={n}",
                    tiles_exactly(rebuild_firsts(ends), ends, num_layers), hyps, "bounded")
    yield _router_concrete()


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
    firsts = [z3.IntVal(a.first_layer) for a in cohort.assignments]
    ends = [z3.IntVal(a.end_layer) for a in cohort.assignments]
    if not z3.is_true(z3.simplify(tiles_exactly(firsts, ends, z3.IntVal(model.num_layers)))):
        return "Z3 does not evaluate tiles_exactly to true"
    return ""


def _router_concrete() -> Obligation:
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
                        return concrete("form_cohort", False, time.perf_counter() - start, f"{offers}: {failure}")
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
            return concrete("form_cohort", False, time.perf_counter() - start, f"{offers}: {failure}")
    return concrete("form_cohort output valid (exhaustive L<=4, <=3 offers; 300 random)", True,
                    time.perf_counter() - start)


@register("router_valid_mutant_start_not_advanced", kind=Kind.MUTANT, property="router_valid",
          spec_functions=(TILES,), bound="n=2")
def router_mutant() -> Iterator[Obligation]:
    """Mutant: a reconstruction that never advances ``start`` produces overlapping assignments."""
    ends, num_layers, hyps = _router_ends(2)
    yield valid("mutant start stays 0, n=2", tiles_exactly(rebuild_firsts(ends, advance=False), ends, num_layers), hyps)
