"""The Z3 checks are about the shipped spec code: break the spec function a check runs, and the check
(not just a hand-written mutant claim) must come back FAILED.

The registered mutants in ``proofs/z3`` are wrong *claims*; these tests instead swap a wrong
*implementation* into the name the check module calls (``monkeypatch`` on the check module's global),
run the unchanged check, and require FAILED. A check that stayed PROVED here would be vacuous with
respect to the code it cites.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from verisplit.proofs_z3 import check_audit, check_chain, check_deterrence, check_settlement, check_tiling
from verisplit.proofs_z3.core import Status, run_check
from verisplit.proofs_z3.runner import load_checks
from verisplit.spec import settlement as spec_settlement
from verisplit.spec.arith import all_of, fdiv, ite, negate
from verisplit.spec.commitment import link_rule


def _pays_failed(fee: Any, weights: Any, flags: Any) -> Any:
    payouts, residual, refund = spec_settlement.settle_parts(fee, weights, [False] * len(weights))
    _, _, real_refund = spec_settlement.settle_parts(fee, weights, flags)
    return payouts, residual, real_refund


def _residual_forgets_refund(fee: Any, weights: Any, flags: Any) -> Any:
    payouts, _, refund = spec_settlement.settle_parts(fee, weights, flags)
    paid: Any = 0
    for p in payouts:
        paid = paid + p
    return payouts, fee - paid, refund


def _residual_plus_one(fee: Any, weights: Any, flags: Any) -> Any:
    payouts, residual, refund = spec_settlement.settle_parts(fee, weights, flags)
    shift = 1 if len(weights) > 1 else 0  # the residual bound fails first at N = 2 (residual 1 -> 2)
    return payouts, residual + shift, refund - shift  # the fee is still conserved


def _residual_plus_one_plain(fee: Any, weights: Any, flags: Any) -> Any:
    payouts, residual, refund = spec_settlement.settle_parts(fee, weights, flags)
    return payouts, residual + 1, refund


def _renormalise_over_survivors(fee: Any, weights: Any, flags: Any) -> Any:
    survivors: Any = 0
    for w, f in zip(weights, flags):
        survivors = survivors + ite(f, 0, w)
    divisor = ite(survivors >= 1, survivors, 1)
    payouts = [ite(f, 0, fdiv(fee * w, divisor)) for w, f in zip(weights, flags)]
    paid: Any = 0
    for p in payouts:
        paid = paid + p
    return payouts, fee - paid, 0


def _ceiling_slice(fee: Any, weight: Any, total: Any) -> Any:
    return fdiv(fee * weight + total - 1, total)


def _bare_work_value(price: Any, work: Any) -> Any:
    return work


def _stale_chain(first: Any, inputs: Any, outputs: Any) -> Any:
    verdict: Any = len(inputs)
    for index in reversed(range(len(inputs))):
        verdict = ite(negate(link_rule(first, inputs[index])), index, verdict)
    return verdict


def _chain_skips_link0(first: Any, inputs: Any, outputs: Any) -> Any:
    verdict: Any = len(inputs)
    for index in reversed(range(1, len(inputs))):
        verdict = ite(negate(link_rule(outputs[index - 1], inputs[index])), index, verdict)
    return verdict


def _tiles_allow_empty(firsts: Any, ends: Any, num_layers: Any) -> Any:
    conditions = []
    previous: Any = 0
    for first, end in zip(firsts, ends):
        conditions.append(first == previous)
        previous = end
    conditions.append(previous == num_layers)
    return all_of(*conditions) if firsts else False


def _draw_non_strict(draw: Any, p: Any) -> Any:
    return draw * p.denominator <= p.numerator * (1 << 64)


def _d1_without_savings_bound(loss: Any, whole: Any, savings: Any, shard: Any) -> Any:
    return all_of(loss >= whole, 0 <= savings, shard <= whole), loss - savings >= 0


BROKEN: list[tuple[str, Any, str, Callable[..., Any]]] = [
    ("chain_unmodified", check_chain, "first_broken_link", _stale_chain),
    ("chain_substitution", check_chain, "first_broken_link", _chain_skips_link0),
    ("tiling_iff", check_tiling, "tiles_exactly", _tiles_allow_empty),
    ("audit_functional", check_audit, "draw_selects", _draw_non_strict),
    ("deterrence_corollary", check_deterrence, "shard_deterred_given_whole", _d1_without_savings_bound),
]


@pytest.mark.parametrize("check_name,module,attribute,broken", BROKEN, ids=[b[0] + "-" + b[3].__name__ for b in BROKEN])
def test_check_fails_when_the_spec_function_it_runs_is_broken(check_name: str, module: Any, attribute: str,
                                                              broken: Callable[..., Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    check = load_checks()[check_name]
    assert run_check(check).status is Status.PROVED  # baseline on the shipped code
    monkeypatch.setattr(module, attribute, broken)
    result = run_check(check)
    assert result.status is Status.FAILED, (check_name, result.status, result.detail)


# Settlement: (check, the names to patch, broken implementation). A spec function is patched both in
# ``spec.settlement`` (so ``settle_parts`` calls the broken one) and in the check module (which
# imported it by name), as an edit of the spec's source would do; ``spec_only`` patches the spec alone,
# so the check's lemmas still describe the shipped function but ``settle_parts`` no longer uses it.
SPEC_AND_CHECK = "spec+check"
SPEC_ONLY = "spec_only"
CHECK_ONLY = "check_only"
SETTLEMENT_BROKEN: list[tuple[str, str, str, Callable[..., Any]]] = [
    ("residual_bound", "provider_slice", SPEC_AND_CHECK, _ceiling_slice),
    ("residual_bound", "provider_slice", SPEC_ONLY, _ceiling_slice),
    ("residual_bound", "settle_parts", CHECK_ONLY, _residual_plus_one),
    ("fee_conservation", "settle_parts", CHECK_ONLY, _residual_forgets_refund),
    ("fee_conservation", "settle_parts", CHECK_ONLY, _residual_plus_one_plain),
    ("fee_conservation", "settle_parts", CHECK_ONLY, _pays_failed),
    ("forfeit_isolation", "settle_parts", CHECK_ONLY, _pays_failed),
    ("forfeit_isolation", "settle_parts", CHECK_ONLY, _renormalise_over_survivors),
    ("quote_paid_exactly", "provider_value", SPEC_AND_CHECK, _bare_work_value),
    ("quote_paid_exactly", "settle_parts", CHECK_ONLY, _pays_failed),
    ("quote_paid_exactly", "settle_parts", CHECK_ONLY, _residual_plus_one_plain),
    ("quote_paid_exactly", "settle_parts", CHECK_ONLY, _renormalise_over_survivors),
]


@pytest.mark.parametrize("check_name,attribute,where,broken", SETTLEMENT_BROKEN,
                         ids=[f"{b[0]}-{b[3].__name__}-{b[2]}" for b in SETTLEMENT_BROKEN])
def test_settlement_check_fails_when_the_spec_is_broken(check_name: str, attribute: str, where: str,
                                                        broken: Callable[..., Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    check = load_checks()[check_name]
    assert run_check(check).status is Status.PROVED  # baseline on the shipped code
    if where in (SPEC_AND_CHECK, SPEC_ONLY):
        monkeypatch.setattr(spec_settlement, attribute, broken)
    if where in (SPEC_AND_CHECK, CHECK_ONLY):
        monkeypatch.setattr(check_settlement, attribute, broken)
    result = run_check(check)
    assert result.status is Status.FAILED, (check_name, result.status, result.detail)


def test_ceiling_division_is_a_real_counterexample_to_the_residual_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue-14 case: with ceiling slices, settle(2, three equal values) has residual -1, and
    residual_bound reports it instead of PROVED."""
    monkeypatch.setattr(spec_settlement, "provider_slice", _ceiling_slice)
    monkeypatch.setattr(check_settlement, "provider_slice", _ceiling_slice)
    ones = {"a": 1, "b": 1, "c": 1}
    assert spec_settlement.settle(2, ones, ones, "lead").residual == -1
    result = run_check(load_checks()["residual_bound"])
    assert result.status is Status.FAILED and "counterexample" in result.detail, result.detail
