"""The Z3 runner: every check PROVED or TESTED as declared, every mutant REFUTED, every line labelled
PROVED / TESTED / ASSUMED, and the runner fails when it should."""

from __future__ import annotations

import re

import pytest
import z3
from click.testing import CliRunner

from verisplit.proofs_z3 import core
from verisplit.proofs_z3.core import (ASSUMPTIONS, Check, Evidence, Kind, Status, Verdict, concrete, judge,
                                      run_check, valid)
from verisplit.proofs_z3.runner import line_status, load_checks, prove_command, run_all, summary

PROPERTIES = {"fee_conservation", "residual_bound", "forfeit_isolation", "deterrence_corollary",
              "smaller_shard_more_deterred", "chain_substitution", "chain_unmodified", "chain_first_failure",
              "check_chain_concrete", "tiling_iff", "violations_iff_tiling", "cohort_violations_bridge",
              "router_reconstruction", "router_valid", "audit_functional", "audit_concrete"}
# What a sceptical reader is told each non-settlement check establishes (must match the registry).
EVIDENCE = {"tiling_iff": "PROVED", "violations_iff_tiling": "PROVED", "cohort_violations_bridge": "TESTED",
            "router_reconstruction": "PROVED", "router_valid": "TESTED", "chain_first_failure": "PROVED",
            "chain_substitution": "PROVED", "chain_unmodified": "PROVED", "check_chain_concrete": "TESTED",
            "audit_functional": "PROVED", "audit_concrete": "TESTED", "deterrence_corollary": "PROVED",
            "smaller_shard_more_deterred": "PROVED"}


@pytest.fixture(scope="module")
def results() -> list[core.CheckResult]:
    return run_all()


def test_every_required_property_is_registered() -> None:
    checks = load_checks()
    assert PROPERTIES <= {c.name for c in checks.values() if c.kind is Kind.CHECK}


def test_every_check_passes_with_its_declared_evidence(results: list[core.CheckResult]) -> None:
    bad = [(r.check.name, r.status.value, r.detail) for r in results
           if r.check.kind is Kind.CHECK and r.status.value != r.check.evidence.value]
    assert bad == []
    declared = {r.check.name: r.check.evidence.value for r in results if r.check.name in EVIDENCE}
    assert declared == EVIDENCE


def test_every_line_is_proved_tested_or_assumed(results: list[core.CheckResult]) -> None:
    assert {line_status(r) for r in results} <= {"PROVED", "TESTED"}
    out = CliRunner().invoke(prove_command, ["--only", "chain_first_failure", "--only", "check_chain_concrete",
                                             "--only", "audit_functional"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    body, summary_lines = lines[:-2], lines[-2:]
    assert body and all(line.split()[0] in ("PROVED", "TESTED", "ASSUMED") for line in body), body
    assert any(line.startswith("ASSUMED ") and "draw_uniform" in line for line in body)
    assert any(line.startswith("TESTED ") and "check_chain_concrete" in line for line in body)
    assert summary_lines[0].startswith("total ") and re.fullmatch(r"\d+ passed, 0 failed", summary_lines[1])


def test_proved_checks_yield_only_z3_obligations(results: list[core.CheckResult]) -> None:
    for r in results:
        if r.check.kind is Kind.CHECK and r.check.evidence is Evidence.PROVED:
            assert all(o.verdict is Verdict.PROVED for o in r.obligations), r.check.name
        if r.check.kind is Kind.CHECK and r.check.evidence is Evidence.TESTED:
            assert any(o.verdict is Verdict.TESTED for o in r.obligations), r.check.name


def test_assumptions_are_registered_and_used() -> None:
    checks = load_checks()
    used = {a for c in checks.values() for a in c.assumes}
    assert used and used <= set(ASSUMPTIONS)
    assert {"digest_injective", "draw_uniform", "draw_is_a_function", "signatures_unforgeable"} <= used


def test_every_mutant_refuted_with_a_counterexample(results: list[core.CheckResult]) -> None:
    mutants = [r for r in results if r.check.kind is Kind.MUTANT]
    assert mutants
    for r in mutants:
        assert r.status is Status.REFUTED, (r.check.name, r.status, r.detail)
        assert any(o.verdict is Verdict.COUNTEREXAMPLE and o.counterexample for o in r.obligations), r.check.name


def test_each_proved_property_has_a_claim_mutant(results: list[core.CheckResult]) -> None:
    """Every PROVED check keeps a wrong claim that Z3 must refute (TESTED checks and all checks are
    also covered by the implementation mutants of tests/test_z3_sensitivity.py)."""
    properties = {r.check.name for r in results if r.check.kind is Kind.CHECK}
    proved = {r.check.name for r in results if r.check.kind is Kind.CHECK and r.check.evidence is Evidence.PROVED}
    shadowed = {r.check.property for r in results if r.check.kind is Kind.MUTANT}
    assert shadowed <= properties  # every mutant names a real property
    assert proved - shadowed == set()


def test_summary_counts(results: list[core.CheckResult]) -> None:
    assert summary(results) == (len(results), 0)


def test_valid_reports_vacuous_counterexample_and_proved() -> None:
    x = z3.Int("x")
    assert valid("proved", x + 1 > x).verdict is Verdict.PROVED
    vacuous = valid("vacuous", x > 0, [x > 1, x < 0])
    assert vacuous.verdict is Verdict.VACUOUS
    cex = valid("cex", x > 0, [x > -5])
    assert cex.verdict is Verdict.COUNTEREXAMPLE and "x=" in cex.counterexample


def test_valid_treats_resource_limit_as_unknown() -> None:
    a, b, c = z3.Ints("a b c")
    # Fermat-like nonlinear query that a tiny rlimit cannot settle.
    hard = valid("hard", a * a * a + b * b * b != c * c * c, [a > 0, b > 0, c > 0], rlimit=2_000)
    assert hard.verdict is Verdict.UNKNOWN


def _fake(name: str, kind: Kind, obligations: list[core.Obligation], evidence: Evidence = Evidence.PROVED) -> Check:
    return Check(name, kind, name, ("verisplit.spec.arith.ite",), "n/a", (), "test double", lambda: iter(obligations),
                 evidence=evidence)


def test_judge_statuses() -> None:
    x = z3.Int("x")
    proved = valid("p", x == x)
    refuted = valid("r", x > 0)
    tested = concrete("t", True, 0.0)
    unknown = core.Obligation("u", Verdict.UNKNOWN, 0.0, reason="timeout")
    assert judge(_fake("a", Kind.CHECK, []), [proved]) is Status.PROVED
    # a concrete obligation can never make a check PROVED: mislabelled checks fail
    assert judge(_fake("a", Kind.CHECK, []), [proved, tested]) is Status.FAILED
    assert judge(_fake("a", Kind.CHECK, [], Evidence.TESTED), [proved, tested]) is Status.TESTED
    assert judge(_fake("a", Kind.CHECK, [], Evidence.TESTED), [concrete("t", False, 0.0, "x=1")]) is Status.FAILED
    assert judge(_fake("a", Kind.CHECK, []), [proved, refuted]) is Status.FAILED
    assert judge(_fake("a", Kind.CHECK, []), [proved, unknown]) is Status.UNKNOWN
    assert judge(_fake("a", Kind.CHECK, []), []) is Status.FAILED
    assert judge(_fake("m", Kind.MUTANT, []), [refuted]) is Status.REFUTED
    assert judge(_fake("m", Kind.MUTANT, []), [proved]) is Status.MUTANT_PROVED
    assert judge(_fake("m", Kind.MUTANT, []), [unknown]) is Status.UNKNOWN


def test_check_that_raises_is_failed_not_a_crash() -> None:
    def boom() -> list[core.Obligation]:
        raise RuntimeError("broken check")

    result = run_check(Check("boom", Kind.CHECK, "boom", (), "n/a", (), "", boom))
    assert result.status is Status.FAILED and "broken check" in result.detail


def test_cli_exit_zero_and_summary_line() -> None:
    out = CliRunner().invoke(prove_command, ["--only", "deterrence_corollary", "--only", "audit_functional"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1])
    assert any(line.startswith("PROVED ") and " deterrence_corollary " in line for line in lines)
    assert any(line.startswith("TESTED ") and "refuted as expected" in line for line in lines)


def test_cli_fails_when_a_mutant_proves(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = load_checks()
    x = z3.Int("x")
    monkeypatch.setitem(checks, "zz_bad_mutant", _fake("zz_bad_mutant", Kind.MUTANT, [valid("m", x == x)]))
    out = CliRunner().invoke(prove_command, ["--only", "zz_bad_mutant"])
    assert out.exit_code == 1
    assert out.output.startswith("MUTANT PROVED")
    assert out.output.strip().splitlines()[-1] == "0 passed, 1 failed"


def test_cli_fails_when_a_proved_check_only_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = load_checks()
    monkeypatch.setitem(checks, "zz_mislabelled", _fake("zz_mislabelled", Kind.CHECK, [concrete("t", True, 0.0)]))
    out = CliRunner().invoke(prove_command, ["--only", "zz_mislabelled"])
    assert out.exit_code == 1 and out.output.startswith("FAILED")
    assert "declared PROVED" in out.output


def test_cli_unknown_name_is_a_clear_error() -> None:
    out = CliRunner().invoke(prove_command, ["--only", "no_such_check"])
    assert out.exit_code != 0 and "unknown check(s) ['no_such_check']" in out.output
