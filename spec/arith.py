"""The spec's only arithmetic and logic primitives, shared by concrete and symbolic (Z3) runs.

Every spec function that divides, branches on data or combines conditions routes through here,
so ``proofs/z3`` can call the shipped spec code on ``z3.Int`` values: on Python ints these are the
ordinary operators; on Z3 terms they build ``z3.If`` / ``z3.And`` / Euclidean ``div`` (equal to
Python's floor division for a positive divisor, which every caller guarantees).
"""

from __future__ import annotations

from typing import Any


def is_symbolic(value: Any) -> bool:
    """True for a Z3 expression (detected without importing z3, so the spec never needs it)."""
    return type(value).__module__.startswith("z3")


def _z3() -> Any:
    import z3  # imported only when a symbolic value is present

    return z3


def fdiv(numerator: Any, divisor: Any) -> Any:
    """Floor division ``numerator // divisor`` for ``divisor >= 1``.

    Invariant: ``divisor * q <= numerator < divisor * (q + 1)`` for the returned ``q``. On Z3 terms this
    is SMT-LIB ``div`` (Euclidean), which agrees with floor division because the divisor is positive;
    callers must establish ``divisor >= 1`` (concretely this raises otherwise).
    """
    if is_symbolic(numerator) or is_symbolic(divisor):
        return numerator / divisor
    if divisor < 1:
        raise ValueError(f"fdiv: divisor must be >= 1, got {divisor}")
    return numerator // divisor


def ite(condition: Any, then_value: Any, else_value: Any) -> Any:
    """``then_value if condition else else_value``; a ``z3.If`` when the condition is symbolic."""
    if is_symbolic(condition) or is_symbolic(then_value) or is_symbolic(else_value):
        if isinstance(condition, bool):
            return then_value if condition else else_value
        return _z3().If(condition, then_value, else_value)
    return then_value if condition else else_value


def all_of(*conditions: Any) -> Any:
    """Conjunction; ``z3.And`` when any condition is symbolic."""
    if any(is_symbolic(c) for c in conditions):
        return _z3().And(*conditions)
    return all(conditions)


def any_of(*conditions: Any) -> Any:
    """Disjunction; ``z3.Or`` when any condition is symbolic."""
    if any(is_symbolic(c) for c in conditions):
        return _z3().Or(*conditions)
    return any(conditions)


def negate(condition: Any) -> Any:
    """Logical not; ``z3.Not`` when symbolic."""
    if is_symbolic(condition):
        return _z3().Not(condition)
    return not condition
