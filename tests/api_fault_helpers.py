"""Test-only provider faults for the API tests, loaded through ``python -m cheatkit.serve api_fault_helpers:Class``.

Provider processes import this module (``PYTHONPATH`` includes ``tests/``), so it stays light. These
are malfunctions, not cheats that save work, so they are not in the threat catalogue.
"""

from __future__ import annotations

import torch

from verisplit.impl.node.behaviour import Behaviour

NAN_FROM_STEP = 2


class LateNan(Behaviour):
    """Honest for steps 0 and 1, then signs boundary outputs holding NaN (rule H5: bad_boundary, blamed
    on it), so a streamed request has sent tokens before the cohort fails."""

    name = "test_late_nan"

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if step < NAN_FROM_STEP:
            return output
        out = output.clone()
        out.view(-1)[-1] = float("nan")
        return out
