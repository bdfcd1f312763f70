"""Mid-request recovery: a provider lost to an outage is replaced for its range, and the replacement's
KV cache is rebuilt by replaying what the lost segment received (docs/spec.md, "Recovery").

Rules:
- R1 (replacement) only an outage (``verisplit.spec.faults.is_outage``) is recovered; a protocol
  failure aborts and blames as before. The replacement for segment k's range ``[f, e)`` is the
  cheapest standing offer (price, then provider id) whose own range contains ``[f, e)`` (rule C1: a
  provider may serve a sub-range of its offer), from a provider and key that are not in the cohort
  and not the lost one; it is assigned exactly ``[f, e)`` at the same segment index.
- R2 (replay) if the outage hit step ``s`` > 0 (first position ``p`` > 0), the replacement's first
  step is numbered ``s - 1`` and covers positions ``[0, p)`` in one prefill; its input is the
  concatenation, along the position axis, of the inputs segment k received at steps 0..s-1, each of
  which the chain already pinned to the committed output of segment k-1 (H3) or to the first input
  (k = 0). Its commitment must pass H1-H4 as a link of segment k with the replay's context and that
  concatenation's digest as the expected input. Its output only rebuilds the cache: nothing is
  forwarded. Step ``s`` then runs through the replacement as an ordinary link (numbered ``s``).
- R3 (settlement) the lost provider's slice of the request is forfeited (failed for settlement, S2)
  but it is not ejected; the replacement earns its range's work for the replay positions plus every
  position it served; the fee is the total value served (``recovered_fee``), so every other
  provider is paid exactly its value and the forfeited value is refunded (S1-S5 unchanged).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Collection, Sequence

from verisplit.spec.cohort import Assignment, Cohort, Offer
from verisplit.spec.commitment import BoundaryCommitment, StepContext, check_exchanged_link, link_rule
from verisplit.spec.encoding import EncodingError, decode_tensor, digest_encoded, encode_tensor


class RecoveryInputError(ValueError):
    """Replay inputs that cannot be concatenated (the message names the offending input)."""


def choose_replacement(offers: Sequence[Offer], failed: Assignment, excluded_ids: Collection[str],
                       excluded_keys: Collection[bytes]) -> Assignment | None:
    """Rule R1: the assignment of ``failed``'s exact range to the cheapest offer (price, then id) that
    contains the range and whose provider id and key are not excluded; None if there is none.

    Z3: ``replacement_valid`` (proofs/z3/check_recovery.py); Lean: ``Verisplit.replacement_covers``."""
    best: Offer | None = None
    for offer in offers:
        if offer.provider_id in excluded_ids or offer.public_key in excluded_keys:
            continue
        if not covers(offer.first_layer, offer.end_layer, failed.first_layer, failed.end_layer):
            continue
        if best is None or (offer.price_per_work_unit, offer.provider_id) < (best.price_per_work_unit, best.provider_id):
            best = offer
    if best is None:
        return None
    return Assignment(best.provider_id, best.public_key, failed.first_layer, failed.end_layer)


def covers(offer_first: Any, offer_end: Any, first: Any, end: Any) -> Any:
    """Rule R1's range condition (C1): ``[first, end)`` lies inside the offer's ``[offer_first, offer_end)``.
    Runs on ints and Z3 terms. Z3: ``replacement_valid``; Lean: ``Verisplit.replacement_covers``."""
    return _and(offer_first <= first, end <= offer_end)


def _and(a: Any, b: Any) -> Any:
    if isinstance(a, bool) and isinstance(b, bool):
        return a and b
    import z3

    return z3.And(a, b)


def replay_context(at: StepContext) -> StepContext | None:
    """Rule R2: the replay step's context for an outage at ``at`` (step s, first position p): step
    ``s - 1``, positions ``[0, p)``; None when ``p == 0`` (nothing to replay).
    Z3: ``replay_pinned``; Lean: ``Verisplit.replay_positions``."""
    if at.first_position == 0:
        return None
    return replace(at, step=at.step - 1, first_position=0, num_positions=at.first_position)


def replay_input(inputs: Sequence[bytes]) -> bytes:
    """Rule R2: the canonical concatenation along the first (position) axis of the canonical tensors
    ``inputs`` (one dtype, equal trailing dims, rank >= 1); ``RecoveryInputError`` otherwise.
    Z3: ``replay_pinned``; Lean: ``Verisplit.replay_positions``."""
    if not inputs:
        raise RecoveryInputError("inputs: nothing to replay")
    frames = []
    for index, blob in enumerate(inputs):
        try:
            frames.append(decode_tensor(blob))
        except EncodingError as exc:
            raise RecoveryInputError(f"inputs[{index}]: {exc}") from None
    first = frames[0]
    rows = 0
    for index, frame in enumerate(frames):
        if len(frame.shape) < 1 or frame.dtype != first.dtype or frame.shape[1:] != first.shape[1:]:
            raise RecoveryInputError(f"inputs[{index}]: {frame.dtype}{list(frame.shape)} does not stack on "
                                     f"{first.dtype}{list(first.shape)}")
        rows += frame.shape[0]
    return encode_tensor(first.dtype, (rows,) + tuple(first.shape[1:]), b"".join(f.data for f in frames))


def replay_pinned(committed_input_digests: Sequence[Any], recorded_input_digests: Sequence[Any]) -> Any:
    """Rule R2's premise: every recorded input replayed is the one segment k committed to at that step
    (``link_rule`` per step), so the replay's input is fixed by the chain. Runs on ints/Z3 terms.
    Z3: ``replay_pinned``; Lean: ``Verisplit.replay_positions``."""
    if len(committed_input_digests) != len(recorded_input_digests):
        return False
    ok: Any = True
    for committed, recorded in zip(committed_input_digests, recorded_input_digests):
        ok = _and(ok, link_rule(committed, recorded))
    return ok


def check_replay(assignment: Assignment, segment_index: int, c: BoundaryCommitment, inputs: Sequence[bytes],
                 sent_digest: bytes, received_digest: bytes, at: StepContext) -> tuple[str, str] | None:
    """Rule R2 on the replay link as received: H1-H4 (``check_exchanged_link``) of ``c`` as segment
    ``segment_index`` served by ``assignment`` in ``replay_context(at)``, the expected input being the
    digest of ``replay_input(inputs)`` (which must also be what the lead sent). Returns (reason,
    detail) or None; ``RecoveryInputError`` if there is nothing to replay or the inputs do not stack.
    Tests: tests/test_faults_spec.py."""
    context = replay_context(at)
    if context is None:
        raise RecoveryInputError("at: an outage at position 0 has nothing to replay")
    expected = digest_encoded(replay_input(inputs))
    if sent_digest != expected:
        raise RecoveryInputError("sent_digest: the lead did not send the concatenation of the recorded inputs")
    return check_exchanged_link(assignment, segment_index, c, expected, received_digest, context)


def replacement_work(units_per_position: Any, replay_positions: Any, served_positions: Any) -> Any:
    """Rule R3: the replacement's work, its range's units per position times (replayed + served)
    positions. Runs on ints and Z3 terms. Z3: ``outage_refund_exact``; Lean: ``Verisplit.outage_refund_exact``."""
    return units_per_position * (replay_positions + served_positions)


def recovered_fee(values: Sequence[Any]) -> Any:
    """Rule R3: a recovered request's fee, the total value served (price x work of every provider that
    took part, the lost one and the replay included); settled with the lost provider failed, every
    other provider gets exactly its value and the lost one's value is refunded.
    Z3: ``outage_refund_exact``; Lean: ``Verisplit.outage_refund_exact``."""
    total: Any = 0
    for value in values:
        total = total + value
    return total


def effective_cohort(cohort: Cohort, replacements: Sequence[tuple[int, int, Assignment]], step: int) -> Cohort:
    """The cohort that served ``step``: ``cohort`` with every replacement ``(segment_index, at_step,
    assignment)`` whose ``at_step <= step`` applied in order (rule R1: same index, same range). The
    chain rules H1-H4 of a step are checked against this cohort. Tests: tests/test_faults_spec.py."""
    assignments = list(cohort.assignments)
    for segment_index, at_step, assignment in replacements:
        if at_step <= step:
            assignments[segment_index] = assignment
    return Cohort(cohort.model_id, tuple(assignments))
