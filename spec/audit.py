"""Audit selection by commit-reveal, the re-execution judge, and ejection.

Rules (docs/spec.md, "Audit"):
- A1 before serving, the verifier publishes ``seed_commitment(seed)``; after, it reveals ``seed`` and
  anyone checks ``reveal_valid``;
- A2 ``is_audited(seed, request_id, segment_index, p)`` is a deterministic function of its arguments
  (SHA-256 of a domain-separated encoding; modelled as a uniform random oracle for the probability
  claim, and as a plain function for determinism);
- A3 ``judge`` passes a re-executed output iff shapes agree, everything is finite and every element
  lies within the calibrated tolerance;
- A4 ``eject`` removes exactly the providers with a failing verdict and bans their keys.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterable, Sequence

from verisplit.spec.cohort import Offer

SEED_DOMAIN = b"verisplit/audit-seed/v1\x00"
DRAW_DOMAIN = b"verisplit/audit-draw/v1\x00"
DRAW_BITS = 64


def seed_commitment(seed: bytes) -> bytes:
    """H(seed), published before any audited request is served (rule A1)."""
    return hashlib.sha256(SEED_DOMAIN + seed).digest()


def reveal_valid(commitment: bytes, seed: bytes) -> bool:
    """True iff ``seed`` opens ``commitment``."""
    return seed_commitment(seed) == commitment


def audit_draw(seed: bytes, request_id: str, segment_index: int) -> int:
    """A uniform-looking 64-bit integer fixed by (seed, request id, segment index) alone."""
    rid = request_id.encode("utf-8")
    message = DRAW_DOMAIN + struct.pack("<H", len(seed)) + seed + struct.pack("<H", len(rid)) + rid + struct.pack("<I", segment_index)
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "little")


def draw_selects(draw: int, p: Fraction) -> bool:
    """``draw / 2**64 < p`` in exact integer arithmetic (so P[selected] = p for a uniform draw,
    up to 2**-64 rounding of p's representation)."""
    return draw * p.denominator < p.numerator * (1 << DRAW_BITS)


def is_audited(seed: bytes, request_id: str, segment_index: int, p: Fraction) -> bool:
    """Whether segment ``segment_index`` of ``request_id`` is audited (rule A2).

    Invariant: depends only on its four arguments. Z3: ``audit_functional`` (proofs/z3/check_audit.py).
    """
    if not (0 <= p <= 1):
        raise ValueError(f"p: audit probability must be in [0, 1], got {p}")
    return draw_selects(audit_draw(seed, request_id, segment_index), Fraction(p))


@dataclass(frozen=True)
class Tolerance:
    """Per-element bound ``|observed - expected| <= atol + rtol * |expected|`` for one dtype."""

    dtype: str
    atol: float
    rtol: float


@dataclass(frozen=True)
class Judgement:
    """Outcome of comparing a re-execution with the committed output.

    ``ratio`` is max over elements of |o - e| / (atol + rtol*|e|) (pass iff <= 1); ``max_abs`` is the
    raw largest difference; ``reason`` is empty on pass."""

    passed: bool
    max_abs: float
    ratio: float
    reason: str = ""


def judge(expected: Sequence[float], observed: Sequence[float], tolerance: Tolerance) -> Judgement:
    """Rule A3. Invariant: passes iff lengths agree, all values finite, and every element satisfies
    ``|o - e| <= atol + rtol*|e|`` (ratio <= 1). An element whose bound is 0 (``atol = 0`` and
    ``e = 0``) passes only if it is exact (ratio 0), else its ratio is infinite. A tolerance with a
    negative or non-finite bound, or with both bounds 0, raises ValueError naming ``tolerance``."""
    if len(expected) != len(observed):
        return Judgement(False, math.inf, math.inf, f"length {len(observed)} != expected {len(expected)}")
    for name, bound in (("atol", tolerance.atol), ("rtol", tolerance.rtol)):
        if not (math.isfinite(bound) and bound >= 0):
            raise ValueError(f"tolerance: {name} must be a finite number >= 0, got {bound}")
    if tolerance.atol <= 0 and tolerance.rtol <= 0:
        raise ValueError("tolerance: atol or rtol must be positive")
    max_abs = 0.0
    ratio = 0.0
    for e, o in zip(expected, observed):
        if not (math.isfinite(e) and math.isfinite(o)):
            return Judgement(False, math.inf, math.inf, "non-finite value in the output")
        diff = abs(o - e)
        max_abs = max(max_abs, diff)
        bound = tolerance.atol + tolerance.rtol * abs(e)
        if bound > 0:
            ratio = max(ratio, diff / bound)
        elif diff > 0:
            ratio = math.inf
    if ratio > 1.0:
        return Judgement(False, max_abs, ratio, f"distance ratio {ratio:.3g} exceeds tolerance")
    return Judgement(True, max_abs, ratio)


@dataclass(frozen=True)
class AuditVerdict:
    """The verifier's result for one audited (request, segment)."""

    request_id: str
    segment_index: int
    provider_id: str
    passed: bool
    max_abs: float = 0.0
    ratio: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Registry:
    """Standing offers plus the banned keys and recorded ejection reasons."""

    offers: tuple[Offer, ...] = ()
    banned_keys: frozenset[bytes] = frozenset()
    ejections: tuple[tuple[str, str], ...] = field(default=())

    def provider_ids(self) -> set[str]:
        return {o.provider_id for o in self.offers}


def eject(registry: Registry, verdicts: Iterable[AuditVerdict]) -> Registry:
    """Rule A4: remove exactly the providers with a failed verdict, ban their keys, record why.

    Invariant: a provider with no failing verdict keeps its offer unchanged. No Z3 check covers this
    function (tests/test_spec_audit.py does); forfeit isolation, proved for ``settle_parts``, is the
    settlement side of the same rule.
    """
    failed: dict[str, str] = {}
    for verdict in verdicts:
        if not verdict.passed and verdict.provider_id not in failed:
            failed[verdict.provider_id] = verdict.reason or "failed audit"
    kept = tuple(o for o in registry.offers if o.provider_id not in failed)
    banned = set(registry.banned_keys)
    for offer in registry.offers:
        if offer.provider_id in failed:
            banned.add(offer.public_key)
    reasons = registry.ejections + tuple((pid, why) for pid, why in failed.items())
    return replace(registry, offers=kept, banned_keys=frozenset(banned), ejections=reasons)
