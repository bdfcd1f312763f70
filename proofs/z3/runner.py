"""``verisplit prove``: run every Z3 check and mutant, one line each, then ``N passed, N failed``.

Exit status is 0 only when every check is PROVED and every mutant REFUTED; FAILED, UNKNOWN
(including timeouts / resource limits) and MUTANT PROVED all make it non-zero.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Sequence

import click

from verisplit.proofs_z3.core import CHECKS, Check, CheckResult, Kind, run_check

# One module per property; importing them fills the registry.
MODULES = ("check_settlement", "check_deterrence", "check_chain", "check_tiling", "check_audit")


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


def _line(result: CheckResult) -> str:
    label = "mutant " if result.check.kind is Kind.MUTANT else ""
    status = result.status.value
    if result.check.kind is Kind.MUTANT and result.status.passed:
        status = "REFUTED as expected"
    text = f"{label + result.check.name:<62} {status:<20} {result.seconds:6.2f}s  bound: {result.check.bound}"
    detail = result.detail
    if detail and (not result.status.passed or result.check.kind is Kind.MUTANT):
        text += f"\n    {detail}"
    return text


def _as_json(results: Sequence[CheckResult], seconds: float) -> str:
    passed, failed = summary(results)
    rows = [{
        "name": r.check.name,
        "kind": r.check.kind.value,
        "property": r.check.property,
        "status": r.status.value,
        "bound": r.check.bound,
        "seconds": round(r.seconds, 4),
        "spec_functions": list(r.check.spec_functions),
        "assumptions": list(r.check.assumptions),
        "obligations": [{"label": o.label, "verdict": o.verdict.value, "seconds": round(o.seconds, 4),
                         "counterexample": o.counterexample, "reason": o.reason} for o in r.obligations],
    } for r in results]
    return json.dumps({"checks": rows, "passed": passed, "failed": failed, "seconds": round(seconds, 3)}, indent=2)


@click.command("prove")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this check (a property name also runs its mutants); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
@click.option("--list", "list_only", is_flag=True, help="List check names and exit.")
def prove_command(only: tuple[str, ...], as_json: bool, list_only: bool) -> None:
    """Run every Z3 check and mutant; exit non-zero on any FAILED, UNKNOWN or MUTANT PROVED."""
    if list_only:
        for check in select(only):
            click.echo(f"{check.kind.value:<7} {check.name}  (spec: {', '.join(check.spec_functions)})")
        return
    start = time.perf_counter()
    results: list[CheckResult] = []
    for check in select(only):
        result = run_check(check)
        results.append(result)
        if not as_json:
            click.echo(_line(result))
    seconds = time.perf_counter() - start
    passed, failed = summary(results)
    if as_json:
        click.echo(_as_json(results, seconds))
    else:
        click.echo(f"total {seconds:.2f}s")
        click.echo(f"{passed} passed, {failed} failed")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    prove_command()
