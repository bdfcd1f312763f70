"""Rule K1 (rollback) and F1 over steps: the spec functions on concrete values."""

from __future__ import annotations

import pytest

from verisplit.spec.commitment import InvalidChainInput, StepContext, next_step_context, step_follows
from verisplit.spec.settlement import SettlementError, billable_positions, plain_decoding_steps


def test_step_follows_is_rollback_into_the_previous_step() -> None:
    assert step_follows(5, 4, 9)  # plain continuation
    assert step_follows(5, 4, 6) and step_follows(5, 4, 8)  # rollback to a rejected draft
    assert not step_follows(5, 4, 5)  # no progress
    assert not step_follows(5, 4, 10)  # gap
    assert step_follows(-1, 1, 0)  # the runtime's "before the first step"


def test_next_step_context_defaults_and_rollback() -> None:
    c = StepContext("m", "r", 0, 0, 7)
    assert next_step_context(c, 1) == StepContext("m", "r", 1, 7, 1)
    d = next_step_context(next_step_context(c, 4), 3, 9)  # [7, 11) then roll back to 9
    assert (d.step, d.first_position, d.num_positions) == (2, 9, 3)
    with pytest.raises(InvalidChainInput, match="first_position"):
        next_step_context(c, 1, 0)
    with pytest.raises(InvalidChainInput, match="first_position"):
        next_step_context(c, 1, 8)


@pytest.mark.parametrize("prompt,completion", [(1, 1), (7, 12), (3, 1), (30, 5)])
def test_f1_over_steps_equals_plain_f1(prompt: int, completion: int) -> None:
    steps = plain_decoding_steps(prompt, completion)
    assert billable_positions(prompt, completion) == billable_positions(prompt, completion, steps) == prompt + completion - 1


def test_f1_counts_every_position_of_speculative_steps() -> None:
    # prompt 7 + 3 drafts, then [t, d1, d2] twice: 10 + 3 + 3 positions computed
    assert billable_positions(7, 9, [10, 3, 3]) == 16
    assert billable_positions(7, 0, [10]) == 0  # nothing generated, nothing charged
    with pytest.raises(SettlementError, match=r"step_positions\[1\]"):
        billable_positions(7, 3, [7, 0])
    with pytest.raises(SettlementError, match="completion_tokens"):
        billable_positions(7, -1, [7])
