"""One interface, two systems under test: the pure spec adapter and the real-process implementation.

The harness (``verisplit.conformance.harness``) drives an ``Adapter`` through protocol actions and
compares what it observes with ``verisplit.spec.protocol``. ``SpecAdapter`` is an in-process node
built only from spec functions, with simulated providers whose behaviours mirror the cheat catalogue
(honest, caught by audit, caught by the chain); it is fast and it is what the mutants subclass.
``ImplAdapter`` (``verisplit.conformance.impl_adapter``) drives real provider and lead processes over
loopback; ``make_adapter`` builds either from a JSON-ready config so traces can be replayed.

Invariant of every adapter: observations are reported as the implementation produced them (the
adapter never repairs a commitment, verdict or settlement); only the harness judges them.
"""

from __future__ import annotations

import hashlib
import random
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from nacl.signing import SigningKey

from verisplit.spec import audit as spec_audit
from verisplit.spec.audit import AuditVerdict, Tolerance, judge
from verisplit.spec.cohort import Cohort, ModelSpec, NoCoverage, Offer, form_cohort, quote_fee, segment_work
from verisplit.spec.commitment import (
    BoundaryCommitment,
    ChainVerdict,
    StepContext,
    NO_SEED_COMMITMENT,
    VALID,
    check_link,
    check_receipt,
    sign_commitment,
)
from verisplit.spec.threats import CAUGHT_BY, CHEATS_FROM_STEP  # the threat catalogue's single table
from verisplit.spec.encoding import decode_tensor, digest_encoded, encode_tensor
from verisplit.spec.escrow import EscrowTerms, KeyAccount, cohort_members, settle_escrow
from verisplit.spec.faults import UNAVAILABLE
from verisplit.spec.settlement import Settlement, billable_positions, settle

HONEST = "honest"
SPEC_ESCROW_WINDOW = 3  # the simulated lead holds each key's last 3 payouts
OUTAGE = "outage"  # not a cheat: the provider goes away at its second step (spec/faults.py: an outage)


@dataclass(frozen=True)
class ProviderTemplate:
    """A provider the adapter can offer: name (= provider id), layer range, behaviour.

    ``price`` fixes the offer's price; None lets the harness choose one per offer."""

    name: str
    first_layer: int
    end_layer: int
    behaviour: str = HONEST
    price: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "first_layer": self.first_layer, "end_layer": self.end_layer,
                "behaviour": self.behaviour, "price": self.price}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ProviderTemplate":
        return ProviderTemplate(str(d["name"]), int(d["first_layer"]), int(d["end_layer"]), str(d.get("behaviour", HONEST)),
                                None if d.get("price") is None else int(d["price"]))


@dataclass(frozen=True)
class StepObservation:
    """One step as the lead saw it: the first input's digest, positions, and per link (segment order,
    up to the link where the lead stopped) the commitment received, the digest of the input bytes the
    lead sent and of the output bytes it received."""

    step: int
    first_position: int
    num_positions: int
    first_input_digest: bytes
    commitments: tuple[BoundaryCommitment, ...]
    sent_digests: tuple[bytes, ...]
    received_digests: tuple[bytes, ...]


@dataclass(frozen=True)
class RequestObservation:
    """A request as the implementation ran it. ``error`` is set when it never started (no cohort);
    ``verdict`` is the implementation's own conclusion (valid, or the culprit it named)."""

    request_id: str
    cohort: Cohort | None
    fee: int
    steps: tuple[StepObservation, ...]
    verdict: ChainVerdict
    tokens: tuple[int, ...] = ()
    error: str | None = None
    error_layer: int | None = None
    audit_seed_commitment: bytes = NO_SEED_COMMITMENT  # what the lead signed into the sessions (rule A1)
    outage: str | None = None  # the outage reason when the last step was cut by a provider going away
    replacements: tuple["ReplacementObservation", ...] = ()  # mid-request recovery (spec/recovery.py)


@dataclass(frozen=True)
class Fault:
    """A fault the harness injects into one request: ``kind`` "kill" (the lead's link to the provider
    is cut: a dead stream) or "hang" (the provider is frozen: a missed step deadline), at the provider
    in use for ``segment`` once ``after_tokens`` tokens were generated."""

    kind: str
    segment: int
    after_tokens: int


@dataclass(frozen=True)
class ReplacementObservation:
    """A replacement the implementation made (rules R1-R2): what ``ReplaceProvider`` needs."""

    segment_index: int
    at_step: int
    outage: str
    assignment: Any
    replay: BoundaryCommitment | None
    replay_inputs: tuple[bytes, ...]
    received_digest: bytes


@dataclass(frozen=True)
class OfferResult:
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class RouteResult:
    """The cohort the implementation would form now, or ``no_coverage`` with the first uncovered layer."""

    cohort: Cohort | None
    no_coverage_layer: int | None = None


@dataclass(frozen=True)
class EjectResult:
    accepted: bool
    reason: str = ""


class Adapter(ABC):
    """The system under test, as the harness sees it. One instance is reused across examples;
    ``reset`` returns it to the initial state (no offers, no requests, empty ledger, no bans)."""

    kind: str = "abstract"
    auto_settles: bool = False  # True: the implementation audits and settles each request by itself
    supports_faults: bool = False  # True: ``run_request`` takes ``fault=Fault(...)`` (kill / hang actions)
    model: ModelSpec
    templates: tuple[ProviderTemplate, ...]
    audit_seed: bytes  # the lead's audit secret; each request's seed is request_seed(secret, request_id)
    audit_p: Fraction
    lead_id: str

    def seed_for(self, request_id: str) -> bytes:
        """The audit seed of ``request_id`` (rule A1)."""
        return spec_audit.request_seed(self.audit_seed, request_id)

    def revealed_seed(self, request_id: str) -> bytes | None:
        """The seed the implementation revealed for a finished request (None if it revealed none)."""
        return self.seed_for(request_id)

    # Escrow (rules E1-E5): the terms the implementation runs with, and its escrow book after the last
    # settlement (public key hex -> ``KeyAccount``). The harness replays the spec's ``settle_escrow``
    # over the spec's settlements and compares. Probation stays 0 here (it changes audit selection,
    # which tests/test_franchise_net.py checks on real processes).
    escrow_terms: EscrowTerms | None = None

    def escrow_book(self) -> dict[str, KeyAccount]:
        return {}

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-ready config from which ``make_adapter`` rebuilds an equivalent adapter."""

    @abstractmethod
    def reset(self) -> None:
        """Back to the initial state."""

    @abstractmethod
    def public_key(self, name: str) -> bytes:
        """The Ed25519 public key of template ``name``'s offer."""

    @abstractmethod
    def add_offer(self, template: ProviderTemplate, price: int) -> OfferResult:
        """Register ``template``'s offer at ``price``; the implementation may refuse (banned key...)."""

    @abstractmethod
    def route(self) -> RouteResult:
        """The cohort the implementation's router forms from the standing offers."""

    @abstractmethod
    def run_request(self, request_id: str, prompt_len: int, max_tokens: int, seed: int) -> RequestObservation:
        """Run one request through the cohort formed now (greedy when seed == 0, else seeded sampling)."""

    @abstractmethod
    def audit(self, request_id: str) -> list[AuditVerdict]:
        """Run the verifier over the finished request (selection by commit-reveal) and return its verdicts."""

    @abstractmethod
    def settle(self, request_id: str) -> Settlement:
        """Settle the finished request and return the ledger's record of it."""

    @abstractmethod
    def eject(self, provider_id: str, reason: str) -> EjectResult:
        """Ask the registry to eject ``provider_id`` (it must refuse without evidence)."""

    @abstractmethod
    def registered(self) -> dict[str, Offer]:
        """Provider id -> standing offer, as the registry lists them now."""

    @abstractmethod
    def banned_keys(self) -> frozenset[bytes]:
        """Keys the registry refuses."""

    @abstractmethod
    def ledger(self) -> list[Settlement]:
        """Every settlement record so far, in ledger order."""

    def close(self) -> None:
        """Release processes and files (no-op for in-process adapters)."""

    def request_namespace(self) -> str:
        """Prefix making request ids unique across examples that share long-lived processes."""
        return ""


# --- the spec adapter: simulated providers, a lead built from spec functions ---------------------

HIDDEN = 4
VOCAB = 8
SIM_TOLERANCE = Tolerance("float32", atol=1e-6, rtol=1e-6)
SIM_KEY_DOMAIN = b"verisplit/conformance/sim-key/v1\x00"


def sim_key(name: str) -> SigningKey:
    """Deterministic key of simulated provider ``name``."""
    return SigningKey(hashlib.sha256(SIM_KEY_DOMAIN + name.encode("utf-8")).digest())


def _floats(blob: bytes) -> list[float]:
    frame = decode_tensor(blob)
    return list(struct.unpack(f"<{len(frame.data) // 4}f", frame.data))


def sim_segment(first_layer: int, end_layer: int, num_layers: int, inputs: bytes, num_positions: int) -> bytes:
    """Simulated honest computation of layers [first, end) on canonical ``inputs``: float32 values drawn
    from SHA-256 of (input digest, range, position, element). Deterministic; different ranges or inputs
    give unrelated outputs. The last segment emits ``VOCAB`` logits per position."""
    width = VOCAB if end_layer == num_layers else HIDDEN
    base = digest_encoded(inputs) + struct.pack("<II", first_layer, end_layer)
    values = []
    for position in range(num_positions):
        for j in range(width):
            h = hashlib.sha256(base + struct.pack("<II", position, j)).digest()
            values.append(int.from_bytes(h[:4], "little") / 2**32 - 0.5)
    data = struct.pack(f"<{len(values)}f", *values)
    return encode_tensor("float32", (num_positions, width), data)


def _perturb(blob: bytes, amount: float) -> bytes:
    frame = decode_tensor(blob)
    values = [v + amount for v in _floats(blob)]
    return encode_tensor("float32", frame.shape, struct.pack(f"<{len(values)}f", *values))


def sim_tokens(prompt_len: int, seed: int) -> list[int]:
    rng = random.Random(seed * 7919 + prompt_len)
    return [rng.randrange(VOCAB) for _ in range(prompt_len)]


def next_token(logits: bytes, seed: int, step: int) -> int:
    """Greedy (seed 0) or seeded sampling from the last position's simulated logits."""
    values = _floats(logits)[-VOCAB:]
    if seed == 0:
        return max(range(VOCAB), key=lambda i: (values[i], -i))
    rng = random.Random(seed * 1_000_003 + step)
    weights = [v + 0.5 + 1e-3 for v in values]
    return rng.choices(range(VOCAB), weights=weights)[0]


@dataclass
class _SimRequest:
    """What the simulated lead keeps per request (the boundary tensors, for audits)."""

    cohort: Cohort
    fee: int
    inputs: list[list[bytes]] = field(default_factory=list)     # per step, per accepted link: input bytes
    outputs: list[list[bytes]] = field(default_factory=list)    # per step, per accepted link: committed output bytes
    work: list[int] = field(default_factory=list)
    prices: dict[str, int] = field(default_factory=dict)  # each member's offered price, fixed at the request's start
    failed: set[str] = field(default_factory=set)
    finished: bool = False


class SpecAdapter(Adapter):
    """An in-process node assembled from spec functions, with simulated providers.

    The lead checks every link with ``check_link`` then ``check_receipt`` and aborts at the first
    failure; the router is ``form_cohort``; audits use ``is_audited`` and ``judge`` on a simulated
    re-execution; settlement is ``settle`` over accepted work; failed providers are ejected at once.
    Mutants override single methods to prove the harness can fail.
    """

    kind = "spec"

    def __init__(self, num_layers: int = 4, templates: tuple[ProviderTemplate, ...] | None = None,
                 audit_seed: bytes = b"conformance-audit-seed", audit_p: Fraction = Fraction(2, 3),
                 model_id: str = "sim-llama", layer_work: tuple[int, ...] = ()) -> None:
        self.model = ModelSpec(model_id, num_layers, layer_work)
        self.templates = templates if templates is not None else default_spec_templates(num_layers)
        self.audit_seed = audit_seed
        self.audit_p = audit_p
        self.lead_id = "spec-lead"
        self.reset()

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_layers": self.model.num_layers, "model_id": self.model.model_id,
                "layer_work": list(self.model.layer_work), "audit_seed_hex": self.audit_seed.hex(),
                "audit_p": f"{self.audit_p.numerator}/{self.audit_p.denominator}",
                "templates": [t.to_dict() for t in self.templates]}

    def reset(self) -> None:
        self._offers: dict[str, Offer] = {}
        self._behaviour: dict[str, str] = {}
        self._banned: set[bytes] = set()
        self._requests: dict[str, _SimRequest] = {}
        self._ledger: list[Settlement] = []
        self._failures: set[str] = set()
        self._escrow: dict[str, KeyAccount] = {}
        self.escrow_terms = EscrowTerms(self.audit_p, 0, SPEC_ESCROW_WINDOW)

    def escrow_book(self) -> dict[str, KeyAccount]:
        return dict(self._escrow)

    def public_key(self, name: str) -> bytes:
        return bytes(sim_key(name).verify_key)

    # registry -----------------------------------------------------------------------------------
    def add_offer(self, template: ProviderTemplate, price: int) -> OfferResult:
        key = self.public_key(template.name)
        if key in self._banned:
            return OfferResult(False, "key is banned")
        if template.name in self._offers:
            return OfferResult(False, "already registered")
        self._offers[template.name] = Offer(template.name, key, template.first_layer, template.end_layer, price,
                                            f"sim://{template.name}")
        self._behaviour[template.name] = template.behaviour
        return OfferResult(True)

    def route(self) -> RouteResult:
        try:
            return RouteResult(form_cohort(list(self._offers.values()), self.model))
        except NoCoverage as exc:
            return RouteResult(None, exc.layer)

    def registered(self) -> dict[str, Offer]:
        return dict(self._offers)

    def banned_keys(self) -> frozenset[bytes]:
        return frozenset(self._banned)

    def ledger(self) -> list[Settlement]:
        return list(self._ledger)

    def _eject_now(self, provider_id: str) -> None:
        offer = self._offers.pop(provider_id, None)
        if offer is not None:
            self._banned.add(offer.public_key)

    def eject(self, provider_id: str, reason: str) -> EjectResult:
        if provider_id not in self._offers:
            return EjectResult(False, "not registered")
        if provider_id not in self._failures:
            return EjectResult(False, "no failed audit or chain check")
        self._eject_now(provider_id)
        return EjectResult(True)

    # providers ----------------------------------------------------------------------------------
    def _provider_step(self, provider_id: str, segment_index: int, first: int, end: int, inputs: bytes,
                       context: StepContext, previous_output: bytes | None) -> tuple[BoundaryCommitment, bytes, bytes]:
        """Simulated provider: returns (commitment, committed output bytes, bytes actually sent)."""
        behaviour = self._behaviour.get(provider_id, HONEST)
        out = sim_segment(first, end, self.model.num_layers, inputs, context.num_positions)
        key = sim_key(provider_id)
        cheating = context.step >= CHEATS_FROM_STEP.get(behaviour, 0) and behaviour != HONEST
        if behaviour == "sometimes":
            cheating = context.step % 2 == 1
        sent_override: bytes | None = None
        if cheating:
            if behaviour == "replay" and previous_output is not None:
                frame = decode_tensor(previous_output)
                row = len(frame.data) // frame.shape[0]
                out = encode_tensor("float32", (1,) + frame.shape[1:], frame.data[-row:])
            elif behaviour == "wrong_key":
                key = SigningKey(bytes([7]) * 32)
            elif behaviour == "substitute_output":
                sent_override = _perturb(out, 0.25)
            elif CAUGHT_BY.get(behaviour) == "audit":
                out = _perturb(out, 1e-3)
        unsigned = BoundaryCommitment(context.protocol_version, context.model_id,
                                      hashlib.sha256(f"sim-weights/{first}-{end}".encode()).digest(),
                                      context.request_id, context.step, segment_index, first, end,
                                      context.first_position, context.num_positions, digest_encoded(inputs),
                                      digest_encoded(out), b"\x00" * 32, dtype=context.dtype,
                                      audit_seed_commitment=context.audit_seed_commitment)
        signed = sign_commitment(unsigned, key)
        return signed, out, sent_override if sent_override is not None else out

    # lead ---------------------------------------------------------------------------------------
    def _fee(self, cohort: Cohort, positions: int) -> int:
        return quote_fee(cohort, self.model, list(self._offers.values()), positions)

    def _check(self, cohort: Cohort, index: int, c: BoundaryCommitment, expected_input: bytes, context: StepContext,
               sent_digest: bytes, received_digest: bytes) -> tuple[str, str] | None:
        """The lead's on-receipt check of one link: H1-H3 then H4."""
        failure = check_link(cohort.assignments[index], index, c, expected_input, context)
        if failure is None:
            failure = check_receipt(c, sent_digest, received_digest)
        return failure

    def _blame(self, cohort: Cohort, link: int, reason: str, detail: str) -> ChainVerdict:
        return ChainVerdict(False, link, cohort.assignments[link].provider_id, reason, detail)

    def run_request(self, request_id: str, prompt_len: int, max_tokens: int, seed: int) -> RequestObservation:
        routed = self.route()
        if routed.cohort is None:
            return RequestObservation(request_id, None, 0, (), VALID, error="no_coverage", error_layer=routed.no_coverage_layer)
        cohort = routed.cohort
        fee = self._fee(cohort, billable_positions(prompt_len, max_tokens))
        record = _SimRequest(cohort, fee, work=[0] * len(cohort.assignments),
                             prices={a.provider_id: self._offers[a.provider_id].price_per_work_unit for a in cohort.assignments})
        self._requests[request_id] = record
        tokens = sim_tokens(prompt_len, seed)
        generated: list[int] = []
        steps: list[StepObservation] = []
        verdict = VALID
        outage: str | None = None
        position = 0
        previous_outputs: list[bytes | None] = [None] * len(cohort.assignments)
        for step in range(max_tokens):
            feed = tokens if step == 0 else [generated[-1]]
            context = StepContext(self.model.model_id, request_id, step, position, len(feed),
                                  audit_seed_commitment=spec_audit.seed_commitment(self.seed_for(request_id)))
            first_input = encode_tensor("int64", (len(feed),), struct.pack(f"<{len(feed)}q", *feed))
            blob = first_input
            expected_input = digest_encoded(first_input)
            commitments, sent, received, step_inputs, step_outputs = [], [], [], [], []
            for index, a in enumerate(cohort.assignments):
                if self._behaviour.get(a.provider_id) == OUTAGE and step >= 1:
                    outage = UNAVAILABLE
                    verdict = ChainVerdict(False, index, a.provider_id, UNAVAILABLE, "the provider went away")
                    break
                c, committed, wire = self._provider_step(a.provider_id, index, a.first_layer, a.end_layer, blob, context,
                                                         previous_outputs[index])
                commitments.append(c)
                sent.append(digest_encoded(blob))
                received.append(digest_encoded(wire))
                failure = self._check(cohort, index, c, expected_input, context, sent[-1], received[-1])
                if failure is not None:
                    verdict = self._blame(cohort, index, failure[0], failure[1])
                    break
                step_inputs.append(blob)
                step_outputs.append(committed)
                previous_outputs[index] = committed
                record.work[index] += segment_work(self.model, a.first_layer, a.end_layer) * len(feed)
                expected_input = c.output_digest
                blob = wire
            record.inputs.append(step_inputs)
            record.outputs.append(step_outputs)
            steps.append(StepObservation(step, position, len(feed), digest_encoded(first_input), tuple(commitments),
                                         tuple(sent), tuple(received)))
            if not verdict.valid:
                break
            generated.append(next_token(blob, seed, step))
            position += len(feed)
        record.finished = True
        if not verdict.valid and outage is None:  # an outage blames nobody (spec/faults.py)
            self._fail(record, verdict.culprit or "")
        return RequestObservation(request_id, cohort, fee, tuple(steps), verdict, tuple(generated),
                                  audit_seed_commitment=spec_audit.seed_commitment(self.seed_for(request_id)),
                                  outage=outage)

    def _fail(self, record: _SimRequest, provider_id: str) -> None:
        record.failed.add(provider_id)
        self._failures.add(provider_id)
        self._eject_now(provider_id)

    # verifier -----------------------------------------------------------------------------------
    def audit_segments(self, request_id: str) -> list[int]:
        """Segments the verifier re-executes: selected by ``is_audited``, with accepted work, provider not
        already failed."""
        record = self._requests[request_id]
        chosen = []
        for index, a in enumerate(record.cohort.assignments):
            if record.work[index] > 0 and a.provider_id not in record.failed and spec_audit.is_audited(
                    self.seed_for(request_id), request_id, index, self.audit_p):
                chosen.append(index)
        return chosen

    def _audit_one(self, request_id: str, record: _SimRequest, index: int) -> AuditVerdict:
        a = record.cohort.assignments[index]
        worst = (0.0, 0.0)
        for step_inputs, step_outputs in zip(record.inputs, record.outputs):
            if index >= len(step_inputs):
                continue
            frame = decode_tensor(step_inputs[index])
            expected = sim_segment(a.first_layer, a.end_layer, self.model.num_layers, step_inputs[index], frame.shape[0])
            verdict = judge(_floats(expected), _floats(step_outputs[index]), SIM_TOLERANCE)
            if not verdict.passed:
                return AuditVerdict(request_id, index, a.provider_id, False, verdict.max_abs, verdict.ratio, verdict.reason)
            worst = max(worst, (verdict.ratio, verdict.max_abs))
        return AuditVerdict(request_id, index, a.provider_id, True, worst[1], worst[0])

    def audit(self, request_id: str) -> list[AuditVerdict]:
        record = self._requests[request_id]
        verdicts = [self._audit_one(request_id, record, index) for index in self.audit_segments(request_id)]
        for v in verdicts:
            if not v.passed:
                self._fail(record, v.provider_id)
        return verdicts

    # settlement ---------------------------------------------------------------------------------
    def settle(self, request_id: str) -> Settlement:
        record = self._requests[request_id]
        work_by_provider = {a.provider_id: w for a, w in zip(record.cohort.assignments, record.work)}
        failed = frozenset(record.failed & set(work_by_provider))
        result = settle(record.fee, work_by_provider, record.prices, self.lead_id, failed)  # S0: no value, full refund
        self._ledger.append(result)
        members = cohort_members(record.cohort, record.work, result.payouts, failed)
        self._escrow = settle_escrow(self._escrow, request_id, members, self.escrow_terms).book
        return result


def default_spec_templates(num_layers: int, seed: int = 7) -> tuple[ProviderTemplate, ...]:
    """A seeded catalogue of simulated providers: honest ``h<k>`` providers tiling the model, an honest
    full-range ``hfull``, a few honest providers on random ranges, and one provider per cheat behaviour
    on one of the tiling's segments (so a cheaper cheater can displace an honest provider)."""
    rng = random.Random(seed)
    templates: list[ProviderTemplate] = []
    cuts = sorted({0, num_layers, *rng.sample(range(1, num_layers), min(2, num_layers - 1))})
    segments = [(cuts[k], cuts[k + 1]) for k in range(len(cuts) - 1)]
    for k, (first, end) in enumerate(segments):
        templates.append(ProviderTemplate(f"h{k}", first, end))
    templates.append(ProviderTemplate("hfull", 0, num_layers))
    for k in range(2):
        first = rng.randrange(num_layers)
        templates.append(ProviderTemplate(f"hx{k}", first, rng.randint(first + 1, num_layers)))
    for behaviour in CAUGHT_BY:
        first, end = rng.choice(segments + [(0, num_layers)])
        templates.append(ProviderTemplate(f"c-{behaviour}", first, end, behaviour))
    first, end = rng.choice(segments)
    templates.append(ProviderTemplate("o-outage", first, end, OUTAGE))  # goes away mid-request: blames nobody
    return tuple(templates)


def make_adapter(config: dict[str, Any], **overrides: Any) -> Adapter:
    """Rebuild an adapter from ``Adapter.config()`` output (``overrides`` replace config keys)."""
    config = {**config, **overrides}
    kind = config.get("kind")
    if kind == "spec":
        num, den = str(config.get("audit_p", "2/3")).split("/")
        templates = tuple(ProviderTemplate.from_dict(t) for t in config["templates"]) if config.get("templates") else None
        return SpecAdapter(int(config.get("num_layers", 4)), templates, bytes.fromhex(config.get("audit_seed_hex", "")) or b"conformance-audit-seed",
                           Fraction(int(num), int(den)), str(config.get("model_id", "sim-llama")), tuple(config.get("layer_work", ())))
    if kind == "impl":
        from verisplit.conformance.impl_adapter import ImplAdapter

        return ImplAdapter.from_config(config)
    raise ValueError(f"adapter config: unknown kind {kind!r} (expected 'spec' or 'impl')")
