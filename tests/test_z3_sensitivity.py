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
from verisplit.spec.arith import all_of, ite, negate
from verisplit.spec.commitment import link_rule


def _pays_failed(fee: Any, works: Any, flags: Any) -> Any:
    payouts, residual, refund = spec_settlement.settle_parts(fee, works, [False] * len(works))
    _, _, real_refund = spec_settlement.settle_parts(fee, works, flags)
    return payouts, residual, real_refund


def _residual_forgets_refund(fee: Any, works: Any, flags: Any) -> Any:
    payouts, _, refund = spec_settlement.settle_parts(fee, works, flags)
    paid: Any = 0
    for p in payouts:
        paid = paid + p
    return payouts, fee - paid, refund


def _residual_plus_one(fee: Any, works: Any, flags: Any) -> Any:
    payouts, residual, refund = spec_settlement.settle_parts(fee, works, flags)
    shift = 1 if len(works) > 1 else 0  # the residual bound fails first at N = 2 (residual 1 -> 2)
    return payouts, residual + shift, refund - shift


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
    ("forfeit_isolation", check_settlement, "settle_parts", _pays_failed),
    ("fee_conservation", check_settlement, "settle_parts", _residual_forgets_refund),
    ("residual_bound", check_settlement, "settle_parts", _residual_plus_one),
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
