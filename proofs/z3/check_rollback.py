"""Speculative rollback (rule K1) and the billing of speculative steps (rule F1 generalised).

Model: a request's steps as symbolic Ints ``(first_s, n_s)``, ``first_0 = 0``, ``n_s >= 1``, each
step following the previous one by the spec's own ``step_follows`` (K1). Nothing is abstracted: the
rule is linear integer arithmetic.

PROVED (Z3, bounded):
- ``rollback_context``: plain continuation (start at the previous end) satisfies K1; K1 implies
  progress (a step starts strictly after the previous step's start) and no gap (it starts no later
  than the previous end), for unbounded symbolic positions.
- ``rollback_prefix_stable``: for every request of m <= 8 steps obeying K1, step starts strictly
  increase (so the positions before step s's start are never rewritten by a later step: the inputs a
  step attended to are a prefix of the request's final sequence, which is what the audit re-executes),
  every position below the final end was computed by some step (no holes), and the positions computed,
  sum(n_s), are at least the final length, with equality when no step rolled back.
- ``billable_sum_plain``: F1 without explicit steps sums ``plain_decoding_steps(prompt, completion)``,
  which is ``prompt + completion - 1`` for a symbolic prompt and every completion <= 32.

TESTED (concrete): ``forwarded_concrete`` runs the real ``check_forwarded`` (Ed25519 included) on an
honest forward and every single fault. ``rollback_context_concrete`` runs the real ``next_step_context`` over every
previous step [f, f + n) with f, n <= 8 and every start <= 20: it accepts exactly the K1 starts
(raising ``InvalidChainInput`` otherwise) and defaults to the previous end.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Iterator

import z3

from verisplit.proofs_z3.core import Evidence, Kind, Obligation, concrete, register, valid
from verisplit.spec.commitment import (InvalidChainInput, StepContext, check_equivocation, check_forwarded, next_step_context,
                                       step_follows)
from verisplit.spec.settlement import plain_decoding_steps

FOLLOWS = "verisplit.spec.commitment.step_follows"
NEXT = "verisplit.spec.commitment.next_step_context"
BILLABLE = "verisplit.spec.settlement.billable_positions"
PLAIN = "verisplit.spec.settlement.plain_decoding_steps"
MAX_STEPS = 8
MAX_COMPLETION = 32


def _pair() -> tuple[Any, Any, Any]:
    return z3.Int("prev_first"), z3.Int("prev_n"), z3.Int("first")


@register("rollback_context", spec_functions=(FOLLOWS,), bound="unbounded symbolic positions")
def rollback_context() -> Iterator[Obligation]:
    """K1 accepts the plain continuation, and every start it accepts makes progress without a gap."""
    f, n, s = _pair()
    hyps = [f >= 0, n >= 1]
    yield valid("plain continuation follows", step_follows(f, n, f + n) == z3.BoolVal(True), hyps)
    yield valid("K1 implies progress and no gap", z3.Implies(step_follows(f, n, s), z3.And(f < s, s <= f + n)), hyps)
    yield valid("progress and no gap imply K1", z3.Implies(z3.And(f < s, s <= f + n), step_follows(f, n, s)), hyps)


@register("rollback_context_mutant_replay_start", kind=Kind.MUTANT, property="rollback_context",
          spec_functions=(FOLLOWS,), bound="unbounded")
def rollback_context_mutant() -> Iterator[Obligation]:
    """Mutant claim: a step may restart at the previous step's own start (refuted: no progress)."""
    f, n, _ = _pair()
    yield valid("mutant: restarting at the previous start follows", step_follows(f, n, f) == z3.BoolVal(True),
                [f >= 0, n >= 1])


def _steps(m: int) -> tuple[list[Any], list[Any], list[Any]]:
    firsts = [z3.Int(f"first{s}") for s in range(m)]
    counts = [z3.Int(f"n{s}") for s in range(m)]
    hyps: list[Any] = [firsts[0] == 0]
    for s in range(m):
        hyps.append(counts[s] >= 1)
    for s in range(1, m):
        hyps.append(step_follows(firsts[s - 1], counts[s - 1], firsts[s]))
    return firsts, counts, hyps


@register("rollback_prefix_stable", spec_functions=(FOLLOWS,), bound="every request of m <= 8 steps, symbolic positions")
def rollback_prefix_stable() -> Iterator[Obligation]:
    """Under K1: starts strictly increase, the final sequence has no holes, and the positions computed
    are at least the final length, equal to it when no step rolled back."""
    p = z3.Int("p")
    for m in range(1, MAX_STEPS + 1):
        firsts, counts, hyps = _steps(m)
        increasing = z3.And(*[firsts[s] < firsts[t] for s in range(m) for t in range(s + 1, m)]) if m > 1 else z3.BoolVal(True)
        yield valid(f"starts strictly increase, m={m}", increasing, hyps, "bounded")
        end = firsts[-1] + counts[-1]
        covered = z3.Or(*[z3.And(firsts[s] <= p, p < firsts[s] + counts[s]) for s in range(m)])
        yield valid(f"every position below the end was computed, m={m}",
                    z3.Implies(z3.And(0 <= p, p < end), covered), hyps, "bounded")
        total = z3.Sum(*counts) if m > 1 else counts[0]
        plain = z3.And(*[firsts[s] == firsts[s - 1] + counts[s - 1] for s in range(1, m)]) if m > 1 else z3.BoolVal(True)
        yield valid(f"positions computed >= final length, equal without rollback, m={m}",
                    z3.And(total >= end, z3.Implies(plain, total == end)), hyps, "bounded")


@register("rollback_prefix_stable_mutant_no_extra_billing", kind=Kind.MUTANT, property="rollback_prefix_stable",
          spec_functions=(FOLLOWS,), bound="m=3")
def rollback_prefix_stable_mutant() -> Iterator[Obligation]:
    """Mutant claim: the positions computed always equal the final length (refuted by any rollback)."""
    firsts, counts, hyps = _steps(3)
    yield valid("mutant: sum(n) == final end, m=3", z3.Sum(*counts) == firsts[-1] + counts[-1], hyps)


@register("rollback_context_concrete", spec_functions=(NEXT, FOLLOWS), evidence=Evidence.TESTED,
          bound="exhaustive: previous step [f, f+n) with f, n <= 8, every start <= 20")
def rollback_context_concrete() -> Iterator[Obligation]:
    """The real next_step_context accepts exactly the K1 starts and defaults to the previous end."""
    t0 = time.perf_counter()
    failures: list[str] = []
    for f in range(0, 9):
        for n in range(1, 9):
            previous = StepContext("m", "r", 3, f, n)
            plain = next_step_context(previous, 2)
            if (plain.step, plain.first_position, plain.num_positions) != (4, f + n, 2):
                failures.append(f"default start after [{f}, {f + n}) is {plain.first_position}")
            for start in range(0, 21):
                try:
                    got = next_step_context(previous, 1, start).first_position
                    accepted = got == start
                except InvalidChainInput:
                    accepted = False
                if accepted != (f < start <= f + n):
                    failures.append(f"start {start} after [{f}, {f + n}): accepted={accepted}")
    yield concrete("next_step_context accepts exactly K1 starts", not failures, time.perf_counter() - t0,
                   "; ".join(failures[:3]))


@register("billable_sum_plain", spec_functions=(BILLABLE, PLAIN), bound="symbolic prompt >= 1, every completion 1..32")
def billable_sum_plain() -> Iterator[Obligation]:
    """F1's plain-decoding steps sum to prompt + completion - 1 (the positions non-speculative decoding
    computes), so generalising F1 to a sum over steps keeps the fee of plain requests unchanged."""
    prompt = z3.Int("prompt")
    for completion in range(1, MAX_COMPLETION + 1):
        steps = plain_decoding_steps(prompt, completion)
        total = z3.Sum(*steps) if len(steps) > 1 else steps[0]
        yield valid(f"sum of plain steps, completion={completion}", total == prompt + completion - 1,
                    [prompt >= 1], "bounded")


@register("billable_sum_plain_mutant_counts_last", kind=Kind.MUTANT, property="billable_sum_plain",
          spec_functions=(PLAIN,), bound="completion=2")
def billable_sum_plain_mutant() -> Iterator[Obligation]:
    """Mutant claim: the steps also consume the last generated token (refuted: one position too many)."""
    prompt = z3.Int("prompt")
    steps = plain_decoding_steps(prompt, 2)
    yield valid("mutant: plain steps sum to prompt + completion", z3.Sum(*steps) == prompt + 2, [prompt >= 1])


# ---- the direct path: what a receiving provider checks -----------------------------------------

FORWARDED = "verisplit.spec.commitment.check_forwarded"


def _forwarded_cases() -> Iterator[tuple[str, Any, tuple[Any, ...], Any]]:
    """(label, commitment, (sender key, request, step, first, n, received digest), expected reason)."""
    import hashlib

    from nacl.signing import SigningKey

    from verisplit.spec.commitment import (BAD_SIGNATURE, OUTPUT_MISMATCH, PROTOCOL_VERSION, RANGE_MISMATCH, REPLAY,
                                           STEP_GAP, WRONG_REQUEST, WRONG_SIGNER, BoundaryCommitment, sign_commitment)

    sender, other = SigningKey(bytes(range(32))), SigningKey(bytes(32))
    good = hashlib.sha256(b"forwarded").digest()
    bad = hashlib.sha256(b"other bytes").digest()
    for step in (0, 3):
        for first, n in ((0, 5), (9, 1), (9, 4)):
            base = BoundaryCommitment(PROTOCOL_VERSION, "m", bytes(32), "req", step, 1, 2, 4, first, n, bytes(32), good,
                                      bytes(32))
            signed = sign_commitment(base, sender)
            key = bytes(sender.verify_key)
            args = (key, "req", step, first, n, good)
            yield f"honest s={step} [{first},+{n})", signed, args, None
            yield "other bytes", signed, (key, "req", step, first, n, bad), OUTPUT_MISMATCH
            yield "bad signature", replace(signed, signature=bytes(64)), args, BAD_SIGNATURE
            yield "wrong signer", sign_commitment(base, other), args, WRONG_SIGNER
            yield "wrong request", signed, (key, "req-2", step, first, n, good), WRONG_REQUEST
            yield "later step expected", signed, (key, "req", step + 1, first, n, good), REPLAY
            yield "earlier step expected", sign_commitment(replace(base, step=step + 1), sender), args, STEP_GAP
            yield "other positions", signed, (key, "req", step, first + 1, n, good), RANGE_MISMATCH


@register("forwarded_concrete", spec_functions=(FORWARDED,), evidence=Evidence.TESTED,
          bound="exhaustive: 6 step/position shapes x {honest, 7 single faults}, real Ed25519")
def forwarded_concrete() -> Iterator[Obligation]:
    """check_forwarded passes an honest forward and names the right reason for every single fault."""
    t0 = time.perf_counter()
    failures = []
    for label, c, args, expected in _forwarded_cases():
        got = check_forwarded(c, *args)
        if (got[0] if got else None) != expected:
            failures.append(f"{label}: got {got}, expected {expected}")
    yield concrete("check_forwarded verdicts", not failures, time.perf_counter() - t0, "; ".join(failures[:3]))


EQUIVOCATION_FN = "verisplit.spec.commitment.check_equivocation"


def _equivocation_cases() -> Iterator[tuple[str, Any, Any, Any]]:
    """(label, previous, upstream, expected reason): one honest double (the same commitment), the
    equivocation, and every way the second commitment can fail to prove one."""
    import hashlib

    from nacl.signing import SigningKey

    from verisplit.spec.commitment import EQUIVOCATION, PROTOCOL_VERSION, BoundaryCommitment, sign_commitment

    sender, other = SigningKey(bytes(range(32))), SigningKey(bytes(32))
    x, x2 = hashlib.sha256(b"reported").digest(), hashlib.sha256(b"forwarded").digest()
    for step in (0, 3):
        for first, n in ((0, 5), (9, 1)):
            base = BoundaryCommitment(PROTOCOL_VERSION, "m", bytes(32), "req", step, 1, 2, 4, first, n, bytes(32), x,
                                      bytes(32))
            previous = sign_commitment(base, sender)
            forked = replace(base, output_digest=x2)
            yield f"same commitment s={step} [{first},+{n})", previous, previous, None
            yield "re-signed same output", previous, sign_commitment(replace(base, input_digest=x2), sender), None
            yield "two outputs, one slot", previous, sign_commitment(forked, sender), EQUIVOCATION
            yield "forged second signature", previous, replace(sign_commitment(forked, sender), signature=bytes(64)), None
            yield "another signer", previous, sign_commitment(forked, other), None
            yield "invalid first signature", replace(previous, signature=bytes(64)), sign_commitment(forked, sender), None
            for name, value in (("request_id", "req-2"), ("step", step + 1), ("segment_index", 2), ("first_layer", 0),
                                ("first_position", first + 1), ("num_positions", n + 1), ("dtype", "float16")):
                yield f"other {name}", previous, sign_commitment(replace(forked, **{name: value}), sender), None


@register("equivocation_concrete", spec_functions=(EQUIVOCATION_FN,), evidence=Evidence.TESTED,
          bound="exhaustive: 4 step/position shapes x {same, equivocation, 12 non-proofs}, real Ed25519")
def equivocation_concrete() -> Iterator[Obligation]:
    """check_equivocation names the signer exactly when it signed two outputs for one slot, both
    signatures valid; never on one commitment, another signer, a forged signature or another slot."""
    t0 = time.perf_counter()
    failures = []
    for label, previous, upstream, expected in _equivocation_cases():
        got = check_equivocation(previous, upstream)
        if (got[0] if got else None) != expected:
            failures.append(f"{label}: got {got}, expected {expected}")
    yield concrete("check_equivocation verdicts", not failures, time.perf_counter() - t0, "; ".join(failures[:3]))
    return True
