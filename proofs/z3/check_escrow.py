"""Probation and the vesting escrow (rules P1, E1-E5) on ``verisplit.spec.escrow``'s own functions.

PROVED, over ``z3.Int`` amounts and ``z3.Bool`` failure flags:

- ``escrow_conservation`` (E3): ``held + vested + forfeited == paid`` after every request of every
  sequence of n <= 8 requests for every window V <= 4 (unrolled ``account_step`` from a fresh
  account), and for all N by induction for every V <= 8 (base: a fresh account; step: any window
  whose totals conserve still conserves after one ``account_step``, failed or not); resizing a
  window (E5) moves exactly what it releases.
- ``escrow_vesting`` (E1): with no failure, after n <= 8 requests of window V <= 4 the window is
  exactly the last V payouts (zero-padded) and everything older has vested; and from *any* window
  (so after any history: all N), V+1 requests without failure release the held amounts oldest
  first and the first new payout at the (V+1)-th, so no payout vests before V later requests.
- ``escrow_forfeit`` (E2): from any window (V <= 8), a failed request forfeits everything held plus
  its payout, vests nothing and leaves the window all zeros; a request that does not fail forfeits
  nothing.
- ``probation_full_audit`` (P1): ``audit_probability(p, served, M)`` is 1 for served < M and p for
  served >= M, for every real p in [0, 1] and all integers served, M >= 0 (unbounded).

TESTED (``escrow_book_concrete``): ``settle_escrow`` on 300 seeded random request sequences (1-3 keys,
one key under two provider ids, idle members, failures, windows changed mid-sequence): per key
conservation; every payout accounted exactly once by source request (held, vested or forfeited);
served counts; the probation probability; vesting exactly V served requests later.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from fractions import Fraction
from typing import Any, Iterator

import z3

from verisplit.proofs_z3.core import Evidence, Kind, Obligation, concrete, register, valid
from verisplit.spec.escrow import (EscrowMember, EscrowTerms, KeyAccount, account_conserved, account_step,
                                   audit_probability, escrow_step, resize_window, settle_escrow,
                                   window_total)

ESCROW_STEP = "verisplit.spec.escrow.escrow_step"
ACCOUNT_STEP = "verisplit.spec.escrow.account_step"
TOTAL = "verisplit.spec.escrow.window_total"
RESIZE = "verisplit.spec.escrow.resize_window"
PROBATION = "verisplit.spec.escrow.audit_probability"
SETTLE = "verisplit.spec.escrow.settle_escrow"
MAX_STEPS = 8
MAX_WINDOW_UNROLLED = 4
MAX_WINDOW = 8


def _amounts(prefix: str, n: int) -> list[Any]:
    return [z3.Int(f"{prefix}{i}") for i in range(n)]


def _conserves(window: list[Any], vested: Any, forfeited: Any, paid: Any) -> Any:
    return window_total(window) + vested + forfeited == paid


def _run(size: int, payouts: list[Any], flags: list[Any]) -> list[tuple[list[Any], Any, Any, Any]]:
    """States after each request, from a fresh account of ``size`` slots (the spec's ``account_step``)."""
    window: list[Any] = [0] * size
    vested: Any = 0
    forfeited: Any = 0
    paid: Any = 0
    states = []
    for payout, failed in zip(payouts, flags):
        window, vested, forfeited, paid = account_step(window, vested, forfeited, paid, payout, failed)
        states.append((window, vested, forfeited, paid))
    return states


@register("escrow_conservation", spec_functions=(ACCOUNT_STEP, ESCROW_STEP, TOTAL, RESIZE),
          bound="sequences of n<=8 requests, V<=4 unrolled; all N by induction for V<=8; resize 0..6 -> 0..6",
          assumptions=("payouts >= 0",))
def escrow_conservation() -> Iterator[Obligation]:
    """E3: held + vested + forfeited == paid after every request; resizing moves exactly what it releases."""
    for size in range(MAX_WINDOW_UNROLLED + 1):
        payouts = _amounts("x", MAX_STEPS)
        flags = [z3.Bool(f"failed{i}") for i in range(MAX_STEPS)]
        states = _run(size, payouts, flags)
        yield valid(f"E3 after each of {MAX_STEPS} requests, V={size}",
                    z3.And(*[_conserves(*state) for state in states]), [x >= 0 for x in payouts])
    for size in range(MAX_WINDOW + 1):
        yield valid(f"E3 base: a fresh account conserves, V={size}", _conserves([0] * size, 0, 0, 0))
        window = _amounts("w", size)
        vested, forfeited, paid, payout = z3.Ints("vested forfeited paid x")
        failed = z3.Bool("failed")
        after = account_step(window, vested, forfeited, paid, payout, failed)
        yield valid(f"E3 step: conserving totals conserve after any request, V={size}", _conserves(*after),
                    [_conserves(window, vested, forfeited, paid), payout >= 0, *[w >= 0 for w in window]])
    for old in range(7):
        window = _amounts("w", old)
        claims = []
        for new in range(7):
            resized, released = resize_window(window, new)
            claims.append(z3.And(len(resized) == new, window_total(resized) + released == window_total(window)))
        yield valid(f"E5 resize from {old} slots to 0..6 keeps held + released", z3.And(*claims))


@register("escrow_conservation_mutant_ignores_forfeit", kind=Kind.MUTANT, property="escrow_conservation",
          spec_functions=(ACCOUNT_STEP,), bound="n=3, V=2")
def escrow_conservation_mutant() -> Iterator[Obligation]:
    """Mutant claim: held + vested == paid (forfeited amounts forgotten), refuted by one failure."""
    payouts = _amounts("x", 3)
    flags = [z3.Bool(f"failed{i}") for i in range(3)]
    window, vested, _, paid = _run(2, payouts, flags)[-1]
    yield valid("mutant E3 without forfeited", window_total(window) + vested == paid, [x >= 0 for x in payouts])


@register("escrow_vesting", spec_functions=(ESCROW_STEP, ACCOUNT_STEP, TOTAL),
          bound="n<=8 requests, V<=4 from a fresh account; from any window, V<=8 (all N)",
          assumptions=("no failure among the requests considered", "payouts >= 0"))
def escrow_vesting() -> Iterator[Obligation]:
    """E1: the window holds exactly the last V payouts; a payout vests exactly V served requests later."""
    for size in range(MAX_WINDOW_UNROLLED + 1):
        payouts = _amounts("x", MAX_STEPS)
        states = _run(size, payouts, [False] * MAX_STEPS)
        claims = []
        for n, (window, vested, _, _) in enumerate(states, start=1):
            history = [0] * size + payouts[:n]
            last = history[len(history) - size:] if size else []
            claims.append(z3.And(*[a == b for a, b in zip(window, last)], len(window) == size,
                                 vested == window_total(payouts[:max(0, n - size)])))
        yield valid(f"E1 window = last V payouts, older ones vested, n<=8, V={size}", z3.And(*claims),
                    [x >= 0 for x in payouts])
    for size in range(MAX_WINDOW + 1):
        window = _amounts("w", size)
        fresh = _amounts("x", size + 1)
        current: list[Any] = list(window)
        releases = []
        for payout in fresh:
            current, vested_now, _ = escrow_step(current, payout, False)
            releases.append(vested_now)
        expected = list(window) + [fresh[0]]
        yield valid(f"E1 from any window: releases oldest first, a new payout vests at the V-th later request, V={size}",
                    z3.And(*[a == b for a, b in zip(releases, expected)], len(current) == size),
                    [x >= 0 for x in window + fresh])


@register("escrow_vesting_mutant_one_early", kind=Kind.MUTANT, property="escrow_vesting",
          spec_functions=(ESCROW_STEP,), bound="V=2")
def escrow_vesting_mutant() -> Iterator[Obligation]:
    """Mutant claim: a new payout vests after V-1 later requests (refuted: it is still held)."""
    window = _amounts("w", 2)
    payouts = _amounts("x", 2)
    current, _, _ = escrow_step(window, payouts[0], False)
    _, vested_now, _ = escrow_step(current, payouts[1], False)
    yield valid("mutant E1 vests one request early", vested_now == payouts[0], [x >= 0 for x in window + payouts])


@register("escrow_forfeit", spec_functions=(ESCROW_STEP, ACCOUNT_STEP, TOTAL),
          bound="any window of V<=8 slots (any history: all N), unbounded amounts", assumptions=("payouts >= 0",))
def escrow_forfeit() -> Iterator[Obligation]:
    """E2: a failure forfeits everything held plus the payout and vests nothing; no failure, no forfeit."""
    for size in range(MAX_WINDOW + 1):
        window = _amounts("w", size)
        payout, vested, forfeited, paid = z3.Ints("x vested forfeited paid")
        hyps = [payout >= 0, *[w >= 0 for w in window]]
        new_window, vested_now, forfeited_now = escrow_step(window, payout, True)
        after = account_step(window, vested, forfeited, paid, payout, True)
        yield valid(f"E2 a failure forfeits held + payout, vests nothing, empties the window, V={size}",
                    z3.And(forfeited_now == window_total(window) + payout, vested_now == 0, len(new_window) == size,
                           *[w == 0 for w in new_window], after[1] == vested,
                           after[2] == forfeited + window_total(window) + payout), hyps)
        _, _, kept = escrow_step(window, payout, False)
        yield valid(f"E2 no failure, nothing forfeited, V={size}", kept == 0, hyps)


@register("escrow_forfeit_mutant_keeps_payout", kind=Kind.MUTANT, property="escrow_forfeit",
          spec_functions=(ESCROW_STEP,), bound="V=2")
def escrow_forfeit_mutant() -> Iterator[Obligation]:
    """Mutant claim: a failure forfeits only what was held before (refuted when the payout is > 0)."""
    window = _amounts("w", 2)
    payout = z3.Int("x")
    _, _, forfeited_now = escrow_step(window, payout, True)
    yield valid("mutant E2 forfeits only the held window", forfeited_now == window_total(window),
                [payout >= 0, *[w >= 0 for w in window]])


@register("probation_full_audit", spec_functions=(PROBATION,), bound="unbounded: real p in [0, 1], integers served, M >= 0")
def probation_full_audit() -> Iterator[Obligation]:
    """P1: audit_probability is 1 while served < M and p afterwards, and never below p."""
    p = z3.Real("p")
    served, probation = z3.Ints("served M")
    dom = [0 <= p, p <= 1, served >= 0, probation >= 0]
    q = audit_probability(p, served, probation)
    yield valid("P1 during probation (served < M) the probability is 1", q == 1, dom + [served < probation])
    yield valid("P1 after probation (served >= M) the probability is p", q == p, dom + [served >= probation])
    yield valid("P1 the probability is never below p and never above 1", z3.And(q >= p, q <= 1), dom)


@register("probation_full_audit_mutant_inclusive", kind=Kind.MUTANT, property="probation_full_audit",
          spec_functions=(PROBATION,), bound="unbounded")
def probation_mutant() -> Iterator[Obligation]:
    """Mutant claim: the probation covers served == M too (refuted: the (M+1)-th request is at p)."""
    p = z3.Real("p")
    served, probation = z3.Ints("served M")
    yield valid("mutant P1 inclusive", audit_probability(p, served, probation) == 1,
                [0 <= p, p < 1, served >= 0, probation >= 0, served <= probation])


# ---- settle_escrow on concrete request sequences -------------------------------------------------------

def _check_sequence(rng: random.Random) -> str:
    """One random sequence through ``settle_escrow``; returns a description of the first violation."""
    keys = [f"k{i}" for i in range(rng.randint(1, 3))]
    size = rng.randint(0, 4)
    resize_at = rng.randint(1, 10) if rng.random() < 0.3 else None
    probation = rng.randint(0, 5)
    p = rng.choice([Fraction(1, 10), Fraction(1, 2), Fraction(0)])
    book: dict[str, KeyAccount] = {}
    earned: dict[tuple[str, str], int] = {}
    vested_by: Counter[tuple[str, str]] = Counter()
    forfeited_by: Counter[tuple[str, str]] = Counter()
    served: Counter[str] = Counter()
    served_at: dict[tuple[str, str], int] = {}
    resized = False
    for n in range(rng.randint(1, 12)):
        if resize_at is not None and n == resize_at:
            size, resized = rng.randint(0, 4), True
        rid = f"r{n}"
        members = []
        for index, key in enumerate(keys):
            work = rng.choice([0, 1, 3, 5])
            payout = rng.randint(0, 9) if work else 0
            members.append(EscrowMember(f"{key}-p{index}", key, work, payout, rng.random() < 0.15))
        if len(keys) > 1 and rng.random() < 0.2:  # one key under a second provider id
            members.append(EscrowMember("twin", keys[0], 2, rng.randint(0, 5), False))
        before = dict(book)
        outcome = settle_escrow(book, rid, members, EscrowTerms(p, probation, size))
        book = outcome.book
        for entry in outcome.members:
            key = entry.public_key
            group = [m for m in members if m.public_key == key]
            failed, work = any(m.failed for m in group), sum(m.work for m in group)
            expected_p = Fraction(1) if served[key] < probation else p
            if entry.served_before != served[key] or entry.audit_p != expected_p:
                return f"{rid} {key}: served_before {entry.served_before}/{served[key]}, audit_p {entry.audit_p}/{expected_p}"
            if failed:
                held_before = before[key].held if key in before else 0
                if entry.held_after != 0 or sum(m.amount for m in entry.forfeited) != held_before + entry.payout:
                    return f"{rid} {key}: a failure must forfeit held {held_before} + payout {entry.payout}: {entry}"
            elif work > 0:
                served[key] += 1
            elif entry.vested or entry.forfeited or (key in before and before[key] != book.get(key)):
                return f"{rid} {key}: an idle member changed its account"
            if work > 0 or failed:
                earned[(rid, key)] = entry.payout
                served_at[(rid, key)] = served[key]
            for m in entry.vested:
                vested_by[(m.request_id, key)] += m.amount
                if not resized and served[key] - served_at[(m.request_id, key)] != size:
                    return f"{rid} {key}: amount from {m.request_id} vested after {served[key] - served_at[(m.request_id, key)]} served requests, V={size}"
            for m in entry.forfeited:
                forfeited_by[(m.request_id, key)] += m.amount
        for key, account in book.items():
            if not account_conserved(account):
                return f"{rid} {key}: held {account.held} + vested {account.vested} + forfeited {account.forfeited} != paid {account.paid}"
            if account.served != served[key]:
                return f"{rid} {key}: served {account.served} != {served[key]}"
        held_by: Counter[tuple[str, str]] = Counter()
        for key, account in book.items():
            for source, amount in zip(account.sources, account.window):
                if amount:
                    held_by[(str(source), key)] += amount
        for (source, key), amount in earned.items():
            accounted = held_by[(source, key)] + vested_by[(source, key)] + forfeited_by[(source, key)]
            if accounted != amount:
                return f"after {rid}: payout {amount} of {source} to {key} accounted {accounted} times over"
    return ""


@register("escrow_book_concrete", spec_functions=(SETTLE,), evidence=Evidence.TESTED,
          bound="300 seeded random sequences: <=12 requests, 1-3 keys, V<=4 (resized in ~30%), M<=5")
def escrow_book_concrete() -> Iterator[Obligation]:
    """settle_escrow: per-key E3, every payout accounted exactly once by source, served counts, P1, E1, E2, E4."""
    start = time.perf_counter()
    rng = random.Random(20251130)
    for index in range(300):
        problem = _check_sequence(rng)
        if problem:
            yield concrete("settle_escrow on random sequences", False, time.perf_counter() - start,
                           f"sequence {index}: {problem}")
            return
    yield concrete("settle_escrow on 300 random request sequences", True, time.perf_counter() - start)
