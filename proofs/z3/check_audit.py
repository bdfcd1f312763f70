"""Audit selection (rule A2) is a function of (seed, request id, segment index, p), and the draw
comparison is exact.

Modelling assumption, stated honestly: ``audit_draw`` (the first 8 bytes of SHA-256 of the encoded
message) is modelled as an *uninterpreted function* ``Draw(seed, request_id, segment_index)`` into
[0, 2^64). An uninterpreted function is an arbitrary but fixed function, so this proves determinism
only: the spec's selection reads nothing but its four arguments (no clock, counter or hidden state).
It says nothing about the distribution of draws; "P[selected] = p" additionally needs SHA-256 to
behave as a uniform random oracle, which no SMT proof can establish (registered as ASSUMED).

PROVED (``audit_functional``): every obligation runs the spec's ``selection`` -- the composition
``is_audited`` evaluates, ``draw_selects(audit_draw(seed, request_id, segment_index), p)`` -- with
``Draw`` in place of ``audit_draw``, on symbolic arguments and a symbolic p = num/den:
(1) equal arguments give equal selections, for two independent evaluations;
(2) the selection holds iff Draw(...) < p * 2^64 over the reals, for every draw in [0, 2^64) and
every p = num/den in [0, 1] (den >= 1), i.e. ``draw_selects(d, p)`` is exactly ``d / 2^64 < p``.

TESTED (``audit_concrete``): the real ``is_audited`` on 200 seeded inputs is deterministic, equals
``Fraction(audit_draw(...), 2^64) < p``, and ``audit_draw`` equals SHA-256 of the documented message.
"""

from __future__ import annotations

import hashlib
import random
import struct
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import z3

from verisplit.proofs_z3.core import Evidence, Kind, Obligation, assume, concrete, register, valid
from verisplit.spec.audit import DRAW_BITS, DRAW_DOMAIN, audit_draw, draw_selects, is_audited, selection

IS_AUDITED = "verisplit.spec.audit.is_audited"
SELECTION = "verisplit.spec.audit.selection"
DRAW_SELECTS = "verisplit.spec.audit.draw_selects"
AUDIT_DRAW = "verisplit.spec.audit.audit_draw"
FIXED_DRAW = assume(
    "draw_is_a_function",
    "audit_draw is a fixed function of (seed, request_id, segment_index) into [0, 2^64): SHA-256 and the message "
    "encoding are modelled as one uninterpreted function (determinism only)")
RANDOM_ORACLE = assume(
    "draw_uniform",
    "SHA-256 behaves as a random oracle, so a draw is uniform on [0, 2^64) and P[selected] = p; no check proves this")

Bytes = z3.DeclareSort("Bytes")
Text = z3.DeclareSort("Text")
Draw = z3.Function("Draw", Bytes, Text, z3.IntSort(), z3.IntSort())
TWO64 = 1 << DRAW_BITS


@dataclass(frozen=True)
class SymbolicRatio:
    """Stands in for ``fractions.Fraction`` with symbolic numerator and denominator."""

    numerator: Any
    denominator: Any


def draw_of(seed: Any, request_id: Any, segment_index: Any) -> Any:
    """The uninterpreted model of ``audit_draw``."""
    return Draw(seed, request_id, segment_index)


def _evaluation(tag: str) -> tuple[Any, Any, Any, SymbolicRatio, list[Any]]:
    seed, rid, idx = z3.Const(f"seed{tag}", Bytes), z3.Const(f"request{tag}", Text), z3.Int(f"index{tag}")
    num, den = z3.Int(f"num{tag}"), z3.Int(f"den{tag}")
    return seed, rid, idx, SymbolicRatio(num, den), [den >= 1, 0 <= num, num <= den, 0 <= idx, idx < 2**32]


def _draw_range() -> Any:
    s, r, i = z3.Const("s", Bytes), z3.Const("r", Text), z3.Int("i")
    return z3.ForAll([s, r, i], z3.And(0 <= Draw(s, r, i), Draw(s, r, i) < TWO64))


def threshold(draw: Any, p: SymbolicRatio) -> Any:
    """The real-valued rule the integer comparison must equal: draw < p * 2^64."""
    return z3.ToReal(draw) < z3.ToReal(p.numerator) / z3.ToReal(p.denominator) * TWO64


@register("audit_functional", spec_functions=(SELECTION, DRAW_SELECTS),
          bound="unbounded: every seed, request id, index < 2^32, draw in [0, 2^64), p = num/den in [0, 1]",
          assumptions=("p is num/den with 0 <= num <= den, den >= 1 (is_audited rejects anything else)",),
          assumes=(FIXED_DRAW, RANDOM_ORACLE))
def audit_functional() -> Iterator[Obligation]:
    """selection (the rule is_audited evaluates) is a function of its four arguments, and holds iff
    draw < p * 2^64 exactly."""
    s1, r1, i1, p1, h1 = _evaluation("1")
    s2, r2, i2, p2, h2 = _evaluation("2")
    same = [s1 == s2, r1 == r2, i1 == i2, p1.numerator == p2.numerator, p1.denominator == p2.denominator]
    yield valid("equal arguments -> equal selection",
                selection(draw_of, s1, r1, i1, p1) == selection(draw_of, s2, r2, i2, p2), h1 + h2 + same + [_draw_range()])
    yield valid("selection(...) <=> Draw(...) < p * 2^64 (reals)",
                selection(draw_of, s1, r1, i1, p1) == threshold(draw_of(s1, r1, i1), p1), h1 + [_draw_range()])


@register("audit_functional_mutant_hidden_state", kind=Kind.MUTANT, property="audit_functional",
          spec_functions=(DRAW_SELECTS,), bound="unbounded")
def audit_mutant_state() -> Iterator[Obligation]:
    """Mutant claim: a draw that also reads hidden state (a call counter) is still a function of the
    arguments (refuted: two evaluations with the same arguments disagree)."""
    s1, r1, i1, p1, h1 = _evaluation("1")
    c1, c2 = z3.Ints("counter1 counter2")
    claim = (draw_selects(draw_of(s1, r1, i1) + c1, p1) == draw_selects(draw_of(s1, r1, i1) + c2, p1))
    yield valid("mutant selection with a counter", claim, h1 + [_draw_range(), 0 <= c1, 0 <= c2])


@register("audit_functional_mutant_non_strict", kind=Kind.MUTANT, property="audit_functional",
          spec_functions=(DRAW_SELECTS,), bound="unbounded")
def audit_mutant_non_strict() -> Iterator[Obligation]:
    """Mutant claim: ``draw * den <= num * 2^64`` (non-strict) is draw < p * 2^64 (differs at equality)."""
    draw, num, den = z3.Ints("draw num den")
    p = SymbolicRatio(num, den)
    yield valid("mutant <= instead of <", (draw * den <= num * TWO64) == threshold(draw, p),
                [0 <= draw, draw < TWO64, den >= 1, 0 <= num, num <= den])


def _reference_draw(seed: bytes, request_id: str, index: int) -> int:
    """SHA-256 of the message documented in docs/protocol.md, restated independently of the spec."""
    rid = request_id.encode("utf-8")
    message = DRAW_DOMAIN + struct.pack("<H", len(seed)) + seed + struct.pack("<H", len(rid)) + rid + struct.pack("<I", index)
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "little")


@register("audit_concrete", spec_functions=(IS_AUDITED, AUDIT_DRAW), evidence=Evidence.TESTED,
          bound="200 seeded random (seed, request id, index, p) plus the four draw boundaries at p = 1/2")
def audit_concrete() -> Iterator[Obligation]:
    """The real is_audited is deterministic, equals Fraction(draw, 2^64) < p, and audit_draw is SHA-256
    of the documented message."""
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
        reference = Fraction(_reference_draw(seed, request_id, index), TWO64) < p
        if not (first == again == draw_selects(draw, p) == reference and draw == _reference_draw(seed, request_id, index)):
            yield concrete("is_audited concrete", False, time.perf_counter() - start,
                           f"seed={seed.hex()} request={request_id!r} index={index} p={p}")
            return
    half = Fraction(1, 2)
    boundary = [(0, True), (2**63 - 1, True), (2**63, False), (2**64 - 1, False)]
    for draw, wanted in boundary:
        if draw_selects(draw, half) is not wanted:
            yield concrete("draw boundary", False, time.perf_counter() - start, f"draw={draw} p=1/2")
            return
    yield concrete("is_audited concrete: deterministic, = Fraction(draw, 2^64) < p (200 inputs + boundaries)", True,
                   time.perf_counter() - start)
