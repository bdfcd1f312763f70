"""The differential core: drive an adapter, mirror every observation into the spec, judge the difference.

Each action (``add_offer``, ``form_cohort``, ``run_request``, ``audit``, ``settle``, ``eject``) calls the
adapter, turns what it observed into ``verisplit.spec.protocol`` events carrying the implementation's
claims (``FormCohort.chosen``, ``CommitStep`` with the received commitments, ``RecordAudit``,
``SettleRequest.claimed``, ``Eject``) and applies them to the spec state: an ``IllegalTransition`` is a
divergence. On top, an oracle that knows each provider's behaviour checks what the spec cannot see:
honest providers are never blamed, failed, ejected or docked; cheaters are caught by the check that
must catch them. ``check_invariants`` compares registry, bans and ledger after every action.

Every action appends ``{"rule", "args", "outcome"}`` to the trace (events in, outcomes out); a
divergence is recorded in the trace and raised as ``Divergence``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verisplit.conformance.adapters import CAUGHT_BY, CHEATS_FROM_STEP, HONEST, Adapter, ProviderTemplate, RequestObservation
from verisplit.conformance.traces import (
    Trace,
    chain_verdict_to_dict,
    cohort_to_dict,
    settlement_to_dict,
    step_to_dict,
    verdict_to_dict,
)
from verisplit.spec import audit as spec_audit
from verisplit.spec.cohort import Cohort, NoCoverage, Offer, cohort_violations, form_cohort
from verisplit.spec.commitment import MISSING_LINK, VALID, ChainVerdict, StepContext, check_exchanged_chain
from verisplit.spec.escrow import EscrowMember, cohort_members, settle_escrow
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.recovery import check_replay, effective_cohort, replay_input
from verisplit.spec.protocol import (
    ABORTED,
    COMPLETED,
    SETTLED,
    AddOffer,
    CommitStep,
    CompleteRequest,
    Eject,
    FormCohort,
    IllegalTransition,
    OpenRequest,
    RecordAudit,
    ReplaceProvider,
    RevealSeed,
    SettleRequest,
    State,
    apply,
    expected_settlement,
    initial_state,
)
from verisplit.spec.settlement import conserved


class Divergence(AssertionError):
    """The implementation did something the spec (or the behaviour oracle) forbids."""


@dataclass
class _Req:
    steps_served: dict[str, int] = field(default_factory=dict)  # provider -> steps with an accepted link
    audited: bool = False


def expected_verdict(cohort: Cohort, observation: Any, context: StepContext) -> ChainVerdict:
    """The lead's required verdict on one observed step: the spec's ``check_exchanged_chain`` (H1-H4)
    against the digests of the bytes actually exchanged (the spec's ``CommitStep`` gets the same
    digests, so the receipt rule H4 is the spec's, not the harness's)."""
    return check_exchanged_chain(cohort, observation.commitments, observation.first_input_digest,
                                 observation.sent_digests, observation.received_digests, context)


def _same_verdict(a: ChainVerdict, b: ChainVerdict) -> bool:
    return (a.valid, a.link, a.culprit, a.reason) == (b.valid, b.link, b.culprit, b.reason)


class Harness:
    """Drives one adapter through one example and compares it with the spec after every action."""

    def __init__(self, adapter: Adapter, trace: Trace | None = None, *, reset: bool = True,
                 namespace: str | None = None) -> None:
        self.adapter = adapter
        if reset:
            adapter.reset()
        self.state: State = initial_state(adapter.model)
        self.templates: dict[str, ProviderTemplate] = {t.name: t for t in adapter.templates}
        self.behaviour: dict[str, str] = {}
        self.trace = trace if trace is not None else Trace.new(adapter.config())
        self.requests: dict[str, _Req] = {}
        self.escrow: dict[str, Any] = {}  # the spec's escrow book, replayed over the spec's settlements
        self.ejected: set[str] = set()
        self._counter = 0
        self.namespace = adapter.request_namespace() if namespace is None else namespace
        self.trace.adapter["request_namespace"] = self.namespace

    # bookkeeping ----------------------------------------------------------------------------------
    def _fail(self, rule: str, message: str) -> None:
        self.trace.mark_divergence(rule, message)
        raise Divergence(f"[{rule}] {message}")

    def _apply(self, rule: str, event: Any) -> None:
        try:
            self.state = apply(self.state, event)
        except IllegalTransition as exc:
            self._fail(rule, f"spec rejects {type(event).__name__}: {exc}")

    def next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{self.namespace}{prefix}-{self._counter}"

    def finished_requests(self) -> list[str]:
        return [r for r, s in self.state.requests.items() if s.status in (COMPLETED, ABORTED)]

    def unaudited_requests(self) -> list[str]:
        return [r for r in self.finished_requests() if not self.requests[r].audited]

    def registered_ids(self) -> list[str]:
        return sorted(self.state.registry.provider_ids())

    # actions --------------------------------------------------------------------------------------
    def add_offer(self, name: str, price: int) -> dict[str, Any]:
        """Offer template ``name``; the implementation must accept exactly when the spec does."""
        template = self.templates[name]
        if template.price is not None:
            price = template.price
        args = {"name": name, "price": price}
        result = self.adapter.add_offer(template, price)
        offer = self.adapter.registered().get(name) if result.accepted else None
        spec_offer = Offer(name, self.adapter.public_key(name), template.first_layer, template.end_layer, price,
                           offer.endpoint if offer else "")
        try:
            spec_state = apply(self.state, AddOffer(spec_offer))
            spec_accepts, spec_reason = True, ""
        except IllegalTransition as exc:
            spec_state, spec_accepts, spec_reason = self.state, False, str(exc)
        outcome = {"accepted": result.accepted, "reason": result.reason, "spec_accepts": spec_accepts}
        self.trace.add("add_offer", args, outcome)
        if result.accepted != spec_accepts:
            self._fail("add_offer", f"implementation {'accepted' if result.accepted else 'refused'} the offer of "
                                    f"'{name}' but the spec {'accepts' if spec_accepts else 'refuses'} it ({spec_reason or result.reason})")
        if result.accepted:
            assert offer is not None
            if (offer.first_layer, offer.end_layer, offer.price_per_work_unit, offer.public_key) != (
                    template.first_layer, template.end_layer, price, spec_offer.public_key):
                self._fail("add_offer", f"registry lists '{name}' as {offer}, not the offer made")
            self.state = spec_state
            self.behaviour[name] = template.behaviour
        self.check_invariants("add_offer")
        return outcome

    def form_cohort(self) -> dict[str, Any]:
        """The router's cohort must be the spec's choice (and valid); NoCoverage must name the same layer."""
        routed = self.adapter.route()
        spec_cohort, spec_gap = self._spec_cohort()
        outcome = {"cohort": cohort_to_dict(routed.cohort), "no_coverage_layer": routed.no_coverage_layer,
                   "spec_cohort": cohort_to_dict(spec_cohort), "spec_no_coverage_layer": spec_gap}
        self.trace.add("form_cohort", {}, outcome)
        self._compare_cohort("form_cohort", routed.cohort, routed.no_coverage_layer, spec_cohort, spec_gap)
        if routed.cohort is not None:
            self._apply("form_cohort", FormCohort(self.next_id("cohort"), routed.cohort))
        self.check_invariants("form_cohort")
        return outcome

    def _spec_cohort(self) -> tuple[Cohort | None, int | None]:
        """The spec's cohort over the current offers, or (None, first uncovered layer)."""
        try:
            return form_cohort(self.state.registry.offers, self.state.model), None
        except NoCoverage as exc:
            return None, exc.layer

    def _compare_cohort(self, rule: str, cohort: Cohort | None, gap: int | None, spec_cohort: Cohort | None,
                        spec_gap: int | None) -> None:
        if spec_cohort is None:
            if cohort is not None:
                self._fail(rule, f"implementation formed {cohort.provider_ids} but no offer covers layer {spec_gap}")
            if gap != spec_gap:
                self._fail(rule, f"implementation reports no coverage at layer {gap}, spec says layer {spec_gap}")
            return
        if cohort is None:
            self._fail(rule, f"implementation found no cohort (layer {gap}) but the spec forms {spec_cohort.provider_ids}")
            return
        violations = cohort_violations(cohort, self.state.model, self.state.registry.offers)
        if violations:
            self._fail(rule, f"cohort {cohort.provider_ids} is invalid: " + "; ".join(f"{v.kind}@{v.segment_index}: {v.detail}" for v in violations))
        if cohort != spec_cohort:
            self._fail(rule, f"cohort {[(a.provider_id, a.first_layer, a.end_layer) for a in cohort.assignments]} is not the "
                             f"spec's choice {[(a.provider_id, a.first_layer, a.end_layer) for a in spec_cohort.assignments]}")

    def run_request(self, prompt_len: int, max_tokens: int, seed: int, fault: Any = None) -> dict[str, Any]:
        """Run a request; every observed step is checked link by link and mirrored into the spec. With
        ``fault`` (``adapters.Fault``: the kill / hang actions) a provider fails mid-request; every
        replacement the implementation made is mirrored as the spec's ``ReplaceProvider`` (R1-R2) before
        the step it joined at, and nobody may be blamed for the fault."""
        request_id = self.next_id("req")
        args: dict[str, Any] = {"prompt_len": prompt_len, "max_tokens": max_tokens, "seed": seed}
        if fault is not None:
            args["fault"] = {"kind": fault.kind, "segment": fault.segment, "after_tokens": fault.after_tokens}
            obs = self.adapter.run_request(request_id, prompt_len, max_tokens, seed, fault=fault)
        else:
            obs = self.adapter.run_request(request_id, prompt_len, max_tokens, seed)
        outcome = _request_outcome(obs)
        if obs.replacements:
            outcome["replacements"] = [{"segment_index": r.segment_index, "at_step": r.at_step, "outage": r.outage,
                                        "provider_id": r.assignment.provider_id} for r in obs.replacements]
        self.trace.add("run_request", args, outcome)
        spec_cohort, spec_gap = self._spec_cohort()
        self._compare_cohort("run_request", obs.cohort, obs.error_layer if obs.cohort is None else None, spec_cohort, spec_gap)
        if obs.cohort is None:
            self.check_invariants("run_request")
            return outcome
        cohort_id = f"{request_id}/cohort"
        self._apply("run_request", FormCohort(cohort_id, obs.cohort))
        self._apply("run_request", OpenRequest(request_id, cohort_id, obs.fee, obs.audit_seed_commitment))
        self.requests[request_id] = _Req()
        served = self.requests[request_id].steps_served
        position = 0
        final = VALID
        for index, step in enumerate(obs.steps):
            if not final.valid:
                self._fail("run_request", f"implementation continued to step {step.step} after the chain broke at step {index - 1}")
            context = StepContext(self.state.model.model_id, request_id, index, position, step.num_positions,
                                  dtype=self.state.dtype, audit_seed_commitment=obs.audit_seed_commitment)
            replay_failure = None
            for r in obs.replacements:
                if r.at_step == index:
                    self._apply("run_request", ReplaceProvider(request_id, r.segment_index, r.outage, r.assignment, r.replay,
                                                               r.replay_inputs, r.received_digest))
                    if self.state.requests[request_id].status == ABORTED:  # the replay broke R2: its signer is the culprit
                        failure = check_replay(r.assignment, r.segment_index, r.replay, r.replay_inputs,
                                               digest_encoded(replay_input(r.replay_inputs)), r.received_digest, context)
                        replay_failure = ChainVerdict(False, r.segment_index, r.assignment.provider_id,
                                                      failure[0] if failure else "", failure[1] if failure else "")
            if replay_failure is not None:
                final = replay_failure
                self._oracle_step(obs.cohort, index, replay_failure)
                break
            cohort = effective_cohort(obs.cohort, [(r.segment_index, r.at_step, r.assignment) for r in obs.replacements],
                                      index)
            verdict = expected_verdict(cohort, step, context)
            outage = obs.outage if index == len(obs.steps) - 1 else None
            self._apply("run_request", CommitStep(request_id, step.first_input_digest, step.num_positions,
                                                  tuple(step.commitments), tuple(step.sent_digests),
                                                  tuple(step.received_digests), outage))
            spec_verdict = self.state.requests[request_id].chain_verdicts[-1]
            if (spec_verdict.valid, spec_verdict.link, spec_verdict.culprit) != (verdict.valid, verdict.link, verdict.culprit):
                self._fail("run_request", f"internal: spec verdict {spec_verdict} disagrees with the harness's {verdict}")
            good = len(cohort.assignments) if verdict.valid else (verdict.link or 0)
            for a in cohort.assignments[:good]:
                served[a.provider_id] = served.get(a.provider_id, 0) + 1
            if outage is None or verdict.reason != MISSING_LINK:  # a step cut by an outage blames nobody
                self._oracle_step(cohort, index, verdict)
            final = verdict
            position += step.num_positions
        if obs.outage is not None:
            # An outage: the implementation names who went away and why; the spec sees the missing link
            # there and fails nobody (CommitStep's outage), so nobody may be docked or ejected for it.
            if (obs.verdict.valid, obs.verdict.link, obs.verdict.reason) != (False, final.link, obs.outage) \
                    or final.reason != MISSING_LINK:
                self._fail("run_request", f"outage verdict {chain_verdict_to_dict(obs.verdict)} does not match the "
                                          f"missing link {chain_verdict_to_dict(final)}")
            if self.state.requests[request_id].failed:
                self._fail("run_request", f"an outage failed {sorted(self.state.requests[request_id].failed)}")
        elif not _same_verdict(final, obs.verdict):
            self._fail("run_request", f"implementation's verdict {chain_verdict_to_dict(obs.verdict)} != required "
                                      f"{chain_verdict_to_dict(final)}")
        if final.valid:
            if not obs.steps:
                self._fail("run_request", "implementation reports a valid request with no steps")
            self._apply("run_request", CompleteRequest(request_id))
        if getattr(self.adapter, "auto_settles", False):
            # The implementation audits, settles and ejects on its own right after each request.
            finding = getattr(self.adapter, "chain_finding", lambda _rid: None)(request_id)
            required = None if final.valid or obs.outage is not None else {"culprit": final.culprit, "link": final.link}
            if finding != required:
                self._fail("run_request", f"the audit service's chain finding {finding} != the required {required}")
            outcome["audit"] = self._audit(request_id)
            outcome["settlement"] = self._settle(request_id)
        self.check_invariants("run_request")
        return outcome

    def _oracle_step(self, cohort: Cohort, step: int, verdict: ChainVerdict) -> None:
        """Behaviour oracle for one step: the culprit is never honest; the first chain-cheater that
        cheats at this step and is reached must be the culprit."""
        if not verdict.valid and self.behaviour.get(verdict.culprit or "", HONEST) == HONEST:
            self._fail("run_request", f"honest provider '{verdict.culprit}' blamed at step {step} ({verdict.reason})")
        for index, a in enumerate(cohort.assignments):
            behaviour = self.behaviour.get(a.provider_id, HONEST)
            if CAUGHT_BY.get(behaviour) == "chain" and step >= CHEATS_FROM_STEP.get(behaviour, 0):
                if verdict.valid or (verdict.link is not None and verdict.link > index):
                    self._fail("run_request", f"'{a.provider_id}' ({behaviour}) cheated at link {index}, step {step}, "
                                              f"but the chain check did not stop it there (verdict {chain_verdict_to_dict(verdict)})")
                break

    def audit(self, request_id: str) -> dict[str, Any]:
        """Audit a finished request: the segments chosen must be the spec's selection and every verdict
        must be consistent with the behaviour oracle."""
        outcome = self._audit(request_id, record=True)
        self.check_invariants("audit")
        return outcome

    def _audit(self, request_id: str, record: bool = False) -> dict[str, Any]:
        request = self.state.requests[request_id]
        verdicts = self.adapter.audit(request_id)
        outcome = {"verdicts": [verdict_to_dict(v) for v in verdicts]}
        if record:
            self.trace.add("audit", {"request_id": request_id}, outcome)
        self.requests[request_id].audited = True
        cohort = self.state.cohorts[request.cohort_id]
        expected = []
        for index, a in enumerate(cohort.assignments):
            if request.work[index] > 0 and a.provider_id not in request.failed and spec_audit.is_audited(
                    self.adapter.seed_for(request_id), request_id, index, self.adapter.audit_p):
                expected.append(index)
        got = sorted({v.segment_index for v in verdicts})  # a replaced segment has one verdict per signer
        if got != expected:
            self._fail("audit", f"audited segments {got}, the commit-reveal rule selects {expected}")
        revealed = self.adapter.revealed_seed(request_id)
        if revealed is None:
            self._fail("audit", f"request {request_id}: no audit seed was revealed once its audits were done")
        self._apply("audit", RevealSeed(request_id, revealed))  # must open the commitment signed before serving
        for v in verdicts:
            self._apply("audit", RecordAudit(v))
            behaviour = self.behaviour.get(v.provider_id, HONEST)
            steps = self.requests[request_id].steps_served.get(v.provider_id, 0)
            if behaviour == HONEST and not v.passed:
                self._fail("audit", f"honest provider '{v.provider_id}' failed its audit: {v.reason}")
            must_fail = CAUGHT_BY.get(behaviour) == "audit" and steps > CHEATS_FROM_STEP.get(behaviour, 0)
            if must_fail and v.passed:
                self._fail("audit", f"'{v.provider_id}' ({behaviour}) served {steps} step(s) of segment {v.segment_index} "
                                    f"but passed its audit (ratio {v.ratio:.3g})")
        return outcome

    def settle(self, request_id: str) -> dict[str, Any]:
        """The ledger's record must equal the spec's settlement, conserve the fee, and pay honest
        providers their full slice."""
        outcome = self._settle(request_id, record=True)
        self.check_invariants("settle")
        return outcome

    def _settle(self, request_id: str, record: bool = False) -> dict[str, Any]:
        claimed = self.adapter.settle(request_id)
        outcome = {"settlement": settlement_to_dict(claimed)}
        if record:
            self.trace.add("settle", {"request_id": request_id}, outcome)
        if not conserved(claimed):
            self._fail("settle", f"settlement of '{request_id}' does not conserve the fee: {settlement_to_dict(claimed)}")
        request = self.state.requests[request_id]
        spec = expected_settlement(self.state, request, self.adapter.lead_id)
        for provider_id, payout in spec.payouts.items():
            if self.behaviour.get(provider_id, HONEST) == HONEST and provider_id in spec.failed - request.lost:
                self._fail("settle", f"honest provider '{provider_id}' marked failed in '{request_id}'")
        self._apply("settle", SettleRequest(request_id, self.adapter.lead_id, claimed))
        self._check_escrow(request_id, spec)
        return outcome

    def _check_escrow(self, request_id: str, spec: Any) -> None:
        """Rules E1-E5: the implementation's escrow book equals the spec's ``settle_escrow`` replayed over
        the spec's settlements (per key: held window total, vested, forfeited, paid, served)."""
        terms = getattr(self.adapter, "escrow_terms", None)
        if terms is None:
            return
        request = self.state.requests[request_id]
        cohort = self.state.cohorts[request.cohort_id]
        members = cohort_members(cohort, request.work, spec.payouts, spec.failed)
        if request.replacements or request.retired:
            # the ledger's members: the cohort, then each replacement in order (one whose replay failed is
            # last); a provider lost to an outage is no E2 failure (R3)
            everyone = [(a.provider_id, a.public_key) for a in cohort.assignments]
            everyone += [(a.provider_id, a.public_key) for _, _, a in request.replacements]
            for provider_id, _, _ in request.retired:
                if provider_id not in {pid for pid, _ in everyone}:
                    everyone.append((provider_id, self.adapter.public_key(provider_id)))
            members = [EscrowMember(pid, key.hex(), _work_of(request, pid, cohort), spec.payouts[pid],
                                    pid in request.failed) for pid, key in everyone]
        self.escrow = settle_escrow(self.escrow, request_id, members, terms).book
        got = self.adapter.escrow_book()

        def view(book: Any) -> dict[str, tuple[int, int, int, int, int]]:
            return {k: (acc.held, acc.vested, acc.forfeited, acc.paid, acc.served) for k, acc in book.items()
                    if acc.paid or acc.served or acc.forfeited}

        if view(got) != view(self.escrow):
            self._fail("settle", f"escrow after '{request_id}' (held, vested, forfeited, paid, served per key) "
                                 f"{view(got)} != the spec's {view(self.escrow)}")

    def eject(self, provider_id: str) -> dict[str, Any]:
        """Ask for an ejection: the implementation must accept exactly when the spec has evidence."""
        result = self.adapter.eject(provider_id, "conformance: eject request")
        try:
            spec_state = apply(self.state, Eject(provider_id, "conformance: eject request"))
            spec_accepts, why = True, ""
        except IllegalTransition as exc:
            spec_state, spec_accepts, why = self.state, False, str(exc)
        outcome = {"accepted": result.accepted, "reason": result.reason, "spec_accepts": spec_accepts}
        self.trace.add("eject", {"provider_id": provider_id}, outcome)
        if result.accepted != spec_accepts:
            self._fail("eject", f"implementation {'ejected' if result.accepted else 'kept'} '{provider_id}' but the spec "
                                f"{'ejects' if spec_accepts else 'refuses'} ({why or result.reason})")
        if result.accepted:
            self.state = spec_state
            self.ejected.add(provider_id)
        self.check_invariants("eject")
        return outcome

    # invariants -----------------------------------------------------------------------------------
    def check_invariants(self, rule: str = "invariant") -> None:
        """Registry, bans and ledger of the implementation equal the spec state's. Providers the
        implementation dropped on its own are mirrored as ``Eject`` events (refused without evidence)."""
        listed = self.adapter.registered()
        spec_ids = self.state.registry.provider_ids()
        for provider_id in sorted(spec_ids - set(listed)):
            if self.behaviour.get(provider_id, HONEST) == HONEST:
                self._fail(rule, f"implementation ejected or dropped honest provider '{provider_id}'")
            self._apply(rule, Eject(provider_id, "implementation ejected it"))
            self.ejected.add(provider_id)
        spec_ids = self.state.registry.provider_ids()
        if set(listed) != spec_ids:
            self._fail(rule, f"registry lists {sorted(listed)}, spec state has {sorted(spec_ids)}")
        if self.adapter.banned_keys() != self.state.registry.banned_keys:
            self._fail(rule, f"banned keys differ: implementation {len(self.adapter.banned_keys())}, "
                             f"spec {len(self.state.registry.banned_keys)}")
        ledger = self.adapter.ledger()
        if len(ledger) != len(self.state.ledger) or any(a != b for a, b in zip(ledger, self.state.ledger)):
            self._fail(rule, f"ledger has {len(ledger)} record(s) differing from the spec's {len(self.state.ledger)}")
        for record in ledger:
            if not conserved(record):
                self._fail(rule, f"ledger record {settlement_to_dict(record)} does not conserve its fee")
        for request_id, request in self.state.requests.items():
            if request.status == SETTLED and request.settlement is not None:
                for provider_id in request.settlement.failed - request.lost:  # R3: an outage forfeits by rule
                    if self.behaviour.get(provider_id, HONEST) == HONEST:
                        self._fail(rule, f"honest provider '{provider_id}' forfeited its slice of '{request_id}'")


def _request_outcome(obs: RequestObservation) -> dict[str, Any]:
    return {"cohort": cohort_to_dict(obs.cohort), "fee": obs.fee, "error": obs.error, "error_layer": obs.error_layer,
            "verdict": chain_verdict_to_dict(obs.verdict), "tokens": list(obs.tokens),
            "steps": [step_to_dict(s) for s in obs.steps]}


def _work_of(request: Any, provider_id: str, cohort: Cohort) -> int:
    """The work a provider served in a request with replacements (current signers, then retired)."""
    current = effective_cohort(cohort, request.replacements, request.steps)
    total = sum(w for a, w in zip(current.assignments, request.work) if a.provider_id == provider_id)
    return total + sum(w for pid, _, w in request.retired if pid == provider_id)
