"""The state machine on the spec adapter conforms, and mutants of it are caught (the harness can fail)."""

from __future__ import annotations

from fractions import Fraction

import json
from dataclasses import replace

import pytest

from verisplit.conformance.adapters import CAUGHT_BY, SpecAdapter
from verisplit.conformance.harness import Divergence, Harness
from verisplit.conformance.machine import PROFILES, run_machine
from verisplit.conformance.traces import Trace, replay
from verisplit.spec.commitment import ChainVerdict
from verisplit.spec.settlement import settle

FAST = replace(PROFILES["spec"], max_examples=40)


def test_spec_adapter_conforms_and_writes_traces(tmp_path) -> None:
    stats = run_machine(SpecAdapter(), FAST, tmp_path)
    assert stats.divergences == 0 and stats.requests > 0 and stats.cheaters_offered > 0
    traces = sorted(tmp_path.glob("example-*.json"))
    assert len(traces) == stats.examples
    rules = {s["rule"] for t in traces for s in json.loads(t.read_text())["steps"]}
    assert {"add_offer", "run_request", "audit", "settle"} <= rules
    busiest = max(traces, key=lambda t: len(json.loads(t.read_text())["steps"]))
    report = replay(Trace.load(busiest))
    assert report.ok and report.drift == []


def test_caught_by_table_matches_the_cheat_catalogue() -> None:
    from cheatkit import cheats
    from cheatkit.cheats import BEHAVIOURS

    assert set(CAUGHT_BY) == set(BEHAVIOURS) - {"honest"}  # every registered cheat has a catching check
    assert set(CAUGHT_BY.values()) == {"audit", "chain"} and cheats.CATALOGUE == tuple(CAUGHT_BY)


class PaysFailedLead(SpecAdapter):
    """Mutant: the lead settles as if nobody failed (pays cheaters)."""

    def settle(self, request_id):  # type: ignore[override]
        record = self._requests[request_id]
        works = {a.provider_id: w for a, w in zip(record.cohort.assignments, record.work)}
        if sum(works.values()) == 0:
            return super().settle(request_id)
        result = settle(record.fee, works, record.prices, self.lead_id, ())
        self._ledger.append(result)
        return result


class BlindVerifier(SpecAdapter):
    """Mutant: audits always pass, so a provider that skips a layer is never caught."""

    def _audit_one(self, request_id, record, index):  # type: ignore[override]
        verdict = super()._audit_one(request_id, record, index)
        return replace(verdict, passed=True, reason="")


class EjectsWholeCohort(SpecAdapter):
    """Mutant: on a failure the registry ejects every member of the cohort."""

    def _fail(self, record, provider_id):  # type: ignore[override]
        super()._fail(record, provider_id)
        for a in record.cohort.assignments:
            self._eject_now(a.provider_id)


class WrongCulpritLead(SpecAdapter):
    """Mutant: the lead blames the link after the one that broke."""

    def _blame(self, cohort, link, reason, detail):  # type: ignore[override]
        blamed = min(link + 1, len(cohort.assignments) - 1)
        return ChainVerdict(False, link, cohort.assignments[blamed].provider_id, reason, detail)


class PriciestRouter(SpecAdapter):
    """Mutant: the router prefers the full-range provider whenever it is listed."""

    def route(self):  # type: ignore[override]
        from verisplit.conformance.adapters import RouteResult
        from verisplit.spec.cohort import Assignment, Cohort

        full = self._offers.get("hfull")
        if full is not None and len(self._offers) > 1:
            return RouteResult(Cohort(self.model.model_id, (Assignment("hfull", full.public_key, 0, self.model.num_layers),)))
        return super().route()

    def run_request(self, request_id, prompt_len, max_tokens, seed):  # type: ignore[override]
        return super().run_request(request_id, prompt_len, max_tokens, seed)


class EjectsOnOutage(SpecAdapter):
    """Mutant: a provider that went away (an outage, no signed rule broken) is failed and ejected."""

    def run_request(self, request_id, prompt_len, max_tokens, seed):  # type: ignore[override]
        obs = super().run_request(request_id, prompt_len, max_tokens, seed)
        if obs.outage is not None and obs.verdict.culprit:
            self._fail(self._requests[request_id], obs.verdict.culprit)
        return obs


@pytest.mark.parametrize("mutant", [PaysFailedLead, BlindVerifier, EjectsWholeCohort, WrongCulpritLead, PriciestRouter])
def test_mutant_is_caught_and_the_shrunk_trace_replays(mutant, tmp_path) -> None:
    with pytest.raises(Divergence):
        run_machine(mutant(), PROFILES["spec"], tmp_path)
    failure = Trace.load(tmp_path / "failure.json")
    assert failure.result == "divergence" and failure.divergence is not None
    report = replay(failure, mutant())
    assert not report.ok, "replaying the minimal trace on the mutant must reproduce the divergence"
    assert replay(failure, SpecAdapter()).ok, "the same actions conform on the correct adapter"


def test_blind_verifier_caught_on_skip_layer_directly() -> None:
    harness = Harness(BlindVerifier(audit_p=Fraction(1)))  # p = 1: the cheater's segment is always audited
    harness.add_offer("h0", 3)
    harness.add_offer("h1", 3)
    harness.add_offer("h2", 3)
    skip = next(t for t in harness.templates.values() if t.behaviour == "skip_layer")
    harness.add_offer(skip.name, 0)
    harness.run_request(3, 2, 0)
    request_id = harness.unaudited_requests()[0]
    audited = harness.adapter.audit_segments(request_id)
    cohort = harness.state.cohorts[harness.state.requests[request_id].cohort_id]
    assert any(cohort.assignments[i].provider_id == skip.name for i in audited)
    with pytest.raises(Divergence, match="passed its audit"):
        harness.audit(request_id)


def test_trace_errors_are_clear(tmp_path) -> None:
    from verisplit.conformance.traces import TraceError

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(TraceError, match="format"):
        Trace.load(bad)
    with pytest.raises(TraceError, match="no such file"):
        Trace.load(tmp_path / "missing.json")


def test_an_outage_blames_nobody_and_the_mutant_lead_that_ejects_on_it_diverges() -> None:
    """Rule (spec/faults.py): a provider that goes away mid-request breaks no signed rule, so the spec
    fails nobody; the links before it earn their work."""
    for adapter, diverges in ((SpecAdapter(audit_p=Fraction(0)), False), (EjectsOnOutage(audit_p=Fraction(0)), True)):
        harness = Harness(adapter)
        outage = next(t for t in harness.templates.values() if t.behaviour == "outage")
        for t in harness.templates.values():
            if t.behaviour == "honest" and t.name.startswith("h") and t.name != "hfull":
                harness.add_offer(t.name, 5)
        harness.add_offer(outage.name, 0)  # cheapest for its range: the router picks it
        if diverges:
            with pytest.raises(Divergence):
                harness.run_request(3, 3, 0)
                harness.settle(harness.unaudited_requests()[0])
            continue
        harness.run_request(3, 3, 0)
        request = next(iter(harness.state.requests.values()))
        assert request.status == "aborted" and request.failed == frozenset()
        assert outage.name in harness.registered_ids()


class EscrowNeverForfeits(SpecAdapter):
    """Mutant: a failed key keeps its held escrow (escrow that is not forfeited on ejection)."""

    def settle(self, request_id):  # type: ignore[override]
        from verisplit.spec.escrow import cohort_members, settle_escrow

        record = self._requests[request_id]
        result = super().settle(request_id)
        before = getattr(self, "_book_before", {})
        members = cohort_members(record.cohort, record.work, result.payouts, ())  # nobody failed: no forfeits
        self._escrow = settle_escrow(before, request_id, members, self.escrow_terms).book  # failures ignored
        self._book_before = dict(self._escrow)
        return result


def test_escrow_is_checked_against_the_spec_and_the_no_forfeit_mutant_diverges(tmp_path) -> None:
    run_machine(SpecAdapter(), PROFILES["spec"], tmp_path / "ok")  # the correct adapter conforms, escrow included
    with pytest.raises(Divergence, match="escrow"):
        run_machine(EscrowNeverForfeits(), PROFILES["spec"], tmp_path / "mutant")
