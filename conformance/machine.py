"""Hypothesis ``RuleBasedStateMachine`` over the harness: random protocol runs, shrunk failures as JSON.

Rules: add a provider offer (a template: range + behaviour, random price), form a cohort, run a
request (random prompt length, max tokens, sampling seed), run a request with a fault (kill / hang a
provider mid-request, adapters that support it: the real implementation), audit, settle, eject. After every step the
invariant compares implementation and spec (``Harness.check_invariants``). One adapter is shared by
every example (``reset`` between examples), so a real-process adapter starts its processes once.

Every example's trace is written as JSON under ``trace_dir``; a failing example also overwrites
``failure.json``, and because Hypothesis re-runs the shrunk example last, that file ends as the
minimal failing trace: ``verisplit conform replay <trace_dir>/failure.json`` reproduces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from verisplit.conformance.adapters import Adapter
from verisplit.conformance.harness import Divergence, Harness
from verisplit.conformance.traces import Trace


@dataclass(frozen=True)
class Profile:
    """How much a run explores: examples, steps per example, request sizes."""

    name: str
    max_examples: int
    steps: int
    max_prompt: int
    max_tokens: int
    shrink: bool = True


PROFILES: dict[str, Profile] = {
    # spec adapter (in-process): cheap, used by the fast tests
    "spec": Profile("spec", max_examples=60, steps=25, max_prompt=6, max_tokens=4),
    # reference implementation vs spec in CI: within the 5-minute budget on 2 cores
    "ci": Profile("ci", max_examples=100, steps=25, max_prompt=8, max_tokens=4),
    # the longer profile for nightly / before a release
    "long": Profile("long", max_examples=500, steps=40, max_prompt=16, max_tokens=8),
}


@dataclass
class RunStats:
    examples: int = 0
    actions: int = 0
    requests: int = 0
    cheaters_offered: int = 0
    divergences: int = 0
    seconds: float = 0.0
    failure_trace: Path | None = None


def build_machine(adapter: Adapter, profile: Profile, trace_dir: Path | None, stats: RunStats) -> type[RuleBasedStateMachine]:
    """A machine class bound to one shared adapter, profile and trace folder."""
    names = [t.name for t in adapter.templates]

    cheater_indices = [i for i, t in enumerate(adapter.templates) if t.behaviour != "honest"]

    def base_indices(base: str) -> list[int]:
        if base == "tiling":
            return [i for i, t in enumerate(adapter.templates) if t.behaviour == "honest" and t.name[1:].isdigit()]
        if base == "full":
            return [i for i, t in enumerate(adapter.templates) if t.name == "hfull"]
        return []

    class ConformanceMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            stats.examples += 1
            self.example = stats.examples
            self.harness = Harness(adapter)
            self.failed = False

        def _act(self, fn: Any, *args: Any) -> None:
            stats.actions += 1
            try:
                fn(*args)
            except Divergence:
                self.failed = True
                raise
            except Exception as exc:  # an adapter crash is a failure too, recorded in the trace
                self.failed = True
                self.harness.trace.mark_error(f"{type(exc).__name__}: {exc}")
                raise

        def _offer(self, index: int, price: int) -> None:
            name = names[index]
            if name in self.harness.state.registry.provider_ids():
                return  # already standing: nothing to offer
            if self.harness.templates[name].behaviour != "honest":
                stats.cheaters_offered += 1
            self._act(self.harness.add_offer, name, price)

        @initialize(base=st.sampled_from(["tiling", "tiling", "full", "none"]), base_price=st.integers(1, 4),
                    cheaters=st.lists(st.sampled_from(cheater_indices or [0]), max_size=2, unique=True),
                    offers=st.lists(st.tuples(st.integers(0, max(0, len(names) - 1)), st.integers(0, 4)),
                                    max_size=min(len(names), 3), unique_by=lambda t: t[0]))
        def initial_offers(self, base: str, base_price: int, cheaters: list[int], offers: list[tuple[int, int]]) -> None:
            """Start most examples from a covering set of honest offers (``h<k>`` tiling or ``hfull``), add
            up to two cheaters undercutting them (price 0, so the router prefers them), then random offers."""
            for index in base_indices(base):
                self._offer(index, base_price)
            for index in cheaters if cheater_indices else []:
                self._offer(index, 0)
            for index, price in offers:
                self._offer(index, price)

        @rule(index=st.integers(0, max(0, len(names) - 1)), price=st.integers(0, 4))
        def add_offer(self, index: int, price: int) -> None:
            self._offer(index, price)

        @rule(twice=st.booleans())
        def form_cohort(self, twice: bool) -> None:
            self._act(self.harness.form_cohort)
            if twice:  # the router's choice is a deterministic function of the standing offers
                self._act(self.harness.form_cohort)

        @rule(shape=st.tuples(st.integers(1, profile.max_prompt), st.integers(1, profile.max_tokens),
                              st.one_of(st.just(0), st.integers(1, 2**16))))
        def run_request(self, shape: tuple[int, int, int]) -> None:
            """A request: (prompt length, max tokens, sampling seed; 0 = greedy)."""
            stats.requests += 1
            self._act(self.harness.run_request, *shape)

        @precondition(lambda self: adapter.supports_faults and profile.max_tokens >= 2)
        @rule(kind=st.sampled_from(["kill"] * 4 + ["hang"]), segment=st.integers(0, 3), data=st.data(),  # a hang costs >= 2 s
              prompt_len=st.integers(1, profile.max_prompt))
        def faulted_request(self, kind: str, segment: int, data: st.DataObject, prompt_len: int) -> None:
            """Kill / hang actions (issue 13): a greedy request whose provider at ``segment`` (modulo the
            cohort's length) is cut off (kill) or frozen (hang) mid-request; the implementation must
            recover with the spec's replacement (or abort blaming nobody when there is none)."""
            from verisplit.conformance.adapters import Fault

            spec_cohort, _ = self.harness._spec_cohort()
            if spec_cohort is None:
                return
            # a hang is noticed by the derived step deadline, which needs two measured decode steps
            low = 3 if kind == "hang" else 1
            max_tokens = data.draw(st.integers(low + 1, max(low + 1, profile.max_tokens)), label="max_tokens")
            after = data.draw(st.integers(low, max_tokens - 1), label="after_tokens")
            stats.requests += 1
            self._act(self.harness.run_request, prompt_len, max_tokens, 0,
                      Fault(kind, segment % len(spec_cohort.assignments), after))

        @precondition(lambda self: bool(self.harness.unaudited_requests()))
        @rule(data=st.data())
        def audit(self, data: st.DataObject) -> None:
            request_id = data.draw(st.sampled_from(self.harness.unaudited_requests()), label="request")
            self._act(self.harness.audit, request_id)

        @precondition(lambda self: bool(self.harness.finished_requests()))
        @rule(data=st.data())
        def settle(self, data: st.DataObject) -> None:
            request_id = data.draw(st.sampled_from(self.harness.finished_requests()), label="request")
            self._act(self.harness.settle, request_id)

        @precondition(lambda self: bool(self.harness.registered_ids()))
        @rule(data=st.data())
        def eject(self, data: st.DataObject) -> None:
            provider_id = data.draw(st.sampled_from(self.harness.registered_ids()), label="provider")
            self._act(self.harness.eject, provider_id)

        @invariant()
        def implementation_matches_spec(self) -> None:
            self._act(self.harness.check_invariants)

        def teardown(self) -> None:
            if trace_dir is not None:
                trace = self.harness.trace
                if self.failed:
                    stats.divergences += 1
                    trace.save(trace_dir / f"example-{self.example:04d}-failed.json")
                    stats.failure_trace = trace.save(trace_dir / "failure.json")
                else:
                    trace.save(trace_dir / f"example-{self.example:04d}.json")

    ConformanceMachine.__name__ = f"ConformanceMachine_{adapter.kind}"
    return ConformanceMachine


def run_machine(adapter: Adapter, profile: Profile, trace_dir: Path | None = None,
                max_examples: int | None = None) -> RunStats:
    """Run the state machine; raises the (shrunk) failure, with ``stats.failure_trace`` saved."""
    stats = RunStats()
    machine = build_machine(adapter, profile, trace_dir, stats)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if profile.shrink else [])
    config = settings(max_examples=max_examples or profile.max_examples, stateful_step_count=profile.steps,
                      deadline=None, derandomize=True, database=None, phases=phases,
                      suppress_health_check=list(HealthCheck), print_blob=False,
                      report_multiple_bugs=False)
    start = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=config)
    finally:
        stats.seconds = time.monotonic() - start
    return stats


__all__ = ["PROFILES", "Profile", "RunStats", "build_machine", "run_machine", "Trace"]
