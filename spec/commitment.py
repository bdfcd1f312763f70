"""Boundary commitments and the chain rule.

At every boundary the provider of segment k signs what it consumed and produced. Segment k's output
is segment k+1's input, so the commitments chain: ``c[k].output_digest == c[k+1].input_digest``.
``signing_bytes`` is documented byte-for-byte in docs/protocol.md.

Rules (docs/spec.md, "Commitments"):
- H1 a commitment's signature verifies under its ``signer`` key, and the signer is the assigned provider;
- H2 it names the protocol version, model, request, step, segment index, layer range and positions
  the lead expects (wrong step: replay if earlier, gap if later);
- H3 link k's input digest equals link k-1's output digest (the first input's digest for k = 0);
- H4 the lead checks on receipt that the digests are of the bytes it actually sent and received.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any, Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from verisplit.spec.arith import ite, negate
from verisplit.spec.cohort import Assignment, Cohort

PROTOCOL_VERSION = 1
COMMITMENT_DOMAIN = b"verisplit/commitment/v1\x00"

# Reasons a link can fail, in the order check_link tests them.
BAD_SIGNATURE = "bad_signature"
WRONG_SIGNER = "wrong_signer"
WRONG_REQUEST = "wrong_request"
REPLAY = "duplicate_or_replay"
STEP_GAP = "step_gap"
RANGE_MISMATCH = "range_mismatch"
INPUT_MISMATCH = "input_mismatch"
MISSING_LINK = "missing_link"
OUTPUT_MISMATCH = "output_mismatch"
REASONS = (BAD_SIGNATURE, WRONG_SIGNER, WRONG_REQUEST, REPLAY, STEP_GAP, RANGE_MISMATCH, INPUT_MISMATCH,
           MISSING_LINK, OUTPUT_MISMATCH)


@dataclass(frozen=True)
class BoundaryCommitment:
    """A provider's signed statement: for (request, step, segment) over layers [first_layer, end_layer)
    and token positions [first_position, first_position + num_positions), running weights
    ``weights_digest``, input with digest ``input_digest`` produced output with digest ``output_digest``."""

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


@dataclass(frozen=True)
class StepContext:
    """What the lead expects of every link of one step."""

    model_id: str
    request_id: str
    step: int
    first_position: int
    num_positions: int
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class ChainVerdict:
    """``valid``, or the first bad ``link`` (segment index) with its ``culprit`` provider and ``reason``."""

    valid: bool
    link: int | None = None
    culprit: str | None = None
    reason: str | None = None
    detail: str = ""


VALID = ChainVerdict(True)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("commitment text field longer than 65535 bytes")
    return struct.pack("<H", len(raw)) + raw


def _digest32(name: str, value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError(f"commitment field {name}: must be 32 bytes, got {len(value)}")
    return value


_FIELD_BITS = (("protocol_version", 16), ("step", 64), ("segment_index", 32), ("first_layer", 32),
               ("end_layer", 32), ("first_position", 64), ("num_positions", 64))


def _check_widths(c: BoundaryCommitment) -> None:
    """Every integer field must fit its fixed width (else no canonical encoding exists)."""
    for name, bits in _FIELD_BITS:
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
            raise ValueError(f"commitment field {name}: {value!r} is not an unsigned {bits}-bit integer")


def signing_bytes(c: BoundaryCommitment) -> bytes:
    """Canonical bytes the signature covers (every field except ``signature``; see docs/protocol.md).

    Invariant: injective on commitments (fixed-width integers and digests, length-prefixed strings),
    so a signature binds every field. A field that does not fit its width raises ValueError naming
    it, so such a commitment can never carry a valid signature (``signature_valid`` is False).
    """
    _check_widths(c)
    return b"".join([
        COMMITMENT_DOMAIN,
        struct.pack("<H", c.protocol_version),
        _text(c.model_id),
        _digest32("weights_digest", c.weights_digest),
        _text(c.request_id),
        struct.pack("<QIIIQQ", c.step, c.segment_index, c.first_layer, c.end_layer, c.first_position, c.num_positions),
        _digest32("input_digest", c.input_digest),
        _digest32("output_digest", c.output_digest),
        _digest32("signer", c.signer),
    ])


def sign_commitment(c: BoundaryCommitment, signing_key: SigningKey) -> BoundaryCommitment:
    """Return ``c`` with ``signer`` set to the key's public key and a fresh Ed25519 signature."""
    unsigned = replace(c, signer=bytes(signing_key.verify_key), signature=b"")
    signature = signing_key.sign(signing_bytes(unsigned)).signature
    return replace(unsigned, signature=signature)


def signature_valid(c: BoundaryCommitment) -> bool:
    """True iff ``c.signature`` is a valid Ed25519 signature of ``signing_bytes(c)`` by ``c.signer``."""
    try:
        VerifyKey(c.signer).verify(signing_bytes(c), c.signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def link_rule(previous_output: Any, this_input: Any) -> Any:
    """Rule H3 on one link: the digest this segment consumed equals the previous one's output.
    Works on bytes and on Z3 terms. Z3: ``chain_substitution`` (proofs/z3/check_chain.py);
    Lean: ``Verisplit.chain_detects_at``."""
    return previous_output == this_input


def check_link_fields(assignment: Assignment, segment_index: int, c: BoundaryCommitment,
                      context: StepContext) -> tuple[str, str] | None:
    """The first of rules H1-H2 that link ``segment_index`` breaks, as (reason, detail), or None."""
    if not signature_valid(c):
        return BAD_SIGNATURE, "signature does not verify under the commitment's signer key"
    if c.signer != assignment.public_key:
        return WRONG_SIGNER, "signed by a key other than the assigned provider's"
    if (c.protocol_version, c.model_id, c.request_id) != (context.protocol_version, context.model_id, context.request_id):
        return WRONG_REQUEST, f"commitment is for ({c.protocol_version}, {c.model_id!r}, {c.request_id!r})"
    if c.step < context.step:
        return REPLAY, f"commitment for step {c.step} replayed at step {context.step}"
    if c.step > context.step:
        return STEP_GAP, f"commitment for step {c.step}, expected step {context.step}"
    expected_shape = (segment_index, assignment.first_layer, assignment.end_layer, context.first_position, context.num_positions)
    actual_shape = (c.segment_index, c.first_layer, c.end_layer, c.first_position, c.num_positions)
    if actual_shape != expected_shape:
        return RANGE_MISMATCH, f"(segment, layers, positions) {actual_shape} != expected {expected_shape}"
    return None


def check_link(assignment: Assignment, segment_index: int, c: BoundaryCommitment,
               expected_input_digest: bytes, context: StepContext) -> tuple[str, str] | None:
    """The first rule (H1-H3) that link ``segment_index`` breaks, as (reason, detail), or None."""
    failure = check_link_fields(assignment, segment_index, c, context)
    if failure is not None:
        return failure
    if not link_rule(expected_input_digest, c.input_digest):
        return INPUT_MISMATCH, "input digest does not match the previous boundary's output digest"
    return None


def first_broken_link(first_input_digest: Any, input_digests: Sequence[Any], output_digests: Sequence[Any]) -> Any:
    """Rule H3 over a whole chain: the index of the first link k whose input digest differs from the
    previous link's output digest (``first_input_digest`` for k = 0), or ``len(input_digests)`` if
    every link holds. Runs on bytes and on Z3 terms (then it returns a symbolic index).

    Invariant: with an injective digest, substituting the tensor consumed at link j yields exactly j.
    Z3: ``chain_substitution``, ``chain_unmodified`` (proofs/z3/check_chain.py);
    Lean: ``Verisplit.chain_detects_at``, ``Verisplit.chain_valid_of_honest``.
    """
    links_ok: list[Any] = []
    expected = first_input_digest
    for this_input, this_output in zip(input_digests, output_digests):
        links_ok.append(link_rule(expected, this_input))
        expected = this_output
    verdict: Any = len(links_ok)
    for index in reversed(range(len(links_ok))):
        verdict = ite(negate(links_ok[index]), index, verdict)
    return verdict


def check_chain(cohort: Cohort, commitments: Sequence[BoundaryCommitment], first_input_digest: bytes,
                context: StepContext) -> ChainVerdict:
    """Verdict for one step's chain: valid, or the first bad link with culprit and reason.

    A link fails on the first of H1-H2 it breaks, else on H3 if it is ``first_broken_link``.
    Invariant: with an injective digest, substituting the boundary tensor at link j (so link j's
    input digest differs from link j-1's output digest) yields a verdict at exactly link j; an
    unmodified, correctly signed chain is valid. Z3: ``chain_substitution``, ``chain_unmodified``
    (proofs/z3/check_chain.py); Lean: ``Verisplit.chain_detects_at``, ``Verisplit.chain_valid_of_honest``.
    """
    present = commitments[: len(cohort.assignments)]
    broken = first_broken_link(first_input_digest, [c.input_digest for c in present], [c.output_digest for c in present])
    for index, assignment in enumerate(cohort.assignments):
        if index >= len(commitments):
            return ChainVerdict(False, index, assignment.provider_id, MISSING_LINK, "no commitment for this segment")
        failure = check_link_fields(assignment, index, commitments[index], context)
        if failure is None and index == broken:
            failure = (INPUT_MISMATCH, "input digest does not match the previous boundary's output digest")
        if failure is not None:
            return ChainVerdict(False, index, assignment.provider_id, failure[0], failure[1])
    if len(commitments) > len(cohort.assignments):
        last = cohort.assignments[-1]
        return ChainVerdict(False, len(cohort.assignments), last.provider_id, REPLAY, "more commitments than segments")
    return VALID


def check_receipt(c: BoundaryCommitment, sent_input_digest: bytes, received_output_digest: bytes) -> tuple[str, str] | None:
    """Rule H4, checked by the lead on receipt: the commitment is about the exact bytes exchanged."""
    if c.input_digest != sent_input_digest:
        return INPUT_MISMATCH, "commitment's input digest is not the digest of the bytes the lead sent"
    if c.output_digest != received_output_digest:
        return OUTPUT_MISMATCH, "commitment's output digest is not the digest of the bytes the provider returned"
    return None


def next_step_context(previous: StepContext, num_positions: int) -> StepContext:
    """Step k+1 continues step k: step number +1 and positions start where step k's ended."""
    return replace(previous, step=previous.step + 1,
                   first_position=previous.first_position + previous.num_positions,
                   num_positions=num_positions)


_BYTES_FIELDS = ("weights_digest", "input_digest", "output_digest", "signer", "signature")


def commitment_to_dict(c: BoundaryCommitment) -> dict[str, object]:
    """JSON-ready form: byte fields as lowercase hex, integers and strings as they are."""
    out: dict[str, object] = {}
    for name in BoundaryCommitment.__dataclass_fields__:
        value = getattr(c, name)
        out[name] = value.hex() if name in _BYTES_FIELDS else value
    return out


def commitment_from_dict(data: dict[str, object]) -> BoundaryCommitment:
    """Inverse of ``commitment_to_dict``; a missing or mistyped field raises ValueError naming it."""
    values: dict[str, object] = {}
    for name, spec_field in BoundaryCommitment.__dataclass_fields__.items():
        if name not in data:
            if name == "signature":
                values[name] = b""
                continue
            raise ValueError(f"commitment: missing field '{name}'")
        raw = data[name]
        try:
            if name in _BYTES_FIELDS:
                values[name] = bytes.fromhex(str(raw))
            elif spec_field.type in ("int", int):
                if isinstance(raw, bool) or not isinstance(raw, int):
                    raise TypeError
                values[name] = raw
            else:
                values[name] = str(raw)
        except (TypeError, ValueError):
            raise ValueError(f"commitment: field '{name}' has an invalid value {raw!r}") from None
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
                          context: StepContext) -> ChainVerdict:
    """The verdict on one step as exchanged: ``check_chain`` (H1-H3) combined with the receipt rule H4
    on every link whose sent/received bytes are known; the earlier failing link wins, and at the same
    link the H1-H3 failure wins (it is checked first on receipt).

    Invariant: equals the first failure of ``check_exchanged_link`` over the links in order when the
    lead forwarded every output unchanged (``sent_digests[k+1] == received_digests[k]``).
    Tests: tests/test_spec_commitment.py."""
    verdict = check_chain(cohort, commitments, first_input_digest, context)
    limit = len(cohort.assignments) if verdict.valid or verdict.link is None else verdict.link
    for index in range(min(limit, len(commitments), len(sent_digests), len(received_digests), len(cohort.assignments))):
        receipt = check_receipt(commitments[index], sent_digests[index], received_digests[index])
        if receipt is not None:
            return ChainVerdict(False, index, cohort.assignments[index].provider_id, receipt[0], receipt[1])
    return verdict
