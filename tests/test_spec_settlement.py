"""Settlement: value weights (price x work), fee = quote pays exactly, conservation, residual bound,
forfeit isolation, the zero-value refund and input errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.cohort import ModelSpec, Offer, form_cohort, quote_fee, segment_work
from verisplit.spec.settlement import (SettlementError, conserved, provider_value, quoted_share, settle,
                                       settle_parts, work_values)



@st.composite
def cohorts(draw: st.DrawFn) -> tuple[ModelSpec, list[Offer], int]:
    """A model, offers tiling it with mixed prices (0 allowed), and a number of positions."""
    num_layers = draw(st.integers(1, 12))
    layer_work = tuple(draw(st.lists(st.integers(1, 9), min_size=num_layers, max_size=num_layers)))
    cuts = sorted(draw(st.sets(st.integers(1, num_layers - 1), max_size=num_layers - 1)) if num_layers > 1 else set())
    bounds = [0, *cuts, num_layers]
    offers = [Offer(f"p{k}", bytes([k]) * 32, bounds[k], bounds[k + 1], draw(st.integers(0, 50)), "")
              for k in range(len(bounds) - 1)]
    return ModelSpec("m", num_layers, layer_work), offers, draw(st.integers(1, 4096))


@st.composite
def priced_work(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, int]]:
    """Work and price per provider with a positive total value (mixed prices, zero work allowed)."""
    n = draw(st.integers(1, 12))
    ids = [f"p{i}" for i in range(n)]
    works = {i: draw(st.integers(0, 10**6)) for i in ids}
    prices = {i: draw(st.integers(0, 10**4)) for i in ids}
    if sum(provider_value(prices[i], works[i]) for i in ids) == 0:
        works["p0"], prices["p0"] = max(works["p0"], 1), max(prices["p0"], 1)
    return works, prices


@settings(max_examples=200, deadline=None)
@given(cohorts(), st.data())
def test_fee_equal_to_the_quote_pays_every_provider_its_quoted_share(cohort_case, data: st.DataObject) -> None:
    model, offers, positions = cohort_case
    cohort = form_cohort(offers, model)
    by_id = {o.provider_id: o for o in offers}
    fee = quote_fee(cohort, model, offers, positions)
    per_position = {a.provider_id: segment_work(model, a.first_layer, a.end_layer) for a in cohort.assignments}
    work = {p: w * positions for p, w in per_position.items()}
    price = {p: by_id[p].price_per_work_unit for p in per_position}
    shares = {p: quoted_share(price[p], per_position[p], positions) for p in per_position}
    assert sum(shares.values()) == fee  # quoted shares add up to quote_fee
    failed = data.draw(st.sets(st.sampled_from(sorted(per_position))))
    s = settle(fee, work, price, "lead", failed)
    assert s.values == shares == {p: price[p] * work[p] for p in work}
    assert s.residual == 0
    assert s.payouts == {p: 0 if p in failed else shares[p] for p in shares}
    assert s.refund == sum(shares[p] for p in failed)
    assert conserved(s)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**12), priced_work(), st.data())
def test_conservation_residual_bound_and_split_by_value(fee: int, priced, data: st.DataObject) -> None:
    works, prices = priced
    ids = list(works)
    failed = data.draw(st.sets(st.sampled_from(ids)))
    s = settle(fee, works, prices, "lead", failed)
    assert conserved(s)
    assert sum(s.payouts.values()) + s.residual + s.refund == fee
    assert 0 <= s.residual <= len(ids) - 1
    values = {i: prices[i] * works[i] for i in ids}
    assert s.values == values
    total = sum(values.values())
    for i in ids:
        assert s.payouts[i] == (0 if i in failed else fee * values[i] // total)
    assert s.refund == sum(fee * values[i] // total for i in failed)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9), priced_work(), st.data())
def test_failed_slices_are_refunded_and_nobody_elses_payout_moves(fee: int, priced, data: st.DataObject) -> None:
    works, prices = priced
    ids = list(works)
    failed = data.draw(st.sets(st.sampled_from(ids)))
    honest = settle(fee, works, prices, "lead")
    marked = settle(fee, works, prices, "lead", failed)
    for i in ids:
        assert marked.payouts[i] == (0 if i in failed else honest.payouts[i])
    assert marked.refund == sum(honest.payouts[i] for i in failed)
    assert marked.residual == honest.residual  # the lead's residual never depends on who failed


def test_split_is_by_value_not_by_bare_work() -> None:
    """Equal work, prices 2 and 1: the pricier provider earns twice as much (the docs' example)."""
    work = {"a": 4 * 8, "b": 4 * 8}  # 4 work units per position, 8 positions
    price = {"a": 2, "b": 1}
    quote = quoted_share(2, 4, 8) + quoted_share(1, 4, 8)
    assert quote == 96
    exact = settle(quote, work, price, "lead")
    assert (exact.payouts, exact.residual, exact.refund) == ({"a": 64, "b": 32}, 0, 0)
    over = settle(100, work, price, "lead")
    assert (over.payouts, over.residual, over.refund) == ({"a": 66, "b": 33}, 1, 0)
    failed = settle(100, work, price, "lead", {"a"})
    assert (failed.payouts, failed.residual, failed.refund) == ({"a": 0, "b": 33}, 1, 66)


def test_refund_is_exactly_the_failed_slices() -> None:
    s = settle(1000, {"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 1, "c": 1}, "lead", {"b"})
    assert s.payouts == {"a": 166, "b": 0, "c": 500}
    assert (s.refund, s.residual) == (333, 1)


@pytest.mark.parametrize("work,price,failed", [
    ({"a": 0, "b": 0}, {"a": 3, "b": 1}, set()),  # nothing served
    ({"a": 5, "b": 7}, {"a": 0, "b": 0}, set()),  # only zero-price work
    ({"a": 5, "b": 0}, {"a": 0, "b": 9}, {"a"}),  # zero value, with a failure
])
def test_zero_total_value_refunds_the_whole_fee(work: dict, price: dict, failed: set) -> None:
    s = settle(77, work, price, "lead", failed)
    assert (s.payouts, s.residual, s.refund) == ({p: 0 for p in work}, 0, 77)
    assert s.values == {p: 0 for p in work} and s.failed == frozenset(failed) and conserved(s)


def test_zero_price_provider_gets_nothing() -> None:
    s = settle(50, {"a": 10, "b": 10}, {"a": 0, "b": 3}, "lead")
    assert s.payouts == {"a": 0, "b": 50} and s.residual == 0


@pytest.mark.parametrize("fee,work,price,failed,message", [
    (-1, {"a": 1}, {"a": 1}, (), "fee"),
    (1.5, {"a": 1}, {"a": 1}, (), "fee"),
    (True, {"a": 1}, {"a": 1}, (), "fee"),
    (10, {"a": True}, {"a": 1}, (), r"work_by_provider\['a'\]"),
    (10, {"a": 1.0}, {"a": 1}, (), r"work_by_provider\['a'\]"),
    (10, {}, {}, (), "work_by_provider: no providers"),
    (10, {"a": -2}, {"a": 1}, (), r"work_by_provider\['a'\]"),
    (10, {"a": 1}, {"a": True}, (), r"price_by_provider\['a'\]: must be"),
    (10, {"a": 1}, {"a": 2.5}, (), r"price_by_provider\['a'\]: must be"),
    (10, {"a": 1}, {"a": -1}, (), r"price_by_provider\['a'\]: must be"),
    (10, {"a": 1, "b": 1}, {"a": 1}, (), r"price_by_provider\['b'\]: missing"),
    (10, {"a": 1}, {"a": 1, "z": 1}, (), r"price_by_provider: price for provider\(s\) \['z'\]"),
    (10, {"a": 1}, None, (), "price_by_provider: must be a mapping"),
    (10, {"a": 1}, {"a": 1}, ("zz",), "failed: unknown provider"),
])
def test_invalid_input_is_named(fee: object, work: object, price: object, failed: tuple, message: str) -> None:
    with pytest.raises(SettlementError, match=message):
        settle(fee, work, price, "lead", failed)  # type: ignore[arg-type]


@pytest.mark.parametrize("fee,weights,failed,residual", [
    (0, [0, 3], set(), 0),  # fee 0 and a zero-weight provider
    (7, [5], set(), 0),  # single provider takes everything, no residual
    (7, [5], {"p0"}, 0),  # single provider failed: the whole fee is refunded
    (2, [1, 1, 1], set(), 2),  # residual at its bound N-1
])
def test_settlement_edges_the_random_strategy_may_miss(fee: int, weights: list[int], failed: set[str], residual: int) -> None:
    ids = [f"p{i}" for i in range(len(weights))]
    s = settle(fee, dict(zip(ids, weights)), {i: 1 for i in ids}, "lead", failed)
    assert conserved(s) and s.residual == residual and 0 <= s.residual <= len(weights) - 1
    assert all(s.payouts[i] == 0 for i in failed)
    assert s.refund == sum(fee * w // sum(weights) for i, w in zip(ids, weights) if i in failed)


def test_settle_is_settle_parts_over_work_values() -> None:
    works, prices = {"x": 3, "y": 5, "z": 0}, {"x": 7, "y": 2, "z": 9}
    values = work_values(works, prices)
    assert values == {"x": 21, "y": 10, "z": 0}
    payouts, residual, refund = settle_parts(100, list(values.values()), [False, True, False])
    s = settle(100, works, prices, "lead", {"y"})
    assert (list(s.payouts.values()), s.residual, s.refund) == (payouts, residual, refund)


@given(st.integers(1, 10_000), st.integers(0, 10_000))
def test_billable_positions_are_the_positions_computed(prompt: int, completion: int) -> None:
    """Rule F1: prompt + completion - 1 positions went through the cohort (the last token was never fed
    back); nothing generated, nothing charged."""
    from verisplit.spec.settlement import billable_positions

    expected = 0 if completion == 0 else prompt + completion - 1
    assert billable_positions(prompt, completion) == expected


@pytest.mark.parametrize(("prompt", "completion", "field"), [(-1, 1, "prompt_tokens"), (1, -2, "completion_tokens"),
                                                              (True, 1, "prompt_tokens"), (1, 1.5, "completion_tokens"),
                                                              (0, 3, "prompt_tokens")])
def test_billable_positions_rejects_bad_counts(prompt: object, completion: object, field: str) -> None:
    from verisplit.spec.settlement import billable_positions

    with pytest.raises(SettlementError, match=f"^{field}"):
        billable_positions(prompt, completion)  # type: ignore[arg-type]
