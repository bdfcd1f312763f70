"""``verisplit prove``: run every Z3 check and mutant, one line each, then ``N passed, N failed``.

Every line starts with what it establishes: ``PROVED`` (Z3: all inputs within the stated bound, or all
N), ``TESTED`` (concrete runs, exhaustive over small cases or seeded random; a claim mutant refuted as
expected is also a test, of the check's sensitivity) or ``ASSUMED`` (a modelling assumption the
checks rely on, listed after them and not counted). A line that starts with ``FAILED``, ``UNKNOWN``
(including timeouts / resource limits) or ``MUTANT PROVED`` makes the exit status non-zero.
``--mutant-table`` instead regenerates the implementation-mutant table in docs/proofs.md.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Sequence

import click

from verisplit.proofs_z3.core import ASSUMPTIONS, CHECKS, Assumption, Check, CheckResult, Kind, Status, run_check

# One module per property; importing them fills the registry.
MODULES = ("check_settlement", "check_deterrence", "check_chain", "check_tiling", "check_audit", "check_soundness",
           "check_escrow", "check_rollback", "check_recovery",
           "check_drafts")


def load_checks() -> dict[str, Check]:
    """Import every check module and return the registry (name -> Check), in registration order."""
    for module in MODULES:
        importlib.import_module(f"verisplit.proofs_z3.{module}")
    return CHECKS


def select(names: Sequence[str]) -> list[Check]:
    """The checks named (a property name also selects its mutants); all when ``names`` is empty.

    Raises ``click.BadParameter`` naming an unknown check."""
    checks = load_checks()
    if not names:
        return list(checks.values())
    unknown = [n for n in names if n not in checks and not any(c.property == n for c in checks.values())]
    if unknown:
        raise click.BadParameter(f"unknown check(s) {unknown}; known: {sorted(checks)}", param_hint="--only")
    wanted = set(names)
    return [c for c in checks.values() if c.name in wanted or c.property in wanted]


def run_all(names: Sequence[str] = ()) -> list[CheckResult]:
    """Run the selected checks in order and return their results (no printing)."""
    return [run_check(check) for check in select(names)]


def summary(results: Sequence[CheckResult]) -> tuple[int, int]:
    """(passed, failed) counts; a mutant passes when refuted."""
    passed = sum(1 for r in results if r.status.passed)
    return passed, len(results) - passed


def assumptions_used(checks: Sequence[Check]) -> list[Assumption]:
    """The registered assumptions the given checks rely on, in registration order."""
    used = {name for check in checks for name in check.assumes}
    return [a for name, a in ASSUMPTIONS.items() if name in used]


def line_status(result: CheckResult) -> str:
    """The first word of a result's line: PROVED / TESTED when it passed (a refuted mutant is TESTED),
    else FAILED / UNKNOWN / MUTANT PROVED."""
    if result.status is Status.REFUTED:
        return "TESTED"
    return result.status.value


def _line(result: CheckResult, verbose: bool = False) -> str:
    check = result.check
    if check.kind is Kind.MUTANT:
        name = f"mutant {check.name} ({'refuted as expected' if result.status.passed else 'NOT refuted'})"
    else:
        name = check.name
        if check.assumes:
            name += f" [assumes {', '.join(check.assumes)}]"
    text = f"{line_status(result):<14} {name:<70} {result.seconds:6.2f}s  bound: {check.bound}"
    detail = result.detail
    if detail and (not result.status.passed or verbose):
        text += f"\n    {detail}"
    return text


def _assumption_line(assumption: Assumption, checks: Sequence[Check]) -> str:
    users = [c.name for c in checks if assumption.name in c.assumes]
    return f"{'ASSUMED':<14} {assumption.name}: {assumption.statement} (relied on by {', '.join(users)})"


def _as_json(results: Sequence[CheckResult], seconds: float) -> str:
    passed, failed = summary(results)
    rows = [{
        "name": r.check.name,
        "kind": r.check.kind.value,
        "property": r.check.property,
        "status": r.status.value,
        "evidence": r.check.evidence.value,
        "line_status": line_status(r),
        "assumes": list(r.check.assumes),
        "bound": r.check.bound,
        "seconds": round(r.seconds, 4),
        "spec_functions": list(r.check.spec_functions),
        "assumptions": list(r.check.assumptions),
        "obligations": [{"label": o.label, "verdict": o.verdict.value, "seconds": round(o.seconds, 4),
                         "counterexample": o.counterexample, "reason": o.reason} for o in r.obligations],
    } for r in results]
    assumed = [{"name": a.name, "statement": a.statement, "status": "ASSUMED"}
               for a in assumptions_used([r.check for r in results])]
    return json.dumps({"checks": rows, "assumptions": assumed, "passed": passed, "failed": failed,
                       "seconds": round(seconds, 3)}, indent=2)


@click.command("prove")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this check (a property name also runs its mutants); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
@click.option("--list", "list_only", is_flag=True, help="List check names and exit.")
@click.option("--verbose", is_flag=True, help="Also print each refuted mutant's counterexample.")
@click.option("--mutant-table", "mutant_table", is_flag=True,
              help="Regenerate the implementation-mutant table in docs/proofs.md (between its markers) and exit.")
@click.option("--check-mutant-table", "check_table", is_flag=True,
              help="Exit non-zero if docs/proofs.md's mutant table differs from a fresh generation.")
def prove_command(only: tuple[str, ...], as_json: bool, list_only: bool, verbose: bool, mutant_table: bool,
                  check_table: bool) -> None:
    """Run every Z3 check and mutant; exit non-zero on any FAILED, UNKNOWN or MUTANT PROVED."""
    if mutant_table or check_table:
        from verisplit.proofs_z3 import mutants

        if check_table:
            if not mutants.table_in_sync():
                raise click.ClickException(f"{mutants.DOCS} is out of date: run `verisplit prove --mutant-table`")
            click.echo(f"{mutants.DOCS}: mutant table in sync ({len(mutants.MUTANTS)} mutants)")
            return
        mutants.write_table()
        click.echo(f"wrote {len(mutants.MUTANTS)} mutants to {mutants.DOCS}")
        return
    if list_only:
        for check in select(only):
            evidence = "mutant" if check.kind is Kind.MUTANT else check.evidence.value
            click.echo(f"{evidence:<7} {check.name}  (spec: {', '.join(check.spec_functions)})")
        for assumption in assumptions_used(select(only)):
            click.echo(f"{'ASSUMED':<7} {assumption.name}: {assumption.statement}")
        return
    start = time.perf_counter()
    results: list[CheckResult] = []
    checks = select(only)
    for check in checks:
        result = run_check(check)
        results.append(result)
        if not as_json:
            click.echo(_line(result, verbose))
    seconds = time.perf_counter() - start
    passed, failed = summary(results)
    if as_json:
        click.echo(_as_json(results, seconds))
    else:
        for assumption in assumptions_used(checks):
            click.echo(_assumption_line(assumption, checks))
        click.echo(f"total {seconds:.2f}s")
        click.echo(f"{passed} passed, {failed} failed")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    prove_command()
