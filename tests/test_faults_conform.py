"""The conformance harness's fault actions (issue 13) on the real implementation: kill and hang a
provider mid-request; the implementation's replacement, replay, audits, settlement and escrow must
equal the spec's (``ReplaceProvider``), and nobody is blamed for the fault. A chain cheater chosen as
the replacement is caught at its replay and blamed."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from verisplit.conformance.adapters import Fault, ProviderTemplate
from verisplit.conformance.harness import Harness
from verisplit.conformance.impl_adapter import ImplAdapter

pytestmark = pytest.mark.net


def test_kill_and_hang_actions_conform(tmp_path: Path) -> None:
    pool = (ProviderTemplate("h0", 0, 2), ProviderTemplate("h1", 2, 4), ProviderTemplate("hfull", 0, 4),
            ProviderTemplate("c-wrong_key", 0, 2, "wrong_key"))
    adapter = ImplAdapter(tmp_path, pool, audit_p=Fraction(1))
    try:
        harness = Harness(adapter)
        for name, price in (("h0", 1), ("h1", 1), ("hfull", 3)):
            harness.add_offer(name, price)
        outcomes = [harness.run_request(3, 4, 0, Fault("kill", 1, 1)), harness.run_request(3, 4, 0, Fault("hang", 0, 3))]
        for outcome in outcomes:
            assert outcome["verdict"]["valid"] and [r["provider_id"] for r in outcome["replacements"]] == ["hfull"]
            assert {(v["segment_index"], v["provider_id"]) for v in outcome["audit"]["verdicts"]} >= {(1, "h1"), (0, "h0")}
            assert all(v["passed"] for v in outcome["audit"]["verdicts"])
        assert [r["outage"] for o in outcomes for r in o["replacements"]] == ["unavailable", "timeout"]
        # The cheaper cheater is the replacement for [0, 2) now: caught at its replay, blamed, ejected.
        harness.add_offer("c-wrong_key", 2)
        outcome = harness.run_request(3, 4, 0, Fault("kill", 0, 2))
        assert outcome["verdict"]["culprit"] == "c-wrong_key" and outcome["verdict"]["reason"] == "wrong_signer"
        assert "c-wrong_key" not in adapter.registered() and "h0" in adapter.registered()
        harness.check_invariants()
    finally:
        adapter.close()
