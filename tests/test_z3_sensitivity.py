"""The checks are about the shipped spec code: break a spec function a check runs, and the check
(not just a hand-written mutant claim) must come back FAILED.

The registered claim mutants in ``proofs/z3`` are wrong *claims*; the implementation mutants of
``verisplit.proofs_z3.mutants.MUTANTS`` are wrong *code*: each swaps a plausible wrong version of one
spec function (flipped predicate, off-by-one, wrong culprit, dropped condition, ...) into every module
that binds it, runs the unchanged check, and requires FAILED. Every non-settlement check needs at
least two such mutants; docs/proofs.md carries the generated mutant-by-check table.
Adding a mutant is one entry in ``MUTANTS`` (settlement rows included).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from verisplit.proofs_z3 import mutants
from verisplit.proofs_z3.core import Kind, Status, run_check
from verisplit.proofs_z3.mutants import MUTANTS, Mutant
from verisplit.proofs_z3.runner import load_checks
from verisplit.spec import cohort as spec_cohort
from verisplit.spec import commitment as spec_commitment

_BASELINE: dict[str, Status] = {}


def _is_settlement(check_name: str) -> bool:
    check = load_checks()[check_name]
    return any(f.startswith("verisplit.spec.settlement.") for f in check.spec_functions)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[f"{m.check}-{m.name}" for m in MUTANTS])
def test_check_fails_when_the_spec_function_it_runs_is_broken(mutant: Mutant) -> None:
    check = load_checks()[mutant.check]
    if mutant.check not in _BASELINE:
        _BASELINE[mutant.check] = run_check(check).status
    assert _BASELINE[mutant.check] in (Status.PROVED, Status.TESTED)  # baseline on the shipped code
    result = mutants.run_mutant(mutant)
    assert result.status is Status.FAILED, (mutant.check, mutant.name, result.status, result.detail)


def test_every_check_has_mutants_and_every_non_settlement_check_at_least_two() -> None:
    checks = {name: c for name, c in load_checks().items() if c.kind is Kind.CHECK}
    per_check = Counter(m.check for m in MUTANTS)
    assert set(per_check) <= set(checks), sorted(set(per_check) - set(checks))
    too_few = {name: per_check[name] for name in checks if per_check[name] < (1 if _is_settlement(name) else 2)}
    assert too_few == {}


def test_mutant_rows_are_well_formed() -> None:
    keys = [(m.check, m.name) for m in MUTANTS]
    assert len(keys) == len(set(keys)), "duplicate (check, mutant name)"
    for m in MUTANTS:
        module, _, attribute = m.target.partition(":")
        assert module.startswith("verisplit.spec.") and attribute, m.target
        assert callable(getattr(__import__(module, fromlist=[attribute]), attribute)), m.target
        assert m.description


def test_applied_patches_every_binding_and_restores_them() -> None:
    load_checks()
    from verisplit.proofs_z3 import check_chain

    original = spec_commitment.first_failing_link
    row = next(m for m in MUTANTS if m.target.endswith(":first_failing_link"))
    with mutants.applied(row):
        assert spec_commitment.first_failing_link is row.replacement
        assert check_chain.first_failing_link is row.replacement
    assert spec_commitment.first_failing_link is original and check_chain.first_failing_link is original
    assert spec_cohort.tiling_conditions.__module__ == "verisplit.spec.cohort"


def test_mutant_table_in_docs_is_regenerated_identically(tmp_path: Any) -> None:
    assert mutants.table_in_sync(), "docs/proofs.md mutant table is stale: run `verisplit prove --mutant-table`"
    stale = tmp_path / "proofs.md"
    stale.write_text(f"intro\n{mutants.START}\n| old |\n{mutants.END}\noutro\n", encoding="utf-8")
    assert not mutants.table_in_sync(stale)
    mutants.write_table(stale)
    assert mutants.table_in_sync(stale)
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("\noutro\n")
    for m in MUTANTS:
        assert f"| `{m.check}` |" in text and f"`{m.name}`" in text


def test_ceiling_division_is_a_real_counterexample_to_the_residual_bound() -> None:
    """The issue-14 case: with ceiling slices, settle(2, three equal values) has residual -1, and
    residual_bound reports a counterexample instead of PROVED."""
    from verisplit.spec import settlement as spec_settlement

    row = next(m for m in MUTANTS if (m.check, m.name) == ("residual_bound", "ceiling_slice"))
    with mutants.applied(row):
        ones = {"a": 1, "b": 1, "c": 1}
        assert spec_settlement.settle(2, ones, ones, "lead").residual == -1
    result = mutants.run_mutant(row)
    assert result.status is Status.FAILED and "counterexample" in result.detail, result.detail
