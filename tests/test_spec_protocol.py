"""The protocol state machine: legal traces settle correctly; illegal transitions name the rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from verisplit.spec.audit import AuditVerdict
from verisplit.spec.cohort import ModelSpec, Offer
from verisplit.spec.commitment import StepContext
from verisplit.spec.protocol import (ABORTED, SETTLED, AddOffer, CommitStep, CompleteRequest, Eject, FormCohort,
                                     IllegalTransition, OpenRequest, RecordAudit, SettleRequest, apply, initial_state,
                                     replay)
from spec_helpers import digest_of, key, resign, signed_chain

MODEL = ModelSpec("m", 4, (1, 1, 2, 2))
KEYS = {f"p{i}": key(i) for i in range(2)}
OFFERS = [Offer("p0", bytes(KEYS["p0"].verify_key), 0, 2, 1, "a"), Offer("p1", bytes(KEYS["p1"].verify_key), 2, 4, 1, "b")]


def served_state(tamper_link: int | None = None):  # type: ignore[no-untyped-def]
    events = [AddOffer(o) for o in OFFERS] + [FormCohort("c"), OpenRequest("r", "c", 1000)]
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
