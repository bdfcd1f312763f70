"""Boundary commitments and the chain rule.

At every boundary the provider of segment k signs what it consumed and produced. Segment k's output
is segment k+1's input, so the commitments chain: ``c[k].output_digest == c[k+1].input_digest``.
``signing_bytes`` is documented byte-for-byte in docs/protocol.md.

Rules (docs/spec.md, "Commitments"):
- H1 a commitment's signature verifies under its ``signer`` key, and the signer is the assigned provider;
- H2 it names the protocol version, model, request, audit-seed commitment, step, segment index,
  layer range, positions and compute dtype the lead expects (wrong step: replay if earlier, gap if
  later; another dtype: ``wrong_dtype``);
- H3 link k's input digest equals link k-1's output digest (the first input's digest for k = 0);
- H4 the lead checks on receipt that the digests are of the bytes it actually sent and received;
- H5 the bytes a provider signed as its output are a canonical, finite tensor of the boundary's shape
  and dtype (``check_boundary``); otherwise its signer fails (``bad_boundary``): a signed output that
  cannot be judged is its signer's fault, never the receiver's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any, Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from verisplit.spec.arith import all_of, ite, negate
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.validation import is_int, require_instance, require_int, require_same_length, require_sequence

PROTOCOL_VERSION = 2  # 2: commitments sign the compute dtype and the request's audit-seed commitment
COMMITMENT_DOMAIN = b"verisplit/commitment/v2\x00"
NO_SEED_COMMITMENT = bytes(32)  # placeholder of a request whose lead audits nothing
DTYPES = ("float32", "float16", "bfloat16")  # compute/boundary dtypes a cohort may agree on
LOGITS_DTYPE = "float32"  # the last segment's output (logits) is always float32

# Reasons a chain can fail. The single list of reason codes: ``REASONS`` (docs/spec.md lists each).
BAD_SIGNATURE = "bad_signature"
WRONG_SIGNER = "wrong_signer"
WRONG_REQUEST = "wrong_request"
REPLAY = "duplicate_or_replay"
STEP_GAP = "step_gap"
RANGE_MISMATCH = "range_mismatch"
INPUT_MISMATCH = "input_mismatch"
MISSING_LINK = "missing_link"
OUTPUT_MISMATCH = "output_mismatch"
EXTRA_COMMITMENT = "extra_commitment"
WRONG_DTYPE = "wrong_dtype"
BAD_BOUNDARY = "bad_boundary"
REASONS = (BAD_SIGNATURE, WRONG_SIGNER, WRONG_REQUEST, REPLAY, STEP_GAP, RANGE_MISMATCH, INPUT_MISMATCH,
           MISSING_LINK, OUTPUT_MISMATCH, EXTRA_COMMITMENT, WRONG_DTYPE, BAD_BOUNDARY)
# Direct data path only (not a chain-vector reason): a sender signed two different outputs for one slot.
EQUIVOCATION = "equivocation"
DIRECT_REASONS = (EQUIVOCATION,)


class InvalidCommitment(ValueError):
    """A commitment cannot be encoded, signed or (de)serialised: a field is ill-typed or does not fit
    its width (the message starts with ``commitment field <name>`` or ``commitment: ...``)."""


class InvalidChainInput(ValueError):
    """An argument of a chain function (cohort, assignment, segment index, context, digest, list of
    commitments) is ill-typed or out of range; the message names the field. Never raised for what a
    provider sent: a malformed commitment is a failing link, not an error."""


@dataclass(frozen=True)
class BoundaryCommitment:
    """A provider's signed statement: for (request, step, segment) over layers [first_layer, end_layer)
    and token positions [first_position, first_position + num_positions), running weights
    ``weights_digest`` in ``dtype``, input with digest ``input_digest`` produced output with digest
    ``output_digest``, for the request whose audit seed the lead committed to as ``audit_seed_commitment``
    (so every provider signs, before any audit, which seed will decide it)."""

    protocol_version: int
    model_id: str
    weights_digest: bytes
    request_id: str
    step: int
    segment_index: int
    first_layer: int
    end_layer: int
    first_position: int
    num_positions: int
    input_digest: bytes
    output_digest: bytes
    signer: bytes
    signature: bytes = b""
    dtype: str = "float32"
    audit_seed_commitment: bytes = NO_SEED_COMMITMENT


@dataclass(frozen=True)
class StepContext:
    """What the lead expects of every link of one step (``dtype``: the cohort's compute dtype)."""

    model_id: str
    request_id: str
    step: int
    first_position: int
    num_positions: int
    protocol_version: int = PROTOCOL_VERSION
    dtype: str = "float32"
    audit_seed_commitment: bytes = NO_SEED_COMMITMENT


@dataclass(frozen=True)
class ChainVerdict:
    """``valid``, or the first bad ``link`` (segment index) with its ``culprit`` provider and ``reason``."""

    valid: bool
    link: int | None = None
    culprit: str | None = None
    reason: str | None = None
    detail: str = ""


VALID = ChainVerdict(True)


def _text(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidCommitment(f"commitment field {name}: must be a string, got {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidCommitment(f"commitment field {name}: is not encodable as UTF-8") from None
    if len(raw) > 0xFFFF:
        raise InvalidCommitment(f"commitment field {name}: longer than 65535 UTF-8 bytes")
    return struct.pack("<H", len(raw)) + raw


def _digest32(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidCommitment(f"commitment field {name}: must be bytes, got {type(value).__name__}")
    if len(value) != 32:
        raise InvalidCommitment(f"commitment field {name}: must be 32 bytes, got {len(value)}")
    return value


_FIELD_BITS = (("protocol_version", 16), ("step", 64), ("segment_index", 32), ("first_layer", 32),
               ("end_layer", 32), ("first_position", 64), ("num_positions", 64))


def _check_widths(c: BoundaryCommitment) -> None:
    """Every integer field must fit its fixed width (else no canonical encoding exists)."""
    for name, bits in _FIELD_BITS:
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
            raise InvalidCommitment(f"commitment field {name}: {value!r} is not an unsigned {bits}-bit integer")


def _require_commitment(c: Any, field: str = "commitment", error: type[ValueError] = InvalidCommitment) -> "BoundaryCommitment":
    return require_instance(c, BoundaryCommitment, field, error)


def signing_bytes(c: BoundaryCommitment) -> bytes:
    """Canonical bytes the signature covers (every field except ``signature``; see docs/protocol.md).

    Invariant: injective on commitments (fixed-width integers and digests, length-prefixed strings),
    so a signature binds every field. A field that is ill-typed or does not fit its width raises
    ``InvalidCommitment`` naming it, so such a commitment can never carry a valid signature
    (``signature_valid`` is False).
    """
    _require_commitment(c)
    _check_widths(c)
    return b"".join([
        COMMITMENT_DOMAIN,
        struct.pack("<H", c.protocol_version),
        _text("model_id", c.model_id),
        _digest32("weights_digest", c.weights_digest),
        _text("request_id", c.request_id),
        struct.pack("<QIIIQQ", c.step, c.segment_index, c.first_layer, c.end_layer, c.first_position, c.num_positions),
        _digest32("input_digest", c.input_digest),
        _digest32("output_digest", c.output_digest),
        _digest32("signer", c.signer),
        _text("dtype", c.dtype),
        _digest32("audit_seed_commitment", c.audit_seed_commitment),
    ])


def sign_commitment(c: BoundaryCommitment, signing_key: SigningKey) -> BoundaryCommitment:
    """Return ``c`` with ``signer`` set to the key's public key and a fresh Ed25519 signature.
    ``InvalidCommitment`` if ``c`` cannot be encoded or ``signing_key`` is not a ``SigningKey``."""
    _require_commitment(c)
    require_instance(signing_key, SigningKey, "signing_key", InvalidCommitment)
    unsigned = replace(c, signer=bytes(signing_key.verify_key), signature=b"")
    signature = signing_key.sign(signing_bytes(unsigned)).signature
    return replace(unsigned, signature=signature)


def signature_valid(c: BoundaryCommitment) -> bool:
    """True iff ``c.signature`` is a valid Ed25519 signature of ``signing_bytes(c)`` by ``c.signer``.

    False (never an exception) for any ``BoundaryCommitment`` whose fields are ill-typed or out of
    range; ``InvalidCommitment`` only if ``c`` is not a ``BoundaryCommitment`` at all."""
    _require_commitment(c)
    if not isinstance(c.signature, bytes) or len(c.signature) != 64:
        return False
    try:
        message = signing_bytes(c)
        VerifyKey(c.signer).verify(message, c.signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def link_rule(previous_output: Any, this_input: Any) -> Any:
    """Rule H3 on one link: the digest this segment consumed equals the previous one's output.
    Works on bytes and on Z3 terms. Z3: ``chain_substitution`` (proofs/z3/check_chain.py);
    Lean: ``Verisplit.chain_detects_at``."""
    return previous_output == this_input


def _require_assignment(assignment: Any, field: str = "assignment") -> Assignment:
    require_instance(assignment, Assignment, field, InvalidChainInput)
    if not isinstance(assignment.provider_id, str) or not isinstance(assignment.public_key, bytes):
        raise InvalidChainInput(f"{field}: provider_id must be a str and public_key bytes")
    require_int(assignment.first_layer, f"{field}.first_layer", InvalidChainInput, minimum=0)
    require_int(assignment.end_layer, f"{field}.end_layer", InvalidChainInput, minimum=0)
    return assignment


def _require_context(context: Any) -> StepContext:
    require_instance(context, StepContext, "context", InvalidChainInput)
    for name in ("model_id", "request_id", "dtype"):
        if not isinstance(getattr(context, name), str):
            raise InvalidChainInput(f"context.{name}: must be a string, got {getattr(context, name)!r}")
    for name in ("protocol_version", "step", "first_position", "num_positions"):
        require_int(getattr(context, name), f"context.{name}", InvalidChainInput, minimum=0)
    _require_digest(context.audit_seed_commitment, "context.audit_seed_commitment")
    return context


def _require_digest(value: Any, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidChainInput(f"{field}: must be a 32-byte digest, got {value!r:.80}")
    return value


def _require_chain_cohort(cohort: Any) -> Cohort:
    require_instance(cohort, Cohort, "cohort", InvalidChainInput)
    if not isinstance(cohort.assignments, tuple) or not cohort.assignments:
        raise InvalidChainInput("cohort.assignments: a chain needs a non-empty tuple of assignments")
    for index, assignment in enumerate(cohort.assignments):
        _require_assignment(assignment, f"cohort.assignments[{index}]")
    return cohort


def check_link_fields(assignment: Assignment, segment_index: int, c: BoundaryCommitment,
                      context: StepContext) -> tuple[str, str] | None:
    """The first of rules H1-H2 that link ``segment_index`` breaks, as (reason, detail), or None.

    ``c`` may be any ``BoundaryCommitment`` (what a provider sent); ill-typed arguments of the lead's
    own (assignment, segment_index, context, or ``c`` not a commitment) raise ``InvalidChainInput``."""
    _require_assignment(assignment)
    require_int(segment_index, "segment_index", InvalidChainInput, minimum=0)
    _require_commitment(c, "commitment", InvalidChainInput)
    _require_context(context)
    if not signature_valid(c):
        return BAD_SIGNATURE, "signature does not verify under the commitment's signer key"
    # From here every field of c is well-typed: signing_bytes accepted it.
    if c.signer != assignment.public_key:
        return WRONG_SIGNER, "signed by a key other than the assigned provider's"
    if (c.protocol_version, c.model_id, c.request_id) != (context.protocol_version, context.model_id, context.request_id):
        return WRONG_REQUEST, f"commitment is for ({c.protocol_version}, {c.model_id!r}, {c.request_id!r})"
    if c.audit_seed_commitment != context.audit_seed_commitment:
        return WRONG_REQUEST, "commitment names another audit-seed commitment than the lead sent for this request"
    if c.step < context.step:
        return REPLAY, f"commitment for step {c.step} replayed at step {context.step}"
    if c.step > context.step:
        return STEP_GAP, f"commitment for step {c.step}, expected step {context.step}"
    expected_shape = (segment_index, assignment.first_layer, assignment.end_layer, context.first_position, context.num_positions)
    actual_shape = (c.segment_index, c.first_layer, c.end_layer, c.first_position, c.num_positions)
    if actual_shape != expected_shape:
        return RANGE_MISMATCH, f"(segment, layers, positions) {actual_shape} != expected {expected_shape}"
    if c.dtype != context.dtype:
        return WRONG_DTYPE, f"commitment declares dtype {c.dtype!r}, the cohort computes in {context.dtype!r}"
    return None


def check_link(assignment: Assignment, segment_index: int, c: BoundaryCommitment,
               expected_input_digest: bytes, context: StepContext) -> tuple[str, str] | None:
    """The first rule (H1-H3) that link ``segment_index`` breaks, as (reason, detail), or None.
    ``expected_input_digest`` must be a 32-byte digest (``InvalidChainInput`` otherwise)."""
    _require_digest(expected_input_digest, "expected_input_digest")
    failure = check_link_fields(assignment, segment_index, c, context)
    if failure is not None:
        return failure
    if not link_rule(expected_input_digest, c.input_digest):
        return INPUT_MISMATCH, "input digest does not match the previous boundary's output digest"
    return None


def _parallel(*named: tuple[str, Any]) -> list[list[Any]]:
    """The named sequences as lists, all of one length (``InvalidChainInput`` otherwise)."""
    lists = [require_sequence(value, name, InvalidChainInput) for name, value in named]
    for (name, _), values in zip(named[1:], lists[1:]):
        require_same_length(lists[0], values, f"{named[0][0]}, {name}", InvalidChainInput)
    return lists


def first_failing_link(first_input_digest: Any, present: Sequence[Any], fields_ok: Sequence[Any],
                       input_digests: Sequence[Any], output_digests: Sequence[Any]) -> Any:
    """The chain rule over a whole step: the index of the first segment k whose link is not good, or
    ``n`` (the number of segments) if every link is. Link k is good iff its commitment is present,
    passes rules H1-H2 (``fields_ok[k]``, the signature check included) and passes H3: its input
    digest equals link k-1's output digest (``first_input_digest`` for k = 0). All five arguments
    are per-segment (equal lengths, ``InvalidChainInput`` otherwise); entries may be Z3 terms, and
    then the result is a symbolic index. ``check_chain`` calls this on what it found per segment.

    Invariant: the result r satisfies 0 <= r <= n, every link before r is good, and link r is not
    (when r < n). Z3: ``chain_first_failure`` (proofs/z3/check_chain.py);
    Lean: ``Verisplit.firstFailing_first``, ``Verisplit.firstFailing_none``.
    """
    present_l, fields_l, inputs_l, outputs_l = _parallel(("present", present), ("fields_ok", fields_ok),
                                                         ("input_digests", input_digests),
                                                         ("output_digests", output_digests))
    links_ok: list[Any] = []
    expected = first_input_digest
    for index in range(len(present_l)):
        links_ok.append(all_of(present_l[index], fields_l[index], link_rule(expected, inputs_l[index])))
        expected = outputs_l[index]
    verdict: Any = len(links_ok)
    for index in reversed(range(len(links_ok))):
        verdict = ite(negate(links_ok[index]), index, verdict)
    return verdict


def first_broken_link(first_input_digest: Any, input_digests: Sequence[Any], output_digests: Sequence[Any]) -> Any:
    """Rule H3 over a whole chain: the index of the first link k whose input digest differs from the
    previous link's output digest (``first_input_digest`` for k = 0), or ``len(input_digests)`` if
    every link holds: ``first_failing_link`` with every commitment present and passing H1-H2. Runs on
    bytes and on Z3 terms (then it returns a symbolic index); equal lengths required.

    Invariant: with an injective digest, substituting the tensor consumed at link j yields exactly j.
    Z3: ``chain_substitution``, ``chain_unmodified`` (proofs/z3/check_chain.py);
    Lean: ``Verisplit.chain_detects_at``, ``Verisplit.chain_valid_of_honest``.
    """
    inputs_l, outputs_l = _parallel(("input_digests", input_digests), ("output_digests", output_digests))
    always = [True] * len(inputs_l)
    return first_failing_link(first_input_digest, always, always, inputs_l, outputs_l)


def commitment_position(segment_indices: Sequence[Any], segment: Any) -> Any:
    """Which commitment is segment ``segment``'s: the position of the first entry of
    ``segment_indices`` (each commitment's ``segment_index`` field, in the order received) equal to
    ``segment``, or -1 if none is. Runs on ints and on Z3 Ints.

    Invariant: the result p is -1 iff no entry equals ``segment``; else entry p equals it and no
    earlier entry does. Z3: ``chain_first_failure`` (proofs/z3/check_chain.py);
    Lean: ``Verisplit.commitFor_some``, ``Verisplit.commitFor_none``."""
    indices = require_sequence(segment_indices, "segment_indices", InvalidChainInput)
    position: Any = -1
    for index in reversed(range(len(indices))):
        position = ite(indices[index] == segment, index, position)
    return position


def _extra_culprit(cohort: Cohort, c: BoundaryCommitment) -> str | None:
    """Who answers for an extra commitment: the cohort member whose key validly signed it, else nobody."""
    if not signature_valid(c):
        return None
    for assignment in cohort.assignments:
        if assignment.public_key == c.signer:
            return assignment.provider_id
    return None


def check_chain(cohort: Cohort, commitments: Sequence[BoundaryCommitment], first_input_digest: bytes,
                context: StepContext) -> ChainVerdict:
    """Verdict for one step's chain: valid, or the first bad link with culprit and reason (the audit-seed
    commitment and dtype of every link are bound by H2: Z3 ``seed_and_dtype_bound``, TESTED).

    Segment k's commitment is the first one whose ``segment_index`` is k (``commitment_position``);
    list order matters only among commitments claiming the same segment. The verdict is at the
    first segment k (``first_failing_link``) whose commitment is absent (``missing_link``), breaks
    H1-H2 (the reason ``check_link_fields`` gives) or breaks H3 (``input_mismatch``); the culprit is
    segment k's provider. If every segment is good but some commitment was not used (a duplicate, or
    one claiming no segment of the cohort), the verdict is ``extra_commitment`` at link n (the number
    of segments), blamed on the cohort member whose key validly signed the first such commitment, or
    on nobody (``culprit`` None) if it is unsigned, badly signed or signed by a key outside the cohort.
    Ill-typed arguments raise ``InvalidChainInput`` (an empty cohort included); malformed commitment
    fields are link failures (``bad_signature``), never exceptions.

    Invariant: with an injective digest, substituting the boundary tensor at link j yields a verdict
    at exactly link j; an unmodified, correctly signed chain is valid; the verdict link is the first
    index that breaks a rule. Z3: ``check_chain_concrete`` (this function on signed chains,
    proofs/z3/check_chain.py); the rule it applies is ``first_failing_link`` and its matching
    ``commitment_position``, both proved symbolically. Lean: ``Verisplit.checkChainFull_some``,
    ``Verisplit.checkChainFull_none``, ``Verisplit.checkChainFull_honest``.
    """
    _require_chain_cohort(cohort)
    items = require_sequence(commitments, "commitments", InvalidChainInput)
    for index, c in enumerate(items):
        _require_commitment(c, f"commitments[{index}]", InvalidChainInput)
    _require_digest(first_input_digest, "first_input_digest")
    _require_context(context)
    n = len(cohort.assignments)
    claimed = [c.segment_index if is_int(c.segment_index) else -1 for c in items]
    positions = [commitment_position(claimed, k) for k in range(n)]
    present = [position >= 0 for position in positions]
    failures: list[tuple[str, str] | None] = []
    inputs: list[Any] = []
    outputs: list[Any] = []
    for k, position in enumerate(positions):
        if position < 0:
            failures.append(None)
            inputs.append(None)
            outputs.append(None)
            continue
        c = items[position]
        failures.append(check_link_fields(cohort.assignments[k], k, c, context))
        inputs.append(c.input_digest)
        outputs.append(c.output_digest)
    fields_ok = [failure is None for failure in failures]
    broken = first_failing_link(first_input_digest, present, fields_ok, inputs, outputs)
    if broken < n:
        provider = cohort.assignments[broken].provider_id
        if not present[broken]:
            return ChainVerdict(False, broken, provider, MISSING_LINK, f"no commitment for segment {broken}")
        failure = failures[broken]
        if failure is None:
            failure = (INPUT_MISMATCH, "input digest does not match the previous boundary's output digest")
        return ChainVerdict(False, broken, provider, failure[0], failure[1])
    used = set(positions)
    for index, c in enumerate(items):
        if index not in used:
            culprit = _extra_culprit(cohort, c)
            return ChainVerdict(False, n, culprit, EXTRA_COMMITMENT,
                                f"commitment {index} (segment_index {c.segment_index!r}) is not any segment's "
                                f"first commitment; {'signed by ' + culprit if culprit else 'no cohort member signed it'}")
    return VALID


def check_receipt(c: BoundaryCommitment, sent_input_digest: bytes, received_output_digest: bytes) -> tuple[str, str] | None:
    """Rule H4, checked by the lead on receipt: the commitment is about the exact bytes exchanged.
    The two digests are the lead's own (32 bytes each, ``InvalidChainInput`` otherwise)."""
    _require_commitment(c, "commitment", InvalidChainInput)
    _require_digest(sent_input_digest, "sent_input_digest")
    _require_digest(received_output_digest, "received_output_digest")
    if c.input_digest != sent_input_digest:
        return INPUT_MISMATCH, "commitment's input digest is not the digest of the bytes the lead sent"
    if c.output_digest != received_output_digest:
        return OUTPUT_MISMATCH, "commitment's output digest is not the digest of the bytes the provider returned"
    return None


def check_forwarded(c: BoundaryCommitment, sender_public_key: bytes, request_id: str, step: int, first_position: int,
                    num_positions: int, received_digest: bytes) -> tuple[str, str] | None:
    """Direct data path: what segment k checks on the input segment k-1 forwarded, before computing on
    it. Rule H1 (the signature verifies and the signer is the neighbour the lead-signed opening named),
    H2 (this request, this step and these positions) and H4 at the receiver (the commitment's output
    digest is the digest of the bytes actually received). On a failure the receiver refuses the step
    naming segment k-1 and the returned reason (an accusation the lead cannot verify, so on its own it
    ejects nobody: docs/protocol.md "Direct data path"). The lead still checks every link
    itself (``check_exchanged_link``) before the step's token is released. Z3: ``forwarded_concrete``
    (proofs/z3/check_rollback.py, TESTED with real signatures); Lean: none (Ed25519 is not modelled)."""
    _require_commitment(c, "commitment", InvalidChainInput)
    _require_digest(received_digest, "received_digest")
    if not signature_valid(c):
        return BAD_SIGNATURE, "forwarded commitment's signature does not verify"
    if c.signer != sender_public_key:
        return WRONG_SIGNER, "forwarded commitment is not signed by the previous segment named in the session opening"
    if c.request_id != request_id:
        return WRONG_REQUEST, f"forwarded commitment is for request {c.request_id!r}"
    if c.step != step:
        return (REPLAY if c.step < step else STEP_GAP), f"forwarded commitment for step {c.step}, expected {step}"
    if (c.first_position, c.num_positions) != (first_position, num_positions):
        return RANGE_MISMATCH, f"forwarded positions {(c.first_position, c.num_positions)} != {(first_position, num_positions)}"
    if c.output_digest != received_digest:
        return OUTPUT_MISMATCH, "forwarded bytes are not the output the previous segment signed"
    return None


_SLOT_FIELDS = ("protocol_version", "model_id", "weights_digest", "request_id", "step", "segment_index", "first_layer",
                "end_layer", "first_position", "num_positions", "signer", "dtype", "audit_seed_commitment")


def check_equivocation(previous: BoundaryCommitment, upstream: BoundaryCommitment) -> tuple[str, str] | None:
    """Direct data path: does segment k's returned ``upstream`` commitment (the one its
    ``check_forwarded`` accepted) prove that segment k-1 equivocated against ``previous`` (the
    commitment k-1 reported to the lead)? ``equivocation`` iff both signatures verify, both are the
    same signer's statement about the same slot (every field but the digests and the signature equal:
    request, step, segment, layers, positions, weights, dtype, seed commitment) and their output digests
    differ: the signer then signed two different outputs for one slot, which no honest provider does
    (it signs once per step), and nobody but the signer can produce the second signature. Otherwise
    None: no proof (the receiver's own input mismatch stays its fault, ``input_mismatch``).

    Invariant: never names the signer without two valid signatures of its own over different outputs
    for one slot. Z3: ``equivocation_concrete`` (proofs/z3/check_rollback.py, TESTED with real
    signatures); Lean: ``Verisplit.equivocation_needs_distinct_outputs``, ``Verisplit.equivocation_not_self``
    (proofs/lean/Verisplit/Thm/Equivocation.lean; ``sigOk`` abstract)."""
    _require_commitment(previous, "previous", InvalidChainInput)
    _require_commitment(upstream, "upstream", InvalidChainInput)
    if any(getattr(previous, name) != getattr(upstream, name) for name in _SLOT_FIELDS):
        return None
    if previous.output_digest == upstream.output_digest:
        return None
    if not (signature_valid(previous) and signature_valid(upstream)):
        return None
    return EQUIVOCATION, (f"segment {previous.segment_index} signed two different outputs for step {previous.step}: "
                          "one reported to the lead, another forwarded to the next segment")


def next_step_context(previous: StepContext, num_positions: int, first_position: int | None = None) -> StepContext:
    """Step k+1 continues step k: step number +1 and positions start where step k's ended, or, with
    ``first_position``, at any start rule K1 allows (``step_follows``: a speculative rollback to the
    first rejected position). ``num_positions`` must be an int >= 1 and ``first_position`` satisfy K1
    (``InvalidChainInput`` otherwise). Z3: ``rollback_context_concrete`` (proofs/z3/check_rollback.py);
    Lean: ``Verisplit.nextStart_follows``."""
    _require_context(previous)
    require_int(num_positions, "num_positions", InvalidChainInput, minimum=1)
    start = previous.first_position + previous.num_positions if first_position is None else first_position
    require_int(start, "first_position", InvalidChainInput, minimum=0)
    if not step_follows(previous.first_position, previous.num_positions, start):
        raise InvalidChainInput(f"first_position: {start} breaks rule K1 after step positions "
                                f"[{previous.first_position}, {previous.first_position + previous.num_positions})")
    return replace(previous, step=previous.step + 1, first_position=start, num_positions=num_positions)


def step_follows(previous_first: Any, previous_positions: Any, first: Any) -> Any:
    """Rule K1 (KV rollback): a step may start anywhere in ``(previous_first, previous_first +
    previous_positions]``: at the previous step's end (plain decoding), or earlier, discarding the
    previous step's positions from ``first`` on (speculative decoding rolls the KV cache back to the
    first rejected draft). Every step keeps at least its first position, so step starts strictly
    increase: the positions before a step's start are never rewritten afterwards, and the inputs a
    step attended to are a prefix of the request's final sequence (what the audit re-executes).
    Runs on ints and Z3 terms. Z3: ``rollback_context``, ``rollback_prefix_stable``
    (proofs/z3/check_rollback.py); Lean: ``Verisplit.stepFollows_progress``, ``Verisplit.nextStart_follows``."""
    return all_of(previous_first < first, first <= previous_first + previous_positions)


_BYTES_FIELDS = ("weights_digest", "input_digest", "output_digest", "signer", "signature", "audit_seed_commitment")
_TEXT_FIELDS = ("model_id", "request_id", "dtype")


def commitment_to_dict(c: BoundaryCommitment) -> dict[str, object]:
    """JSON-ready form: byte fields as lowercase hex, integers and strings as they are.
    ``InvalidCommitment`` naming the field if a byte field is not bytes (or ``c`` not a commitment)."""
    _require_commitment(c)
    out: dict[str, object] = {}
    for name in BoundaryCommitment.__dataclass_fields__:
        value = getattr(c, name)
        if name in _BYTES_FIELDS:
            if not isinstance(value, bytes):
                raise InvalidCommitment(f"commitment field {name}: must be bytes, got {type(value).__name__}")
            out[name] = value.hex()
        else:
            out[name] = value
    return out


def commitment_from_dict(data: dict[str, object]) -> BoundaryCommitment:
    """Inverse of ``commitment_to_dict``; a missing or mistyped field raises ``InvalidCommitment``
    (a ValueError) naming it: byte fields must be hex strings, integer fields ints (not bool), text
    fields strings."""
    if not isinstance(data, dict):
        raise InvalidCommitment(f"commitment: must be a JSON object, got {type(data).__name__}")
    values: dict[str, object] = {}
    for name in BoundaryCommitment.__dataclass_fields__:
        if name not in data:
            if name in ("signature", "dtype", "audit_seed_commitment"):  # the latter two: protocol v1 records
                values[name] = {"signature": b"", "dtype": "float32", "audit_seed_commitment": NO_SEED_COMMITMENT}[name]
                continue
            raise InvalidCommitment(f"commitment: missing field '{name}'")
        raw = data[name]
        try:
            if name in _BYTES_FIELDS:
                if not isinstance(raw, str):
                    raise TypeError
                values[name] = bytes.fromhex(raw)
            elif name in _TEXT_FIELDS:
                if not isinstance(raw, str):
                    raise TypeError
                values[name] = raw
            else:
                if isinstance(raw, bool) or not isinstance(raw, int):
                    raise TypeError
                values[name] = raw
        except (TypeError, ValueError):
            raise InvalidCommitment(f"commitment: field '{name}' has an invalid value {raw!r:.80}") from None
    return BoundaryCommitment(**values)  # type: ignore[arg-type]


def check_exchanged_link(assignment: Assignment, segment_index: int, c: BoundaryCommitment, sent_digest: bytes,
                         received_digest: bytes, context: StepContext) -> tuple[str, str] | None:
    """Rules H1-H4 on one link as the lead checks it on receipt: H1-H3 (``check_link``) with the digest
    of the bytes the lead sent as the expected input (the lead forwards exactly the bytes it received
    from the previous link, so this is H3), then H4 (``check_receipt``). Returns (reason, detail) or None.

    A commitment whose fields do not fit their wire widths has no signing bytes, so it fails as
    ``bad_signature`` by its sender. Tests: tests/test_spec_commitment.py (agrees with
    ``check_exchanged_chain`` link by link)."""
    failure = check_link(assignment, segment_index, c, sent_digest, context)
    if failure is None:
        failure = check_receipt(c, sent_digest, received_digest)
    return failure


def check_exchanged_chain(cohort: Cohort, commitments: Sequence[BoundaryCommitment], first_input_digest: bytes,
                          sent_digests: Sequence[bytes], received_digests: Sequence[bytes],
                          context: StepContext,
                          boundary_failures: Sequence[tuple[str, str] | None] = (),
                          upstream_commitments: Sequence[BoundaryCommitment | None] = ()) -> ChainVerdict:
    """The verdict on one step as exchanged: ``check_chain`` (H1-H3) combined with the receipt rule H4
    on every link whose sent/received bytes are known, and with H5 where the caller judged the
    received bytes (``boundary_failures[k]``: ``check_boundary`` of link k's output, or None); the
    earliest failing link wins, and at one link H1-H3, then H4, then H5 (the order of the checks on
    receipt). Every failure names the link's provider (the signer of what failed).

    Invariant: equals the first failure of ``check_exchanged_link`` then ``check_boundary`` over the
    links in order when the lead forwarded every output unchanged (``sent_digests[k+1] ==
    received_digests[k]``). Direct data path: ``upstream_commitments[k]`` is the commitment segment k
    returned as the one it accepted from k-1 (None or absent: none); when link k breaks H3
    (``input_mismatch``) and that commitment proves k-1 equivocated (``check_equivocation`` against
    ``commitments[k-1]``), the verdict is ``equivocation`` at link k-1 naming k-1 instead (after every
    receipt/boundary check of the links before k, as the lead checks them). Tests:
    tests/test_spec_commitment.py."""
    sent = require_sequence(sent_digests, "sent_digests", InvalidChainInput)
    received = require_sequence(received_digests, "received_digests", InvalidChainInput)
    boundaries = require_sequence(boundary_failures, "boundary_failures", InvalidChainInput)
    for name, digests in (("sent_digests", sent), ("received_digests", received)):
        for index, digest in enumerate(digests):
            _require_digest(digest, f"{name}[{index}]")
    verdict = check_chain(cohort, commitments, first_input_digest, context)
    limit = len(cohort.assignments) if verdict.valid or verdict.link is None else verdict.link
    for index in range(min(limit, len(commitments), len(cohort.assignments))):
        failure = None
        if index < len(sent) and index < len(received):
            failure = check_receipt(commitments[index], sent[index], received[index])
        if failure is None and index < len(boundaries):
            failure = boundaries[index]
        if failure is not None:
            return ChainVerdict(False, index, cohort.assignments[index].provider_id, failure[0], failure[1])
    upstream = require_sequence(upstream_commitments, "upstream_commitments", InvalidChainInput)
    k = verdict.link
    if (verdict.reason == INPUT_MISMATCH and k is not None and 0 < k < min(len(upstream), len(commitments))
            and upstream[k] is not None):
        proof = check_equivocation(commitments[k - 1], upstream[k])
        if proof is not None:
            return ChainVerdict(False, k - 1, cohort.assignments[k - 1].provider_id, proof[0], proof[1])
    return verdict


def boundary_spec(segment_index: int, num_segments: int, dtype: str, num_positions: int, hidden_size: int,
                  vocab_size: int) -> tuple[str, tuple[int, int]]:
    """Rule H5's expectation for segment ``segment_index``'s output: ``(dtype, (positions, hidden))``
    for a hidden boundary, ``("float32", (positions, vocab))`` for the last segment's logits.
    Arguments out of range raise ``InvalidChainInput``. Z3: ``boundary_rule`` (TESTED,
    proofs/z3/check_soundness.py)."""
    require_int(num_segments, "num_segments", InvalidChainInput, minimum=1)
    require_int(segment_index, "segment_index", InvalidChainInput, minimum=0, maximum=num_segments - 1)
    if dtype not in DTYPES:
        raise InvalidChainInput(f"dtype: must be one of {DTYPES}, got {dtype!r}")
    for name, value in (("num_positions", num_positions), ("hidden_size", hidden_size), ("vocab_size", vocab_size)):
        require_int(value, name, InvalidChainInput, minimum=1)
    if segment_index == num_segments - 1:
        return LOGITS_DTYPE, (num_positions, vocab_size)
    return dtype, (num_positions, hidden_size)


def check_boundary(dtype: str | None, shape: Sequence[int] | None, all_finite: bool,
                   expected: tuple[str, tuple[int, int]]) -> tuple[str, str] | None:
    """Rule H5 on the bytes a provider signed as its output, described by their canonical header
    (``dtype``, ``shape``; None when the bytes are not a canonical tensor) and whether every element is
    finite: ``(bad_boundary, detail)`` unless they are a finite tensor of exactly the ``expected``
    (dtype, shape) of ``boundary_spec``. The caller applies it only to bytes whose commitment passed
    H1-H4, so the culprit is the signer. Z3: ``boundary_rule`` (TESTED, proofs/z3/check_soundness.py);
    Lean: ``Verisplit.checkBoundary_none_iff``."""
    want_dtype, want_shape = expected
    if not isinstance(dtype, str) or not isinstance(shape, (list, tuple)):
        return BAD_BOUNDARY, "signed output bytes are not a canonical tensor"
    if dtype != want_dtype:
        return BAD_BOUNDARY, f"signed output has dtype {dtype}, the boundary carries {want_dtype}"
    if tuple(shape) != tuple(want_shape):
        return BAD_BOUNDARY, f"signed output has shape {list(shape)}, the boundary is {list(want_shape)}"
    if not all_finite:
        return BAD_BOUNDARY, "signed output holds NaN or infinite values"
    return None
