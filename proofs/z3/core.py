"""Proof infrastructure: ``valid`` (non-vacuous validity by refutation), check records, the registry.

Invariant kept by ``valid``: a claim is reported PROVED only when (1) its hypotheses are satisfiable
(the proof is not vacuous) and (2) hypotheses + ``Not(claim)`` is ``unsat``. ``sat`` yields the
counterexample; ``unknown`` (including a hit resource limit or timeout) is never a proof. Every solver
gets a deterministic ``rlimit`` plus a wall-clock timeout as a backstop.

Every registered check declares its **evidence**: ``PROVED`` (every obligation is a ``valid`` query:
all inputs within the stated bound, or all N) or ``TESTED`` (it runs concrete inputs: exhaustive over
small cases or seeded random). A check declared PROVED that yields a concrete obligation FAILS
(mislabelled), so the runner can never print PROVED for a test. Modelling assumptions are registered
separately (``assume``) and printed as ASSUMED; checks name the assumptions they rely on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable, Sequence

import z3

# Deterministic resource limit per solver call (z3 "rlimit" units) and a wall-clock backstop.
DEFAULT_RLIMIT = 20_000_000
DEFAULT_TIMEOUT_MS = 20_000


class Verdict(str, Enum):
    """Outcome of one solver obligation."""

    PROVED = "proved"  # hyps satisfiable and hyps + Not(claim) unsat
    TESTED = "tested"  # a concrete cross-check held on every input it ran
    COUNTEREXAMPLE = "counterexample"  # hyps + Not(claim) sat
    VACUOUS = "vacuous"  # hyps alone unsat: nothing was proved
    UNKNOWN = "unknown"  # solver gave up (rlimit, timeout, incompleteness)


@dataclass(frozen=True)
class Obligation:
    """Result of one ``valid`` call: what was asked, the verdict, a model if any, time taken."""

    label: str
    verdict: Verdict
    seconds: float
    counterexample: str = ""
    reason: str = ""


def _solver(rlimit: int, timeout_ms: int) -> z3.Solver:
    solver = z3.Solver()
    solver.set("rlimit", rlimit)
    solver.set("timeout", timeout_ms)
    return solver


def _format_model(model: z3.ModelRef, limit: int = 600) -> str:
    items = sorted((str(d.name()), str(model[d])) for d in model.decls() if d.arity() == 0)
    text = ", ".join(f"{k}={v}" for k, v in items)
    return text if len(text) <= limit else text[:limit] + " ..."


def valid(label: str, claim: Any, hyps: Sequence[Any] = (), bound: str = "",
          *, rlimit: int = DEFAULT_RLIMIT, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Obligation:
    """Check that ``hyps`` imply ``claim``: non-vacuity first, then refutation of ``Not(claim)``.

    ``bound`` is only descriptive (it is recorded in the label). Never raises on solver trouble:
    ``unknown`` comes back as ``Verdict.UNKNOWN`` with z3's reason.
    """
    name = f"{label} [{bound}]" if bound else label
    start = time.perf_counter()
    if isinstance(claim, bool):
        claim = z3.BoolVal(claim)
    hyp_list = [z3.BoolVal(h) if isinstance(h, bool) else h for h in hyps]
    solver = _solver(rlimit, timeout_ms)
    solver.add(*hyp_list)
    first = solver.check()
    if first == z3.unsat:
        return Obligation(name, Verdict.VACUOUS, time.perf_counter() - start, reason="hypotheses are unsatisfiable")
    if first == z3.unknown:
        return Obligation(name, Verdict.UNKNOWN, time.perf_counter() - start,
                          reason=f"non-vacuity check: {solver.reason_unknown()}")
    solver.add(z3.Not(claim))
    second = solver.check()
    seconds = time.perf_counter() - start
    if second == z3.unsat:
        return Obligation(name, Verdict.PROVED, seconds)
    if second == z3.sat:
        return Obligation(name, Verdict.COUNTEREXAMPLE, seconds, counterexample=_format_model(solver.model()))
    return Obligation(name, Verdict.UNKNOWN, seconds, reason=solver.reason_unknown())


def concrete(label: str, ok: bool, seconds: float, detail: str = "") -> Obligation:
    """Record a concrete (exhaustive or randomised) cross-check as an obligation: ``TESTED`` when it
    held, a counterexample with ``detail`` naming the input when it did not. Never PROVED."""
    if ok:
        return Obligation(label, Verdict.TESTED, seconds)
    return Obligation(label, Verdict.COUNTEREXAMPLE, seconds, counterexample=detail)


class Kind(str, Enum):
    CHECK = "check"
    MUTANT = "mutant"


class Evidence(str, Enum):
    """What a passing check establishes."""

    PROVED = "PROVED"  # Z3 validity for every input within the stated bound (or all N)
    TESTED = "TESTED"  # concrete runs: exhaustive over small cases, or seeded random


class Status(str, Enum):
    """Line status printed by the runner."""

    PROVED = "PROVED"
    TESTED = "TESTED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"
    REFUTED = "REFUTED"  # a mutant, refuted with a counterexample, as expected
    MUTANT_PROVED = "MUTANT PROVED"  # a mutant that Z3 could not refute: the check is too weak

    @property
    def passed(self) -> bool:
        return self in (Status.PROVED, Status.TESTED, Status.REFUTED)


@dataclass(frozen=True)
class Assumption:
    """A modelling assumption the checks rely on and no check discharges (printed as ASSUMED)."""

    name: str
    statement: str


ASSUMPTIONS: dict[str, Assumption] = {}


def assume(name: str, statement: str) -> str:
    """Register (once) and return the name of a modelling assumption; checks list it in ``assumes``."""
    existing = ASSUMPTIONS.get(name)
    if existing is not None and existing.statement != statement:
        raise ValueError(f"assumption {name!r} registered twice with different statements")
    ASSUMPTIONS[name] = Assumption(name, statement)
    return name


@dataclass(frozen=True)
class Check:
    """One registered check or mutant.

    ``name`` is what spec docstrings cite (``Z3: ``name``); ``spec_functions`` are dotted paths of the
    spec functions it executes; a mutant names the ``property`` (check) it shadows. ``evidence`` is
    what a pass establishes (PROVED or TESTED); ``assumptions`` are free-text side conditions and
    ``assumes`` the names of registered modelling assumptions (``ASSUMPTIONS``) it relies on.
    """

    name: str
    kind: Kind
    property: str
    spec_functions: tuple[str, ...]
    bound: str
    assumptions: tuple[str, ...]
    description: str
    run: Callable[[], Iterable[Obligation]]
    evidence: Evidence = Evidence.PROVED
    assumes: tuple[str, ...] = ()


@dataclass
class CheckResult:
    """Aggregated outcome of one check: status, its obligations and total time."""

    check: Check
    status: Status
    seconds: float
    obligations: list[Obligation] = field(default_factory=list)

    @property
    def detail(self) -> str:
        """The first interesting obligation (failure, or the mutant's counterexample)."""
        for ob in self.obligations:
            if self.check.kind is Kind.MUTANT and ob.verdict is Verdict.COUNTEREXAMPLE:
                return f"{ob.label}: counterexample {ob.counterexample}"
            if self.check.kind is Kind.CHECK and ob.verdict not in (Verdict.PROVED, Verdict.TESTED):
                text = ob.counterexample or ob.reason
                return f"{ob.label}: {ob.verdict.value} {text}".strip()
            if (self.check.kind is Kind.CHECK and self.check.evidence is Evidence.PROVED
                    and ob.verdict is Verdict.TESTED):
                return f"{ob.label}: concrete (TESTED) obligation in a check declared PROVED"
        if self.check.kind is Kind.MUTANT and self.obligations:
            bad = [ob for ob in self.obligations if ob.verdict is not Verdict.PROVED]
            if bad:
                return f"{bad[0].label}: {bad[0].verdict.value} {bad[0].reason}".strip()
        return ""


def judge(check: Check, obligations: list[Obligation]) -> Status:
    """Status of a check from its obligations.

    A check passes iff it has at least one obligation and all are PROVED (Z3) or TESTED (concrete);
    it is then PROVED if it declares ``Evidence.PROVED`` and TESTED if it declares TESTED. A check that
    declares PROVED but yields a TESTED obligation is FAILED (mislabelled). Any counterexample or
    vacuous hypothesis set is FAILED; otherwise UNKNOWN. A mutant is REFUTED iff some obligation found
    a counterexample (its hypotheses were satisfiable by construction of ``valid``); any vacuous
    obligation fails it (a vacuous mutant would be refuted for the wrong reason); all PROVED is
    MUTANT PROVED; otherwise UNKNOWN.
    """
    verdicts = [ob.verdict for ob in obligations]
    if check.kind is Kind.CHECK:
        if any(v in (Verdict.COUNTEREXAMPLE, Verdict.VACUOUS) for v in verdicts) or not verdicts:
            return Status.FAILED
        if check.evidence is Evidence.PROVED and any(v is Verdict.TESTED for v in verdicts):
            return Status.FAILED
        if all(v in (Verdict.PROVED, Verdict.TESTED) for v in verdicts):
            return Status.PROVED if check.evidence is Evidence.PROVED else Status.TESTED
        return Status.UNKNOWN
    if any(v is Verdict.VACUOUS for v in verdicts):
        return Status.FAILED
    if any(v is Verdict.COUNTEREXAMPLE for v in verdicts):
        return Status.REFUTED
    if verdicts and all(v is Verdict.PROVED for v in verdicts):
        return Status.MUTANT_PROVED
    return Status.UNKNOWN


def run_check(check: Check, stop_at_failure: bool = False) -> CheckResult:
    """Run every obligation of ``check`` and judge it; an exception is a FAILED result, not a crash.
    With ``stop_at_failure`` the run ends at the first obligation that neither PROVED nor TESTED
    (used by the sensitivity tests, which only need to see the check fail)."""
    start = time.perf_counter()
    obligations: list[Obligation] = []
    try:
        for ob in check.run():
            obligations.append(ob)
            if stop_at_failure and ob.verdict not in (Verdict.PROVED, Verdict.TESTED):
                break
    except Exception as exc:  # noqa: BLE001 - a broken check must be reported, not crash the run
        seconds = time.perf_counter() - start
        obligations.append(Obligation(check.name, Verdict.UNKNOWN, seconds, reason=f"raised {type(exc).__name__}: {exc}"))
        return CheckResult(check, Status.FAILED, seconds, obligations)
    return CheckResult(check, judge(check, obligations), time.perf_counter() - start, obligations)


CHECKS: dict[str, Check] = {}


def register(name: str, *, kind: Kind = Kind.CHECK, property: str | None = None,
             spec_functions: Sequence[str], bound: str, assumptions: Sequence[str] = (),
             evidence: Evidence = Evidence.PROVED, assumes: Sequence[str] = (),
             ) -> Callable[[Callable[[], Iterable[Obligation]]], Callable[[], Iterable[Obligation]]]:
    """Decorator adding a check (or mutant) to ``CHECKS``; the function's docstring is its description.
    ``assumes`` must name registered assumptions (``assume``)."""

    def wrap(fn: Callable[[], Iterable[Obligation]]) -> Callable[[], Iterable[Obligation]]:
        if name in CHECKS:
            raise ValueError(f"duplicate check name {name!r}")
        unknown = [a for a in assumes if a not in ASSUMPTIONS]
        if unknown:
            raise ValueError(f"check {name!r} assumes unregistered assumption(s) {unknown}")
        CHECKS[name] = Check(
            name=name,
            kind=kind,
            property=property or name,
            spec_functions=tuple(spec_functions),
            bound=bound,
            assumptions=tuple(assumptions),
            description=(fn.__doc__ or "").strip(),
            run=fn,
            evidence=evidence,
            assumes=tuple(assumes),
        )
        return fn

    return wrap
