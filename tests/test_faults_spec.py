"""Recovery rules R1-R3 (``verisplit.spec.recovery``) on concrete inputs, and the lead's startup pass
that settles recorded but unsettled requests exactly once."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest
import torch
from nacl.signing import SigningKey

from verisplit.impl.audit.service import AuditService
from verisplit.impl.records.ledger import Ledger
from verisplit.impl.records.requests import RequestStore
from verisplit.impl.runtime.tensors import from_canonical, to_canonical
from verisplit.spec.audit import Tolerance
from verisplit.spec.cohort import Assignment, Cohort, Offer
from verisplit.spec.commitment import (INPUT_MISMATCH, OUTPUT_MISMATCH, PROTOCOL_VERSION, WRONG_SIGNER, BoundaryCommitment,
                                       StepContext, sign_commitment)
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.recovery import (RecoveryInputError, check_replay, choose_replacement, effective_cohort, recovered_fee,
                                     replay_context, replay_input)
from verisplit.spec.settlement import settle

from verify_helpers import honest_modes, make_ckpt, run

KEY = SigningKey(b"R" * 32)
LOST = Assignment("lost", b"\x09" * 32, 2, 4)


def offer(pid: str, first: int, end: int, price: int, key: bytes | None = None) -> Offer:
    return Offer(pid, key or pid.encode().ljust(32, b"k"), first, end, price, "e")


def test_choose_replacement_takes_the_cheapest_cover_of_exactly_the_range() -> None:
    offers = [offer("narrow", 2, 3, 1), offer("wide", 0, 6, 5), offer("cheap", 2, 4, 3), offer("tie", 1, 4, 3)]
    assert choose_replacement(offers, LOST, {"lost"}, {LOST.public_key}) == \
        Assignment("cheap", offers[2].public_key, 2, 4)  # (price, id): "cheap" < "tie"
    assert choose_replacement(offers, LOST, {"cheap", "tie"}, set()) == Assignment("wide", offers[1].public_key, 2, 4)
    assert choose_replacement(offers, LOST, {"cheap", "tie", "wide"}, set()) is None  # "narrow" covers [2,3) only
    assert choose_replacement(offers, LOST, set(), {offers[2].public_key, offers[3].public_key, offers[1].public_key}) is None


def test_replay_context_and_input() -> None:
    at = StepContext("m", "r", 5, 12, 1)
    ctx = replay_context(at)
    assert ctx is not None and (ctx.step, ctx.first_position, ctx.num_positions) == (4, 0, 12)
    assert replay_context(StepContext("m", "r", 0, 0, 8)) is None
    parts = [torch.arange(8, dtype=torch.int64), torch.tensor([9]), torch.tensor([10])]
    joined = replay_input([to_canonical(p) for p in parts])
    assert torch.equal(from_canonical(joined), torch.cat(parts))  # exact: integer tensors
    hidden = [torch.randn(3, 4), torch.randn(1, 4)]
    assert torch.equal(from_canonical(replay_input([to_canonical(h) for h in hidden])), torch.cat(hidden))
    with pytest.raises(RecoveryInputError):
        replay_input([to_canonical(torch.randn(3, 4)), to_canonical(torch.randn(1, 5))])
    with pytest.raises(RecoveryInputError):
        replay_input([to_canonical(torch.randn(3, 4)), to_canonical(torch.randn(1, 4).half())])
    with pytest.raises(RecoveryInputError):
        replay_input([])


def _replay_commitment(inputs: list[bytes], output: bytes, at: StepContext, key: SigningKey = KEY,
                       input_digest: bytes | None = None) -> BoundaryCommitment:
    ctx = replay_context(at)
    assert ctx is not None
    unsigned = BoundaryCommitment(protocol_version=PROTOCOL_VERSION, model_id="m", weights_digest=bytes(32),
                                  request_id="r", step=ctx.step, segment_index=1, first_layer=2, end_layer=4,
                                  first_position=0, num_positions=ctx.num_positions,
                                  input_digest=input_digest or digest_encoded(replay_input(inputs)),
                                  output_digest=digest_encoded(output), signer=bytes(32), dtype="float32",
                                  audit_seed_commitment=bytes(32))
    return sign_commitment(unsigned, key)


def test_check_replay_pins_the_input_to_the_recorded_ones() -> None:
    at = StepContext("m", "r", 3, 10, 1)
    inputs = [to_canonical(torch.randn(8, 4)), to_canonical(torch.randn(1, 4)), to_canonical(torch.randn(1, 4))]
    output = to_canonical(torch.randn(10, 4))
    replacement = Assignment("spare", bytes(KEY.verify_key), 2, 4)
    sent = digest_encoded(replay_input(inputs))
    good = _replay_commitment(inputs, output, at)
    assert check_replay(replacement, 1, good, inputs, sent, digest_encoded(output), at) is None
    # a replay over other inputs (e.g. one recorded input left out) is the signer's input_mismatch
    other = _replay_commitment(inputs, output, at, input_digest=digest_encoded(replay_input(inputs[:2])))
    assert check_replay(replacement, 1, other, inputs, sent, digest_encoded(output), at)[0] == INPUT_MISMATCH
    assert check_replay(replacement, 1, good, inputs, sent, digest_encoded(b"x"), at)[0] == OUTPUT_MISMATCH
    assert check_replay(LOST, 1, good, inputs, sent, digest_encoded(output), at)[0] == WRONG_SIGNER
    with pytest.raises(RecoveryInputError):  # the lead sent something else than the concatenation
        check_replay(replacement, 1, good, inputs, digest_encoded(inputs[0]), digest_encoded(output), at)


def test_effective_cohort_applies_replacements_from_their_step() -> None:
    cohort = Cohort("m", (Assignment("a", b"a" * 32, 0, 2), LOST, Assignment("c", b"c" * 32, 4, 6)))
    spare = Assignment("spare", b"s" * 32, 2, 4)
    triples = [(1, 5, spare)]
    assert effective_cohort(cohort, triples, 4) == cohort
    assert effective_cohort(cohort, triples, 5).provider_ids == ("a", "spare", "c")


def test_recovered_fee_pays_everybody_its_value_and_refunds_the_lost_slice() -> None:
    values = {"a": 2 * 30, "lost": 2 * 10, "spare": 3 * (10 + 20), "c": 2 * 30}
    s = settle(recovered_fee(list(values.values())), values, {p: 1 for p in values}, "lead", {"lost"})
    assert s.payouts == {"a": 60, "lost": 0, "spare": 90, "c": 60} and s.refund == 20 and s.residual == 0


def test_settle_pending_settles_each_unsettled_record_exactly_once(tmp_path) -> None:
    ckpt = make_ckpt(tmp_path / "m")
    store = RequestStore(tmp_path / "requests")
    for request_id in ("req-a", "req-b"):
        store.save(run(ckpt, honest_modes(), request_id=request_id, fee=100))
    service = AuditService(ckpt, tmp_path / "ledger.db", SigningKey(b"L" * 32), Fraction(0), None,
                           Tolerance("float32", 1e-3, 1e-3), lambda pid, why: None, device="cpu", dtype="float32")
    asyncio.run(service(store.load("req-a")))  # settled before the crash
    assert asyncio.run(service.settle_pending(store)) == ["req-b"]
    assert asyncio.run(service.settle_pending(store)) == []  # idempotent
    service.ledger.close()
    with Ledger(tmp_path / "ledger.db", read_only=True) as ledger:
        assert sorted(r.body["request_id"] for r in ledger.records()) == ["req-a", "req-b"]
        assert ledger.verify().ok
    assert store.load_extras("req-b")["ledger_seq"] == 2


def test_protocol_replacement_trace_settles_by_rule_r3() -> None:
    """The state machine: an outage at segment 1 after step 0, the spec's replacement with its replay,
    step 1 through the replacement; the lost provider forfeits (not failed, not ejectable), the
    replacement is paid for its replay, and a fee equal to the total value pays everyone exactly."""
    from spec_helpers import digest_of, key, signed_chain

    from verisplit.spec.cohort import ModelSpec
    from verisplit.spec.encoding import encode_tensor
    from verisplit.spec.protocol import (AddOffer, CommitStep, CompleteRequest, Eject, FormCohort, IllegalTransition,
                                         OpenRequest, ReplaceProvider, SettleRequest, apply, initial_state)

    keys = {"p0": key(0), "p1": key(1), "spare": key(2)}
    pub = {p: bytes(k.verify_key) for p, k in keys.items()}
    state = initial_state(ModelSpec("m", 4))
    for pid, first, end, price in (("p0", 0, 2, 1), ("p1", 2, 4, 1), ("spare", 2, 4, 2)):
        state = apply(state, AddOffer(Offer(pid, pub[pid], first, end, price, "e")))
    state = apply(state, FormCohort("c"))
    cohort = state.cohorts["c"]
    assert cohort.provider_ids == ("p0", "p1")
    state = apply(state, OpenRequest("r", "c", 30))
    ctx0 = StepContext("m", "r", 0, 0, 3)
    state = apply(state, CommitStep("r", digest_of(1), 3, tuple(signed_chain(cohort, ctx0, [1, 2, 3], keys))))
    received = encode_tensor("float32", (1,), (2).to_bytes(4, "little"))  # what p1 got at step 0
    assert digest_encoded(received) == digest_of(2)
    spare = Assignment("spare", pub["spare"], 2, 4)
    replay = sign_commitment(BoundaryCommitment(PROTOCOL_VERSION, "m", bytes(32), "r", 0, 1, 2, 4, 0, 3, digest_of(2),
                                                digest_of(30), pub["spare"]), keys["spare"])
    event = ReplaceProvider("r", 1, "unavailable", spare, replay, (received,), digest_of(30))
    for bad in (ReplaceProvider("r", 1, "bad_signature", spare, replay, (received,), digest_of(30)),
                ReplaceProvider("r", 1, "unavailable", Assignment("p0", pub["p0"], 2, 4), replay, (received,), digest_of(30)),
                ReplaceProvider("r", 1, "unavailable", spare, replay, (encode_tensor("float32", (1,), bytes(4)),),
                                digest_of(30))):
        with pytest.raises(IllegalTransition):
            apply(state, bad)
    state = apply(state, event)
    ctx1 = StepContext("m", "r", 1, 3, 1)
    now = effective_cohort(cohort, [(1, 1, spare)], 1)
    state = apply(state, CommitStep("r", digest_of(4), 1, tuple(signed_chain(now, ctx1, [4, 5, 6], keys))))
    state = apply(state, CompleteRequest("r"))
    state = apply(state, SettleRequest("r", "lead"))
    s = state.requests["r"].settlement
    assert s.values == {"p0": 8, "spare": 2 * (2 * 3 + 2 * 1), "p1": 2 * 3}
    assert s.payouts == {"p0": 8, "spare": 16, "p1": 0} and s.refund == 6 and s.residual == 0
    assert state.requests["r"].failed == frozenset() and state.requests["r"].lost == {"p1"}
    with pytest.raises(IllegalTransition, match="no failed audit"):
        apply(state, Eject("p1", "outage"))
