"""Audit selection by commit-reveal, the re-execution judge, and ejection.

Rules (docs/spec.md, "Audit"):
- A1 every request has its own seed ``request_seed(secret, request_id)`` (a keyed hash of the lead's
  secret); the lead sends ``seed_commitment(seed)`` to every provider inside the signed session
  opening, before the first step, and every boundary commitment of the request repeats it (signed);
  the seed is revealed only in the finished request's record, after its chain is final, and anyone
  then checks ``reveal_valid``; a revealed seed is never used again (each request id is fresh, and the
  protocol refuses a request whose seed commitment was already revealed);
- A2 ``is_audited(seed, request_id, segment_index, p)`` is a deterministic function of its arguments
  (SHA-256 of a domain-separated encoding; modelled as a uniform random oracle for the probability
  claim, and as a plain function for determinism);
- A3 ``judge`` passes a re-executed output iff shapes agree, everything is finite and every element
  lies within the calibrated tolerance;
- A4 ``eject`` removes exactly the providers with a failing verdict and bans their keys and the ids
  they served under (a banned key, or id, can never offer again).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable, Sequence

from verisplit.spec.arith import is_symbolic
from verisplit.spec.cohort import Offer
from verisplit.spec.validation import (require_bytes, require_instance, require_int, require_probability,
                                       require_sequence, require_str)

SEED_DOMAIN = b"verisplit/audit-seed/v1\x00"
REQUEST_SEED_DOMAIN = b"verisplit/request-seed/v1\x00"
MIN_SECRET_BYTES = 16
DRAW_DOMAIN = b"verisplit/audit-draw/v1\x00"
DRAW_BITS = 64
MAX_SEED_BYTES = 0xFFFF
MAX_REQUEST_ID_BYTES = 0xFFFF
MAX_SEGMENT_INDEX = 0xFFFFFFFF


class InvalidAuditInput(ValueError):
    """An argument of an audit function is ill-typed or out of range; the message starts with the
    field (seed, request_id, segment_index, p, draw, commitment, expected, observed, tolerance,
    registry, verdicts)."""


def seed_commitment(seed: bytes) -> bytes:
    """H(seed), published before any audited request is served (rule A1).
    ``seed`` must be bytes of at most 65535 bytes (``InvalidAuditInput``)."""
    raw = require_bytes(seed, "seed", InvalidAuditInput, max_length=MAX_SEED_BYTES)
    return hashlib.sha256(SEED_DOMAIN + raw).digest()


def request_seed(secret: bytes, request_id: str) -> bytes:
    """Rule A1: the audit seed of one request, ``HMAC-SHA256(secret, REQUEST_SEED_DOMAIN || request_id)``.

    Invariant: without ``secret`` the seed (hence the selection) of a live request is unpredictable
    (HMAC as a PRF: ASSUMED), yet it is a function of (secret, request id) alone, so the lead cannot
    choose it after seeing outputs once its commitment is sent. ``secret`` must be bytes of at least 16
    bytes and request_id a str (``InvalidAuditInput``). Tests: tests/test_spec_audit.py."""
    key = require_bytes(secret, "secret", InvalidAuditInput, max_length=MAX_SEED_BYTES)
    if len(key) < MIN_SECRET_BYTES:
        raise InvalidAuditInput(f"secret: must hold at least {MIN_SECRET_BYTES} bytes, got {len(key)}")
    require_str(request_id, "request_id", InvalidAuditInput, max_utf8=MAX_REQUEST_ID_BYTES)
    return hmac.new(key, REQUEST_SEED_DOMAIN + request_id.encode("utf-8"), hashlib.sha256).digest()


def commitment_fresh(revealed: frozenset[bytes], commitment: bytes) -> bool:
    """Rule A1: a seed commitment may open a request only if its seed was never revealed (a revealed
    seed is never used again). ``revealed`` must be a set or frozenset and ``commitment`` 32 bytes
    (``InvalidAuditInput``). Z3: ``seed_rule`` (TESTED, proofs/z3/check_soundness.py)."""
    if not isinstance(revealed, (set, frozenset)):
        raise InvalidAuditInput(f"revealed: must be a set of seed commitments, got {type(revealed).__name__}")
    require_bytes(commitment, "commitment", InvalidAuditInput)
    if len(commitment) != 32:
        raise InvalidAuditInput(f"commitment: must be 32 bytes, got {len(commitment)}")
    return commitment not in revealed


def reveal_valid(commitment: bytes, seed: bytes) -> bool:
    """True iff ``seed`` opens ``commitment`` (both bytes, ``InvalidAuditInput`` otherwise)."""
    require_bytes(commitment, "commitment", InvalidAuditInput)
    return seed_commitment(seed) == commitment


def draw_message(seed: bytes, request_id: str, segment_index: int) -> bytes:
    """The domain-separated, length-prefixed message whose SHA-256 is the draw (docs/protocol.md):
    ``DRAW_DOMAIN || u16 len(seed) || seed || u16 len(rid) || rid (UTF-8) || u32 segment_index``.
    ``InvalidAuditInput`` names the field if seed is not bytes of <= 65535 bytes, request_id not a str
    of <= 65535 UTF-8 bytes, or segment_index not an int in [0, 2^32)."""
    raw_seed = require_bytes(seed, "seed", InvalidAuditInput, max_length=MAX_SEED_BYTES)
    require_str(request_id, "request_id", InvalidAuditInput, max_utf8=MAX_REQUEST_ID_BYTES)
    require_int(segment_index, "segment_index", InvalidAuditInput, minimum=0, maximum=MAX_SEGMENT_INDEX)
    rid = request_id.encode("utf-8")
    return (DRAW_DOMAIN + struct.pack("<H", len(raw_seed)) + raw_seed + struct.pack("<H", len(rid)) + rid
            + struct.pack("<I", segment_index))


def audit_draw(seed: bytes, request_id: str, segment_index: int) -> int:
    """A uniform-looking 64-bit integer fixed by (seed, request id, segment index) alone: the first 8
    bytes, little-endian, of SHA-256(``draw_message``). Bad arguments: ``InvalidAuditInput``."""
    return int.from_bytes(hashlib.sha256(draw_message(seed, request_id, segment_index)).digest()[:8], "little")


def draw_selects(draw: int, p: Fraction) -> bool:
    """``draw / 2**64 < p`` in exact integer arithmetic: ``draw * den < num * 2**64`` (so P[selected] = p
    for a uniform draw, exactly for p a multiple of 2**-64). ``draw`` must be an int in [0, 2^64) and p
    an int or Fraction in [0, 1] (``InvalidAuditInput``); on Z3 terms (``p`` with symbolic
    ``numerator`` / ``denominator``) nothing is checked and a Z3 Bool is returned.

    Invariant: for every d in [0, 2^64) and p = n/m in [0, 1], the result is ``d < p * 2^64``.
    Z3: ``audit_functional`` (proofs/z3/check_audit.py)."""
    if not is_symbolic(draw):
        require_int(draw, "draw", InvalidAuditInput, minimum=0, maximum=(1 << DRAW_BITS) - 1)
    if not is_symbolic(getattr(p, "numerator", None)) and not is_symbolic(getattr(p, "denominator", None)):
        p = require_probability(p, "p", InvalidAuditInput)
    return draw * p.denominator < p.numerator * (1 << DRAW_BITS)


def selection(draw_of: Callable[[Any, Any, Any], Any], seed: Any, request_id: Any, segment_index: Any, p: Any) -> Any:
    """Rule A2's composition, with the draw function as a parameter: ``draw_selects(draw_of(seed,
    request_id, segment_index), p)``. ``is_audited`` passes ``audit_draw``; the Z3 check passes an
    uninterpreted function (SHA-256 modelled as an arbitrary fixed function) and symbolic arguments.

    Invariant: a function of its arguments alone (no clock, counter or hidden state).
    Z3: ``audit_functional`` (proofs/z3/check_audit.py)."""
    return draw_selects(draw_of(seed, request_id, segment_index), p)


def is_audited(seed: bytes, request_id: str, segment_index: int, p: Fraction) -> bool:
    """Whether segment ``segment_index`` of ``request_id`` is audited (rule A2):
    ``selection(audit_draw, seed, request_id, segment_index, p)``.

    Arguments are validated first (``InvalidAuditInput`` naming seed, request_id, segment_index or p;
    p must be an int or ``Fraction`` in [0, 1], never a float).
    Invariant: depends only on its four arguments. Z3: ``audit_concrete`` (this function on seeded
    inputs, proofs/z3/check_audit.py); the rule it evaluates is ``selection``, proved symbolically.
    """
    draw_message(seed, request_id, segment_index)  # validates the first three arguments
    probability = require_probability(p, "p", InvalidAuditInput)
    return bool(selection(audit_draw, seed, request_id, segment_index, probability))


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
    negative or non-finite bound, or with both bounds 0, raises ``InvalidAuditInput`` (a ValueError)
    naming ``tolerance``; ``expected`` / ``observed`` must be lists or tuples of real numbers (int or
    float, not bool), else ``InvalidAuditInput`` naming them."""
    require_instance(tolerance, Tolerance, "tolerance", InvalidAuditInput)
    for name, values in (("expected", expected), ("observed", observed)):
        for index, value in enumerate(require_sequence(values, name, InvalidAuditInput)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidAuditInput(f"{name}[{index}]: must be a real number, got {value!r}")
    for name, bound in (("atol", tolerance.atol), ("rtol", tolerance.rtol)):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise InvalidAuditInput(f"tolerance: {name} must be a finite number >= 0, got {bound!r}")
    if len(expected) != len(observed):
        return Judgement(False, math.inf, math.inf, f"length {len(observed)} != expected {len(expected)}")
    for name, bound in (("atol", tolerance.atol), ("rtol", tolerance.rtol)):
        if not (math.isfinite(bound) and bound >= 0):
            raise InvalidAuditInput(f"tolerance: {name} must be a finite number >= 0, got {bound}")
    if tolerance.atol <= 0 and tolerance.rtol <= 0:
        raise InvalidAuditInput("tolerance: atol or rtol must be positive")
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
    """Standing offers plus the banned keys, the ids they were ejected under, and the recorded reasons."""

    offers: tuple[Offer, ...] = ()
    banned_keys: frozenset[bytes] = frozenset()
    ejections: tuple[tuple[str, str], ...] = field(default=())
    banned_ids: frozenset[str] = frozenset()

    def provider_ids(self) -> set[str]:
        return {o.provider_id for o in self.offers}


def eject(registry: Registry, verdicts: Sequence[AuditVerdict]) -> Registry:
    """Rule A4: remove exactly the providers with a failed verdict, ban their keys, record why.

    Invariant: a provider with no failing verdict keeps its offer unchanged. No Z3 check covers this
    function (tests/test_spec_audit.py does); forfeit isolation, proved for ``settle_parts``, is the
    settlement side of the same rule. ``registry`` must be a ``Registry`` and ``verdicts`` a list or
    tuple of ``AuditVerdict`` (``InvalidAuditInput`` naming the field otherwise).
    """
    require_instance(registry, Registry, "registry", InvalidAuditInput)
    items = require_sequence(verdicts, "verdicts", InvalidAuditInput)
    for index, verdict in enumerate(items):
        require_instance(verdict, AuditVerdict, f"verdicts[{index}]", InvalidAuditInput)
        if not isinstance(verdict.provider_id, str) or not isinstance(verdict.reason, str):
            raise InvalidAuditInput(f"verdicts[{index}]: provider_id and reason must be strings")
    failed: dict[str, str] = {}
    for verdict in items:
        if not verdict.passed and verdict.provider_id not in failed:
            failed[verdict.provider_id] = verdict.reason or "failed audit"
    kept = tuple(o for o in registry.offers if o.provider_id not in failed)
    banned = set(registry.banned_keys)
    for offer in registry.offers:
        if offer.provider_id in failed:
            banned.add(offer.public_key)
    reasons = registry.ejections + tuple((pid, why) for pid, why in failed.items())
    banned_ids = registry.banned_ids | frozenset(failed)
    return replace(registry, offers=kept, banned_keys=frozenset(banned), ejections=reasons, banned_ids=banned_ids)
