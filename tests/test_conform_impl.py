"""Reference implementation vs spec on real provider processes, an impl-level mutant, and external mode.

One provider pool (real processes over loopback) serves the whole module; it takes ~25 s to start on
2 cores, so these tests are marked slow (``.ci/run`` runs them, and `verisplit conform`, separately).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from verisplit.conformance.harness import Divergence, Harness
from verisplit.conformance.machine import PROFILES, run_machine

pytestmark = [pytest.mark.slow, pytest.mark.net]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from verisplit.conformance.impl_adapter import ImplAdapter

    adapter = ImplAdapter(tmp_path_factory.mktemp("conform-pool"))
    yield adapter
    adapter.close()


def test_impl_conforms_on_a_fixed_scenario_with_cheaters(pool) -> None:
    harness = Harness(pool)
    harness.add_offer("h0", 3)
    harness.add_offer("h1", 3)
    honest = harness.run_request(4, 3, 0)
    assert honest["verdict"]["valid"] and honest["settlement"]["settlement"]["refund"] == 0
    harness.add_offer("c-wrong_key", 0)
    caught = harness.run_request(3, 2, 7)
    assert caught["verdict"] == {"valid": False, "link": 0, "culprit": "c-wrong_key", "reason": "wrong_signer"}
    assert "c-wrong_key" not in harness.registered_ids() and {"h0", "h1"} <= set(harness.registered_ids())


def test_impl_machine_runs_two_examples(pool, tmp_path) -> None:
    stats = run_machine(pool, replace(PROFILES["ci"], max_examples=2), tmp_path)
    assert stats.divergences == 0 and stats.examples >= 2


def test_impl_mutant_verifier_that_passes_everything_is_caught(pool) -> None:
    """A skip_layer provider whose audit is reported as passed (a blind verifier) is a divergence."""
    from verisplit.conformance.impl_adapter import ImplAdapter

    class BlindAudits:
        def __init__(self, inner: ImplAdapter) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def audit(self, request_id):
            return [replace(v, passed=True, reason="") for v in self.inner.audit(request_id)]

    blind = BlindAudits(pool)
    harness = Harness(blind)  # type: ignore[arg-type]
    harness.add_offer("h0", 2)
    harness.add_offer("c-skip_layer", 0)
    for n in range(6):
        request = harness.state.requests
        try:
            harness.run_request(3, 2, n)
        except Divergence as exc:
            assert "c-skip_layer" in str(exc) and "passed its audit" in str(exc)
            return
        if "c-skip_layer" not in harness.registered_ids():
            break
    pytest.fail(f"blind verifier not caught (requests: {list(request)})")


def test_external_provider_checks(pool) -> None:
    from verisplit.conformance.external import check_provider

    honest = pool._pool["h1"]
    results = check_provider(honest.endpoint, pool.checkpoint, 2, 4, lead_key=pool._session_key)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    noisy = pool._pool["c-noise"]
    results = check_provider(noisy.endpoint, pool.checkpoint, 0, 2, lead_key=pool._session_key)
    failed = {r.name for r in results if not r.passed}
    assert any(name.startswith("re-execution") for name in failed), results
    wrong_key = pool._pool["c-wrong_key"]
    failed = {r.name for r in check_provider(wrong_key.endpoint, pool.checkpoint, 0, 2, lead_key=pool._session_key) if not r.passed}
    assert any(name.startswith("signatures") for name in failed)
    substitute = pool._pool["c-substitute_output"]
    failed = {r.name for r in check_provider(substitute.endpoint, pool.checkpoint, 2, 4, lead_key=pool._session_key) if not r.passed}
    assert any(name.startswith("receipt") for name in failed)
