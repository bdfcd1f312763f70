"""Audit selection (commit-reveal), the judge, and ejection."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.audit import (AuditVerdict, Registry, Tolerance, audit_draw, draw_selects, eject, is_audited,
                                  judge, reveal_valid, seed_commitment)
from verisplit.spec.cohort import Offer
from spec_helpers import key


def test_commit_reveal() -> None:
    seed = b"\x07" * 32
    commitment = seed_commitment(seed)
    assert reveal_valid(commitment, seed)
    assert not reveal_valid(commitment, b"\x08" * 32)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.text(max_size=20), st.integers(0, 63),
       st.fractions(min_value=0, max_value=1, max_denominator=1000))
def test_selection_is_a_function_of_its_arguments(seed: bytes, rid: str, k: int, p: Fraction) -> None:
    assert is_audited(seed, rid, k, p) == is_audited(bytes(seed), str(rid), int(k), Fraction(p))
    assert is_audited(seed, rid, k, p) == draw_selects(audit_draw(seed, rid, k), p)
    assert not is_audited(seed, rid, k, Fraction(0))
    assert is_audited(seed, rid, k, Fraction(1))


def test_selection_rate_is_close_to_p() -> None:
    p = Fraction(1, 10)
    hits = sum(is_audited(b"seed", f"req-{i}", k, p) for i in range(2000) for k in range(4))
    # 8000 Bernoulli(0.1) trials: mean 800, sd ~26.8; 5 sd bounds.
    assert 666 <= hits <= 934
    with pytest.raises(ValueError, match="audit probability"):
        is_audited(b"s", "r", 0, Fraction(3, 2))


def test_draw_boundary_is_exact() -> None:
    assert draw_selects(0, Fraction(1, 2**64))
    assert not draw_selects(1, Fraction(1, 2**64))
    assert draw_selects(2**63 - 1, Fraction(1, 2)) and not draw_selects(2**63, Fraction(1, 2))


def test_judge_passes_within_and_fails_beyond_tolerance() -> None:
    tol = Tolerance("float32", atol=1e-3, rtol=1e-2)
    ok = judge([1.0, -2.0, 0.0], [1.005, -2.0, 0.0009], tol)
    assert ok.passed and math.isclose(ok.max_abs, 0.005, rel_tol=1e-9)
    bad = judge([1.0, 0.0], [1.0, 0.01], tol)
    assert not bad.passed and bad.ratio > 1
    assert not judge([1.0], [math.nan], tol).passed
    assert not judge([1.0], [1.0, 2.0], tol).passed
    with pytest.raises(ValueError, match="tolerance"):
        judge([1.0], [1.0], Tolerance("float32", 0, 0))


def test_eject_removes_exactly_the_failed() -> None:
    offers = tuple(Offer(f"p{i}", bytes(key(i).verify_key), 0, 4, 1, "") for i in range(3))
    registry = Registry(offers)
    verdicts = [AuditVerdict("r", 0, "p0", True), AuditVerdict("r", 1, "p1", False, reason="distance"),
                AuditVerdict("r", 2, "p2", True)]
    after = eject(registry, verdicts)
    assert after.provider_ids() == {"p0", "p2"}
    assert after.banned_keys == {offers[1].public_key}
    assert after.ejections == (("p1", "distance"),)
    assert [o for o in after.offers] == [offers[0], offers[2]]


def test_judge_with_zero_bound_element_is_exact_not_a_crash() -> None:
    # atol = 0 with expected 0: the element's bound is 0, so only an exact match passes
    # (before the fix this divided by zero).
    tol = Tolerance("float32", atol=0.0, rtol=1e-2)
    assert judge([0.0, 1.0], [0.0, 1.005], tol).passed
    off = judge([0.0], [1e-30], tol)
    assert not off.passed and off.ratio == math.inf and off.max_abs == 1e-30


@pytest.mark.parametrize("atol,rtol", [(-1.0, 0.5), (0.5, -1.0), (math.nan, 0.1), (0.1, math.inf)])
def test_judge_rejects_negative_or_non_finite_tolerance(atol: float, rtol: float) -> None:
    # A negative bound made every ratio negative, so any difference "passed" (1 vs 100 under atol=-1, rtol=0.5).
    with pytest.raises(ValueError, match="tolerance"):
        judge([1.0], [100.0], Tolerance("float32", atol=atol, rtol=rtol))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), max_size=8),
       st.sampled_from([0.0, 1e-3, 1.0]), st.sampled_from([0.0, 1e-2, 0.5]))
def test_judge_passes_iff_every_element_within_its_bound(pairs: list[tuple[float, float]], atol: float, rtol: float) -> None:
    if atol == 0 and rtol == 0:
        return
    expected = [e for e, _ in pairs]
    observed = [o for _, o in pairs]
    within = all(abs(o - e) <= atol + rtol * abs(e) for e, o in pairs)
    assert judge(expected, observed, Tolerance("float32", atol, rtol)).passed is within
