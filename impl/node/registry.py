"""The lead's registry: verified signed offers, heartbeat expiry and banned keys, and its gRPC face.

Invariant: ``Registry.offers()`` lists only offers whose signature verified, whose key is not banned,
that match the model and the protocol version, and whose provider was heard from within the offer TTL.
With an ``AdmissionPolicy`` (every ``lead serve``), also: the offer names this lead's key and a fresh
single-use nonce this registry issued for that key, it had not expired when listed, its key is
admitted (allowlist), the lead reached its endpoint and the provider there proved it holds the key;
a provider id stays bound to the first key that proved itself under it (``probe_passed``; an unproven
offer binds nothing and its first failed probe drops it); heartbeat counters only go up per key (across
re-registrations; persisted once proven); at most ``max_unproven`` offers await a proof; a suspension
survives re-registration (docs/protocol.md, "Admission").
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.admission import AdmissionPolicy, NonceTable, RegistryError, load_state, locked, save_state
from verisplit.impl.node.framing import parse_endpoint
from verisplit.impl.node.framing import offer_fields_from_pb
from verisplit.impl.records.keys import SignedFields, fingerprint, heartbeat_signature_valid, offer_signature_valid
from verisplit.spec.cohort import InvalidOffer, ModelSpec, Offer, validate_offer
from verisplit.spec.commitment import PROTOCOL_VERSION

log = logging.getLogger("verisplit.lead")


__all__ = ["RegisteredOffer", "Registry", "RegistryError", "RegistryService"]


@dataclass
class RegisteredOffer:
    """A verified offer and when the lead last heard from its provider."""

    fields: SignedFields
    signature: bytes
    last_seen: float
    last_heartbeat_ms: int = 0
    suspended: str | None = None  # why the lead stopped routing to it (an outage), until it is healthy again
    outages: int = 0              # outages the lead saw from this provider since it was listed
    proven: bool = True           # the lead reached the endpoint and the key's holder answered there
    outage_times: tuple[float, ...] = ()  # clock times of recent outages (demotion window)
    counter: int = 0              # highest heartbeat counter of this listing (bound to the key once proven)

    @property
    def offer(self) -> Offer:
        f = self.fields
        return Offer(f.provider_id, f.public_key, f.first_layer, f.end_layer, f.price_per_work_unit, f.endpoint)


class Registry:
    """Signed offers for one model, heartbeat expiry and banned keys.

    Invariant: ``offers()`` lists only offers whose signature verified, whose key is not banned, that
    match the model, and whose provider was heard from within ``offer_ttl_s``. Every method touching
    ``_entries`` and the maps beside it holds ``_lock`` (thread-safe: routing runs off the event loop).
    """

    def __init__(self, model: ModelSpec, *, heartbeat_interval_s: float = 1.0, offer_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, dtype: str = "float32",
                 lead_public_key: bytes = bytes(32), admission: AdmissionPolicy | None = None,
                 state_path: Path | None = None, wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.model = model
        self.dtype = dtype  # the compute dtype this lead verifies; offers in another are refused
        self.lead_public_key = lead_public_key  # returned to registering providers (signs session openings)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.offer_ttl_s = offer_ttl_s
        self.clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, RegisteredOffer] = {}
        self._banned: dict[bytes, str] = {}
        self._banned_ids: dict[str, str] = {}  # ids a key was ejected under stay banned (rule A4)
        self.admission = admission
        # outages before a demotion; None: the admission policy's (``demote_after``), default 3
        self.demote_after: int | None = None
        self.wall_ms = wall_ms
        self.on_register: Callable[[str], Awaitable[None]] | None = None  # set by the lead: the possession probe
        policy = admission or AdmissionPolicy()
        self._nonces = NonceTable(policy.nonce_ttl_s, policy.nonces_per_key, policy.max_nonces)
        self._id_keys: dict[str, bytes] = {}   # provider id -> the first key that proved itself under it
        self._counters: dict[bytes, int] = {}  # proven key -> highest heartbeat counter seen (offers included)
        self._held: dict[bytes, tuple[str | None, int, tuple[float, ...]]] = {}  # key -> suspension kept
        self.state_path = state_path
        self._load_state()

    def _load_state(self) -> None:
        if self.state_path is not None:
            self._id_keys, self._counters = load_state(self.state_path)

    def _save_state(self) -> None:
        if self.state_path is not None:
            save_state(self.state_path, self._id_keys, self._counters)

    # --- admission ----------------------------------------------------------------------------
    @locked
    def challenge(self, public_key: bytes) -> bytes:
        """A fresh single-use 32-byte nonce for an offer under ``public_key`` (valid ``nonce_ttl_s``)."""
        if len(public_key) != 32:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, "public_key: must be 32 bytes")
        policy = self.admission or AdmissionPolicy()
        if policy.allowlist is not None and public_key not in policy.allowlist:
            raise RegistryError(grpc.StatusCode.PERMISSION_DENIED, f"public_key: {fingerprint(public_key)} is not admitted")
        return self._nonces.issue(public_key, self.clock())

    def _admit(self, fields: SignedFields) -> None:
        """The admission checks of ``register`` (policy set): allowlist, lead binding, nonce, expiry,
        counter. Consumes the nonce only when every other check passed."""
        policy = self.admission
        assert policy is not None
        if policy.allowlist is not None and fields.public_key not in policy.allowlist:
            raise RegistryError(grpc.StatusCode.PERMISSION_DENIED,
                                f"public_key: {fingerprint(fields.public_key)} is not admitted by this lead's allowlist")
        if fields.lead_public_key != self.lead_public_key:
            raise RegistryError(grpc.StatusCode.PERMISSION_DENIED, "lead_public_key: the offer is for another lead")
        now_ms = self.wall_ms()
        if fields.expires_at_ms <= now_ms:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "expires_at_ms: the offer has expired")
        if fields.expires_at_ms > now_ms + policy.max_offer_lifetime_ms:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"expires_at_ms: more than {policy.max_offer_lifetime_ms} ms ahead")
        if not self._nonces.valid(fields.nonce, fields.public_key, self.clock()):
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                "nonce: unknown, used or expired (ask Admission.Challenge for a fresh one)")
        existing = self._entries.get(fields.provider_id)
        last = max(self._counters.get(fields.public_key, -1),
                   existing.counter if existing is not None and existing.fields.public_key == fields.public_key else -1)
        if fields.heartbeat_counter <= last:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                "heartbeat_counter: not above the last one seen for this key (replay?)")
        unproven = sum(1 for e in self._entries.values() if not e.proven)
        if unproven >= policy.max_unproven and (existing is None or existing.fields.public_key != fields.public_key):
            raise RegistryError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"offer: {unproven} offers already await their possession proof; try again later")
        self._nonces.remove(fields.nonce)

    @locked
    def register(self, fields: SignedFields, signature: bytes) -> None:
        """Verify and list an offer (replacing the provider's older one); refusals raise ``RegistryError``."""
        who = f"offer from {fields.provider_id!r}"
        if not offer_signature_valid(fields, signature):
            raise RegistryError(grpc.StatusCode.UNAUTHENTICATED, f"signature: {who} does not verify under its public_key")
        if fields.public_key in self._banned:
            raise RegistryError(grpc.StatusCode.PERMISSION_DENIED,
                                f"public_key: {fingerprint(fields.public_key)} is banned ({self._banned[fields.public_key]})")
        if fields.provider_id in self._banned_ids:
            raise RegistryError(grpc.StatusCode.PERMISSION_DENIED,
                                f"provider_id: {fields.provider_id!r} is banned ({self._banned_ids[fields.provider_id]})")
        if fields.protocol_version != PROTOCOL_VERSION:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"protocol_version: {who} speaks {fields.protocol_version}, the lead speaks {PROTOCOL_VERSION}")
        if fields.model_id != self.model.model_id:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model_id: {who} serves {fields.model_id!r}, the lead serves {self.model.model_id!r}")
        if fields.num_layers != self.model.num_layers or fields.end_layer > self.model.num_layers:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"num_layers: {who} claims layers [{fields.first_layer}, {fields.end_layer}) of "
                                f"{fields.num_layers}, the model has {self.model.num_layers}")
        if fields.dtype != self.dtype:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"dtype: {who} runs {fields.dtype or 'an unnamed dtype'}, this lead verifies {self.dtype}")
        if len(fields.provider_id.encode()) > 128:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, "provider_id: longer than 128 bytes")
        try:
            validate_offer(fields_to_offer(fields))
            parse_endpoint(fields.endpoint)
        except (InvalidOffer, ValueError) as exc:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._expire()
        same_key = [p for p, e in self._entries.items() if e.fields.public_key == fields.public_key and p != fields.provider_id]
        if same_key:  # rule C3 is on keys: one key cannot hold two offers (and so two segments of a cohort)
            raise RegistryError(grpc.StatusCode.ALREADY_EXISTS,
                                f"public_key: {fingerprint(fields.public_key)} already offers as {same_key[0]!r}")
        existing = self._entries.get(fields.provider_id)
        bound = self._id_keys.get(fields.provider_id)
        if existing is not None and existing.fields.public_key != fields.public_key and not existing.proven:
            existing = None  # an unproven listing under another key holds no id: the new offer replaces it
        if (existing is not None and existing.fields.public_key != fields.public_key) or \
                (bound is not None and bound != fields.public_key):
            raise RegistryError(grpc.StatusCode.ALREADY_EXISTS,
                                f"provider_id: {fields.provider_id!r} is registered with another key")
        if existing is not None and fields.issued_at_ms < existing.fields.issued_at_ms:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"issued_at_ms: {who} is older than the offer already listed (replay?)")
        if self.admission is not None:
            self._admit(fields)
        held = self._held.pop(fields.public_key, None)
        if existing is not None:
            held = (existing.suspended, existing.outages, existing.outage_times)
        entry = RegisteredOffer(fields, signature, self.clock(), proven=self.admission is None,
                                counter=fields.heartbeat_counter)
        if held is not None:  # re-registering never clears a suspension or the outage history
            entry.suspended, entry.outages, entry.outage_times = held
        self._entries[fields.provider_id] = entry
        if self.admission is None and bound is None:  # open, unprobed registry: bound at first registration
            self._id_keys[fields.provider_id] = fields.public_key

    @locked
    def heartbeat(self, provider_id: str, sent_at_ms: int, leaving: bool, signature: bytes, counter: int = 0) -> bool:
        """Refresh (or, when ``leaving``, remove) a listed offer; False if the provider is not listed.
        With admission, ``counter`` must exceed every counter seen for the key (offers included, across
        re-registrations), for a "leaving" heartbeat too; without, ``sent_at_ms`` may not go back."""
        self._expire()
        entry = self._entries.get(provider_id)
        if entry is None:
            return False
        key = entry.fields.public_key
        if not heartbeat_signature_valid(key, provider_id, sent_at_ms, leaving, signature, counter):
            raise RegistryError(grpc.StatusCode.UNAUTHENTICATED, f"signature: heartbeat for {provider_id!r} does not verify")
        if self.admission is not None:
            if counter <= max(self._counters.get(key, 0), entry.counter):
                raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                    "counter: not above the last heartbeat counter of this key (replay?)")
            entry.counter = counter
            if entry.proven:
                self._counters[key] = counter
        elif sent_at_ms < entry.last_heartbeat_ms:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "sent_at_ms: older than the last heartbeat (replay?)")
        entry.last_heartbeat_ms = sent_at_ms
        if leaving:
            self._forget(provider_id)
            if entry.proven:
                self._save_state()
            return True
        entry.last_seen = self.clock()
        return True

    def _forget(self, provider_id: str) -> None:
        """Drop a listing, keeping its key's suspension and outage history for a re-registration."""
        entry = self._entries.pop(provider_id)
        if entry.suspended is not None or entry.outage_times:
            self._held[entry.fields.public_key] = (entry.suspended, entry.outages, entry.outage_times)
            while len(self._held) > 4096:
                del self._held[next(iter(self._held))]

    def _expire(self) -> None:
        now = self.clock()
        for provider_id in [p for p, e in self._entries.items() if now - e.last_seen > self.offer_ttl_s]:
            self._forget(provider_id)

    @locked
    def entries(self) -> list[RegisteredOffer]:
        self._expire()
        return [self._entries[p] for p in sorted(self._entries)]

    @locked
    def get(self, provider_id: str) -> RegisteredOffer | None:
        self._expire()
        return self._entries.get(provider_id)

    @locked
    def offers(self) -> list[Offer]:
        """The live, routable offers, sorted by provider id (the router's input): a suspended provider
        (see ``report_outage``) or one whose possession proof is pending is listed but not routed to.
        Demotion: providers with ``demote_after`` outages within ``demote_window_s`` are left out while
        the others still cover every layer (then they are the router's last resort, not ejected)."""
        routable = [e for e in self.entries() if e.suspended is None and e.proven]
        policy = self.admission or AdmissionPolicy()
        now, limit = self.clock(), self.demote_after if self.demote_after is not None else policy.demote_after
        good = [e for e in routable if sum(1 for t in e.outage_times if now - t <= policy.demote_window_s) < limit]
        if len(good) < len(routable) and _covers([e.offer for e in good], self.model.num_layers):
            routable = good
        return [e.offer for e in routable]

    @locked
    def pending_probes(self) -> list[RegisteredOffer]:
        """Listed providers the lead should probe: not yet proven, or suspended by an outage and past
        their backoff (``2 ** (outages - 1)`` seconds after the last outage, at most 300 s), so a
        provider that keeps failing after passing its probe stays out progressively longer."""
        now = self.clock()
        due = []
        for e in self.entries():
            if not e.proven:
                due.append(e)
            elif e.suspended is not None:
                last = e.outage_times[-1] if e.outage_times else 0.0
                if now - last >= min(2.0 ** max(e.outages - 1, 0), 300.0):
                    due.append(e)
        return due

    @locked
    def probe_passed(self, provider_id: str, public_key: bytes) -> None:
        """The possession probe of ``provider_id``'s endpoint succeeded for ``public_key``: routable."""
        entry = self._entries.get(provider_id)
        if entry is None or entry.fields.public_key != public_key:
            return
        entry.proven = True
        entry.suspended = None
        if self.admission is None:
            return
        changed = self._id_keys.get(provider_id) != public_key or self._counters.get(public_key, -1) < entry.counter
        self._id_keys.setdefault(provider_id, public_key)  # register refused any other key bound to this id
        self._counters[public_key] = max(self._counters.get(public_key, 0), entry.counter)
        if changed:
            self._save_state()

    @locked
    def probe_failed(self, provider_id: str, public_key: bytes) -> None:
        """The probe of ``provider_id`` failed: an offer that never proved itself is dropped (it binds
        nothing and may register again); a proven, suspended one stays listed for its backoff."""
        entry = self._entries.get(provider_id)
        if entry is not None and entry.fields.public_key == public_key and not entry.proven:
            self._forget(provider_id)

    @locked
    def report_outage(self, provider_id: str, reason: str) -> None:
        """The lead saw ``provider_id`` fail without blame (unreachable, timeout, overloaded...): it
        leaves routing at once (not an ejection: its key is not banned) until ``report_healthy``."""
        entry = self._entries.get(provider_id)
        if entry is None:
            return
        entry.suspended = reason
        entry.outages += 1
        entry.outage_times = (*entry.outage_times[-15:], self.clock())

    @locked
    def report_healthy(self, provider_id: str) -> None:
        """A health check of ``provider_id`` succeeded: it is routable again."""
        entry = self._entries.get(provider_id)
        if entry is not None:
            entry.suspended = None

    @locked
    def suspended(self) -> dict[str, str]:
        """Listed but unroutable providers as {provider id: the outage that suspended it}."""
        return {p: e.suspended for p, e in self._entries.items() if e.suspended is not None}

    @locked
    def eject(self, provider_id: str, reason: str) -> None:
        """Remove the provider's offer and ban its key (future offers under that key are refused)."""
        entry = self._entries.pop(provider_id, None)
        if entry is None:
            raise KeyError(f"provider_id: {provider_id!r} is not registered")
        self._banned[entry.fields.public_key] = reason
        self._banned_ids[provider_id] = reason
        log.warning("ejected %s (%s): %s", provider_id, fingerprint(entry.fields.public_key), reason)

    @locked
    def ban_key(self, public_key: bytes, reason: str, provider_id: str | None = None) -> None:
        """Ban a key directly (and the id it served under, if given), dropping any offer under it."""
        self._banned[public_key] = reason
        if provider_id is not None:
            self._banned_ids[provider_id] = reason
        for provider_id in [p for p, e in self._entries.items() if e.fields.public_key == public_key]:
            del self._entries[provider_id]

    @locked
    def banned(self) -> dict[str, str]:
        """Banned keys as {public key hex: reason}."""
        return {key.hex(): reason for key, reason in self._banned.items()}


def _covers(offers: list[Offer], num_layers: int) -> bool:
    return all(any(o.first_layer <= layer < o.end_layer for o in offers) for layer in range(num_layers))


def fields_to_offer(f: SignedFields) -> Offer:
    return Offer(f.provider_id, f.public_key, f.first_layer, f.end_layer, f.price_per_work_unit, f.endpoint)


class RegistryService(pb_grpc.RegistryServicer):
    """gRPC face of the ``Registry``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def Register(self, request: pb.SignedOffer, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        if not request.HasField("offer"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offer: missing")
        try:
            self.registry.register(offer_fields_from_pb(request.offer), bytes(request.signature))
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        if self.registry.on_register is not None:
            await self.registry.on_register(request.offer.provider_id)
        return pb.RegisterResponse(provider_id=request.offer.provider_id,
                                   heartbeat_interval_ms=int(self.registry.heartbeat_interval_s * 1000),
                                   offer_ttl_ms=int(self.registry.offer_ttl_s * 1000),
                                   lead_public_key=self.registry.lead_public_key)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        try:
            known = self.registry.heartbeat(request.provider_id, request.sent_at_ms, request.leaving, bytes(request.signature),
                                            request.counter)
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        return pb.HeartbeatResponse(known=known)

