"""Issue 11's rules: the boundary rule H5, the seed commitment and dtype in H2, and the seed rule A1.

All three are TESTED (concrete, exhaustive over small domains, on the spec's own functions); none is
labelled PROVED, because they compare strings, byte strings and shapes that the checks enumerate
rather than encode symbolically.

- ``boundary_rule`` (TESTED): ``check_boundary`` accepts exactly a finite tensor of the expected dtype
  and shape: exhaustive over every dtype (plus "not a tensor"), shapes in [1,3]x[1,3], finite or not,
  against every expected (dtype, shape) of ``boundary_spec`` for 1..3 segments;
- ``seed_and_dtype_bound`` (TESTED): ``check_chain`` fails a link at exactly the first commitment whose
  signed audit-seed commitment or dtype differs from the lead's, blaming that link's signer, for every
  chain of 1..3 links and every position of the changed field;
- ``seed_rule`` (TESTED): on protocol traces, a seed is revealed only after its request is final, only
  if it opens the commitment the request was opened with, once, and a revealed commitment can never
  open another request (all request states x candidate seeds of a small universe).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Iterator

from nacl.signing import SigningKey

from verisplit.proofs_z3.core import Evidence, Obligation, concrete, register
from verisplit.spec.audit import request_seed, seed_commitment
from verisplit.spec.cohort import Assignment, Cohort, ModelSpec, Offer
from verisplit.spec.commitment import (DTYPES, LOGITS_DTYPE, NO_SEED_COMMITMENT, PROTOCOL_VERSION, BoundaryCommitment,
                                       StepContext, boundary_spec, check_boundary, check_chain, sign_commitment)
from verisplit.spec.encoding import tensor_digest
from verisplit.spec.protocol import (AddOffer, CommitStep, CompleteRequest, FormCohort, IllegalTransition, OpenRequest,
                                     RevealSeed, apply, replay)

CHECK_BOUNDARY = "verisplit.spec.commitment.check_boundary"
BOUNDARY_SPEC = "verisplit.spec.commitment.boundary_spec"
CHECK_CHAIN = "verisplit.spec.commitment.check_chain"
COMMITMENT_FRESH = "verisplit.spec.audit.commitment_fresh"
REVEAL_VALID = "verisplit.spec.audit.reveal_valid"
APPLY = "verisplit.spec.protocol.apply"


@register("boundary_rule", spec_functions=(CHECK_BOUNDARY, BOUNDARY_SPEC), evidence=Evidence.TESTED,
          bound="exhaustive: dtypes x {not a tensor}, shapes [1,3]^2, finite or not, 1..3 segments, 1..2 positions")
def boundary_rule() -> Iterator[Obligation]:
    """H5: a signed output passes iff it is a finite tensor of exactly the boundary's dtype and shape."""
    start = time.perf_counter()
    bad = ""
    for segments in range(1, 4):
        for index in range(segments):
            for cohort_dtype in DTYPES:
                for positions in (1, 2):
                    want_dtype, want_shape = boundary_spec(index, segments, cohort_dtype, positions, 2, 3)
                    last = index == segments - 1
                    if (want_dtype, want_shape) != ((LOGITS_DTYPE, (positions, 3)) if last else (cohort_dtype, (positions, 2))):
                        bad = bad or f"boundary_spec({index}, {segments}, {cohort_dtype}) = {(want_dtype, want_shape)}"
                    for dtype in DTYPES + (None,):
                        for shape in itertools.product(range(1, 4), repeat=2):
                            for finite in (True, False):
                                ok = check_boundary(dtype, shape if dtype is not None else None, finite,
                                                    (want_dtype, want_shape)) is None
                                should = dtype == want_dtype and tuple(shape) == want_shape and finite
                                if ok != should:
                                    bad = bad or f"check_boundary({dtype}, {shape}, {finite}) vs {(want_dtype, want_shape)}"
    yield concrete("H5 accepts exactly finite tensors of the boundary's dtype and shape", not bad,
                   time.perf_counter() - start, bad)


def _chain(keys: list[SigningKey], cohort: Cohort, context: StepContext) -> list[BoundaryCommitment]:
    digests = [tensor_digest("float32", (1,), bytes([k, 0, 0, 0])) for k in range(len(keys) + 1)]
    out = []
    for index, (a, key) in enumerate(zip(cohort.assignments, keys)):
        unsigned = BoundaryCommitment(PROTOCOL_VERSION, context.model_id, bytes(32), context.request_id, context.step,
                                      index, a.first_layer, a.end_layer, context.first_position, context.num_positions,
                                      digests[index], digests[index + 1], bytes(32), dtype=context.dtype,
                                      audit_seed_commitment=context.audit_seed_commitment)
        out.append(sign_commitment(unsigned, key))
    return out


@register("seed_and_dtype_bound", spec_functions=(CHECK_CHAIN,), evidence=Evidence.TESTED,
          bound="exhaustive: chains of 1..3 links, every link, seed commitment or dtype changed (3 dtypes)")
def seed_and_dtype_bound() -> Iterator[Obligation]:
    """H2: a commitment signed for another audit-seed commitment or dtype fails at exactly its link,
    blamed on its own signer; an unchanged chain is valid."""
    start = time.perf_counter()
    bad = ""
    commitment = seed_commitment(request_seed(b"check-secret-0123456789", "r"))
    for n in range(1, 4):
        keys = [SigningKey(bytes([k + 1]) * 32) for k in range(n)]
        cohort = Cohort("m", tuple(Assignment(f"p{k}", bytes(keys[k].verify_key), k, k + 1) for k in range(n)))
        for dtype in DTYPES:
            context = StepContext("m", "r", 0, 0, 1, dtype=dtype, audit_seed_commitment=commitment)
            honest = _chain(keys, cohort, context)
            first_input = honest[0].input_digest
            if not check_chain(cohort, honest, first_input, context).valid:
                bad = bad or f"honest chain of {n} in {dtype} rejected"
            for link in range(n):
                other_dtype = DTYPES[(DTYPES.index(dtype) + 1) % len(DTYPES)]
                for change in ({"audit_seed_commitment": NO_SEED_COMMITMENT}, {"dtype": other_dtype}):
                    chain = list(honest)
                    chain[link] = sign_commitment(replace(chain[link], **change), keys[link])
                    verdict = check_chain(cohort, chain, first_input, context)
                    if (verdict.valid, verdict.link, verdict.culprit) != (False, link, f"p{link}"):
                        bad = bad or f"n={n} link={link} {change}: {verdict}"
    yield concrete("H2 binds the seed commitment and dtype at the exact link", not bad, time.perf_counter() - start, bad)


@register("seed_rule", spec_functions=(COMMITMENT_FRESH, REVEAL_VALID, APPLY), evidence=Evidence.TESTED,
          bound="exhaustive: 3 requests x {open, completed} x 4 candidate seeds, and reuse of every revealed commitment")
def seed_rule() -> Iterator[Obligation]:
    """A1 in the protocol: reveal only after the request is final, only the seed that opens its commitment,
    only once; a revealed commitment never opens another request."""
    start = time.perf_counter()
    bad = ""
    secret = b"check-secret-0123456789"
    key = SigningKey(bytes([9]) * 32)
    model = ModelSpec("m", 1)
    offer = Offer("p0", bytes(key.verify_key), 0, 1, 1, "e")
    seeds = [request_seed(secret, f"r{i}") for i in range(3)]
    candidates = seeds + [request_seed(secret, "other")]
    for i, seed in enumerate(seeds):
        rid = f"r{i}"
        state = replay(model, [AddOffer(offer), FormCohort("c"), OpenRequest(rid, "c", 10, seed_commitment(seed))])
        for candidate in candidates:
            try:
                apply(state, RevealSeed(rid, candidate))
                bad = bad or f"revealed {rid} while open"
            except IllegalTransition:
                pass
        context = StepContext("m", rid, 0, 0, 1, audit_seed_commitment=seed_commitment(seed))
        chain = _chain([key], state.cohorts["c"], context)
        final = apply(apply(state, CommitStep(rid, chain[0].input_digest, 1, tuple(chain))), CompleteRequest(rid))
        for candidate in candidates:
            try:
                revealed = apply(final, RevealSeed(rid, candidate))
                if candidate != seed:
                    bad = bad or f"{rid} revealed with a seed that does not open its commitment"
                try:
                    apply(revealed, RevealSeed(rid, candidate))
                    bad = bad or f"{rid} revealed twice"
                except IllegalTransition:
                    pass
                try:
                    apply(apply(revealed, FormCohort("c2")), OpenRequest("again", "c2", 10, seed_commitment(seed)))
                    bad = bad or f"{rid}: a revealed seed commitment opened another request"
                except IllegalTransition:
                    pass
            except IllegalTransition:
                if candidate == seed:
                    bad = bad or f"{rid}: the opening seed was refused after completion"
    yield concrete("A1: reveal after final, only the opening seed, once, never reused", not bad,
                   time.perf_counter() - start, bad)
