"""Audit selection (rule A2) is a function of (seed, request id, segment index, p).

Modelling assumption, stated honestly: SHA-256 is modelled as an *uninterpreted function* ``Sha`` of
the encoded message, and the encoding as an uninterpreted function ``Enc(seed, request_id, index)``.
An uninterpreted function is an arbitrary but fixed function, so this proves determinism only: the
selection reads nothing but its four arguments (no clock, counter or hidden state). It says nothing
about the distribution of draws; the claim "P[selected] = p" additionally needs SHA-256 to behave as
a uniform random oracle, which no SMT proof can establish. The spec's own ``draw_selects`` runs on
the symbolic draw and on a symbolic p = num/den (it reads only ``p.numerator`` / ``p.denominator``).
A concrete companion evaluates the real ``is_audited`` twice per input and compares it with
``draw_selects(audit_draw(...))``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import z3

from verisplit.proofs_z3.core import Kind, Obligation, concrete, register, valid
from verisplit.spec.audit import DRAW_BITS, audit_draw, draw_selects, is_audited

IS_AUDITED = "verisplit.spec.audit.is_audited"
DRAW_SELECTS = "verisplit.spec.audit.draw_selects"
AUDIT_DRAW = "verisplit.spec.audit.audit_draw"
ASSUMPTIONS = ("SHA-256 and the message encoding modelled as uninterpreted (fixed, arbitrary) functions",
               "p is a reduced fraction num/den (Fraction normalises), 0 <= num <= den, den >= 1",
               "probability claim P[selected]=p needs SHA-256 as a random oracle (not proved here)")

Bytes = z3.DeclareSort("Bytes")
Text = z3.DeclareSort("Text")
Message = z3.DeclareSort("Message")
Enc = z3.Function("Enc", Bytes, Text, z3.IntSort(), Message)
Sha64 = z3.Function("Sha64", Message, z3.IntSort())  # first 8 bytes of SHA-256, little-endian
TWO64 = 1 << DRAW_BITS


@dataclass(frozen=True)
class SymbolicRatio:
    """Stands in for ``fractions.Fraction`` with symbolic numerator and denominator."""

    numerator: Any
    denominator: Any


def selected(seed: Any, request_id: Any, index: Any, p: SymbolicRatio, extra: Any = None) -> Any:
    """Model of ``is_audited``: ``draw_selects(Sha64(Enc(seed, request_id, index)), p)``.
    ``extra`` feeds hidden state into the draw (mutant only)."""
    message = Enc(seed, request_id, index)
    draw = Sha64(message) if extra is None else Sha64(message) + extra
    return draw_selects(draw, p)


def _evaluation(tag: str) -> tuple[Any, Any, Any, SymbolicRatio, list[Any]]:
    seed, rid, idx = z3.Const(f"seed{tag}", Bytes), z3.Const(f"request{tag}", Text), z3.Int(f"index{tag}")
    num, den = z3.Int(f"num{tag}"), z3.Int(f"den{tag}")
    return seed, rid, idx, SymbolicRatio(num, den), [den >= 1, 0 <= num, num <= den, idx >= 0]


def _draw_range() -> Any:
    m = z3.Const("m", Message)
    return z3.ForAll([m], z3.And(0 <= Sha64(m), Sha64(m) < TWO64))


@register("audit_functional", spec_functions=(IS_AUDITED, DRAW_SELECTS, AUDIT_DRAW),
          bound="unbounded (uninterpreted hash); concrete companion: 200 seeded inputs",
          assumptions=ASSUMPTIONS)
def audit_functional() -> Iterator[Obligation]:
    """Equal (seed, request id, segment index, p) give equal selections; draw_selects equals the
    real-valued draw / 2^64 < p."""
    s1, r1, i1, p1, h1 = _evaluation("1")
    s2, r2, i2, p2, h2 = _evaluation("2")
    same = [s1 == s2, r1 == r2, i1 == i2, p1.numerator == p2.numerator, p1.denominator == p2.denominator]
    yield valid("equal arguments -> equal selection", selected(s1, r1, i1, p1) == selected(s2, r2, i2, p2),
                h1 + h2 + same + [_draw_range()])
    draw, num, den = z3.Ints("draw num den")
    real_claim = z3.ToReal(draw) / TWO64 < z3.ToReal(num) / z3.ToReal(den)
    yield valid("draw_selects(draw, num/den) <=> draw/2^64 < num/den (reals)",
                draw_selects(draw, SymbolicRatio(num, den)) == real_claim,
                [0 <= draw, draw < TWO64, den >= 1, 0 <= num, num <= den])
    yield _concrete_companion()


def _concrete_companion() -> Obligation:
    start = time.perf_counter()
    rng = random.Random(7)
    for _ in range(200):
        seed = rng.randbytes(rng.randint(0, 40))
        request_id = "".join(rng.choice("abcé-0") for _ in range(rng.randint(0, 12)))
        index = rng.randint(0, 2**32 - 1)
        den = rng.randint(1, 1000)
        p = Fraction(rng.randint(0, den), den)
        first = is_audited(seed, request_id, index, p)
        again = is_audited(bytes(seed), str(request_id), int(index), Fraction(p.numerator, p.denominator))
        draw = audit_draw(seed, request_id, index)
        reference = Fraction(draw, TWO64) < p
        if not (first == again == draw_selects(draw, p) == reference):
            return concrete("is_audited concrete", False, time.perf_counter() - start,
                            f"seed={seed.hex()} request={request_id!r} index={index} p={p}")
    return concrete("is_audited concrete: deterministic, equals Fraction(draw, 2^64) < p (200 inputs)", True,
                    time.perf_counter() - start)


@register("audit_functional_mutant_hidden_state", kind=Kind.MUTANT, property="audit_functional",
          spec_functions=(DRAW_SELECTS,), bound="unbounded")
def audit_mutant_state() -> Iterator[Obligation]:
    """Mutant: the draw also reads hidden state (a call counter); equal arguments can disagree."""
    s1, r1, i1, p1, h1 = _evaluation("1")
    c1, c2 = z3.Ints("counter1 counter2")
    claim = selected(s1, r1, i1, p1, extra=c1) == selected(s1, r1, i1, p1, extra=c2)
    yield valid("mutant selection with a counter", claim, h1 + [_draw_range()])


@register("audit_functional_mutant_non_strict", kind=Kind.MUTANT, property="audit_functional",
          spec_functions=(DRAW_SELECTS,), bound="unbounded")
def audit_mutant_non_strict() -> Iterator[Obligation]:
    """Mutant: ``draw * den <= num * 2^64`` (non-strict) is not draw / 2^64 < p (differs at equality)."""
    draw, num, den = z3.Ints("draw num den")
    real_claim = z3.ToReal(draw) / TWO64 < z3.ToReal(num) / z3.ToReal(den)
    yield valid("mutant <= instead of <", (draw * den <= num * TWO64) == real_claim,
                [0 <= draw, draw < TWO64, den >= 1, 0 <= num, num <= den])
