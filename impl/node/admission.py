"""Admission: the lead's policy for new offers (open or allowlist), its persistent admission state,
the possession-proof probe of a provider's endpoint, and the ``Admission`` gRPC service.

Invariants: a provider becomes routable only after ``prove_endpoint`` reached the endpoint its
offer names and a ``Provider.Prove`` answer there verified under the offer's key for this lead and a
fresh challenge (a closed port, another key or a replayed proof never passes); ``ProbeLoop`` re-probes
suspended and unproven providers in the background and never blocks the event loop on a dead one
(each probe has a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.records.keys import prove_signature_valid

if TYPE_CHECKING:
    from verisplit.impl.node.registry import Registry

log = logging.getLogger("verisplit.lead")

PROBE_TIMEOUT_S = 2.0
PROBE_EVERY_S = 1.0


@dataclass(frozen=True)
class AdmissionPolicy:
    """How a lead admits offers: ``allowlist`` None = open admission (new keys rely on probation and
    escrow), else only these public keys may register. Nonces live ``nonce_ttl_s``, at most
    ``max_nonces`` outstanding (oldest dropped first); an offer may expire at most
    ``max_offer_lifetime_ms`` after it is listed. ``DEMOTE_AFTER`` outages within ``demote_window_s``
    demote a provider in routing (``Registry.offers``)."""

    allowlist: frozenset[bytes] | None = None
    nonce_ttl_s: float = 30.0
    max_nonces: int = 65536
    max_offer_lifetime_ms: int = 600_000
    demote_after: int = 3
    demote_window_s: float = 600.0


def load_allowlist(path: str | Path) -> frozenset[bytes]:
    """Public keys (hex, one per line; blank lines and ``#`` comments ignored) from ``path``; ValueError
    naming the line for anything that is not 64 hex characters."""
    keys = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"{path}:{number}: not a 32-byte hex public key")
        keys.add(key)
    return frozenset(keys)


def load_state(path: Path) -> tuple[dict[str, bytes], dict[bytes, int]]:
    """(provider id -> first key, key -> highest heartbeat counter) from ``path``; empty if absent."""
    if not path.exists():
        return {}, {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = {str(k): bytes.fromhex(v) for k, v in data.get("ids", {}).items()}
        counters = {bytes.fromhex(k): int(v) for k, v in data.get("counters", {}).items()}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("registry state %s unreadable (%s); starting empty", path, exc)
        return {}, {}
    return ids, counters


def save_state(path: Path, ids: dict[str, bytes], counters: dict[bytes, int]) -> None:
    """Atomically write the admission state (a failure is logged: memory still holds it)."""
    tmp = path.with_name(path.name + ".tmp")
    body = {"ids": {k: v.hex() for k, v in ids.items()}, "counters": {k.hex(): v for k, v in counters.items()}}
    try:
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save registry state %s: %s", path, exc)


async def prove_endpoint(stub: Any, public_key: bytes, lead_public_key: bytes, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True iff the provider behind ``stub`` signs a fresh challenge for this lead under ``public_key``."""
    challenge = secrets.token_bytes(32)
    try:
        reply = await stub.Prove(pb.ProveRequest(challenge=challenge, lead_public_key=lead_public_key), timeout=timeout)
    except (grpc.aio.AioRpcError, asyncio.TimeoutError):
        return False
    return bytes(reply.public_key) == public_key and \
        prove_signature_valid(public_key, lead_public_key, challenge, bytes(reply.signature))


class ProbeLoop:
    """Probes newly registered, unproven and suspended providers (``Registry.pending_probes``) and
    marks them routable when the proof passes (``Registry.probe_passed``). ``channel_for(endpoint)``
    opens a channel, closed after each probe (the lead's channel cache would grow with every junk
    endpoint ever registered)."""

    def __init__(self, registry: "Registry", channel_for: Any) -> None:
        self.registry = registry
        self.channel_for = channel_for
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[str] = set()
        registry.on_register = self.kick

    async def kick(self, provider_id: str = "") -> None:
        """Probe ``provider_id`` now (awaited by every registration, so a provider whose endpoint proves
        the key is routable when its Register call returns) and make sure the background loop runs."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        entry = self.registry.get(provider_id) if provider_id else None
        if entry is not None:
            await self._probe(entry)

    async def _probe(self, entry: Any) -> None:
        pid = entry.fields.provider_id
        if pid in self._inflight:
            return
        self._inflight.add(pid)
        channel = None
        try:
            channel = self.channel_for(entry.fields.endpoint)
            stub = pb_grpc.ProviderStub(channel)
            if await prove_endpoint(stub, entry.fields.public_key, self.registry.lead_public_key):
                self.registry.probe_passed(pid, entry.fields.public_key)
        except Exception:  # a probe never takes the lead down  # noqa: BLE001
            log.exception("possession probe of %s failed", pid)
        finally:
            self._inflight.discard(pid)
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _run(self) -> None:
        while True:
            pending = self.registry.pending_probes()
            if pending:
                await asyncio.gather(*(self._probe(e) for e in pending), return_exceptions=True)
            await asyncio.sleep(PROBE_EVERY_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class AdmissionService(pb_grpc.AdmissionServicer):
    """gRPC face of ``Registry.challenge`` (served by the lead next to the Registry service)."""

    def __init__(self, registry: "Registry") -> None:
        self.registry = registry

    async def Challenge(self, request: pb.ChallengeRequest, context: grpc.aio.ServicerContext) -> pb.ChallengeResponse:
        from verisplit.impl.node.registry import RegistryError

        try:
            nonce = self.registry.challenge(bytes(request.public_key))
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        ttl = (self.registry.admission or AdmissionPolicy()).nonce_ttl_s
        return pb.ChallengeResponse(nonce=nonce, lead_public_key=self.registry.lead_public_key,
                                    nonce_ttl_ms=int(ttl * 1000))
