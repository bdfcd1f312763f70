"""Deterrence: the sharding corollary and margin monotonicity on random instances; rho."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.deterrence import (deterrence_margin, is_deterred, rho, segment_cost,
                                       shard_deterred_given_whole)

fractions = st.fractions(min_value=0, max_value=1, max_denominator=1000)


@settings(max_examples=300, deadline=None)
@given(fractions, st.integers(0, 10**6), st.lists(st.integers(1, 100), min_size=1, max_size=16), st.data())
def test_whole_model_deterrence_implies_every_shard(p: Fraction, franchise: int, work: list[int], data: st.DataObject) -> None:
    whole = segment_cost(work, 0, len(work))
    first = data.draw(st.integers(0, len(work) - 1))
    end = data.draw(st.integers(first + 1, len(work)))
    shard = segment_cost(work, first, end)
    savings = data.draw(st.integers(0, shard))  # a cheating shard saves at most its slice
    premises, conclusion = shard_deterred_given_whole(p * franchise, whole, savings, shard)
    assert premises == is_deterred(p, franchise, whole)
    if premises:
        assert conclusion and is_deterred(p, franchise, savings)


@settings(max_examples=300, deadline=None)
@given(fractions, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_smaller_shard_has_larger_margin(p: Fraction, franchise: int, c_i: int, c_j: int) -> None:
    if c_i < c_j:
        assert deterrence_margin(p, franchise, c_i) > deterrence_margin(p, franchise, c_j)


def test_rho_is_expected_audit_cost_over_generation_cost() -> None:
    assert rho(Fraction(1, 10), [2, 2, 2, 2], 100) == Fraction(8, 1000)
    with pytest.raises(ValueError, match="generation_cost"):
        rho(Fraction(1, 10), [1], 0)
