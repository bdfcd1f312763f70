"""Cohort formation: validity of every result and optimality against brute force."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.cohort import (Assignment, Cohort, InvalidOffer, ModelSpec, NoCoverage, Offer, cohort_cost,
                                   cohort_violations, form_cohort, tiles_exactly)
from spec_helpers import key


def make_offer(index: int, first: int, end: int, price: int) -> Offer:
    return Offer(f"p{index}", bytes(key(index).verify_key), first, end, price, f"127.0.0.1:{9000 + index}")


@st.composite
def instances(draw: st.DrawFn) -> tuple[ModelSpec, list[Offer]]:
    num_layers = draw(st.integers(1, 6))
    work = tuple(draw(st.lists(st.integers(1, 4), min_size=num_layers, max_size=num_layers)))
    count = draw(st.integers(1, 5))
    offers = []
    for i in range(count):
        first = draw(st.integers(0, num_layers - 1))
        end = draw(st.integers(first + 1, num_layers + 1))
        offers.append(make_offer(i, first, end, draw(st.integers(0, 5))))
    return ModelSpec("m", num_layers, work), offers


def brute_force(model: ModelSpec, offers: list[Offer]) -> list[tuple[int, int, tuple[str, ...], tuple[int, ...]]]:
    """Every valid cohort's ranking key, by enumerating boundaries and provider sequences."""
    keys = []
    L = model.num_layers
    for hops in range(1, L + 1):
        for cuts in itertools.combinations(range(1, L), hops - 1):
            bounds = (0,) + cuts + (L,)
            for chosen in itertools.permutations(offers, hops):
                assignments = tuple(Assignment(o.provider_id, o.public_key, bounds[i], bounds[i + 1]) for i, o in enumerate(chosen))
                cohort = Cohort("m", assignments)
                if cohort_violations(cohort, model, offers):
                    continue
                keys.append((cohort_cost(cohort, model, offers), hops, cohort.provider_ids, bounds[1:]))
    return keys


@settings(max_examples=150, deadline=None)
@given(instances())
def test_router_is_valid_and_optimal_against_brute_force(instance: tuple[ModelSpec, list[Offer]]) -> None:
    model, offers = instance
    candidates = brute_force(model, offers)
    try:
        cohort = form_cohort(offers, model)
    except NoCoverage as exc:
        assert candidates == [], "router found no cohort but brute force did"
        covered = {l for o in offers for l in range(o.first_layer, min(o.end_layer, model.num_layers))}
        assert exc.layer not in covered and all(l in covered for l in range(exc.layer))
        return
    assert cohort_violations(cohort, model, offers) == []
    got = (cohort_cost(cohort, model, offers), len(cohort.assignments), cohort.provider_ids,
           tuple(a.end_layer for a in cohort.assignments))
    assert got == min(candidates)


def test_no_coverage_names_first_unreachable_layer() -> None:
    offers = [make_offer(0, 0, 3, 1), make_offer(1, 5, 8, 1)]
    with pytest.raises(NoCoverage) as info:
        form_cohort(offers, ModelSpec("m", 8))
    assert info.value.layer == 3
    assert "layer 3" in str(info.value)


def test_cheaper_split_beats_single_provider_and_ties_prefer_fewer_hops() -> None:
    model = ModelSpec("m", 4)
    expensive = make_offer(0, 0, 4, 3)
    cheap_a, cheap_b = make_offer(1, 0, 2, 1), make_offer(2, 2, 4, 1)
    assert form_cohort([expensive, cheap_a, cheap_b], model).provider_ids == ("p1", "p2")
    same_price = make_offer(0, 0, 4, 1)
    assert form_cohort([same_price, cheap_a, cheap_b], model).provider_ids == ("p0",)


def test_provider_never_used_twice_even_when_cheaper() -> None:
    # p0 could serve [0,1) and [2,3) around the cheaper p1, but may appear only once.
    model = ModelSpec("m", 3)
    cohort = form_cohort([make_offer(0, 0, 3, 2), make_offer(1, 1, 2, 1)], model)
    assert cohort.provider_ids == ("p0",)


@pytest.mark.parametrize("ranges,kinds", [
    ([(0, 2), (3, 4)], {"gap"}),
    ([(0, 3), (2, 4)], {"overlap"}),
    ([(0, 2), (2, 2), (2, 4)], {"empty_range"}),
    ([(0, 2)], {"gap"}),
    ([(0, 2), (2, 5)], {"out_of_bounds", "outside_offer"}),
])
def test_violations_name_each_broken_rule(ranges: list[tuple[int, int]], kinds: set[str]) -> None:
    offers = [make_offer(i, 0, 4, 1) for i in range(len(ranges))]
    cohort = Cohort("m", tuple(Assignment(f"p{i}", offers[i].public_key, a, b) for i, (a, b) in enumerate(ranges)))
    assert {v.kind for v in cohort_violations(cohort, ModelSpec("m", 4), offers)} == kinds


def test_duplicate_unknown_and_wrong_key_are_violations() -> None:
    offers = [make_offer(0, 0, 4, 1)]
    dup = Cohort("m", (Assignment("p0", offers[0].public_key, 0, 2), Assignment("p0", offers[0].public_key, 2, 4)))
    assert [v.kind for v in cohort_violations(dup, ModelSpec("m", 4), offers)] == ["duplicate_provider"]
    unknown = Cohort("m", (Assignment("zz", offers[0].public_key, 0, 4),))
    assert [v.kind for v in cohort_violations(unknown, ModelSpec("m", 4), offers)] == ["unknown_provider"]
    wrong = Cohort("m", (Assignment("p0", bytes(32), 0, 4),))
    assert [v.kind for v in cohort_violations(wrong, ModelSpec("m", 4), offers)] == ["wrong_key"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 6), st.integers(-1, 6)), min_size=1, max_size=4), st.integers(1, 5))
def test_tiles_exactly_matches_layer_coverage(ranges: list[tuple[int, int]], num_layers: int) -> None:
    firsts = [a for a, _ in ranges]
    ends = [b for _, b in ranges]
    ordered = all(ends[i] == firsts[i + 1] for i in range(len(ranges) - 1))
    coverage_exact = all(sum(1 for a, b in ranges if a <= layer < b) == 1 for layer in range(num_layers))
    inside = all(0 <= a < b <= num_layers for a, b in ranges)
    assert tiles_exactly(firsts, ends, num_layers) == (ordered and coverage_exact and inside)


def test_malformed_offers_are_rejected_with_the_field_named() -> None:
    model = ModelSpec("m", 4)
    with pytest.raises(InvalidOffer, match="end_layer"):
        form_cohort([make_offer(0, 2, 2, 1)], model)
    with pytest.raises(InvalidOffer, match="price"):
        form_cohort([make_offer(0, 0, 4, -1)], model)
    with pytest.raises(InvalidOffer, match="more than one offer"):
        form_cohort([make_offer(0, 0, 4, 1), make_offer(0, 0, 4, 2)], model)
    with pytest.raises(ValueError, match="layer_work"):
        ModelSpec("m", 3, (1, 2))
