"""Issue 11's rules in the spec: per-request audit seeds bound before any output (A1), the cohort's
dtype and seed commitment signed into every commitment (H2), signed outputs that cannot be judged
blamed on their signer (H5), and identity = key (C3 on keys, banned keys and ids stay banned, A4)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from verisplit.spec.audit import AuditVerdict, is_audited, request_seed, reveal_valid, seed_commitment
from verisplit.spec.cohort import InvalidOffer, ModelSpec, Offer, form_cohort
from verisplit.spec.commitment import (BAD_BOUNDARY, NO_SEED_COMMITMENT, OUTPUT_MISMATCH, WRONG_DTYPE, WRONG_REQUEST,
                                       StepContext, boundary_spec, check_boundary, check_chain, check_exchanged_chain)
from verisplit.spec.protocol import (AddOffer, CommitStep, CompleteRequest, Eject, FormCohort, IllegalTransition,
                                     OpenRequest, RecordAudit, RevealSeed, apply, replay)
from spec_helpers import digest_of, key, resign, signed_chain

MODEL = ModelSpec("m", 4, (1, 1, 2, 2))
KEYS = {f"p{i}": key(i) for i in range(2)}
OFFERS = [Offer("p0", bytes(KEYS["p0"].verify_key), 0, 2, 1, "a"), Offer("p1", bytes(KEYS["p1"].verify_key), 2, 4, 1, "b")]
SECRET = b"lead-secret-0123456789"


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_request_seeds_are_per_request_and_deterministic(a: str, b: str) -> None:
    assert request_seed(SECRET, a) == request_seed(SECRET, a)
    if a != b:
        assert request_seed(SECRET, a) != request_seed(SECRET, b)
    assert request_seed(SECRET, a) != request_seed(SECRET[::-1], a)  # another secret, another seed


def test_selection_without_the_secret_is_chance() -> None:
    """Someone who knows the request id but not the secret cannot reproduce the selection: guessing
    with any other secret agrees with the real selection about as often as chance (p = 1/2 here)."""
    agree = 0
    trials = 400
    for i in range(trials):
        rid = f"req-{i}"
        real = is_audited(request_seed(SECRET, rid), rid, 0, Fraction(1, 2))
        guess = is_audited(request_seed(b"guessed-secret-xxxxxx", rid), rid, 0, Fraction(1, 2))
        agree += real == guess
    assert 0.4 < agree / trials < 0.6


def _state(seed_commitment: bytes = NO_SEED_COMMITMENT, dtype: str = "float32"):  # type: ignore[no-untyped-def]
    state = replay(MODEL, [AddOffer(o) for o in OFFERS] + [FormCohort("c"), OpenRequest("r", "c", 100, seed_commitment)])
    return replace(state, dtype=dtype)


def test_commitments_must_repeat_the_request_seed_commitment() -> None:
    commitment = seed_commitment(request_seed(SECRET, "r"))
    state = _state(commitment)
    cohort = state.cohorts["c"]
    good = signed_chain(cohort, StepContext("m", "r", 0, 0, 2, audit_seed_commitment=commitment), [1, 2, 3], KEYS)
    assert apply(state, CommitStep("r", digest_of(1), 2, tuple(good))).requests["r"].chain_verdicts[-1].valid
    stale = signed_chain(cohort, StepContext("m", "r", 0, 0, 2), [1, 2, 3], KEYS)  # no (or another) seed commitment
    verdict = apply(state, CommitStep("r", digest_of(1), 2, tuple(stale))).requests["r"].chain_verdicts[-1]
    assert (verdict.valid, verdict.link, verdict.culprit, verdict.reason) == (False, 0, "p0", WRONG_REQUEST)


def test_a_commitment_in_another_dtype_is_blamed_on_its_signer() -> None:
    state = _state()
    cohort = state.cohorts["c"]
    chain = signed_chain(cohort, StepContext("m", "r", 0, 0, 2), [1, 2, 3], KEYS)
    chain[1] = resign(chain[1], KEYS["p1"], dtype="bfloat16")
    verdict = apply(state, CommitStep("r", digest_of(1), 2, tuple(chain))).requests["r"].chain_verdicts[-1]
    assert (verdict.link, verdict.culprit, verdict.reason) == (1, "p1", WRONG_DTYPE)


def test_seed_is_revealed_only_after_the_chain_is_final_and_never_reused() -> None:
    seed = request_seed(SECRET, "r")
    commitment = seed_commitment(seed)
    state = _state(commitment)
    with pytest.raises(IllegalTransition, match="open"):
        apply(state, RevealSeed("r", seed))
    cohort = state.cohorts["c"]
    chain = signed_chain(cohort, StepContext("m", "r", 0, 0, 2, audit_seed_commitment=commitment), [1, 2, 3], KEYS)
    state = apply(apply(state, CommitStep("r", digest_of(1), 2, tuple(chain))), CompleteRequest("r"))
    with pytest.raises(IllegalTransition, match="does not open"):
        apply(state, RevealSeed("r", request_seed(SECRET, "other")))
    state = apply(state, RevealSeed("r", seed))
    assert state.requests["r"].seed == seed and reveal_valid(commitment, seed)
    with pytest.raises(IllegalTransition, match="already revealed"):
        apply(state, RevealSeed("r", seed))
    # Mutant lead: reuses the revealed seed for a new request -> refused.
    state = apply(state, FormCohort("c2"))
    with pytest.raises(IllegalTransition, match="never used again"):
        apply(state, OpenRequest("r2", "c2", 100, commitment))


def test_banned_key_and_id_stay_banned_and_one_key_holds_one_offer() -> None:
    state = _state()
    cohort = state.cohorts["c"]
    chain = signed_chain(cohort, StepContext("m", "r", 0, 0, 2), [1, 2, 3], KEYS)
    state = apply(apply(state, CommitStep("r", digest_of(1), 2, tuple(chain))), CompleteRequest("r"))
    state = apply(state, RecordAudit(AuditVerdict("r", 1, "p1", False, reason="skipped layers")))
    state = apply(state, Eject("p1", "skipped layers"))
    fresh = key(7)
    with pytest.raises(IllegalTransition, match="id is banned"):  # same id, fresh key
        apply(state, AddOffer(Offer("p1", bytes(fresh.verify_key), 2, 4, 1, "b")))
    with pytest.raises(IllegalTransition, match="key is banned"):  # same key, fresh id
        apply(state, AddOffer(Offer("p9", OFFERS[1].public_key, 2, 4, 1, "b")))
    with pytest.raises(IllegalTransition, match="rule C3 is on keys"):  # one key under two ids
        apply(state, AddOffer(Offer("p0-again", OFFERS[0].public_key, 2, 4, 1, "b")))
    with pytest.raises(InvalidOffer, match="public_key appears in more than one offer"):
        form_cohort([OFFERS[0], Offer("p0b", OFFERS[0].public_key, 2, 4, 1, "b")], MODEL)


def test_boundary_rule_blames_the_signer_of_an_unjudgeable_output() -> None:
    expected = boundary_spec(0, 2, "float32", 3, 8, 16)
    assert expected == ("float32", (3, 8)) and boundary_spec(1, 2, "bfloat16", 3, 8, 16) == ("float32", (3, 16))
    assert check_boundary("float32", (3, 8), True, expected) is None
    for facts in [("bfloat16", (3, 8), True), ("float32", (3, 9), True), ("float32", (3, 8), False), (None, None, False)]:
        assert check_boundary(*facts, expected)[0] == BAD_BOUNDARY
    # In a step: the H5 failure at link 0 wins over anything later; H4 at the same link wins over H5.
    state = _state()
    cohort = state.cohorts["c"]
    chain = signed_chain(cohort, StepContext("m", "r", 0, 0, 2), [1, 2, 3], KEYS)
    sent = [c.input_digest for c in chain]
    received = [c.output_digest for c in chain]
    context = StepContext("m", "r", 0, 0, 2)
    bad = [(BAD_BOUNDARY, "bf16 boundary"), None]
    verdict = check_exchanged_chain(cohort, chain, digest_of(1), sent, received, context, bad)
    assert (verdict.link, verdict.culprit, verdict.reason) == (0, "p0", BAD_BOUNDARY)
    received_wrong = [digest_of(9), received[1]]
    verdict = check_exchanged_chain(cohort, chain, digest_of(1), sent, received_wrong, context, bad)
    assert verdict.reason == OUTPUT_MISMATCH and verdict.culprit == "p0"
    assert check_exchanged_chain(cohort, chain, digest_of(1), sent, received, context, [None, None]).valid
    assert check_chain(cohort, chain, digest_of(1), context).valid
