"""Spec input validation: every public spec function, given a wrong type or an out-of-range value for
any argument, raises exactly its documented error (a ValueError subclass naming the field), never a
bare TypeError / IndexError / AttributeError / struct.error, and never silently computes (a price of
1.5, a bool layer count, a negative fee).

Each ``Case`` is (function, argument) with a known-good value (which must not raise) and a Hypothesis
strategy of bad values; ``pytest.raises(documented)`` lets any other exception fail the test. What a
provider sends is not an input error: malformed commitment fields make a failing link instead, which
the last tests check. Settlement (``spec/settlement.py``) and the generic Z3-capable primitives of
``spec/arith.py`` are outside this file (settlement has its own validation tests).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec import audit, cohort, commitment, deterrence, encoding, protocol
from verisplit.spec.audit import AuditVerdict, InvalidAuditInput, Registry, Tolerance
from verisplit.spec.cohort import (Assignment, Cohort, InvalidCohort, InvalidModel, InvalidOffer, ModelSpec,
                                   NoCoverage, Offer)
from verisplit.spec.commitment import (BAD_SIGNATURE, BoundaryCommitment, InvalidChainInput, InvalidCommitment,
                                       StepContext)
from verisplit.spec.deterrence import InvalidDeterrenceInput
from verisplit.spec.encoding import EncodingError
from verisplit.spec.protocol import (AddOffer, CommitStep, CompleteRequest, Eject, FormCohort, IllegalTransition,
                                     OpenRequest, RecordAudit, SettleRequest, apply, initial_state, replay)
from spec_helpers import digest_of, key, signed_chain

# ---- bad-value strategies --------------------------------------------------------------------------

OTHER = st.one_of(st.none(), st.just(object()), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                  st.sets(st.integers(), max_size=1))
NOT_INT = st.one_of(OTHER, st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.binary(max_size=3),
                    st.lists(st.integers(), max_size=2), st.fractions())
NOT_STR = st.one_of(OTHER, st.booleans(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=3),
                    st.lists(st.text(max_size=2), max_size=2))
NOT_BYTES = st.one_of(OTHER, st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3),
                      st.lists(st.integers(0, 255), max_size=2))
NOT_SEQUENCE = st.one_of(OTHER, st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3),
                         st.binary(max_size=3))
NOT_NUMBER = st.one_of(OTHER, st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.binary(max_size=3),
                       st.lists(st.integers(), max_size=2))
NEGATIVE = st.integers(max_value=-1)
NOT_PROBABILITY = st.one_of(NOT_NUMBER, st.fractions(min_value=Fraction(1, 10**6) + 1),
                            st.fractions(max_value=Fraction(-1, 10**6)), st.integers(min_value=2), NEGATIVE)
NOT_DIGEST = st.one_of(NOT_BYTES, st.binary(max_size=31), st.binary(min_size=33, max_size=40))


def not_int_or(extra: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(NOT_INT, extra)


# ---- valid fixtures --------------------------------------------------------------------------------

MODEL = ModelSpec("m", 4, (1, 1, 2, 2))
KEYS = {f"p{i}": key(i) for i in range(2)}
OFFERS = [Offer("p0", bytes(KEYS["p0"].verify_key), 0, 2, 1, "a"), Offer("p1", bytes(KEYS["p1"].verify_key), 2, 4, 1, "b")]
COHORT = Cohort("m", (Assignment("p0", OFFERS[0].public_key, 0, 2), Assignment("p1", OFFERS[1].public_key, 2, 4)))
CONTEXT = StepContext("m", "r", 0, 0, 1)
CHAIN = signed_chain(COHORT, CONTEXT, [1, 2, 3], KEYS)
FIRST = digest_of(1)
TOL = Tolerance("float32", 1e-3, 1e-2)
REGISTRY = Registry(tuple(OFFERS))


def _state() -> protocol.State:
    state = replay(MODEL, [AddOffer(o) for o in OFFERS] + [FormCohort("c"), OpenRequest("r", "c", 100)])
    return state


STATE = _state()
STEPPED = apply(STATE, CommitStep("r", FIRST, 1, tuple(CHAIN)))


@dataclass(frozen=True)
class Case:
    """``call(value)`` runs one spec function with ``value`` in one argument; ``good`` must not raise."""

    name: str
    error: type[Exception]
    bad: st.SearchStrategy[Any]
    call: Callable[[Any], Any]
    good: Any
    field: str


def _offer(**changes: Any) -> Offer:
    return replace(OFFERS[0], **changes)


def _commitment(**changes: Any) -> BoundaryCommitment:
    return replace(CHAIN[0], **changes)


def _assignment_cohort(**changes: Any) -> Cohort:
    return Cohort("m", (replace(COHORT.assignments[0], **changes), COHORT.assignments[1]))


CASES: list[Case] = [
    # ---- cohort -----------------------------------------------------------------------------------
    Case("ModelSpec.model_id", InvalidModel, NOT_STR, lambda v: ModelSpec(v, 4), "m", "model_id"),
    Case("ModelSpec.num_layers", InvalidModel, not_int_or(st.integers(max_value=0)), lambda v: ModelSpec("m", v), 4,
         "num_layers"),
    Case("ModelSpec.layer_work", InvalidModel,
         st.one_of(NOT_SEQUENCE.filter(lambda v: v not in ("", b"")),
                   st.lists(st.one_of(NOT_INT, st.integers(max_value=0)), min_size=4, max_size=4),
                   st.lists(st.integers(1, 3), min_size=1, max_size=3)),
         lambda v: ModelSpec("m", 4, v), (1, 1, 1, 1), "layer_work"),
    Case("validate_offer.offer", InvalidOffer, NOT_SEQUENCE, cohort.validate_offer, OFFERS[0], "offer"),
    Case("validate_offer.provider_id", InvalidOffer, st.one_of(NOT_STR, st.just("")),
         lambda v: cohort.validate_offer(_offer(provider_id=v)), "p0", "provider_id"),
    Case("validate_offer.public_key", InvalidOffer, st.one_of(NOT_BYTES, st.binary(max_size=31)),
         lambda v: cohort.validate_offer(_offer(public_key=v)), OFFERS[0].public_key, "public_key"),
    Case("validate_offer.first_layer", InvalidOffer, not_int_or(NEGATIVE),
         lambda v: cohort.validate_offer(_offer(first_layer=v)), 0, "first_layer"),
    Case("validate_offer.end_layer", InvalidOffer, not_int_or(st.integers(max_value=0)),
         lambda v: cohort.validate_offer(_offer(end_layer=v)), 2, "end_layer"),
    Case("validate_offer.price_per_work_unit", InvalidOffer, not_int_or(NEGATIVE),
         lambda v: cohort.validate_offer(_offer(price_per_work_unit=v)), 1, "price_per_work_unit"),
    Case("validate_offer.endpoint", InvalidOffer, NOT_STR, lambda v: cohort.validate_offer(_offer(endpoint=v)), "a",
         "endpoint"),
    Case("segment_work.model", InvalidModel, NOT_SEQUENCE, lambda v: cohort.segment_work(v, 0, 1), MODEL, "model"),
    Case("segment_work.first_layer", InvalidCohort, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=5))),
         lambda v: cohort.segment_work(MODEL, v, 4), 1, "first_layer"),
    Case("segment_work.end_layer", InvalidCohort, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=5))),
         lambda v: cohort.segment_work(MODEL, 0, v), 3, "end_layer"),
    Case("tiling_conditions.firsts", InvalidCohort,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_INT, min_size=2, max_size=2), st.lists(st.integers(), max_size=1)),
         lambda v: cohort.tiling_conditions(v, [2, 4], 4), [0, 2], "firsts"),
    Case("tiles_exactly.ends", InvalidCohort,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_INT, min_size=2, max_size=2), st.lists(st.integers(), min_size=3)),
         lambda v: cohort.tiles_exactly([0, 2], v, 4), [2, 4], "ends"),
    Case("tiles_exactly.num_layers", InvalidCohort, NOT_INT, lambda v: cohort.tiles_exactly([0], [4], v), 4,
         "num_layers"),
    Case("range_violation_conditions.firsts", InvalidCohort,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_INT, min_size=2, max_size=2), st.lists(st.integers(), min_size=3)),
         lambda v: cohort.range_violation_conditions(v, [2, 4], 4), [0, 2], "firsts"),
    Case("cohort_violations.cohort", InvalidCohort, NOT_SEQUENCE,
         lambda v: cohort.cohort_violations(v, MODEL, OFFERS), COHORT, "cohort"),
    Case("cohort_violations.assignment.first_layer", InvalidCohort, NOT_INT,
         lambda v: cohort.cohort_violations(_assignment_cohort(first_layer=v), MODEL, OFFERS), 0, "first_layer"),
    Case("cohort_violations.assignment.provider_id", InvalidCohort, NOT_STR,
         lambda v: cohort.cohort_violations(_assignment_cohort(provider_id=v), MODEL, OFFERS), "p0", "provider_id"),
    Case("cohort_violations.model", InvalidModel, NOT_SEQUENCE,
         lambda v: cohort.cohort_violations(COHORT, v, OFFERS), MODEL, "model"),
    Case("cohort_violations.offers", InvalidOffer, st.one_of(NOT_SEQUENCE, st.lists(NOT_SEQUENCE, min_size=1, max_size=2)),
         lambda v: cohort.cohort_violations(COHORT, MODEL, v), OFFERS, "offers"),
    Case("cohort_cost.cohort", InvalidCohort,
         st.one_of(NOT_SEQUENCE, st.sampled_from(["zz"]).map(lambda p: p)),
         lambda v: cohort.cohort_cost(v if not isinstance(v, str) else _assignment_cohort(provider_id=v), MODEL, OFFERS),
         COHORT, "cohort"),
    Case("quote_fee.positions", InvalidCohort, not_int_or(NEGATIVE),
         lambda v: cohort.quote_fee(COHORT, MODEL, OFFERS, v), 3, "positions"),
    Case("first_uncovered_layer.offers", InvalidOffer, st.one_of(NOT_SEQUENCE, st.lists(NOT_SEQUENCE, min_size=1, max_size=2)),
         lambda v: cohort.first_uncovered_layer(v, 4), OFFERS, "offers"),
    Case("first_uncovered_layer.num_layers", InvalidModel, not_int_or(st.integers(max_value=0)),
         lambda v: cohort.first_uncovered_layer(OFFERS, v), 4, "num_layers"),
    Case("firsts_from_ends.ends", InvalidCohort, NOT_SEQUENCE, cohort.firsts_from_ends, [2, 4], "ends"),
    Case("form_cohort.offers", InvalidOffer,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_SEQUENCE, min_size=1, max_size=2),
                   st.floats(allow_nan=False, min_value=0.5, max_value=9).map(lambda p: [_offer(price_per_work_unit=p)]),
                   st.sampled_from([True, False]).map(lambda p: [_offer(price_per_work_unit=p)]),
                   st.sampled_from([2.5, "0", None, True]).map(lambda e: [_offer(end_layer=e)])),
         lambda v: cohort.form_cohort(v, MODEL), OFFERS, "offer"),
    Case("form_cohort.model", InvalidModel, NOT_SEQUENCE, lambda v: cohort.form_cohort(OFFERS, v), MODEL, "model"),
    # ---- commitment -------------------------------------------------------------------------------
    Case("signing_bytes.c", InvalidCommitment, NOT_SEQUENCE, commitment.signing_bytes, CHAIN[0], "commitment"),
    Case("signing_bytes.model_id", InvalidCommitment, st.one_of(NOT_STR, st.just("x" * 70000)),
         lambda v: commitment.signing_bytes(_commitment(model_id=v)), "m", "model_id"),
    Case("signing_bytes.request_id", InvalidCommitment, NOT_STR,
         lambda v: commitment.signing_bytes(_commitment(request_id=v)), "r", "request_id"),
    Case("signing_bytes.step", InvalidCommitment, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=2**64))),
         lambda v: commitment.signing_bytes(_commitment(step=v)), 0, "step"),
    Case("signing_bytes.segment_index", InvalidCommitment, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=2**32))),
         lambda v: commitment.signing_bytes(_commitment(segment_index=v)), 0, "segment_index"),
    Case("signing_bytes.input_digest", InvalidCommitment, NOT_DIGEST,
         lambda v: commitment.signing_bytes(_commitment(input_digest=v)), FIRST, "input_digest"),
    Case("signing_bytes.signer", InvalidCommitment, NOT_DIGEST,
         lambda v: commitment.signing_bytes(_commitment(signer=v)), CHAIN[0].signer, "signer"),
    Case("sign_commitment.signing_key", InvalidCommitment, st.one_of(NOT_SEQUENCE, NOT_BYTES),
         lambda v: commitment.sign_commitment(CHAIN[0], v), KEYS["p0"], "signing_key"),
    Case("sign_commitment.c", InvalidCommitment, NOT_INT,
         lambda v: commitment.sign_commitment(_commitment(num_positions=v), KEYS["p0"]), 1, "num_positions"),
    Case("signature_valid.c", InvalidCommitment, NOT_SEQUENCE, commitment.signature_valid, CHAIN[0], "commitment"),
    Case("check_link_fields.assignment", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_link_fields(v, 0, CHAIN[0], CONTEXT), COHORT.assignments[0], "assignment"),
    Case("check_link_fields.segment_index", InvalidChainInput, not_int_or(NEGATIVE),
         lambda v: commitment.check_link_fields(COHORT.assignments[0], v, CHAIN[0], CONTEXT), 0, "segment_index"),
    Case("check_link_fields.c", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_link_fields(COHORT.assignments[0], 0, v, CONTEXT), CHAIN[0], "commitment"),
    Case("check_link_fields.context", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_link_fields(COHORT.assignments[0], 0, CHAIN[0], v), CONTEXT, "context"),
    Case("check_link.context.step", InvalidChainInput, not_int_or(NEGATIVE),
         lambda v: commitment.check_link(COHORT.assignments[0], 0, CHAIN[0], FIRST, replace(CONTEXT, step=v)), 0,
         "context.step"),
    Case("check_link.expected_input_digest", InvalidChainInput, NOT_DIGEST,
         lambda v: commitment.check_link(COHORT.assignments[0], 0, CHAIN[0], v, CONTEXT), FIRST,
         "expected_input_digest"),
    Case("first_failing_link.present", InvalidChainInput, st.one_of(NOT_SEQUENCE, st.lists(st.booleans(), min_size=2)),
         lambda v: commitment.first_failing_link(FIRST, v, [True], [FIRST], [FIRST]), [True], "present"),
    Case("first_broken_link.output_digests", InvalidChainInput, st.one_of(NOT_SEQUENCE, st.lists(st.binary(), min_size=2)),
         lambda v: commitment.first_broken_link(FIRST, [FIRST], v), [FIRST], "output_digests"),
    Case("commitment_position.segment_indices", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.commitment_position(v, 0), [0, 1], "segment_indices"),
    Case("check_chain.cohort", InvalidChainInput,
         st.one_of(NOT_SEQUENCE, st.just(Cohort("m", ())),
                   NOT_INT.map(lambda v: _assignment_cohort(first_layer=v)),
                   NOT_STR.map(lambda v: _assignment_cohort(provider_id=v))),
         lambda v: commitment.check_chain(v, CHAIN, FIRST, CONTEXT), COHORT, "cohort"),
    Case("check_chain.commitments", InvalidChainInput,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_SEQUENCE, min_size=1, max_size=2)),
         lambda v: commitment.check_chain(COHORT, v, FIRST, CONTEXT), CHAIN, "commitments"),
    Case("check_chain.first_input_digest", InvalidChainInput, NOT_DIGEST,
         lambda v: commitment.check_chain(COHORT, CHAIN, v, CONTEXT), FIRST, "first_input_digest"),
    Case("check_chain.context", InvalidChainInput,
         st.one_of(NOT_SEQUENCE, NOT_STR.map(lambda v: replace(CONTEXT, request_id=v)),
                   not_int_or(NEGATIVE).map(lambda v: replace(CONTEXT, num_positions=v))),
         lambda v: commitment.check_chain(COHORT, CHAIN, FIRST, v), CONTEXT, "context"),
    Case("check_exchanged_link.sent_digest", InvalidChainInput, NOT_DIGEST,
         lambda v: commitment.check_exchanged_link(COHORT.assignments[0], 0, CHAIN[0], v, CHAIN[0].output_digest, CONTEXT),
         FIRST, "expected_input_digest"),
    Case("check_exchanged_link.received_digest", InvalidChainInput, NOT_DIGEST,
         lambda v: commitment.check_exchanged_link(COHORT.assignments[0], 0, CHAIN[0], FIRST, v, CONTEXT),
         CHAIN[0].output_digest, "received_output_digest"),
    Case("check_exchanged_chain.sent_digests", InvalidChainInput,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_DIGEST, min_size=1, max_size=2)),
         lambda v: commitment.check_exchanged_chain(COHORT, CHAIN, FIRST, v, [c.output_digest for c in CHAIN], CONTEXT),
         [c.input_digest for c in CHAIN], "sent_digests"),
    Case("check_exchanged_chain.received_digests", InvalidChainInput,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_DIGEST, min_size=1, max_size=2)),
         lambda v: commitment.check_exchanged_chain(COHORT, CHAIN, FIRST, [c.input_digest for c in CHAIN], v, CONTEXT),
         [c.output_digest for c in CHAIN], "received_digests"),
    Case("check_receipt.sent_input_digest", InvalidChainInput, NOT_DIGEST,
         lambda v: commitment.check_receipt(CHAIN[0], v, CHAIN[0].output_digest), FIRST, "sent_input_digest"),
    Case("check_receipt.c", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_receipt(v, FIRST, FIRST), CHAIN[0], "commitment"),
    Case("next_step_context.num_positions", InvalidChainInput, not_int_or(st.integers(max_value=0)),
         lambda v: commitment.next_step_context(CONTEXT, v), 1, "num_positions"),
    Case("next_step_context.previous", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.next_step_context(v, 1), CONTEXT, "context"),
    Case("check_forwarded.c", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_forwarded(v, CHAIN[0].signer, CHAIN[0].request_id, CHAIN[0].step,
                                              CHAIN[0].first_position, CHAIN[0].num_positions, CHAIN[0].output_digest),
         CHAIN[0], "commitment"),
    Case("check_forwarded.received_digest", InvalidChainInput, NOT_DIGEST,
         lambda v: commitment.check_forwarded(CHAIN[0], CHAIN[0].signer, CHAIN[0].request_id, CHAIN[0].step,
                                              CHAIN[0].first_position, CHAIN[0].num_positions, v),
         CHAIN[0].output_digest, "received_digest"),
    Case("check_equivocation.previous", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_equivocation(v, CHAIN[0]), CHAIN[0], "previous"),
    Case("check_equivocation.upstream", InvalidChainInput, NOT_SEQUENCE,
         lambda v: commitment.check_equivocation(CHAIN[0], v), CHAIN[0], "upstream"),
    Case("router_candidates.k", InvalidCohort, not_int_or(st.integers(max_value=0)),
         lambda v: cohort.router_candidates(OFFERS, 4, v), 2, "k"),
    Case("commitment_to_dict.c", InvalidCommitment,
         st.one_of(NOT_SEQUENCE, st.one_of(st.none(), st.integers(), st.text(max_size=2)).map(
             lambda v: _commitment(output_digest=v))),
         commitment.commitment_to_dict, CHAIN[0], "commitment"),
    Case("commitment_from_dict.data", InvalidCommitment, NOT_SEQUENCE, commitment.commitment_from_dict,
         commitment.commitment_to_dict(CHAIN[0]), "commitment"),
    Case("commitment_from_dict.model_id", InvalidCommitment, NOT_STR,
         lambda v: commitment.commitment_from_dict({**commitment.commitment_to_dict(CHAIN[0]), "model_id": v}), "m",
         "model_id"),
    Case("commitment_from_dict.step", InvalidCommitment, NOT_INT,
         lambda v: commitment.commitment_from_dict({**commitment.commitment_to_dict(CHAIN[0]), "step": v}), 0, "step"),
    Case("commitment_from_dict.signer", InvalidCommitment,
         st.one_of(NOT_STR, st.text(alphabet="xyz", min_size=1, max_size=4)),
         lambda v: commitment.commitment_from_dict({**commitment.commitment_to_dict(CHAIN[0]), "signer": v}),
         CHAIN[0].signer.hex(), "signer"),
    # ---- audit ------------------------------------------------------------------------------------
    Case("seed_commitment.seed", InvalidAuditInput, st.one_of(NOT_BYTES, st.just(bytes(70000))),
         audit.seed_commitment, b"seed", "seed"),
    Case("reveal_valid.commitment", InvalidAuditInput, NOT_BYTES, lambda v: audit.reveal_valid(v, b"seed"),
         audit.seed_commitment(b"seed"), "commitment"),
    Case("reveal_valid.seed", InvalidAuditInput, NOT_BYTES,
         lambda v: audit.reveal_valid(audit.seed_commitment(b"s"), v), b"s", "seed"),
    Case("draw_message.request_id", InvalidAuditInput, st.one_of(NOT_STR, st.just("é" * 40000)),
         lambda v: audit.draw_message(b"s", v, 0), "r", "request_id"),
    Case("audit_draw.segment_index", InvalidAuditInput, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=2**32))),
         lambda v: audit.audit_draw(b"s", "r", v), 3, "segment_index"),
    Case("draw_selects.draw", InvalidAuditInput, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=2**64))),
         lambda v: audit.draw_selects(v, Fraction(1, 2)), 5, "draw"),
    Case("draw_selects.p", InvalidAuditInput, NOT_PROBABILITY, lambda v: audit.draw_selects(5, v), Fraction(1, 2), "p"),
    Case("selection.segment_index", InvalidAuditInput, not_int_or(NEGATIVE),
         lambda v: audit.selection(audit.audit_draw, b"s", "r", v, Fraction(1, 2)), 0, "segment_index"),
    Case("commitment_fresh.revealed", InvalidAuditInput,
         st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3), st.lists(st.binary(), max_size=2)),
         lambda v: audit.commitment_fresh(v, bytes(32)), frozenset(), "revealed"),
    Case("commitment_fresh.commitment", InvalidAuditInput, NOT_DIGEST,
         lambda v: audit.commitment_fresh(frozenset(), v), bytes(32), "commitment"),
    Case("request_seed.secret", InvalidAuditInput, st.one_of(NOT_BYTES, st.binary(max_size=15)),
         lambda v: audit.request_seed(v, "r"), b"s" * 16, "secret"),
    Case("request_seed.request_id", InvalidAuditInput, NOT_STR, lambda v: audit.request_seed(b"s" * 16, v), "r",
         "request_id"),
    Case("boundary_spec.segment_index", InvalidChainInput, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=2))),
         lambda v: commitment.boundary_spec(v, 2, "float32", 1, 8, 16), 0, "segment_index"),
    Case("boundary_spec.dtype", InvalidChainInput, st.one_of(NOT_STR, st.sampled_from(["int64", "float64", ""])),
         lambda v: commitment.boundary_spec(0, 2, v, 1, 8, 16), "float32", "dtype"),
    Case("boundary_spec.num_positions", InvalidChainInput, not_int_or(st.integers(max_value=0)),
         lambda v: commitment.boundary_spec(0, 2, "float32", v, 8, 16), 1, "num_positions"),
    Case("is_audited.seed", InvalidAuditInput, st.one_of(NOT_BYTES, st.just(bytes(70000))),
         lambda v: audit.is_audited(v, "r", 0, Fraction(1, 2)), b"s", "seed"),
    Case("is_audited.request_id", InvalidAuditInput, NOT_STR,
         lambda v: audit.is_audited(b"s", v, 0, Fraction(1, 2)), "r", "request_id"),
    Case("is_audited.segment_index", InvalidAuditInput, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=2**32))),
         lambda v: audit.is_audited(b"s", "r", v, Fraction(1, 2)), 0, "segment_index"),
    Case("is_audited.p", InvalidAuditInput, NOT_PROBABILITY, lambda v: audit.is_audited(b"s", "r", 0, v),
         Fraction(1, 10), "p"),
    Case("judge.expected", InvalidAuditInput,
         st.one_of(NOT_SEQUENCE, st.lists(st.one_of(OTHER, st.booleans(), st.text(max_size=2)), min_size=1, max_size=2)),
         lambda v: audit.judge(v, [1.0], TOL), [1.0], "expected"),
    Case("judge.observed", InvalidAuditInput, st.one_of(NOT_SEQUENCE, st.lists(st.text(max_size=2), min_size=1, max_size=2)),
         lambda v: audit.judge([1.0], v, TOL), [1.0], "observed"),
    Case("judge.tolerance", InvalidAuditInput,
         st.one_of(NOT_SEQUENCE, st.one_of(OTHER, st.text(max_size=2), st.booleans(), st.floats(max_value=-0.1)).map(
             lambda v: Tolerance("float32", v, 0.1))),
         lambda v: audit.judge([1.0], [1.0], v), TOL, "tolerance"),
    Case("eject.registry", InvalidAuditInput, NOT_SEQUENCE, lambda v: audit.eject(v, []), REGISTRY, "registry"),
    Case("eject.verdicts", InvalidAuditInput,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_SEQUENCE, min_size=1, max_size=2),
                   NOT_STR.map(lambda v: [AuditVerdict("r", 0, v, False)])),
         lambda v: audit.eject(REGISTRY, v), [AuditVerdict("r", 0, "p0", False)], "verdicts"),
    # ---- encoding ---------------------------------------------------------------------------------
    Case("element_count.shape", EncodingError,
         st.one_of(NOT_SEQUENCE, st.lists(st.one_of(NOT_INT, NEGATIVE, st.integers(min_value=2**64)), min_size=1, max_size=2)),
         encoding.element_count, (2, 3), "shape"),
    Case("encode_tensor.dtype", EncodingError, st.one_of(NOT_STR, st.just("complex64"), st.lists(st.integers(), max_size=2)),
         lambda v: encoding.encode_tensor(v, (1,), bytes(4)), "float32", "dtype"),
    Case("encode_tensor.shape", EncodingError,
         st.one_of(NOT_SEQUENCE, st.lists(st.one_of(NOT_INT, NEGATIVE), min_size=1, max_size=2),
                   st.just((1,) * 9), st.just((2**64,))),
         lambda v: encoding.encode_tensor("uint8", v, b"\x00"), (1,), "shape|rank|nbytes"),
    Case("encode_tensor.data", EncodingError, st.one_of(NOT_BYTES, st.binary(min_size=5, max_size=8)),
         lambda v: encoding.encode_tensor("float32", (1,), v), bytes(4), "data|nbytes"),
    Case("decode_tensor.blob", EncodingError, NOT_BYTES, encoding.decode_tensor,
         encoding.encode_tensor("uint8", (1,), b"\x07"), "frame"),
    Case("digest_encoded.encoded", EncodingError, NOT_BYTES, encoding.digest_encoded, b"abc", "frame"),
    Case("tensor_digest.shape", EncodingError, st.lists(st.one_of(NOT_INT, NEGATIVE), min_size=1, max_size=2),
         lambda v: encoding.tensor_digest("uint8", v, b"\x00"), (1,), "shape|nbytes"),
    # ---- deterrence -------------------------------------------------------------------------------
    Case("segment_cost.layer_work", InvalidDeterrenceInput,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_NUMBER, min_size=3, max_size=3)),
         lambda v: deterrence.segment_cost(v, 0, 2), [1, 2, 3], "layer_work"),
    Case("segment_cost.end_layer", InvalidDeterrenceInput, not_int_or(st.one_of(NEGATIVE, st.integers(min_value=4))),
         lambda v: deterrence.segment_cost([1, 2, 3], 0, v), 3, "end_layer"),
    Case("margin_from_expected_loss.savings", InvalidDeterrenceInput, NOT_NUMBER,
         lambda v: deterrence.margin_from_expected_loss(5, v), 2, "savings"),
    Case("deterrence_margin.p", InvalidDeterrenceInput, NOT_NUMBER,
         lambda v: deterrence.deterrence_margin(v, 10, 2), Fraction(1, 2), "p"),
    Case("is_deterred.franchise", InvalidDeterrenceInput, NOT_NUMBER,
         lambda v: deterrence.is_deterred(Fraction(1, 2), v, 2), 10, "franchise"),
    Case("shard_deterred_given_whole.shard_cost", InvalidDeterrenceInput, NOT_NUMBER,
         lambda v: deterrence.shard_deterred_given_whole(5, 4, 1, v), 2, "shard_cost"),
    Case("rho.p", InvalidDeterrenceInput, NOT_PROBABILITY, lambda v: deterrence.rho(v, [1], 10), Fraction(1, 10), "p"),
    Case("rho.audit_cost_by_segment", InvalidDeterrenceInput,
         st.one_of(NOT_SEQUENCE, st.lists(st.one_of(NOT_NUMBER, NEGATIVE), min_size=1, max_size=2)),
         lambda v: deterrence.rho(Fraction(1, 10), v, 10), [1, 2], "audit_cost_by_segment"),
    Case("rho.generation_cost", InvalidDeterrenceInput, st.one_of(NOT_NUMBER, st.integers(max_value=0)),
         lambda v: deterrence.rho(Fraction(1, 10), [1], v), 10, "generation_cost"),
    # ---- protocol ---------------------------------------------------------------------------------
    Case("initial_state.model", InvalidModel, NOT_SEQUENCE, initial_state, MODEL, "model"),
    Case("replay.events", IllegalTransition, st.one_of(OTHER, st.integers(), st.text(max_size=2)),
         lambda v: replay(MODEL, v), [], "events"),
    Case("apply.state", IllegalTransition, NOT_SEQUENCE, lambda v: apply(v, CompleteRequest("r")), STEPPED, "state"),
    Case("apply.event", IllegalTransition, NOT_SEQUENCE, lambda v: apply(STATE, v), Eject("p0", "x"), ""),
    Case("apply.AddOffer.offer", IllegalTransition,
         st.one_of(NOT_SEQUENCE, st.sampled_from([1.5, True, "1", None]).map(lambda p: _offer(provider_id="p9",
                                                                                              price_per_work_unit=p))),
         lambda v: apply(initial_state(MODEL), AddOffer(v)), OFFERS[0], "offer"),
    Case("apply.FormCohort.cohort_id", IllegalTransition, NOT_STR, lambda v: apply(STATE, FormCohort(v)), "c2",
         "cohort_id"),
    Case("apply.OpenRequest.fee", IllegalTransition,
         st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=2), st.none(), NEGATIVE,
                   st.fractions()), lambda v: apply(STATE, OpenRequest("r2", "c", v)), 10, "fee"),
    Case("apply.OpenRequest.request_id", IllegalTransition, NOT_STR, lambda v: apply(STATE, OpenRequest(v, "c", 1)),
         "r2", "request_id"),
    Case("apply.CommitStep.num_positions", IllegalTransition, not_int_or(st.integers(max_value=0)),
         lambda v: apply(STATE, CommitStep("r", FIRST, v, tuple(CHAIN))), 1, "num_positions"),
    Case("apply.CommitStep.commitments", IllegalTransition,
         st.one_of(NOT_SEQUENCE, st.lists(NOT_SEQUENCE, min_size=1, max_size=2)),
         lambda v: apply(STATE, CommitStep("r", FIRST, 1, v)), tuple(CHAIN), "commitments"),
    Case("apply.CommitStep.first_input_digest", IllegalTransition, NOT_DIGEST,
         lambda v: apply(STATE, CommitStep("r", v, 1, tuple(CHAIN))), FIRST, "first_input_digest"),
    Case("apply.CompleteRequest.request_id", IllegalTransition, NOT_STR, lambda v: apply(STEPPED, CompleteRequest(v)), "r",
         "request_id"),
    Case("apply.RecordAudit.verdict", IllegalTransition,
         st.one_of(NOT_SEQUENCE, NOT_INT.map(lambda v: AuditVerdict("r", v, "p0", True)),
                   st.one_of(st.none(), st.integers()).map(lambda v: AuditVerdict("r", 0, "p0", v))),
         lambda v: apply(apply(STEPPED, CompleteRequest("r")), RecordAudit(v)), AuditVerdict("r", 0, "p0", True),
         "verdict"),
    Case("apply.Eject.provider_id", IllegalTransition, NOT_STR, lambda v: apply(STATE, Eject(v, "x")), "p0", ""),
    Case("apply.SettleRequest.request_id", IllegalTransition, NOT_STR, lambda v: apply(STATE, SettleRequest(v, "lead")),
         "r", "request_id"),
]

# Public spec functions (and constructors) that take no validated input, with the reason.
EXEMPT = {
    "verisplit.spec.commitment.link_rule": "total: digest equality on any two values (runs on Z3 terms too)",
    "verisplit.spec.protocol.expected_settlement": "settlement (owned by the settlement work)",
    "verisplit.spec.commitment.check_boundary": "total: judges facts about received bytes, any value is an answer",
    "verisplit.spec.commitment.step_follows": "total: integer comparisons that also run on Z3 terms (rule K1 proofs)",
    "verisplit.spec.protocol.replay_input_of": "a ReplaceProvider event's own field; apply(ReplaceProvider) validates it",
}
GOOD_RAISES: dict[str, type[Exception]] = {
    # calls whose good value is valid input but still (correctly) ends in a documented rule failure
    "apply.event": IllegalTransition,            # Eject with no evidence is refused
    "apply.Eject.provider_id": IllegalTransition,
    "apply.SettleRequest.request_id": IllegalTransition,  # the request is still open
}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_good_value_is_accepted(case: Case) -> None:
    if case.name in GOOD_RAISES:
        with pytest.raises(GOOD_RAISES[case.name]):
            case.call(case.good)
        return
    case.call(case.good)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@settings(max_examples=25, deadline=None, derandomize=True)
@given(data=st.data())
def test_bad_value_raises_only_the_documented_error(case: Case, data: st.DataObject) -> None:
    value = data.draw(case.bad, label=case.name)
    with pytest.raises(case.error) as info:
        case.call(value)
    assert isinstance(info.value, ValueError)
    if case.field:
        assert re.search(case.field, str(info.value)), (case.name, str(info.value))


def _public_functions() -> set[str]:
    names = set()
    for module in (cohort, commitment, audit, encoding, deterrence, protocol):
        for name, obj in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
                continue
            names.add(f"{module.__name__}.{name}")
    return names


def test_every_public_spec_function_is_covered() -> None:
    covered = set()
    module_of = {"ModelSpec": "cohort"}
    for case in CASES:
        function = case.name.split(".", 1)[0]
        if function in module_of:
            continue
        for module in (cohort, commitment, audit, encoding, deterrence, protocol):
            if hasattr(module, function) and inspect.isfunction(getattr(module, function)) \
                    and getattr(module, function).__module__ == module.__name__:
                covered.add(f"{module.__name__}.{function}")
    missing = sorted(_public_functions() - covered - set(EXEMPT))
    assert missing == []


# ---- the reviewed examples, one by one -------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [
    ({"price_per_work_unit": 1.5}, "price_per_work_unit"), ({"price_per_work_unit": True}, "price_per_work_unit"),
    ({"end_layer": 2.5}, "end_layer"), ({"end_layer": "0"}, "end_layer"), ({"end_layer": None}, "end_layer"),
    ({"provider_id": 7}, "provider_id"), ({"public_key": "k" * 32}, "public_key"), ({"endpoint": 80}, "endpoint"),
])
def test_reviewed_offer_examples(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOffer, match=field):
        cohort.validate_offer(_offer(**changes))
    with pytest.raises(InvalidOffer, match=field):
        cohort.form_cohort([_offer(**changes)], MODEL)


@pytest.mark.parametrize("work,num_layers,field", [((1.5, 1), 2, "layer_work"), ((True, 1), 2, "layer_work"),
                                                   ((), 2.0, "num_layers"), ((), True, "num_layers")])
def test_reviewed_model_examples(work: Any, num_layers: Any, field: str) -> None:
    with pytest.raises(InvalidModel, match=field):
        ModelSpec("m", num_layers, work)


@pytest.mark.parametrize("fee", [10.5, True, "10", None, -1])
def test_reviewed_fee_examples(fee: Any) -> None:
    with pytest.raises(IllegalTransition, match="fee"):
        apply(STATE, OpenRequest("r2", "c", fee))


def test_reviewed_quote_chain_and_audit_examples() -> None:
    with pytest.raises(InvalidCohort, match="positions"):
        cohort.quote_fee(COHORT, MODEL, OFFERS, -3)
    assert cohort.quote_fee(COHORT, MODEL, OFFERS, 0) == 0
    with pytest.raises(InvalidChainInput, match="cohort"):
        commitment.check_chain(Cohort("m", ()), CHAIN[:1], FIRST, CONTEXT)
    for args, field in [((b"s", "r", -1, Fraction(1, 2)), "segment_index"), (("s", "r", 0, Fraction(1, 2)), "seed"),
                        ((b"s", 3, 0, Fraction(1, 2)), "request_id"), ((b"s", "r", 0, 0.5), "p")]:
        with pytest.raises(InvalidAuditInput, match=field):
            audit.is_audited(*args)
    with pytest.raises(InvalidCohort, match="lengths differ"):
        cohort.tiles_exactly([0, 2], [2], 2)


# ---- provider data is a failing link, never an exception --------------------------------------------

FIELD_VALUES = st.sampled_from(["step", "segment_index", "first_layer", "num_positions", "protocol_version",
                                "model_id", "request_id", "input_digest", "signer", "signature", "weights_digest"])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(FIELD_VALUES, st.one_of(NOT_INT, NOT_STR, NOT_BYTES, NEGATIVE, st.integers(min_value=2**64)))
def test_malformed_commitment_fields_fail_the_link_not_the_call(field: str, value: Any) -> None:
    bad = replace(CHAIN[1], **{field: value})
    assert commitment.signature_valid(bad) is False or bad == CHAIN[1]
    verdict = commitment.check_chain(COHORT, [CHAIN[0], bad], FIRST, CONTEXT)
    if bad != CHAIN[1]:
        assert not verdict.valid and verdict.link == 1 and verdict.culprit == "p1", verdict
        assert verdict.reason in (BAD_SIGNATURE, commitment.MISSING_LINK)
        failure = commitment.check_link_fields(COHORT.assignments[1], 1, bad, CONTEXT)
        assert failure is not None and failure[0] == BAD_SIGNATURE
    # through the protocol the same step aborts the request and fails exactly segment 1's provider
    state = apply(STATE, CommitStep("r", FIRST, 1, (CHAIN[0], bad)))
    if bad != CHAIN[1]:
        assert state.requests["r"].failed == {"p1"}


def test_no_coverage_is_still_the_only_error_for_a_gap() -> None:
    with pytest.raises(NoCoverage):
        cohort.form_cohort([OFFERS[0]], MODEL)
