"""Commitment chaining: substitution caught at exactly its link; signatures, signers, steps, ranges."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.commitment import (BAD_SIGNATURE, EQUIVOCATION, EXTRA_COMMITMENT, INPUT_MISMATCH, MISSING_LINK, OUTPUT_MISMATCH,
                                       RANGE_MISMATCH, REPLAY, STEP_GAP, WRONG_REQUEST, WRONG_SIGNER, InvalidChainInput,
                                       StepContext, check_chain, check_equivocation, check_exchanged_chain,
                                       check_receipt, commitment_from_dict, commitment_to_dict, next_step_context,
                                       signature_valid, signing_bytes)
from verisplit.spec.faults import is_protocol_failure
from spec_helpers import digest_of, key, resign, signed_chain


def make_cohort(n: int) -> tuple[Cohort, dict]:
    keys = {f"p{i}": key(i) for i in range(n)}
    assignments = tuple(Assignment(f"p{i}", bytes(keys[f"p{i}"].verify_key), 2 * i, 2 * i + 2) for i in range(n))
    return Cohort("m", assignments), keys


CTX = StepContext("m", "req-1", 0, 0, 5)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.data())
def test_substitution_at_any_link_is_caught_exactly_there(n: int, data: st.DataObject) -> None:
    cohort, keys = make_cohort(n)
    tensors = list(range(100, 100 + n + 1))
    honest = signed_chain(cohort, CTX, tensors, keys)
    assert check_chain(cohort, honest, digest_of(tensors[0]), CTX).valid
    j = data.draw(st.integers(0, n - 1))
    # The tensor that reaches segment j is substituted: it consumes (and commits to) another tensor.
    forged = list(honest)
    forged[j] = resign(honest[j], keys[f"p{j}"], input_digest=digest_of(999))
    verdict = check_chain(cohort, forged, digest_of(tensors[0]), CTX)
    assert (verdict.valid, verdict.link, verdict.culprit, verdict.reason) == (False, j, f"p{j}", INPUT_MISMATCH)


def test_forged_signature_and_wrong_signer_are_caught() -> None:
    cohort, keys = make_cohort(3)
    chain = signed_chain(cohort, CTX, [1, 2, 3, 4], keys)
    flipped = bytes([chain[1].signature[0] ^ 1]) + chain[1].signature[1:]
    verdict = check_chain(cohort, [chain[0], replace(chain[1], signature=flipped), chain[2]], digest_of(1), CTX)
    assert (verdict.link, verdict.culprit, verdict.reason) == (1, "p1", BAD_SIGNATURE)
    tampered = replace(chain[2], output_digest=digest_of(77))  # field changed after signing
    assert not signature_valid(tampered)
    impostor = resign(chain[2], key(9))  # valid signature, but not the assigned provider's key
    assert signature_valid(impostor)
    verdict = check_chain(cohort, [chain[0], chain[1], impostor], digest_of(1), CTX)
    assert (verdict.link, verdict.culprit, verdict.reason) == (2, "p2", WRONG_SIGNER)


def test_step_replay_gap_range_request_and_missing_links() -> None:
    cohort, keys = make_cohort(2)
    ctx1 = next_step_context(CTX, 1)
    assert (ctx1.step, ctx1.first_position, ctx1.num_positions) == (1, 5, 1)
    step0 = signed_chain(cohort, CTX, [1, 2, 3], keys)
    assert check_chain(cohort, step0, digest_of(1), ctx1).reason == REPLAY
    step2 = signed_chain(cohort, replace(ctx1, step=2), [1, 2, 3], keys)
    assert check_chain(cohort, step2, digest_of(1), ctx1).reason == STEP_GAP
    bad_range = [step0[0], resign(step0[1], keys["p1"], end_layer=3)]
    assert check_chain(cohort, bad_range, digest_of(1), CTX).reason == RANGE_MISMATCH
    other_request = [resign(step0[0], keys["p0"], request_id="other"), step0[1]]
    assert check_chain(cohort, other_request, digest_of(1), CTX).reason == WRONG_REQUEST
    missing = check_chain(cohort, step0[:1], digest_of(1), CTX)
    assert (missing.link, missing.culprit, missing.reason) == (1, "p1", MISSING_LINK)
    extra = check_chain(cohort, step0 + step0[:1], digest_of(1), CTX)
    assert (extra.link, extra.culprit, extra.reason) == (2, "p0", EXTRA_COMMITMENT)


def test_dropped_middle_link_is_missing_link_of_that_segment() -> None:
    """Commitments are matched by segment_index: a dropped middle link is that segment's
    missing_link (not a wrong_signer blamed on whoever sits at its position)."""
    cohort, keys = make_cohort(3)
    chain = signed_chain(cohort, CTX, [1, 2, 3, 4], keys)
    verdict = check_chain(cohort, [chain[0], chain[2]], digest_of(1), CTX)
    assert (verdict.link, verdict.culprit, verdict.reason) == (1, "p1", MISSING_LINK)
    # order does not matter, only the segment each commitment claims
    assert check_chain(cohort, [chain[2], chain[0], chain[1]], digest_of(1), CTX).valid
    # a commitment claiming another segment leaves its own segment missing
    moved = resign(chain[1], keys["p1"], segment_index=2)
    verdict = check_chain(cohort, [chain[0], moved, chain[2]], digest_of(1), CTX)
    assert (verdict.link, verdict.culprit, verdict.reason) == (1, "p1", MISSING_LINK)


@pytest.mark.parametrize("signer,expected", [("member", "p1"), ("outsider", None), ("unsigned", None), ("bad", None)])
def test_extra_commitment_is_blamed_on_its_valid_member_signer_or_nobody(signer: str, expected: str | None) -> None:
    cohort, keys = make_cohort(2)
    chain = signed_chain(cohort, CTX, [1, 2, 3], keys)
    extra = replace(chain[1], segment_index=7)
    if signer == "member":
        extra = resign(extra, keys["p1"])
    elif signer == "outsider":
        extra = resign(extra, key(9))
    elif signer == "unsigned":
        extra = replace(extra, signature=b"")
    else:
        extra = replace(resign(extra, keys["p1"]), step=5)  # changed after signing
    verdict = check_chain(cohort, chain + [extra], digest_of(1), CTX)
    assert (verdict.valid, verdict.link, verdict.culprit, verdict.reason) == (False, 2, expected, EXTRA_COMMITMENT)


def test_empty_cohort_and_bad_arguments_raise_the_documented_error() -> None:
    cohort, keys = make_cohort(1)
    chain = signed_chain(cohort, CTX, [1, 2], keys)
    with pytest.raises(InvalidChainInput, match="cohort.assignments"):
        check_chain(Cohort("m", ()), chain, digest_of(1), CTX)
    with pytest.raises(InvalidChainInput, match="commitments"):
        check_chain(cohort, chain[0], digest_of(1), CTX)
    with pytest.raises(InvalidChainInput, match="first_input_digest"):
        check_chain(cohort, chain, "00" * 32, CTX)
    with pytest.raises(InvalidChainInput, match="context.step"):
        check_chain(cohort, chain, digest_of(1), replace(CTX, step="0"))


def test_receipt_check_binds_commitment_to_exchanged_bytes() -> None:
    cohort, keys = make_cohort(1)
    c = signed_chain(cohort, CTX, [1, 2], keys)[0]
    assert check_receipt(c, digest_of(1), digest_of(2)) is None
    assert check_receipt(c, digest_of(5), digest_of(2))[0] == INPUT_MISMATCH
    assert check_receipt(c, digest_of(1), digest_of(5))[0] == OUTPUT_MISMATCH


def test_signing_bytes_cover_every_field_and_roundtrip_json() -> None:
    cohort, keys = make_cohort(1)
    c = signed_chain(cohort, CTX, [1, 2], keys)[0]
    base = signing_bytes(c)
    changes = dict(protocol_version=c.protocol_version + 1, model_id="x", weights_digest=b"\x01" * 32, request_id="q",
                   step=3, segment_index=4, first_layer=1, end_layer=9, first_position=7, num_positions=2,
                   input_digest=b"\x02" * 32, output_digest=b"\x03" * 32, signer=b"\x04" * 32, dtype="bfloat16",
                   audit_seed_commitment=b"\x05" * 32)
    for name, value in changes.items():
        assert signing_bytes(replace(c, **{name: value})) != base, name
    assert commitment_from_dict(commitment_to_dict(c)) == c
    with pytest.raises(ValueError, match="step"):
        commitment_from_dict({**commitment_to_dict(c), "step": "three"})
    with pytest.raises(ValueError, match="missing field 'model_id'"):
        commitment_from_dict({k: v for k, v in commitment_to_dict(c).items() if k != "model_id"})
    with pytest.raises(ValueError, match="weights_digest"):
        signing_bytes(replace(c, weights_digest=b"short"))


@pytest.mark.parametrize("field,value", [("protocol_version", 1 << 16), ("step", -1), ("segment_index", 1 << 32),
                                         ("num_positions", 1 << 64), ("first_layer", True)])
def test_out_of_range_fields_cannot_be_signed_and_fail_as_bad_signature(field: str, value: int) -> None:
    cohort, keys = make_cohort(1)
    c = signed_chain(cohort, CTX, [1, 2], keys)[0]
    with pytest.raises(ValueError, match=field):
        signing_bytes(replace(c, **{field: value}))
    assert not signature_valid(replace(c, **{field: value}))
    verdict = check_chain(cohort, [replace(c, **{field: value})], digest_of(1), CTX)
    # a commitment claiming no segment of the cohort leaves segment 0 without one
    expected = MISSING_LINK if field == "segment_index" else BAD_SIGNATURE
    assert (verdict.link, verdict.culprit, verdict.reason) == (0, "p0", expected)


def test_culprit_less_extra_commitment_never_fails_or_ejects_an_honest_provider() -> None:
    """Through the protocol: a step with a leftover commitment nobody in the cohort validly signed is
    aborted, every (good) link is credited, nobody is marked failed, so Eject is refused for all."""
    from verisplit.spec.cohort import ModelSpec, Offer
    from verisplit.spec.protocol import (ABORTED, AddOffer, CommitStep, Eject, FormCohort, IllegalTransition,
                                         OpenRequest, apply, replay)

    cohort, keys = make_cohort(2)
    offers = [Offer(a.provider_id, a.public_key, a.first_layer, a.end_layer, 1, "e") for a in cohort.assignments]
    state = replay(ModelSpec("m", 4), [AddOffer(o) for o in offers] + [FormCohort("c"), OpenRequest("req-1", "c", 100)])
    chain = signed_chain(state.cohorts["c"], CTX, [1, 2, 3], keys)
    junk = replace(resign(chain[1], key(9), segment_index=5), signature=bytes(64))
    after = apply(state, CommitStep("req-1", digest_of(1), CTX.num_positions, tuple(chain) + (junk,)))
    request = after.requests["req-1"]
    assert request.status == ABORTED and request.failed == frozenset()
    assert request.chain_verdicts[-1].culprit is None and request.chain_verdicts[-1].reason == EXTRA_COMMITMENT
    assert all(w > 0 for w in request.work)
    for provider in ("p0", "p1"):
        with pytest.raises(IllegalTransition, match="no failed audit"):
            apply(after, Eject(provider, "extra commitment"))
    # the same leftover validly signed by a member fails exactly that member
    signed = resign(chain[1], keys["p1"], segment_index=5)
    after = apply(state, CommitStep("req-1", digest_of(1), CTX.num_positions, tuple(chain) + (signed,)))
    assert after.requests["req-1"].failed == {"p1"}


def test_equivocation_is_proved_only_by_two_valid_signatures_over_different_outputs() -> None:
    """check_equivocation: the sender's second valid commitment for the same slot with another output
    convicts it; its own commitment, a forgery, another signer or another slot proves nothing."""
    cohort, keys = make_cohort(2)
    reported = signed_chain(cohort, CTX, [1, 2, 3], keys)[0]
    forwarded = resign(reported, keys["p0"], output_digest=digest_of(9))
    assert check_equivocation(reported, forwarded)[0] == EQUIVOCATION
    assert check_equivocation(reported, reported) is None
    assert check_equivocation(reported, resign(reported, keys["p0"], input_digest=digest_of(7))) is None  # same output
    assert check_equivocation(reported, replace(forwarded, signature=bytes(64))) is None
    assert check_equivocation(reported, resign(reported, keys["p1"], output_digest=digest_of(9))) is None
    assert check_equivocation(reported, resign(reported, keys["p0"], output_digest=digest_of(9), step=1)) is None
    assert check_equivocation(reported, resign(reported, keys["p0"], output_digest=digest_of(9), request_id="r2")) is None
    with pytest.raises(InvalidChainInput):
        check_equivocation(reported, "not a commitment")  # type: ignore[arg-type]


def test_exchanged_chain_blames_the_equivocating_sender_not_the_receiver() -> None:
    """The reviewer's scenario: segment 0 reports X and forwards X' under a second signature; the
    receiver computes on X'. Without the receiver's upstream commitment the verdict is input_mismatch
    on the receiver; with it, equivocation on the sender; an upstream commitment that proves nothing
    leaves the receiver's fault in place."""
    cohort, keys = make_cohort(2)
    c0 = signed_chain(cohort, CTX, [1, 2, 3], keys)[0]
    forwarded = resign(c0, keys["p0"], output_digest=digest_of(9))
    c1 = resign(signed_chain(cohort, CTX, [1, 9, 3], keys)[1], keys["p1"])
    args = (cohort, [c0, c1], digest_of(1), [digest_of(1), digest_of(2)], [digest_of(2), digest_of(3)], CTX)
    blamed = check_exchanged_chain(*args)
    assert (blamed.link, blamed.culprit, blamed.reason) == (1, "p1", INPUT_MISMATCH)
    proved = check_exchanged_chain(*args, upstream_commitments=[None, forwarded])
    assert (proved.link, proved.culprit, proved.reason) == (0, "p0", EQUIVOCATION)
    assert is_protocol_failure(EQUIVOCATION)
    forged = check_exchanged_chain(*args, upstream_commitments=[None, replace(forwarded, signature=bytes(64))])
    assert (forged.link, forged.culprit, forged.reason) == (1, "p1", INPUT_MISMATCH)
    assert check_exchanged_chain(*args, upstream_commitments=[None, c0]).culprit == "p1"
