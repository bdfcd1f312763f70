"""The lead's registry: verified signed offers, heartbeat expiry and banned keys, and its gRPC face.

Invariant: ``Registry.offers()`` lists only offers whose signature verified, whose key is not banned,
that match the model and the protocol version, and whose provider was heard from within the offer TTL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import grpc

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import parse_endpoint
from verisplit.impl.node.framing import offer_fields_from_pb
from verisplit.impl.records.keys import SignedFields, fingerprint, heartbeat_signature_valid, offer_signature_valid
from verisplit.spec.cohort import InvalidOffer, ModelSpec, Offer, validate_offer
from verisplit.spec.commitment import PROTOCOL_VERSION

log = logging.getLogger("verisplit.lead")


class RegistryError(Exception):
    """An offer or heartbeat was refused; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RegisteredOffer:
    """A verified offer and when the lead last heard from its provider."""

    fields: SignedFields
    signature: bytes
    last_seen: float
    last_heartbeat_ms: int = 0
    suspended: str | None = None  # why the lead stopped routing to it (an outage), until it is healthy again
    outages: int = 0              # outages the lead saw from this provider since it was listed

    @property
    def offer(self) -> Offer:
        f = self.fields
        return Offer(f.provider_id, f.public_key, f.first_layer, f.end_layer, f.price_per_work_unit, f.endpoint)


class Registry:
    """Signed offers for one model, heartbeat expiry and banned keys.

    Invariant: ``offers()`` lists only offers whose signature verified, whose key is not banned, that
    match the model, and whose provider was heard from within ``offer_ttl_s``.
    """

    def __init__(self, model: ModelSpec, *, heartbeat_interval_s: float = 1.0, offer_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, dtype: str = "float32",
                 lead_public_key: bytes = bytes(32)) -> None:
        self.model = model
        self.dtype = dtype  # the compute dtype this lead verifies; offers in another are refused
        self.lead_public_key = lead_public_key  # returned to registering providers (signs session openings)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.offer_ttl_s = offer_ttl_s
        self.clock = clock
        self._entries: dict[str, RegisteredOffer] = {}
        self._banned: dict[bytes, str] = {}
        self._banned_ids: dict[str, str] = {}  # ids a key was ejected under stay banned (rule A4)

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
        if existing is not None:
            if existing.fields.public_key != fields.public_key:
                raise RegistryError(grpc.StatusCode.ALREADY_EXISTS,
                                    f"provider_id: {fields.provider_id!r} is registered with another key")
            if fields.issued_at_ms < existing.fields.issued_at_ms:
                raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"issued_at_ms: {who} is older than the offer already listed (replay?)")
        self._entries[fields.provider_id] = RegisteredOffer(fields, signature, self.clock())

    def heartbeat(self, provider_id: str, sent_at_ms: int, leaving: bool, signature: bytes) -> bool:
        """Refresh (or, when ``leaving``, remove) a listed offer; False if the provider is not listed."""
        self._expire()
        entry = self._entries.get(provider_id)
        if entry is None:
            return False
        if not heartbeat_signature_valid(entry.fields.public_key, provider_id, sent_at_ms, leaving, signature):
            raise RegistryError(grpc.StatusCode.UNAUTHENTICATED, f"signature: heartbeat for {provider_id!r} does not verify")
        if sent_at_ms < entry.last_heartbeat_ms:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "sent_at_ms: older than the last heartbeat (replay?)")
        entry.last_heartbeat_ms = sent_at_ms
        if leaving:
            del self._entries[provider_id]
            return True
        entry.last_seen = self.clock()
        return True

    def _expire(self) -> None:
        now = self.clock()
        for provider_id in [p for p, e in self._entries.items() if now - e.last_seen > self.offer_ttl_s]:
            del self._entries[provider_id]

    def entries(self) -> list[RegisteredOffer]:
        self._expire()
        return [self._entries[p] for p in sorted(self._entries)]

    def get(self, provider_id: str) -> RegisteredOffer | None:
        self._expire()
        return self._entries.get(provider_id)

    def offers(self) -> list[Offer]:
        """The live, routable offers, sorted by provider id (the router's input): a suspended
        provider (see ``report_outage``) is listed but not routed to."""
        return [e.offer for e in self.entries() if e.suspended is None]

    def report_outage(self, provider_id: str, reason: str) -> None:
        """The lead saw ``provider_id`` fail without blame (unreachable, timeout, overloaded...): it
        leaves routing at once (not an ejection: its key is not banned) until ``report_healthy``."""
        entry = self._entries.get(provider_id)
        if entry is None:
            return
        entry.suspended = reason
        entry.outages += 1

    def report_healthy(self, provider_id: str) -> None:
        """A health check of ``provider_id`` succeeded: it is routable again."""
        entry = self._entries.get(provider_id)
        if entry is not None:
            entry.suspended = None

    def suspended(self) -> dict[str, str]:
        """Listed but unroutable providers as {provider id: the outage that suspended it}."""
        return {p: e.suspended for p, e in self._entries.items() if e.suspended is not None}

    def eject(self, provider_id: str, reason: str) -> None:
        """Remove the provider's offer and ban its key (future offers under that key are refused)."""
        entry = self._entries.pop(provider_id, None)
        if entry is None:
            raise KeyError(f"provider_id: {provider_id!r} is not registered")
        self._banned[entry.fields.public_key] = reason
        self._banned_ids[provider_id] = reason
        log.warning("ejected %s (%s): %s", provider_id, fingerprint(entry.fields.public_key), reason)

    def ban_key(self, public_key: bytes, reason: str, provider_id: str | None = None) -> None:
        """Ban a key directly (and the id it served under, if given), dropping any offer under it."""
        self._banned[public_key] = reason
        if provider_id is not None:
            self._banned_ids[provider_id] = reason
        for provider_id in [p for p, e in self._entries.items() if e.fields.public_key == public_key]:
            del self._entries[provider_id]

    def banned(self) -> dict[str, str]:
        """Banned keys as {public key hex: reason}."""
        return {key.hex(): reason for key, reason in self._banned.items()}


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
        return pb.RegisterResponse(provider_id=request.offer.provider_id,
                                   heartbeat_interval_ms=int(self.registry.heartbeat_interval_s * 1000),
                                   offer_ttl_ms=int(self.registry.offer_ttl_s * 1000),
                                   lead_public_key=self.registry.lead_public_key)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        try:
            known = self.registry.heartbeat(request.provider_id, request.sent_at_ms, request.leaving, bytes(request.signature))
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        return pb.HeartbeatResponse(known=known)
