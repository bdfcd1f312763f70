"""``judge_tensors`` (torch, float64) agrees with the spec's ``judge`` (Python floats) exactly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.impl.audit.verifier import judge_tensors
from verisplit.spec.audit import Tolerance, judge

values = st.one_of(st.just(0.0), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32))
specials = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def pairs(draw):
    n = draw(st.integers(0, 12))
    expected = draw(st.lists(values, min_size=n, max_size=n))
    noise = draw(st.lists(st.floats(-1e-3, 1e-3), min_size=n, max_size=n))
    observed = [e + d * (1 + abs(e)) for e, d in zip(expected, noise)]
    if n and draw(st.booleans()):
        observed[draw(st.integers(0, n - 1))] = draw(st.one_of(values, specials))
    atol = draw(st.one_of(st.just(0.0), st.floats(1e-6, 1e-2)))  # atol 0: elements with e = 0 must be exact
    rtol = draw(st.floats(1e-6 if atol == 0 else 0.0, 1e-2))
    tol = Tolerance("float32", atol, rtol)
    return expected, observed, tol


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_judge_tensors_agrees_with_spec_judge(case):
    expected, observed, tol = case
    ref = judge(expected, observed, tol)
    got = judge_tensors(torch.tensor(expected, dtype=torch.float64), torch.tensor(observed, dtype=torch.float64), tol)
    assert got.passed == ref.passed
    assert got.reason == ref.reason
    assert (got.max_abs == ref.max_abs) or (math.isinf(got.max_abs) and math.isinf(ref.max_abs))
    assert (got.ratio == ref.ratio) or (math.isinf(got.ratio) and math.isinf(ref.ratio))


def test_length_mismatch_and_bad_tolerance():
    tol = Tolerance("float32", 1e-3, 0.0)
    got = judge_tensors(torch.zeros(3), torch.zeros(4), tol)
    assert not got.passed and got.reason == judge([0.0] * 3, [0.0] * 4, tol).reason
    assert not judge_tensors(torch.zeros(2, 3), torch.zeros(3, 2), tol).passed  # stricter: shapes must agree
    with pytest.raises(ValueError, match="atol or rtol"):
        judge_tensors(torch.zeros(2), torch.zeros(2), Tolerance("float32", 0.0, 0.0))
    for bad in (Tolerance("float32", -1.0, 0.5), Tolerance("float32", 1e-3, math.inf)):
        with pytest.raises(ValueError, match="tolerance"):
            judge_tensors(torch.zeros(2), torch.ones(2), bad)
    exact_zero = judge_tensors(torch.zeros(2), torch.zeros(2), Tolerance("float32", 0.0, 0.1))
    assert exact_zero.passed and exact_zero.ratio == 0.0  # bound 0, diff 0: exact, not 0/0


def test_low_precision_inputs_are_compared_in_float64():
    tol = Tolerance("bfloat16", 2 ** -7, 2 ** -7)
    e = torch.tensor([1.0, 2.0, -3.0], dtype=torch.bfloat16)
    o = e.clone()
    o[1] = torch.tensor(2.0 + 2 ** -6, dtype=torch.bfloat16)
    got = judge_tensors(e, o, tol)
    ref = judge([float(x) for x in e.float()], [float(x) for x in o.float()], tol)
    assert (got.passed, got.max_abs, got.ratio) == (ref.passed, ref.max_abs, ref.ratio)
