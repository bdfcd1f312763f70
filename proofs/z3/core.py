"""Proof infrastructure: ``valid`` (non-vacuous validity by refutation), check records, the registry.

Invariant kept by ``valid``: a claim is reported PROVED only when (1) its hypotheses are satisfiable
(the proof is not vacuous) and (2) hypotheses + ``Not(claim)`` is ``unsat``. ``sat`` yields the
counterexample; ``unknown`` (including a hit resource limit or timeout) is never a proof. Every solver
gets a deterministic ``rlimit`` plus a wall-clock timeout as a backstop.
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
    """Record a concrete (exhaustive or randomised) cross-check as an obligation.

    A failed concrete check is a counterexample with ``detail`` naming the input.
    """
    if ok:
        return Obligation(label, Verdict.PROVED, seconds)
    return Obligation(label, Verdict.COUNTEREXAMPLE, seconds, counterexample=detail)


class Kind(str, Enum):
    CHECK = "check"
    MUTANT = "mutant"


class Status(str, Enum):
    """Line status printed by the runner."""

    PROVED = "PROVED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"
    REFUTED = "REFUTED"  # a mutant, refuted with a counterexample, as expected
    MUTANT_PROVED = "MUTANT PROVED"  # a mutant that Z3 could not refute: the check is too weak

    @property
    def passed(self) -> bool:
        return self in (Status.PROVED, Status.REFUTED)


@dataclass(frozen=True)
class Check:
    """One registered check or mutant.

    ``name`` is what spec docstrings cite (``Z3: ``name``); ``spec_functions`` are dotted paths of the
    spec functions it executes or restates; a mutant names the ``property`` (check) it shadows.
    """

    name: str
    kind: Kind
    property: str
    spec_functions: tuple[str, ...]
    bound: str
    assumptions: tuple[str, ...]
    description: str
    run: Callable[[], Iterable[Obligation]]


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
            if self.check.kind is Kind.CHECK and ob.verdict is not Verdict.PROVED:
                text = ob.counterexample or ob.reason
                return f"{ob.label}: {ob.verdict.value} {text}".strip()
        if self.check.kind is Kind.MUTANT and self.obligations:
            bad = [ob for ob in self.obligations if ob.verdict is not Verdict.PROVED]
            if bad:
                return f"{bad[0].label}: {bad[0].verdict.value} {bad[0].reason}".strip()
        return ""


def judge(check: Check, obligations: list[Obligation]) -> Status:
    """Status of a check from its obligations.

    A check is PROVED iff it has at least one obligation and all are PROVED; any counterexample or
    vacuous hypothesis set is FAILED; otherwise UNKNOWN. A mutant is REFUTED iff some obligation found
    a counterexample (its hypotheses were satisfiable by construction of ``valid``); any vacuous
    obligation fails it (a vacuous mutant would be refuted for the wrong reason); all PROVED is
    MUTANT PROVED; otherwise UNKNOWN.
    """
    verdicts = [ob.verdict for ob in obligations]
    if check.kind is Kind.CHECK:
        if verdicts and all(v is Verdict.PROVED for v in verdicts):
            return Status.PROVED
        if any(v in (Verdict.COUNTEREXAMPLE, Verdict.VACUOUS) for v in verdicts) or not verdicts:
            return Status.FAILED
        return Status.UNKNOWN
    if any(v is Verdict.VACUOUS for v in verdicts):
        return Status.FAILED
    if any(v is Verdict.COUNTEREXAMPLE for v in verdicts):
        return Status.REFUTED
    if verdicts and all(v is Verdict.PROVED for v in verdicts):
        return Status.MUTANT_PROVED
    return Status.UNKNOWN


def run_check(check: Check) -> CheckResult:
    """Run every obligation of ``check`` and judge it; an exception is a FAILED result, not a crash."""
    start = time.perf_counter()
    obligations: list[Obligation] = []
    try:
        for ob in check.run():
            obligations.append(ob)
    except Exception as exc:  # noqa: BLE001 - a broken check must be reported, not crash the run
        seconds = time.perf_counter() - start
        obligations.append(Obligation(check.name, Verdict.UNKNOWN, seconds, reason=f"raised {type(exc).__name__}: {exc}"))
        return CheckResult(check, Status.FAILED, seconds, obligations)
    return CheckResult(check, judge(check, obligations), time.perf_counter() - start, obligations)


CHECKS: dict[str, Check] = {}


def register(name: str, *, kind: Kind = Kind.CHECK, property: str | None = None,
             spec_functions: Sequence[str], bound: str, assumptions: Sequence[str] = (),
             ) -> Callable[[Callable[[], Iterable[Obligation]]], Callable[[], Iterable[Obligation]]]:
    """Decorator adding a check (or mutant) to ``CHECKS``; the function's docstring is its description."""

    def wrap(fn: Callable[[], Iterable[Obligation]]) -> Callable[[], Iterable[Obligation]]:
        if name in CHECKS:
            raise ValueError(f"duplicate check name {name!r}")
        CHECKS[name] = Check(
            name=name,
            kind=kind,
            property=property or name,
            spec_functions=tuple(spec_functions),
            bound=bound,
            assumptions=tuple(assumptions),
            description=(fn.__doc__ or "").strip(),
            run=fn,
        )
        return fn

    return wrap
