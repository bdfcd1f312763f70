"""The protocol as a state machine: ``apply(state, event) -> state`` or ``IllegalTransition``.

The conformance harness replays real traces through ``apply``; any event the rules forbid is
rejected with a reason, so an implementation that, say, ejects an honest provider or pays a failed
one diverges from the spec at that exact event.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence, Union

from verisplit.spec.audit import AuditVerdict, Registry, commitment_fresh, eject, reveal_valid
from verisplit.spec.cohort import (Assignment, Cohort, InvalidModel, ModelSpec, NoCoverage, Offer, form_cohort,
                                   segment_work, validate_offer)
from verisplit.spec.commitment import (MISSING_LINK, NO_SEED_COMMITMENT, BoundaryCommitment, ChainVerdict, InvalidChainInput,
                                       StepContext, check_exchanged_chain)
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import is_outage
from verisplit.spec.recovery import (RecoveryInputError, check_replay, choose_replacement, effective_cohort, replay_pinned)
from verisplit.spec.settlement import Settlement, settle

OPEN, ABORTED, COMPLETED, SETTLED = "open", "aborted", "completed", "settled"


class IllegalTransition(ValueError):
    """An event the protocol forbids in the current state; the message says why."""


@dataclass(frozen=True)
class RequestState:
    """One request's progress: accepted steps, work served per segment, failures and audits.

    ``prices[k]`` is the price per work unit that segment k's provider offered when the request was
    opened (fixed for the request's life: settlement pays ``prices[k] * work[k]``, rule S0)."""

    request_id: str
    cohort_id: str
    fee: int
    status: str = OPEN
    steps: int = 0
    positions: int = 0
    work: tuple[int, ...] = ()
    prices: tuple[int, ...] = ()
    failed: frozenset[str] = frozenset()
    chain_verdicts: tuple[ChainVerdict, ...] = ()
    audits: tuple[AuditVerdict, ...] = ()
    settlement: Settlement | None = None
    seed_commitment: bytes = NO_SEED_COMMITMENT
    seed: bytes | None = None
    # Recovery (spec/recovery.py): replacements (segment, at_step, assignment) in order; providers lost
    # to an outage (their slice forfeited, rule R3, never ejected); the work each lost or failed
    # replacement had served, at its price, as (provider_id, price, work); and per accepted step the
    # committed input digest of every link (what a replay must be pinned to, rule R2).
    replacements: tuple[tuple[int, int, Assignment], ...] = ()
    lost: frozenset[str] = frozenset()
    retired: tuple[tuple[str, int, int], ...] = ()
    input_digests: tuple[tuple[bytes, ...], ...] = ()


@dataclass(frozen=True)
class State:
    """Everything the lead, registry, verifier and ledger must agree on."""

    model: ModelSpec
    registry: Registry = field(default_factory=Registry)
    cohorts: Mapping[str, Cohort] = field(default_factory=dict)
    requests: Mapping[str, RequestState] = field(default_factory=dict)
    ledger: tuple[Settlement, ...] = ()
    revealed: frozenset[bytes] = frozenset()  # seed commitments already opened (rule A1: never reused)
    dtype: str = "float32"  # the cohort's compute dtype every commitment must declare (rule H2)


@dataclass(frozen=True)
class AddOffer:
    offer: Offer


@dataclass(frozen=True)
class FormCohort:
    """Form a cohort from the standing offers; ``chosen`` (if given) must equal the spec's choice."""

    cohort_id: str
    chosen: Cohort | None = None


@dataclass(frozen=True)
class OpenRequest:
    request_id: str
    cohort_id: str
    fee: int
    seed_commitment: bytes = NO_SEED_COMMITMENT


@dataclass(frozen=True)
class CommitStep:
    """One step's commitments as received by the lead, with the digest of the first input it sent.

    ``sent_digests[k]`` / ``received_digests[k]`` are the digests of the bytes the lead sent to and got
    from link k (rule H4 is checked on every link they cover); ``outage`` is the spec's outage reason
    (``spec/faults.py``) when the step was cut because a provider went away without breaking a signed
    rule: then the links before it earn their work and nobody is failed."""

    request_id: str
    first_input_digest: bytes
    num_positions: int
    commitments: tuple[BoundaryCommitment, ...]
    sent_digests: tuple[bytes, ...] = ()
    received_digests: tuple[bytes, ...] = ()
    outage: str | None = None


@dataclass(frozen=True)
class ReplaceProvider:
    """Segment ``segment_index`` of an open request lost its provider to ``outage`` before step
    ``request.steps``; ``chosen`` is the lead's replacement (it must be the spec's, rule R1). Unless the
    request is at position 0, ``replay`` is the replacement's signed replay (rule R2) over
    ``replay_inputs`` (the bytes the lost segment received at every earlier step, in order) with the
    digest of the output it returned in ``received_digest``."""

    request_id: str
    segment_index: int
    outage: str
    chosen: Assignment
    replay: BoundaryCommitment | None = None
    replay_inputs: tuple[bytes, ...] = ()
    received_digest: bytes = bytes(32)


@dataclass(frozen=True)
class CompleteRequest:
    request_id: str


@dataclass(frozen=True)
class RecordAudit:
    verdict: AuditVerdict


@dataclass(frozen=True)
class SettleRequest:
    """Settle a finished request; ``claimed`` (if given) must equal the spec's settlement."""

    request_id: str
    lead: str
    claimed: Settlement | None = None


@dataclass(frozen=True)
class RevealSeed:
    """The lead reveals a finished request's audit seed (rule A1): it must open the commitment the
    request was opened with, and only once the request is completed, aborted or settled."""

    request_id: str
    seed: bytes


@dataclass(frozen=True)
class Eject:
    provider_id: str
    reason: str


Event = Union[AddOffer, FormCohort, OpenRequest, CommitStep, ReplaceProvider, CompleteRequest, RecordAudit, SettleRequest,
              RevealSeed, Eject]


def initial_state(model: ModelSpec) -> State:
    """A registry with no offers, no cohorts, no requests and an empty ledger.
    ``InvalidModel`` if ``model`` is not a ``ModelSpec``."""
    if not isinstance(model, ModelSpec):
        raise InvalidModel(f"model: must be a ModelSpec, got {type(model).__name__}")
    return State(model=model)


def _request(state: State, request_id: str) -> RequestState:
    if request_id not in state.requests:
        raise IllegalTransition(f"unknown request '{request_id}'")
    return state.requests[request_id]


def _with_request(state: State, request: RequestState) -> State:
    requests = dict(state.requests)
    requests[request.request_id] = request
    return replace(state, requests=requests)


def _add_offer(state: State, event: AddOffer) -> State:
    offer = event.offer
    try:
        validate_offer(offer)
    except ValueError as exc:
        raise IllegalTransition(str(exc)) from None
    if offer.public_key in state.registry.banned_keys:
        raise IllegalTransition(f"provider '{offer.provider_id}': key is banned")
    if offer.provider_id in state.registry.banned_ids:
        raise IllegalTransition(f"provider '{offer.provider_id}': id is banned (it was ejected under it)")
    if offer.provider_id in state.registry.provider_ids():
        raise IllegalTransition(f"provider '{offer.provider_id}' already has an offer")
    if any(o.public_key == offer.public_key for o in state.registry.offers):
        raise IllegalTransition(f"provider '{offer.provider_id}': its key already holds an offer (rule C3 is on keys)")
    return replace(state, registry=replace(state.registry, offers=state.registry.offers + (offer,)))


def _form_cohort(state: State, event: FormCohort) -> State:
    if event.chosen is not None and not isinstance(event.chosen, Cohort):
        raise IllegalTransition(f"chosen: must be a Cohort or None, got {type(event.chosen).__name__}")
    if event.cohort_id in state.cohorts:
        raise IllegalTransition(f"cohort '{event.cohort_id}' already exists")
    try:
        cohort = form_cohort(state.registry.offers, state.model)
    except NoCoverage as exc:
        raise IllegalTransition(f"no cohort: {exc}") from None
    if event.chosen is not None and event.chosen != cohort:
        raise IllegalTransition(f"cohort {event.chosen.provider_ids} is not the spec's choice {cohort.provider_ids}")
    cohorts = dict(state.cohorts)
    cohorts[event.cohort_id] = cohort
    return replace(state, cohorts=cohorts)


def _open_request(state: State, event: OpenRequest) -> State:
    if event.request_id in state.requests:
        raise IllegalTransition(f"request '{event.request_id}' already exists")
    if event.cohort_id not in state.cohorts:
        raise IllegalTransition(f"unknown cohort '{event.cohort_id}'")
    if isinstance(event.fee, bool) or not isinstance(event.fee, int) or event.fee < 0:
        raise IllegalTransition(f"fee: must be a non-negative integer, got {event.fee!r}")
    cohort = state.cohorts[event.cohort_id]
    offers = {offer.provider_id: offer for offer in state.registry.offers}
    prices: list[int] = []
    for assignment in cohort.assignments:
        if assignment.provider_id not in offers:
            raise IllegalTransition(f"cohort member '{assignment.provider_id}' is no longer registered")
        prices.append(offers[assignment.provider_id].price_per_work_unit)
    if not isinstance(event.seed_commitment, bytes) or len(event.seed_commitment) != 32:
        raise IllegalTransition(f"seed_commitment: must be 32 bytes, got {event.seed_commitment!r:.40}")
    if not commitment_fresh(state.revealed, event.seed_commitment):
        raise IllegalTransition("seed_commitment: its seed was already revealed; a revealed seed is never used again")
    request = RequestState(event.request_id, event.cohort_id, event.fee, work=tuple(0 for _ in cohort.assignments),
                           prices=tuple(prices), seed_commitment=event.seed_commitment)
    return _with_request(state, request)


def _commit_step(state: State, event: CommitStep) -> State:
    request = _request(state, event.request_id)
    if request.status != OPEN:
        raise IllegalTransition(f"request '{request.request_id}' is {request.status}, not open")
    if isinstance(event.num_positions, bool) or not isinstance(event.num_positions, int) or event.num_positions < 1:
        raise IllegalTransition(f"num_positions: a step covers at least one position, got {event.num_positions!r}")
    cohort = effective_cohort(state.cohorts[request.cohort_id], request.replacements, request.steps)
    context = StepContext(state.model.model_id, request.request_id, request.steps, request.positions, event.num_positions,
                          dtype=state.dtype, audit_seed_commitment=request.seed_commitment)
    if event.outage is not None and not is_outage(event.outage):
        raise IllegalTransition(f"outage: {event.outage!r} is not an outage reason (spec/faults.py)")
    try:
        verdict = check_exchanged_chain(cohort, event.commitments, event.first_input_digest, event.sent_digests,
                                        event.received_digests, context)
    except InvalidChainInput as exc:
        raise IllegalTransition(str(exc)) from None
    good_links = len(cohort.assignments) if verdict.valid else verdict.link or 0
    cut_by_outage = (event.outage is not None and not verdict.valid and verdict.reason == MISSING_LINK
                     and verdict.link == len(event.commitments))
    work = list(request.work)
    for index in range(good_links):
        a = cohort.assignments[index]
        work[index] += segment_work(state.model, a.first_layer, a.end_layer) * event.num_positions
    updated = replace(request, work=tuple(work), chain_verdicts=request.chain_verdicts + (verdict,))
    if verdict.valid:
        updated = replace(updated, steps=request.steps + 1, positions=request.positions + event.num_positions,
                          input_digests=request.input_digests + (tuple(c.input_digest for c in event.commitments),))
    elif verdict.culprit is None or cut_by_outage:
        # An extra commitment no cohort member validly signed, or a step cut by an outage (the missing
        # link's provider went away without breaking a signed rule): the step is broken, but no
        # provider is provably at fault, so the request aborts and nobody is marked failed or ejected.
        updated = replace(updated, status=ABORTED)
    else:
        updated = replace(updated, status=ABORTED, failed=request.failed | {verdict.culprit})
    return _with_request(state, updated)


def _replace_provider(state: State, event: ReplaceProvider) -> State:
    """Rules R1-R2 (spec/recovery.py): the replacement must be the spec's choice; its replay must be
    pinned to the committed inputs and pass H1-H4; then the lost provider's work so far is retired
    (forfeited at settlement, R3) and the segment's work restarts with the replay's."""
    request = _request(state, event.request_id)
    if request.status != OPEN:
        raise IllegalTransition(f"request '{request.request_id}' is {request.status}, not open")
    if not is_outage(event.outage):
        raise IllegalTransition(f"outage: {event.outage!r} is not an outage reason: a protocol failure is never recovered")
    base = state.cohorts[request.cohort_id]
    current = effective_cohort(base, request.replacements, request.steps)
    k = event.segment_index
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(current.assignments):
        raise IllegalTransition(f"segment_index: {k!r} is not a segment of the cohort")
    lost = current.assignments[k]
    excluded_ids = set(current.provider_ids) | set(base.provider_ids) | set(request.lost)
    excluded_keys = {a.public_key for a in current.assignments} | {a.public_key for a in base.assignments}
    choice = choose_replacement(state.registry.offers, lost, excluded_ids, excluded_keys)
    if choice is None or event.chosen != choice:
        raise IllegalTransition(f"chosen: {event.chosen!r} is not the spec's replacement {choice!r} (rule R1)")
    price = next(o.price_per_work_unit for o in state.registry.offers if o.provider_id == choice.provider_id)
    units = segment_work(state.model, choice.first_layer, choice.end_layer)
    at = StepContext(state.model.model_id, request.request_id, request.steps, request.positions, 1, dtype=state.dtype,
                     audit_seed_commitment=request.seed_commitment)
    work = list(request.work)
    prices = list(request.prices)
    retired = request.retired + ((lost.provider_id, prices[k], work[k]),)
    if request.positions > 0:
        committed = [digests[k] for digests in request.input_digests]
        recorded = [digest_encoded(blob) for blob in event.replay_inputs]
        if not replay_pinned(committed, recorded) or event.replay is None:
            raise IllegalTransition("replay_inputs: not the inputs the lost segment committed to (rule R2)")
        try:
            failure = check_replay(choice, k, event.replay, event.replay_inputs, digest_encoded(replay_input_of(event)),
                                   event.received_digest, at)
        except RecoveryInputError as exc:
            raise IllegalTransition(str(exc)) from None
        if failure is not None:  # the replacement broke a signed rule: a culprit, the request aborts
            return _with_request(state, replace(request, status=ABORTED, failed=request.failed | {choice.provider_id},
                                                retired=request.retired + ((choice.provider_id, price, 0),),
                                                lost=request.lost | {lost.provider_id}))
    work[k] = units * request.positions  # the replay (rule R3: the replacement is paid for it)
    prices[k] = price
    updated = replace(request, work=tuple(work), prices=tuple(prices), retired=retired,
                      replacements=request.replacements + ((k, request.steps, choice),),
                      lost=request.lost | {lost.provider_id})
    return _with_request(state, updated)


def replay_input_of(event: ReplaceProvider) -> bytes:
    """The bytes a replay must consume: ``replay_input`` of the event's recorded inputs (rule R2)."""
    from verisplit.spec.recovery import replay_input

    return replay_input(event.replay_inputs)


def _complete(state: State, event: CompleteRequest) -> State:
    request = _request(state, event.request_id)
    if request.status != OPEN or request.steps == 0:
        raise IllegalTransition(f"request '{request.request_id}' cannot complete ({request.status}, {request.steps} steps)")
    return _with_request(state, replace(request, status=COMPLETED))


def _record_audit(state: State, event: RecordAudit) -> State:
    verdict = event.verdict
    if not isinstance(verdict, AuditVerdict):
        raise IllegalTransition(f"verdict: must be an AuditVerdict, got {type(verdict).__name__}")
    if isinstance(verdict.segment_index, bool) or not isinstance(verdict.segment_index, int):
        raise IllegalTransition(f"verdict.segment_index: must be an integer, got {verdict.segment_index!r}")
    if not isinstance(verdict.passed, bool):
        raise IllegalTransition(f"verdict.passed: must be a bool, got {verdict.passed!r}")
    for name in ("request_id", "provider_id", "reason"):
        if not isinstance(getattr(verdict, name), str):
            raise IllegalTransition(f"verdict.{name}: must be a string, got {getattr(verdict, name)!r}")
    request = _request(state, verdict.request_id)
    if request.status not in (COMPLETED, ABORTED):
        raise IllegalTransition(f"request '{request.request_id}' is {request.status}: audits follow completion")
    cohort = state.cohorts[request.cohort_id]
    if not 0 <= verdict.segment_index < len(cohort.assignments):
        raise IllegalTransition(f"segment {verdict.segment_index} is not in the cohort")
    signers = {cohort.assignments[verdict.segment_index].provider_id}
    signers |= {a.provider_id for index, _, a in request.replacements if index == verdict.segment_index}
    if verdict.provider_id not in signers:
        raise IllegalTransition(f"segment {verdict.segment_index} was not served by '{verdict.provider_id}'")
    if any((a.segment_index, a.provider_id) == (verdict.segment_index, verdict.provider_id) for a in request.audits):
        raise IllegalTransition(f"segment {verdict.segment_index} of '{request.request_id}' already audited")
    failed = request.failed if verdict.passed else request.failed | {verdict.provider_id}
    return _with_request(state, replace(request, audits=request.audits + (verdict,), failed=failed))


def expected_settlement(state: State, request: RequestState, lead: str) -> Settlement:
    """The spec's settlement of a finished request: ``settle`` over the work served, at the prices
    fixed when the request was opened, failed providers forfeiting. If nothing of value was served
    (no work, or only zero-price work) the whole fee is refunded (rule S0)."""
    cohort = effective_cohort(state.cohorts[request.cohort_id], request.replacements, request.steps)
    work_by_provider = {a.provider_id: w for a, w in zip(cohort.assignments, request.work)}
    price_by_provider = {a.provider_id: p for a, p in zip(cohort.assignments, request.prices)}
    for provider_id, price, work in request.retired:  # lost (R3) or failed replacements: their own entry
        work_by_provider[provider_id] = work_by_provider.get(provider_id, 0) + work
        price_by_provider[provider_id] = price
    failed = frozenset(p for p in request.failed | request.lost if p in work_by_provider)
    return settle(request.fee, work_by_provider, price_by_provider, lead, failed)


def _settle(state: State, event: SettleRequest) -> State:
    request = _request(state, event.request_id)
    if request.status not in (COMPLETED, ABORTED):
        raise IllegalTransition(f"request '{request.request_id}' is {request.status}: only finished requests settle")
    settlement = expected_settlement(state, request, event.lead)
    if event.claimed is not None and event.claimed != settlement:
        raise IllegalTransition(f"claimed settlement {event.claimed} differs from the spec's {settlement}")
    updated = replace(request, status=SETTLED, settlement=settlement)
    return replace(_with_request(state, updated), ledger=state.ledger + (settlement,))


def _reveal_seed(state: State, event: RevealSeed) -> State:
    request = _request(state, event.request_id)
    if request.status == OPEN:
        raise IllegalTransition(f"request '{request.request_id}' is open: its seed is revealed only once its chain is final")
    if request.seed is not None:
        raise IllegalTransition(f"request '{request.request_id}': its seed was already revealed")
    if request.seed_commitment == NO_SEED_COMMITMENT:
        raise IllegalTransition(f"request '{request.request_id}' was opened without an audit-seed commitment")
    if not isinstance(event.seed, bytes) or not reveal_valid(request.seed_commitment, event.seed):
        raise IllegalTransition(f"seed: does not open the commitment request '{request.request_id}' was opened with")
    updated = _with_request(state, replace(request, seed=event.seed))
    return replace(updated, revealed=state.revealed | {request.seed_commitment})


def _eject(state: State, event: Eject) -> State:
    if not isinstance(event.provider_id, str) or not isinstance(event.reason, str):
        raise IllegalTransition("provider_id, reason: must be strings")
    if event.provider_id not in state.registry.provider_ids():
        raise IllegalTransition(f"provider '{event.provider_id}' is not registered")
    has_evidence = any(event.provider_id in r.failed for r in state.requests.values())
    if not has_evidence:
        raise IllegalTransition(f"provider '{event.provider_id}' has no failed audit or chain check: ejection refused")
    verdict = AuditVerdict("", -1, event.provider_id, False, reason=event.reason)
    return replace(state, registry=eject(state.registry, [verdict]))


_HANDLERS = {
    AddOffer: _add_offer,
    FormCohort: _form_cohort,
    OpenRequest: _open_request,
    CommitStep: _commit_step,
    ReplaceProvider: _replace_provider,
    CompleteRequest: _complete,
    RecordAudit: _record_audit,
    SettleRequest: _settle,
    RevealSeed: _reveal_seed,
    Eject: _eject,
}


# Identifier fields every event of the type must carry as a str (checked before dispatch).
_TEXT_FIELDS: dict[type, tuple[str, ...]] = {
    FormCohort: ("cohort_id",),
    OpenRequest: ("request_id", "cohort_id"),
    CommitStep: ("request_id",),
    ReplaceProvider: ("request_id", "outage"),
    CompleteRequest: ("request_id",),
    SettleRequest: ("request_id",),
}


def apply(state: State, event: Event) -> State:
    """The next state, or ``IllegalTransition`` naming the broken rule or the ill-typed field (an event
    of an unknown type, a non-str id, a non-int fee or position count, commitments that are not a
    list of ``BoundaryCommitment``, ...). ``state`` is never mutated; it must be a ``State``."""
    if not isinstance(state, State):
        raise IllegalTransition(f"state: must be a State, got {type(state).__name__}")
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise IllegalTransition(f"unknown event type {type(event).__name__}")
    for name in _TEXT_FIELDS.get(type(event), ()):
        if not isinstance(getattr(event, name), str):
            raise IllegalTransition(f"{name}: must be a string, got {getattr(event, name)!r}")
    return handler(state, event)


def replay(model: ModelSpec, events: Sequence[Event]) -> State:
    """Apply events in order from the initial state (raises at the first illegal one).
    ``InvalidModel`` for a bad model; ``IllegalTransition`` if ``events`` is not a list or tuple."""
    state = initial_state(model)
    if not isinstance(events, (list, tuple)):
        raise IllegalTransition(f"events: must be a list or tuple of events, got {type(events).__name__}")
    for event in events:
        state = apply(state, event)
    return state
