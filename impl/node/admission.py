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
import functools
import json
import logging
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, TypeVar

import grpc

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.records.keys import prove_signature_valid

if TYPE_CHECKING:
    from verisplit.impl.node.registry import Registry

log = logging.getLogger("verisplit.lead")

PROBE_TIMEOUT_S = 2.0
PROBE_EVERY_S = 1.0
PROBE_CONCURRENCY = 16  # possession probes in flight at once (each dials an endpoint a stranger chose)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a ``Registry`` method under the registry's ``RLock`` (``_lock``): the lead routes in worker
    threads (``asyncio.to_thread``) while the event loop registers, heartbeats and expires offers."""
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)
    return wrapper


class RegistryError(Exception):
    """An offer, heartbeat or challenge was refused; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AdmissionPolicy:
    """How a lead admits offers: ``allowlist`` None = open admission (new keys rely on probation and
    escrow), else only these public keys may register. Nonces live ``nonce_ttl_s``, at most
    ``nonces_per_key`` outstanding per key and ``max_nonces`` in all (``NonceTable``: a flood under other
    keys never evicts a key's only nonce while any key holds more). At most ``max_unproven`` listed
    offers await their possession proof (more: RESOURCE_EXHAUSTED); an offer may expire at most
    ``max_offer_lifetime_ms`` after it is listed. ``DEMOTE_AFTER`` outages within ``demote_window_s``
    demote a provider in routing (``Registry.offers``)."""

    allowlist: frozenset[bytes] | None = None
    nonce_ttl_s: float = 30.0
    max_nonces: int = 65536
    nonces_per_key: int = 4
    max_unproven: int = 256
    max_offer_lifetime_ms: int = 600_000
    demote_after: int = 3
    demote_window_s: float = 600.0


class NonceTable:
    """Outstanding single-use admission nonces, each bound to the key it was issued for.

    Invariants: a key holds at most ``per_key`` nonces (issuing one more drops that key's oldest); at
    most ``total`` are held, and past it the oldest nonce of a key holding two or more is dropped
    (only when every key holds one is the globally oldest dropped), so minting nonces under other keys
    cannot evict an honest provider's single outstanding nonce; a nonce older than ``ttl_s`` is gone."""

    def __init__(self, ttl_s: float, per_key: int, total: int) -> None:
        self.ttl_s, self.per_key, self.total = ttl_s, max(per_key, 1), max(total, 1)
        self._issued: dict[bytes, tuple[bytes, float]] = {}  # nonce -> (key, issued at), in issue order
        self._by_key: dict[bytes, OrderedDict[bytes, None]] = {}
        self._multi: OrderedDict[bytes, None] = OrderedDict()  # keys holding two or more nonces

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, key: bytes, now: float) -> bytes:
        """A fresh nonce for ``key``."""
        self.drop_stale(now)
        held = self._by_key.setdefault(key, OrderedDict())
        while len(held) >= self.per_key:
            self.remove(next(iter(held)))
            held = self._by_key.setdefault(key, OrderedDict())
        nonce = secrets.token_bytes(32)
        self._issued[nonce] = (key, now)
        held[nonce] = None
        if len(held) >= 2:
            self._multi[key] = None
        while len(self._issued) > self.total:
            victim = next(iter(self._by_key[next(iter(self._multi))])) if self._multi else next(iter(self._issued))
            self.remove(victim)
        return nonce

    def valid(self, nonce: bytes, key: bytes, now: float) -> bool:
        """True iff ``nonce`` is outstanding for ``key`` (not consumed: see ``remove``)."""
        self.drop_stale(now)
        issued = self._issued.get(nonce)
        return issued is not None and issued[0] == key

    def remove(self, nonce: bytes) -> None:
        """Forget ``nonce`` (consumed or evicted)."""
        issued = self._issued.pop(nonce, None)
        if issued is None:
            return
        held = self._by_key[issued[0]]
        del held[nonce]
        if len(held) < 2:
            self._multi.pop(issued[0], None)
        if not held:
            del self._by_key[issued[0]]

    def drop_stale(self, now: float) -> None:
        while self._issued:
            nonce, (_, at) = next(iter(self._issued.items()))
            if now - at <= self.ttl_s:
                return
            self.remove(nonce)


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
    marks them routable when the proof passes (``Registry.probe_passed``); an unproven offer whose
    first probe fails is dropped (``Registry.probe_failed``: it may register again). At most
    ``PROBE_CONCURRENCY`` probes are in flight (the lead is no port scanner for strangers). ``channel_for(endpoint)``
    opens a channel, closed after each probe (the lead's channel cache would grow with every junk
    endpoint ever registered)."""

    def __init__(self, registry: "Registry", channel_for: Any) -> None:
        self.registry = registry
        self.channel_for = channel_for
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[str] = set()
        self._slots = asyncio.Semaphore(PROBE_CONCURRENCY)
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
            async with self._slots:
                channel = self.channel_for(entry.fields.endpoint)
                stub = pb_grpc.ProviderStub(channel)
                passed = await prove_endpoint(stub, entry.fields.public_key, self.registry.lead_public_key)
            if passed:
                self.registry.probe_passed(pid, entry.fields.public_key)
            else:
                self.registry.probe_failed(pid, entry.fields.public_key)
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
        try:
            nonce = self.registry.challenge(bytes(request.public_key))
        except RegistryError as exc:
            await context.abort(exc.code, exc.message)
        ttl = (self.registry.admission or AdmissionPolicy()).nonce_ttl_s
        return pb.ChallengeResponse(nonce=nonce, lead_public_key=self.registry.lead_public_key,
                                    nonce_ttl_ms=int(ttl * 1000))
