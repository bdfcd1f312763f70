"""Test helper: an honest provider that takes at least ``PACE_S`` per step (``cheatkit.serve
faults_pace:Paced``), so a 64-token stream lasts long enough for a fault to land at a random step."""

from __future__ import annotations

import time

from verisplit.impl.node.behaviour import Behaviour

PACE_S = 0.015


class Paced(Behaviour):
    """Honest output, committed and sent unchanged, after a fixed pause (stands in for real compute)."""

    def output(self, step, inputs, output):  # type: ignore[no-untyped-def]
        time.sleep(PACE_S)
        return output
