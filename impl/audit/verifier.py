"""Per-segment audit: check the signed evidence, then re-execute the range and judge every position.

Invariants:
- A verdict is only ever about what the provider signed: every recorded input/output blob of the
  audited segment must hash to the digests in its valid, correctly attributed commitment before
  any re-execution (a provider cannot dispute bytes it signed; bytes it did not sign are never
  held against it except as a receipt failure, rule H4).
- Re-execution is one stateless ``forward_full`` prefill over the request's whole recorded input
  sequence (all prefill and decode positions), on weights loaded by layer range from the
  verifier's own checkpoint copy; the verifier never trusts the provider's weights. A request whose
  steps roll back (rule K1, speculative decoding) is re-executed with the same rollback semantics:
  step by step through one KV-cache session (``Segment.step`` truncates at each step's start), so
  every committed position, rejected drafts included, is judged against what it attended to.
- ``judge_tensors`` is semantically identical to the spec's ``judge`` (rule A3): same pass
  condition, ``max_abs``, ``ratio`` and reason strings, computed in float64.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from verisplit.impl.runtime.loader import load_segment
from verisplit.impl.runtime.segment import Segment
from verisplit.impl.runtime.tensors import dtype_name, from_canonical
from verisplit.spec.audit import AuditVerdict, Judgement, Tolerance
from verisplit.spec.commitment import BAD_BOUNDARY, NO_SEED_COMMITMENT, StepContext, check_link, check_receipt, step_follows
from verisplit.spec.encoding import EncodingError, digest_encoded

OTHER_WEIGHTS = "other weights"


class EvidenceError(ValueError):
    """The record cannot support an audit of this segment (malformed or missing evidence); the
    message names the step and field. Raised instead of a verdict, so nobody is blamed for it."""


def judge_tensors(expected: torch.Tensor, observed: torch.Tensor, tolerance: Tolerance) -> Judgement:
    """Rule A3 on tensors: passes iff shapes agree, everything is finite and
    ``max |o - e| / (atol + rtol * |e|) <= 1``. Computed in float64 (the spec's Python floats), so
    it agrees with ``verisplit.spec.audit.judge`` on the flattened values."""
    if tuple(expected.shape) != tuple(observed.shape):
        if expected.numel() != observed.numel():
            return Judgement(False, math.inf, math.inf, f"length {observed.numel()} != expected {expected.numel()}")
        return Judgement(False, math.inf, math.inf,
                         f"shape {list(observed.shape)} != expected {list(expected.shape)}")
    for name, bound in (("atol", tolerance.atol), ("rtol", tolerance.rtol)):
        if not (math.isfinite(bound) and bound >= 0):
            raise ValueError(f"tolerance: {name} must be a finite number >= 0, got {bound}")
    if tolerance.atol <= 0 and tolerance.rtol <= 0:
        raise ValueError("tolerance: atol or rtol must be positive")
    e = expected.detach().to("cpu", torch.float64).reshape(-1)
    o = observed.detach().to("cpu", torch.float64).reshape(-1)
    if e.numel() == 0:
        return Judgement(True, 0.0, 0.0)
    if not (bool(torch.isfinite(e).all()) and bool(torch.isfinite(o).all())):
        return Judgement(False, math.inf, math.inf, "non-finite value in the output")
    diff = (o - e).abs()
    max_abs = float(diff.max())
    bound = tolerance.atol + tolerance.rtol * e.abs()
    # As in the spec: an element with bound 0 passes only if exact (ratio 0), else its ratio is infinite.
    per_element = torch.where(bound > 0, diff / bound.clamp_min(torch.finfo(torch.float64).tiny),
                              torch.where(diff > 0, math.inf, 0.0))
    ratio = float(per_element.max())
    if ratio > 1.0:
        return Judgement(False, max_abs, ratio, f"distance ratio {ratio:.3g} exceeds tolerance")
    return Judgement(True, max_abs, ratio)


@dataclass(frozen=True)
class SegmentEvidence:
    """The audited segment's recorded inputs/outputs over its valid steps, concatenated by position."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    positions: torch.Tensor
    weights_digest: bytes
    steps: int
    step_lengths: tuple[int, ...] = ()  # positions of each step, in order (for a rollback replay)

    @property
    def rolls_back(self) -> bool:
        """Whether some step started before the previous step's end (rule K1 rollback)."""
        return not torch.equal(self.positions, torch.arange(self.positions.shape[0], dtype=torch.int64))


def record_context(record: Any, step_record: Any) -> StepContext:
    """The StepContext the lead checked ``step_record`` under: the record's dtype and audit-seed
    commitment (rules H2), or the defaults for records that name neither."""
    extra = getattr(record, "extra", None) or {}
    commitment = extra.get("audit_seed_commitment")
    try:
        seed_commitment_bytes = bytes.fromhex(commitment) if isinstance(commitment, str) else NO_SEED_COMMITMENT
    except ValueError:
        seed_commitment_bytes = NO_SEED_COMMITMENT
    return StepContext(record.model_id, record.request_id, step_record.step, step_record.first_position,
                       step_record.num_positions, dtype=str(extra.get("dtype") or "float32"),
                       audit_seed_commitment=seed_commitment_bytes)


def collect_evidence(record: Any, segment_index: int, steps: int | None = None) -> SegmentEvidence | AuditVerdict:
    """Check the signed evidence of ``segment_index`` over the first ``steps`` steps (all by default)
    and return it concatenated; a provider fault found on the way (bad signature, wrong signer, wrong
    step/range, bytes that do not match the signed digests, or weights digests that change between
    steps) comes back as a failed ``AuditVerdict`` instead."""
    assignments = record.cohort.assignments
    if not 0 <= segment_index < len(assignments):
        raise EvidenceError(f"segment_index: {segment_index} is not in the cohort (0..{len(assignments) - 1})")
    assignment = assignments[segment_index]
    chosen = list(record.steps if steps is None else record.steps[:steps])
    if not chosen:
        raise EvidenceError(f"request {record.request_id!r}: no recorded steps to audit for segment {segment_index}")

    def fail(reason: str) -> AuditVerdict:
        return AuditVerdict(record.request_id, segment_index, assignment.provider_id, False, math.inf, math.inf, reason)

    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    weights_digest: bytes | None = None
    previous: tuple[int, int] | None = None  # (first_position, num_positions) of the previous step
    positions: list[torch.Tensor] = []
    for step_record in chosen:
        where = f"step {step_record.step}"
        first, count = step_record.first_position, step_record.num_positions
        if (first != 0) if previous is None else not step_follows(previous[0], previous[1], first):
            raise EvidenceError(f"{where}: first_position {first} after {previous} breaks rule K1 "
                                "(steps start at 0 and continue, or roll back into the previous step)")
        for name in ("commitments", "inputs", "outputs"):
            if len(getattr(step_record, name)) <= segment_index:
                raise EvidenceError(f"{where}: no recorded {name[:-1]} for segment {segment_index}")
        commitment = step_record.commitments[segment_index]
        expected_input = commitment.input_digest  # the link to the previous segment is the chain check's job
        failure = check_link(assignment, segment_index, commitment, expected_input, record_context(record, step_record))
        if failure is not None:
            return fail(f"{where}: {failure[0]}: {failure[1]}")
        input_blob, output_blob = step_record.inputs[segment_index], step_record.outputs[segment_index]
        failure = check_receipt(commitment, digest_encoded(input_blob), digest_encoded(output_blob))
        if failure is not None:
            return fail(f"{where}: {failure[0]}: {failure[1]}")
        if weights_digest is None:
            weights_digest = commitment.weights_digest
        elif commitment.weights_digest != weights_digest:
            return fail(f"{where}: {OTHER_WEIGHTS}: weights digest changed within the request")
        try:
            x, y = from_canonical(input_blob), from_canonical(output_blob)
        except EncodingError as exc:
            return fail(f"{where}: signed blob is not a canonical tensor ({exc})")
        if x.shape[0] != step_record.num_positions or y.shape[0] != step_record.num_positions:
            return fail(f"{where}: signed tensors have {x.shape[0]} / {y.shape[0]} rows for "
                        f"{step_record.num_positions} positions")
        inputs.append(x)
        outputs.append(y)
        positions.append(torch.arange(first, first + count, dtype=torch.int64))
        previous = (first, count)
    try:
        all_inputs, all_outputs = torch.cat(inputs), torch.cat(outputs)
    except RuntimeError as exc:
        return fail(f"signed tensors of different steps do not stack ({exc})")
    assert weights_digest is not None
    return SegmentEvidence(all_inputs, all_outputs, torch.cat(positions), weights_digest, len(chosen),
                           tuple(int(p.shape[0]) for p in positions))


class Verifier:
    """Re-executes layer ranges from its own checkpoint copy; segments are loaded once per
    (range, dtype) and cached. Thread-safe: audits may run in worker threads."""

    def __init__(self, checkpoint_dir: str | Path, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = device
        self.dtype = dtype
        self._segments: dict[tuple[int, int, str], Segment] = {}
        self._lock = threading.Lock()

    def segment(self, first_layer: int, end_layer: int, dtype: torch.dtype | str | None = None) -> Segment:
        """The cached segment for ``[first_layer, end_layer)`` in ``dtype`` (the verifier's default if None)."""
        wanted = dtype if dtype is not None else self.dtype
        key = (first_layer, end_layer, str(wanted))
        with self._lock:
            if key not in self._segments:
                self._segments[key] = load_segment(self.checkpoint_dir, first_layer, end_layer,
                                                   device=self.device, dtype=wanted)
            return self._segments[key]

    def weights_digest(self, first_layer: int, end_layer: int, dtype: torch.dtype | str | None = None) -> bytes:
        return self.segment(first_layer, end_layer, dtype).weights_digest

    def audit(self, record: Any, segment_index: int, tolerance: Tolerance, steps: int | None = None) -> AuditVerdict:
        """Audit ``segment_index`` of ``record`` over its first ``steps`` steps (all by default).

        Order: signed-evidence checks (``collect_evidence``); the committed weights digest must equal
        the verifier's own digest of the range ("other weights" otherwise); then one ``forward_full``
        over all recorded positions, judged against the committed outputs with ``judge_tensors``
        (expected = re-execution, observed = committed). Raises ``EvidenceError`` when the record
        cannot support an audit (nobody is blamed)."""
        evidence = collect_evidence(record, segment_index, steps)
        assignment = record.cohort.assignments[segment_index]
        if isinstance(evidence, AuditVerdict):
            return evidence
        # Re-execute in the cohort's dtype (the one every commitment signed, rule H2), never in the dtype
        # the evidence happens to carry: a boundary in another dtype is its signer's fault (rule H5),
        # so laundering a low-precision boundary can only blame the one who signed it.
        cohort_dtype = record_context(record, record.steps[0]).dtype
        if tolerance.dtype != cohort_dtype:
            raise ValueError(f"tolerance: calibrated for {tolerance.dtype}, but the cohort computed in {cohort_dtype}; "
                             f"run `verisplit calibrate --dtype {cohort_dtype}`")
        if evidence.inputs.is_floating_point() and dtype_name(evidence.inputs.dtype) != cohort_dtype and segment_index > 0:
            previous = record.cohort.assignments[segment_index - 1]
            return AuditVerdict(record.request_id, segment_index - 1, previous.provider_id, False, math.inf, math.inf,
                                f"{BAD_BOUNDARY}: signed output in {dtype_name(evidence.inputs.dtype)}, the cohort computes "
                                f"in {cohort_dtype}")
        last = segment_index == len(record.cohort.assignments) - 1
        want = "float32" if last else cohort_dtype
        if dtype_name(evidence.outputs.dtype) != want:
            return AuditVerdict(record.request_id, segment_index, assignment.provider_id, False, math.inf, math.inf,
                                f"{BAD_BOUNDARY}: signed output in {dtype_name(evidence.outputs.dtype)}, expected {want}")
        segment = self.segment(assignment.first_layer, assignment.end_layer, cohort_dtype)
        if evidence.weights_digest != segment.weights_digest:
            return AuditVerdict(record.request_id, segment_index, assignment.provider_id, False, math.inf, math.inf,
                                f"{OTHER_WEIGHTS}: committed weights digest {evidence.weights_digest.hex()[:16]}... "
                                f"is not the verifier's {segment.weights_digest.hex()[:16]}...")
        try:
            expected = reexecute(segment, evidence)
        except ValueError as exc:  # SegmentInputError: the signed inputs are not valid inputs of this range
            return AuditVerdict(record.request_id, segment_index, assignment.provider_id, False, math.inf, math.inf,
                                f"signed inputs rejected by the range: {exc}")
        judgement = judge_tensors(expected, evidence.outputs, tolerance)
        return AuditVerdict(record.request_id, segment_index, assignment.provider_id, judgement.passed,
                            judgement.max_abs, judgement.ratio, judgement.reason)


def reexecute(segment: Segment, evidence: SegmentEvidence) -> torch.Tensor:
    """The range's outputs for the evidence's inputs: one ``forward_full`` when the steps are contiguous,
    else a step-by-step replay through one private KV-cache session with the recorded rollbacks
    (rule K1), the provider's own semantics. Raises ``SegmentInputError`` for inputs the range refuses."""
    inputs, positions = evidence.inputs.to(segment.device), evidence.positions.to(segment.device)
    if not evidence.rolls_back:
        return segment.forward_full(inputs, positions)
    session = f"audit-replay-{uuid.uuid4().hex}"
    segment.open_session(session, int(evidence.positions.max()) + 1)
    try:
        outputs, offset = [], 0
        for count in evidence.step_lengths:
            outputs.append(segment.step(session, inputs[offset:offset + count], positions[offset:offset + count]))
            offset += count
        return torch.cat(outputs)
    finally:
        segment.close_session(session)


def verdict_to_dict(v: AuditVerdict) -> dict[str, object]:
    """JSON-ready verdict (non-finite distances as the strings "inf"/"nan")."""
    return {"request_id": v.request_id, "segment_index": v.segment_index, "provider_id": v.provider_id,
            "passed": v.passed, "max_abs": _num(v.max_abs), "ratio": _num(v.ratio), "reason": v.reason}


def verdict_from_dict(d: dict[str, Any]) -> AuditVerdict:
    return AuditVerdict(str(d["request_id"]), int(d["segment_index"]), str(d["provider_id"]), bool(d["passed"]),
                        float(d["max_abs"]), float(d["ratio"]), str(d.get("reason", "")))


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


__all__: Sequence[str] = ("EvidenceError", "SegmentEvidence", "Verifier", "collect_evidence",
                          "judge_tensors", "verdict_from_dict", "verdict_to_dict", "OTHER_WEIGHTS")
