"""Audit views of a request with mid-request replacements (rules R1-R3 of ``verisplit.spec.recovery``).

A segment that was taken over has several signers: the lost provider for the steps before the
outage, then each replacement for its replay plus the steps it served. Invariant: every signer is
audited only against its own commitments: ``signer_views`` returns, per signer, a record whose cohort
names that signer at the segment and whose steps are exactly the ones it signed (a replacement's
first step is its replay: positions [0, p) with the concatenated recorded inputs, so the verifier's
one-prefill re-execution covers positions from 0 without gaps).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from verisplit.impl.audit.verifier import record_context
from verisplit.impl.records.replacements import Replacement, replacements_of, spec_replacements
from verisplit.impl.records.requests import StepRecord
from verisplit.spec.cohort import Cohort
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.recovery import RecoveryInputError, check_replay, effective_cohort, replay_input


def cohort_at(record: Any, replacements: list[Replacement], step: int) -> Cohort:
    """The cohort that served ``step`` (``spec.recovery.effective_cohort``)."""
    return effective_cohort(record.cohort, spec_replacements(replacements), step)


def replay_failure(record: Any, replacement: Replacement) -> tuple[str, str] | None:
    """Rule R2 on a recorded replay: ``check_replay`` of its commitment against the recorded inputs of
    the lost segment and the recorded replay output; an unusable replay fails as ``missing_link``."""
    from verisplit.spec.commitment import MISSING_LINK

    k, s = replacement.segment_index, replacement.at_step
    if replacement.replay_commitment is None or not 0 < s <= len(record.steps):
        return (MISSING_LINK, f"replacement at step {s}: no replay recorded") if s > 0 else None
    inputs = [step.inputs[k] for step in record.steps[:s] if len(step.inputs) > k]
    if len(inputs) != s:
        return MISSING_LINK, f"replay at step {s}: an input of segment {k} is not recorded"
    try:
        sent = digest_encoded(replay_input(inputs))
        return check_replay(replacement.assignment, k, replacement.replay_commitment, inputs, sent,
                            digest_encoded(replacement.replay_output), record_context(record, record.steps[s]))
    except RecoveryInputError as exc:
        return MISSING_LINK, f"replay at step {s}: {exc}"


def signer_views(record: Any, segment_index: int, valid_steps: int) -> list[tuple[Any, int]]:
    """Per signer of ``segment_index``: (a record view naming it at the segment, steps to audit), over
    the first ``valid_steps`` steps (those the chain accepted); signers with nothing to audit omitted."""
    own = sorted((r for r in replacements_of(record) if r.segment_index == segment_index), key=lambda r: r.at_step)
    if not own:
        return [(record, valid_steps)] if valid_steps > 0 else []
    views: list[tuple[Any, int]] = []
    first_end = min(own[0].at_step, valid_steps)
    if first_end > 0:
        views.append((record, first_end))
    for j, r in enumerate(own):
        end = min(own[j + 1].at_step if j + 1 < len(own) else len(record.steps), valid_steps)
        if r.at_step >= end:
            continue
        steps = list(record.steps[r.at_step:end])
        if r.at_step > 0:
            if r.replay_commitment is None:
                continue
            template = record.steps[r.at_step - 1]
            k = segment_index
            inputs = [s.inputs[k] for s in record.steps[:r.at_step]]
            replay = StepRecord(r.at_step - 1, 0, r.replay_commitment.num_positions, template.first_input_digest,
                                _put(template.commitments, k, r.replay_commitment),
                                _put(template.inputs, k, replay_input(inputs)), _put(template.outputs, k, r.replay_output))
            steps.insert(0, replay)
        view = dataclasses.replace(record, cohort=cohort_at(record, replacements_of(record), r.at_step), steps=steps)
        views.append((view, len(steps)))
    return views


def _put(items: list[Any], index: int, value: Any) -> list[Any]:
    out = list(items)
    while len(out) <= index:
        out.append(value)
    out[index] = value
    return out
