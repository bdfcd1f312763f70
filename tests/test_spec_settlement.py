"""Settlement: conservation, residual bound, forfeit isolation and input errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.settlement import SettlementError, conserved, settle

works_strategy = st.lists(st.integers(0, 10**6), min_size=1, max_size=12).filter(lambda ws: sum(ws) > 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**12), works_strategy, st.data())
def test_conservation_and_residual_bound(fee: int, works: list[int], data: st.DataObject) -> None:
    ids = [f"p{i}" for i in range(len(works))]
    failed = data.draw(st.sets(st.sampled_from(ids)))
    s = settle(fee, dict(zip(ids, works)), "lead", failed)
    assert conserved(s)
    assert sum(s.payouts.values()) + s.residual + s.refund == fee
    assert 0 <= s.residual <= len(works) - 1
    for i, w in zip(ids, works):
        exact = fee * w // sum(works)
        assert s.payouts[i] == (0 if i in failed else exact)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9), works_strategy, st.data())
def test_forfeit_isolation(fee: int, works: list[int], data: st.DataObject) -> None:
    ids = [f"p{i}" for i in range(len(works))]
    failed_a = data.draw(st.sets(st.sampled_from(ids)))
    failed_b = data.draw(st.sets(st.sampled_from(ids)))
    a = settle(fee, dict(zip(ids, works)), "lead", failed_a)
    b = settle(fee, dict(zip(ids, works)), "lead", failed_b)
    for i in ids:
        if i not in failed_a and i not in failed_b:
            assert a.payouts[i] == b.payouts[i]
        if i in failed_a:
            assert a.payouts[i] == 0
    assert a.residual == b.residual  # the lead's residual never depends on who failed


def test_refund_is_exactly_the_failed_slices() -> None:
    s = settle(1000, {"a": 1, "b": 2, "c": 3}, "lead", {"b"})
    assert s.payouts == {"a": 166, "b": 0, "c": 500}
    assert (s.refund, s.residual) == (333, 1)


@pytest.mark.parametrize("fee,work,failed,message", [
    (-1, {"a": 1}, (), "fee"),
    (1.5, {"a": 1}, (), "fee"),
    (True, {"a": 1}, (), "fee"),
    (10, {"a": True}, (), r"work_by_provider\['a'\]"),
    (10, {}, (), "no providers"),
    (10, {"a": 0}, (), "total work is 0"),
    (10, {"a": -2}, (), r"work_by_provider\['a'\]"),
    (10, {"a": 1}, ("zz",), "unknown provider"),
])
def test_invalid_input_is_named(fee: object, work: dict, failed: tuple, message: str) -> None:
    with pytest.raises(SettlementError, match=message):
        settle(fee, work, "lead", failed)  # type: ignore[arg-type]


@pytest.mark.parametrize("fee,works,failed,residual", [
    (0, [0, 3], set(), 0),  # fee 0 and a zero-work provider
    (7, [5], set(), 0),  # single provider takes everything, no residual
    (7, [5], {"p0"}, 0),  # single provider failed: the whole fee is refunded
    (2, [1, 1, 1], set(), 2),  # residual at its bound N-1
])
def test_settlement_edges_the_random_strategy_may_miss(fee: int, works: list[int], failed: set[str], residual: int) -> None:
    ids = [f"p{i}" for i in range(len(works))]
    s = settle(fee, dict(zip(ids, works)), "lead", failed)
    assert conserved(s) and s.residual == residual and 0 <= s.residual <= len(works) - 1
    assert all(s.payouts[i] == 0 for i in failed)
    assert s.refund == sum(fee * w // sum(works) for i, w in zip(ids, works) if i in failed)
