"""The protocol state machine: legal traces settle correctly; illegal transitions name the rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from verisplit.spec.audit import AuditVerdict
from verisplit.spec.cohort import ModelSpec, Offer, quote_fee
from verisplit.spec.commitment import StepContext
from verisplit.spec.protocol import (ABORTED, SETTLED, AddOffer, CommitStep, CompleteRequest, Eject, FormCohort,
                                     IllegalTransition, OpenRequest, RecordAudit, SettleRequest, apply,
                                     expected_settlement, initial_state, replay)
from verisplit.spec.settlement import quoted_share
from spec_helpers import digest_of, key, resign, signed_chain

MODEL = ModelSpec("m", 4, (1, 1, 2, 2))
KEYS = {f"p{i}": key(i) for i in range(2)}
OFFERS = [Offer("p0", bytes(KEYS["p0"].verify_key), 0, 2, 1, "a"), Offer("p1", bytes(KEYS["p1"].verify_key), 2, 4, 1, "b")]


def served_state(tamper_link: int | None = None, offers: list[Offer] = OFFERS, fee: int = 1000):  # type: ignore[no-untyped-def]
    events = [AddOffer(o) for o in offers] + [FormCohort("c"), OpenRequest("r", "c", fee)]
    state = replay(MODEL, events)
    cohort = state.cohorts["c"]
    ctx0 = StepContext("m", "r", 0, 0, 3)
    chain0 = signed_chain(cohort, ctx0, [1, 2, 3], KEYS)
    state = apply(state, CommitStep("r", digest_of(1), 3, tuple(chain0)))
    ctx1 = StepContext("m", "r", 1, 3, 1)
    chain1 = signed_chain(cohort, ctx1, [4, 5, 6], KEYS)
    if tamper_link is not None:
        pid = f"p{tamper_link}"
        chain1[tamper_link] = resign(chain1[tamper_link], KEYS[pid], input_digest=digest_of(99))
    return apply(state, CommitStep("r", digest_of(4), 1, tuple(chain1)))


def test_honest_trace_settles_by_work_served() -> None:
    state = apply(served_state(), CompleteRequest("r"))
    state = apply(state, RecordAudit(AuditVerdict("r", 1, "p1", True)))
    state = apply(state, SettleRequest("r", "lead"))
    request = state.requests["r"]
    assert request.status == SETTLED and request.work == (2 * 4, 4 * 4)
    assert request.settlement.payouts == {"p0": 333, "p1": 666}
    assert request.settlement.residual == 1 and state.ledger == (request.settlement,)


def test_chain_break_aborts_names_culprit_and_pays_the_honest_links() -> None:
    state = served_state(tamper_link=1)
    request = state.requests["r"]
    assert request.status == ABORTED and request.failed == {"p1"}
    assert request.chain_verdicts[-1].culprit == "p1"
    assert request.work == (2 * 4, 4 * 3)  # p0 served step 1, p1's step-1 link is not credited
    state = apply(state, SettleRequest("r", "lead"))
    settlement = state.requests["r"].settlement
    assert settlement.payouts["p1"] == 0 and settlement.refund > 0
    state = apply(state, Eject("p1", "input_mismatch"))
    assert state.registry.provider_ids() == {"p0"}
    with pytest.raises(IllegalTransition, match="banned"):
        apply(state, AddOffer(OFFERS[1]))


def test_illegal_transitions_are_rejected_with_reasons() -> None:
    state = served_state()
    with pytest.raises(IllegalTransition, match="no failed audit"):
        apply(state, Eject("p0", "spite"))
    with pytest.raises(IllegalTransition, match="only finished requests settle"):
        apply(state, SettleRequest("r", "lead"))
    with pytest.raises(IllegalTransition, match="audits follow completion"):
        apply(state, RecordAudit(AuditVerdict("r", 0, "p0", True)))
    done = apply(state, CompleteRequest("r"))
    with pytest.raises(IllegalTransition, match="not served by"):
        apply(done, RecordAudit(AuditVerdict("r", 0, "p1", True)))
    audited = apply(done, RecordAudit(AuditVerdict("r", 0, "p0", False, reason="distance")))
    with pytest.raises(IllegalTransition, match="already audited"):
        apply(audited, RecordAudit(AuditVerdict("r", 0, "p0", True)))
    with pytest.raises(IllegalTransition, match="differs from the spec"):
        settled = apply(audited, SettleRequest("r", "lead"))
        bogus = replace(settled.requests["r"].settlement, payouts={"p0": 333, "p1": 666})
        apply(audited, SettleRequest("r", "lead", claimed=bogus))
    with pytest.raises(IllegalTransition, match="already has an offer"):
        apply(state, AddOffer(OFFERS[0]))
    with pytest.raises(IllegalTransition, match="not the spec's choice"):
        fresh = replay(MODEL, [AddOffer(o) for o in OFFERS])
        cohort = apply(fresh, FormCohort("x")).cohorts["x"]
        apply(fresh, FormCohort("y", chosen=replace(cohort, assignments=cohort.assignments[::-1])))
    with pytest.raises(IllegalTransition, match="no cohort"):
        apply(initial_state(MODEL), FormCohort("z"))


def test_failed_audit_forfeits_only_that_slice() -> None:
    done = apply(served_state(), CompleteRequest("r"))
    honest = apply(done, SettleRequest("r", "lead")).requests["r"].settlement
    failed = apply(apply(done, RecordAudit(AuditVerdict("r", 0, "p0", False, 9.0, 9.0, "distance"))),
                   SettleRequest("r", "lead")).requests["r"].settlement
    assert failed.payouts["p0"] == 0 and failed.payouts["p1"] == honest.payouts["p1"]
    assert failed.refund == honest.payouts["p0"]


PRICED = [replace(OFFERS[0], price_per_work_unit=3), replace(OFFERS[1], price_per_work_unit=1)]  # p0 dearer


def test_prices_are_fixed_at_open_and_settlement_pays_price_times_work() -> None:
    state = apply(served_state(offers=PRICED), CompleteRequest("r"))
    request = state.requests["r"]
    assert request.prices == (3, 1) and request.work == (2 * 4, 4 * 4)
    s = apply(state, SettleRequest("r", "lead")).requests["r"].settlement
    assert s.values == {"p0": 24, "p1": 16}  # price x work, not bare work (8 vs 16)
    assert s.payouts == {"p0": 600, "p1": 400} and s.residual == 0
    # the registry's offers no longer matter once the request is open: settlement reads request.prices
    repriced = replace(state, registry=replace(state.registry, offers=tuple(
        replace(o, price_per_work_unit=99) for o in state.registry.offers)))
    assert expected_settlement(repriced, request, "lead") == s


def test_fee_equal_to_the_quote_pays_each_provider_its_quoted_share() -> None:
    fresh = replay(MODEL, [AddOffer(o) for o in PRICED] + [FormCohort("c")])
    positions = 4  # served_state commits steps of 3 and 1 positions
    fee = quote_fee(fresh.cohorts["c"], MODEL, PRICED, positions)
    state = apply(served_state(offers=PRICED, fee=fee), CompleteRequest("r"))
    s = apply(state, SettleRequest("r", "lead")).requests["r"].settlement
    assert fee == 40 and s.residual == 0 and s.refund == 0
    assert s.payouts == {"p0": quoted_share(3, 2, positions), "p1": quoted_share(1, 4, positions)} == s.values


def test_nothing_served_refunds_the_whole_fee() -> None:
    state = replay(MODEL, [AddOffer(o) for o in OFFERS] + [FormCohort("c"), OpenRequest("r", "c", 1000)])
    chain = signed_chain(state.cohorts["c"], StepContext("m", "r", 0, 0, 2), [1, 2, 3], KEYS)
    chain[0] = resign(chain[0], KEYS["p0"], input_digest=digest_of(99))
    state = apply(state, CommitStep("r", digest_of(1), 2, tuple(chain)))
    assert state.requests["r"].status == ABORTED and state.requests["r"].work == (0, 0)
    s = apply(state, SettleRequest("r", "lead")).requests["r"].settlement
    assert (s.payouts, s.residual, s.refund, s.failed) == ({"p0": 0, "p1": 0}, 0, 1000, frozenset({"p0"}))


def test_zero_price_cohort_refunds_the_whole_fee() -> None:
    free = [replace(o, price_per_work_unit=0) for o in OFFERS]
    state = apply(served_state(offers=free), CompleteRequest("r"))
    s = apply(state, SettleRequest("r", "lead")).requests["r"].settlement
    assert s.payouts == {"p0": 0, "p1": 0} and s.refund == 1000 and s.residual == 0
