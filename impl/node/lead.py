"""The lead: router (the spec's ``form_cohort`` over the ``Registry``), relay and request store.

The relay is lead-mediated: for every step it sends the input to segment 0, receives segment 0's
output and signed commitment, forwards those exact bytes to segment 1, and so on; the last segment's
logits are sampled here. Invariants:
- Every commitment is checked on receipt, before its bytes go anywhere, by the spec's
  ``check_exchanged_link`` (H1-H3: signature, signer == assigned key, protocol/model/request, step,
  layers and positions, input digest == previous output digest; H4: digests are of the bytes actually
  sent and received). The per-link checks in order are exactly ``check_exchanged_chain``; the first
  failure aborts the request and names the culprit provider and the reason.
- An outage at a hop (no culprit) is recovered mid-request (``verisplit.impl.node.recovery``: a
  replacement for the lost range, its cache rebuilt by replaying the recorded inputs); the client's
  stream goes on. A protocol failure is never recovered.
- Every request, completed or aborted, is saved to the ``RequestStore`` with the bytes exchanged
  before its response completes, also when the client disconnects (the finish is shielded from
  cancellation); then the post-request hooks (audit, settlement) run in the background, and a lead
  restarted after a crash settles every recorded but unsettled request (``AuditService.settle_pending``).
- Every response carries the ledger head (``seq:hash``) as of its finish, so a lost ledger tail is
  detectable (``verisplit ledger verify --expect-head``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import torch
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import open_channel
from verisplit.impl.node.hops import UNAVAILABLE, CohortError, Hop, HopTimings
from verisplit.impl.node.admission import AdmissionPolicy, ProbeLoop
from verisplit.impl.node.lead_info import INFO_MEMORY_BYTES, InfoCache
from verisplit.impl.node.recovery import recovered_request_fee
from verisplit.impl.records.replacements import Replacement
from verisplit.impl.node.relay import run_step
from verisplit.impl.node.registry import Registry
from verisplit.impl.node.reroute import build_hops, open_hops
from verisplit.impl.node import direct, speculative  # issue 16: direct data path, speculative decoding
from verisplit.impl.node.views import audit_view, providers_view, request_view
from verisplit.impl.records.requests import RecordError, RequestRecord, RequestStore, StepRecord
from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.runtime.generate import sample_next
from verisplit.impl.runtime.tensors import to_canonical
from verisplit.spec.cohort import Cohort, InvalidOffer, ModelSpec, NoCoverage, Offer, form_cohort, quote_fee
from verisplit.spec.commitment import DTYPES, NO_SEED_COMMITMENT, StepContext, next_step_context
from verisplit.spec.settlement import billable_positions

log = logging.getLogger("verisplit.lead")

PostRequestHook = Callable[[RequestRecord], Awaitable[dict[str, Any]]]


class NoCohortError(Exception):
    """No cohort can be formed from the live offers (the message names the first uncovered layer)."""


# torch.Generator.manual_seed accepts exactly this range; anything else is refused up front (400), not a
# ValueError deep inside the relay.
SEED_MIN = -(1 << 63)
SEED_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request (temperature 0 = greedy)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class RequestRun:
    """One request in flight: its id, cohort and fee quote inputs; iterate ``tokens()`` to run it."""

    lead: "Lead"
    request_id: str
    cohort: Cohort
    offers: list[Offer]
    prompt_ids: list[int]
    params: SamplingParams
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    status: str = "running"
    error: CohortError | None = None
    timings: HopTimings = field(default_factory=HopTimings)
    steps: list[StepRecord] = field(default_factory=list)
    fee: int = 0
    seed_commitment: bytes = NO_SEED_COMMITMENT
    step_positions: list[int] | None = None  # speculative runs: positions of each completed step (F1)
    token_rows: list[tuple[int, int]] = field(default_factory=list)  # speculative: (step, row from the end) per token
    speculative: dict[str, Any] | None = None  # speculative runs: steps, drafted, accepted
    owner: str | None = None  # the id of the API key that started it (api_auth.key_id); None without keys
    replacements: list[Replacement] = field(default_factory=list)
    ledger_head: str | None = None  # "seq:hash" of the ledger as of this request's finish

    async def tokens(self) -> AsyncIterator[int]:
        """Yield generated token ids as they come; raises ``CohortError`` when a link breaks.
        Closing the iterator early (e.g. a stop string matched) ends the request as completed, at
        once: the relay is closed with it (not left to the garbage collector)."""
        async with contextlib.aclosing(self.lead._relay(self)) as relay:
            async for token in relay:
                yield token


class Lead:
    """Registry + router + relay + request store for one model (the lead runs no layers itself)."""

    def __init__(self, checkpoint: str | Path, data_dir: str | Path, *, retention: int = 1000,
                 tls_ca: Path | None = None, heartbeat_interval_s: float = 1.0, offer_ttl_s: float = 5.0,
                 step_timeout_s: float = 120.0, dtype: str = "float32", session_key: SigningKey | None = None,
                 admission: AdmissionPolicy | None = None, speculative: int = 0, direct: bool = False,
                 recover: bool = True) -> None:
        root = Path(checkpoint)
        self.checkpoint = root
        self.config = ModelConfig.from_dir(root)
        self.model_id = self.config.name_or_path or root.resolve().name
        self.model_spec = ModelSpec(self.model_id, self.config.num_hidden_layers)
        # Signs every session opening (the audit-seed commitment and dtype of the request); providers
        # learn its public key when they register and serve no opening it did not sign.
        self.session_key = session_key if session_key is not None else SigningKey.generate()
        self.dtype = dtype  # the cohort's compute dtype (H2, H5): the calibrated tolerance's, once auditing
        self.registry = Registry(self.model_spec, heartbeat_interval_s=heartbeat_interval_s, offer_ttl_s=offer_ttl_s,
                                 dtype=dtype, lead_public_key=bytes(self.session_key.verify_key), admission=admission,
                                 state_path=Path(data_dir) / "registry-state.json" if admission is not None else None)
        self.store = RequestStore(Path(data_dir) / "requests", max_requests=retention)
        self.tls_ca = tls_ca
        self.step_timeout_s = step_timeout_s
        # Replace a provider lost to an outage mid-request (impl/node/recovery.py): on the plain relay only (a
        # replay rebuilds a contiguous KV cache; speculative rollbacks and direct forwarding do not replay).
        self.recover = recover and speculative == 0 and not direct
        self.post_request_hooks: list[PostRequestHook] = []
        self.audit: Any = None  # the AuditService, once ``attach_audit`` ran
        self.commitments_checked = 0
        self.speculative, self.direct = speculative, direct  # draft length k (0: off); providers forward to each other
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.ProviderStub]] = {}
        self._info = InfoCache(retention)
        self.keep_tensors = True  # False: a record's tensors are dropped once its hooks (audits) are done
        self._tasks: set[asyncio.Task[Any]] = set()
        # Admission: offers become routable once the provider's endpoint proved it holds the key.
        self.probes = ProbeLoop(self.registry, lambda e: open_channel(e, tls_ca)) if admission is not None else None

    def configure_retention(self, max_bytes: int, keep_tensors: bool = False) -> None:
        """Bound the records on disk to ``max_bytes`` and the in-memory request infos to
        ``min(max_bytes, INFO_MEMORY_BYTES)`` (older infos are then read from disk), oldest first;
        without ``keep_tensors`` a record keeps digests only once its post-request hooks are done."""
        self.store.max_bytes = max_bytes
        self._info.max_bytes = min(max_bytes, INFO_MEMORY_BYTES)
        self.keep_tensors = keep_tensors

    def attach_audit(self, service: Any) -> None:
        """Install ``service`` (a ``verisplit.impl.audit.service.AuditService``) as a post-request hook:
        every finished request is then audited, settled, written to the ledger, and failed providers
        are ejected from ``self.registry`` (offer removed, key and id banned). The cohort computes in
        the dtype the service's tolerance was calibrated for, so offers in any other are refused."""
        self.audit = service
        if service.tolerance.dtype in DTYPES:  # a real calibration (not the p = 0 placeholder)
            self.dtype = self.registry.dtype = service.tolerance.dtype
        self.post_request_hooks.append(service)

    def use_session_key(self, key: SigningKey) -> None:
        """Sign session openings with ``key`` (the lead's identity, also its ledger key); call before the
        registry serves, since providers learn the public key when they register."""
        self.session_key = key
        self.registry.lead_public_key = bytes(key.verify_key)

    def seed_commitment_for(self, request_id: str) -> bytes:
        """The audit-seed commitment of ``request_id`` (rule A1), sent in every signed session opening
        before the first step; the seed itself is revealed only in the finished request's record."""
        if self.audit is None:
            return NO_SEED_COMMITMENT
        return self.audit.seed_commitment_for(request_id)

    def audit_view(self) -> dict[str, Any]:
        """What the lead publishes about auditing (see ``views.audit_view``); never a live seed."""
        return audit_view(self.audit)

    # --- routing ------------------------------------------------------------------------------
    def route(self) -> tuple[Cohort, list[Offer]]:
        """The spec's cheapest cohort over the live offers, and the offers it was formed from."""
        offers = self.registry.offers()
        if not offers:
            raise NoCohortError("no provider has registered an offer (or all expired)")
        try:
            return form_cohort(offers, self.model_spec), offers
        except NoCoverage as exc:
            raise NoCohortError(str(exc)) from None
        except InvalidOffer as exc:  # pragma: no cover - the registry validated every offer
            raise NoCohortError(str(exc)) from None

    def start(self, prompt_ids: list[int], params: SamplingParams, owner: str | None = None) -> RequestRun:
        """Form the cohort and allocate a request id; raises ``NoCohortError`` or ValueError for bad input."""
        if not prompt_ids:
            raise ValueError("prompt: must hold at least one token")
        bad = [t for t in prompt_ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt: token id {bad[0]} outside [0, {self.config.vocab_size})")
        if not SEED_MIN <= params.seed <= SEED_MAX:
            raise ValueError(f"seed: {params.seed} outside [{SEED_MIN}, {SEED_MAX}] (a 64-bit generator seed)")
        if len(prompt_ids) + max(params.max_tokens, 1) > self.config.max_position_embeddings:
            raise ValueError(f"max_tokens: prompt ({len(prompt_ids)}) + max_tokens ({params.max_tokens}) exceeds the "
                             f"context length {self.config.max_position_embeddings}")
        cohort, offers = self.route()
        return RequestRun(self, f"req-{uuid.uuid4().hex}", cohort, offers, list(prompt_ids), params, owner=owner)

    def stub_for(self, endpoint: str) -> pb_grpc.ProviderStub:
        """The (cached) gRPC stub of the provider at ``endpoint``."""
        entry = self._channels.get(endpoint)
        if entry is None:
            channel = open_channel(endpoint, self.tls_ca)
            entry = (channel, pb_grpc.ProviderStub(channel))
            self._channels[endpoint] = entry
        return entry[1]


    def spawn(self, coro: Awaitable[Any]) -> "asyncio.Task[Any]":
        """Run ``coro`` in the background; ``drain_hooks`` and ``close`` wait for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def ledger_head(self) -> str | None:
        """The ledger's last committed ``seq:hash`` (None without a ledger)."""
        ledger = getattr(self.audit, "ledger", None)
        head = getattr(ledger, "head", None)
        return None if head is None else f"{head[0]}:{head[1]}"

    # --- relay -------------------------------------------------------------------------------
    async def _relay(self, run: RequestRun) -> AsyncIterator[int]:
        params = run.params
        try:
            hops = build_hops(self, run)
        except LookupError as gone:
            index = run.cohort.provider_ids.index(gone.args[0])
            run.error = CohortError(gone.args[0], UNAVAILABLE, "offer expired before the request started", index)
            await self._finish(run, [])
            raise run.error from None
        session_id = run.request_id
        max_length = len(run.prompt_ids) + max(params.max_tokens, 1)
        generator = torch.Generator().manual_seed(params.seed)
        stops = set(params.stop_token_ids)
        try:
            seed_commitment = self.seed_commitment_for(run.request_id)
            run.seed_commitment = seed_commitment
            # Refusals, dead or frozen providers at OpenSession re-route before any step (impl/node/reroute.py).
            hops[:] = await open_hops(self, run, list(hops), session_id, max_length, seed_commitment)
            context = StepContext(self.model_id, run.request_id, 0, 0, len(run.prompt_ids), dtype=self.dtype,
                                  audit_seed_commitment=seed_commitment)
            blob = to_canonical(torch.tensor(run.prompt_ids, dtype=torch.int64))
            if self.speculative > 0:  # the generation loop of impl/node/speculative.py over the same _step
                async with contextlib.aclosing(speculative.speculative_tokens(self, run, hops, session_id, context,
                                                                              generator, self.speculative)) as tokens:
                    async for token in tokens:
                        yield token
            for _ in range(0 if self.speculative > 0 else params.max_tokens):
                logits = await self._step(run, hops, session_id, context, blob, max_length)
                token = sample_next(logits[-1], temperature=params.temperature, top_p=params.top_p, generator=generator)
                run.generated.append(token)
                yield token
                if token in stops:
                    run.finish_reason = "stop"
                    break
                context = next_step_context(context, 1)
                blob = to_canonical(torch.tensor([token], dtype=torch.int64))
            if run.finish_reason is None:
                run.finish_reason = "length"
            run.status = "completed"
        except CohortError as exc:
            run.error = exc
            raise
        except GeneratorExit:
            run.finish_reason = run.finish_reason or "stop"
            run.status = "completed"
            raise
        finally:
            await self._finish_shielded(run, hops)

    async def _step(self, run: RequestRun, hops: list[Hop], session_id: str, context: StepContext,
                    first_blob: bytes, max_length: int = 0) -> torch.Tensor:
        """One step through every hop, every link checked on receipt (``relay.run_step``, which also
        recovers outages on the plain relay; ``direct.direct_step`` on the direct path)."""
        if self.direct:
            return await direct.direct_step(self, run, hops, session_id, context, first_blob)
        return await run_step(self, run, hops, session_id, context, first_blob, max_length)

    async def _finish_shielded(self, run: RequestRun, hops: list[Hop]) -> None:
        """``_finish`` in its own task: a client that disconnects cancels the relay, never the
        recording and settlement of the work done (the task runs on; ``drain_hooks`` waits for it)."""
        await asyncio.shield(self.spawn(self._finish(run, hops)))

    async def _finish(self, run: RequestRun, hops: list[Hop]) -> None:
        """Close every session, save the record, publish its info and schedule the hooks."""
        await asyncio.gather(*(h.close(run.request_id) for h in hops), return_exceptions=True)
        if run.error is not None:
            run.status = "aborted"
            run.finish_reason = "error"
        elif run.status == "running":
            run.status = "aborted"
        # The client pays for what it received: the quote over the positions the cohort computed to
        # produce the tokens it got (the prompt, then each generated token but the last, which no step
        # consumed), also when a request aborts after some tokens (a failed provider's slice of it is
        # refunded at settlement); nothing generated, nothing charged. So an honest request's fee is
        # exactly sum(price x work served) and each provider is paid its own price x work.
        positions = billable_positions(len(run.prompt_ids), len(run.generated), run.step_positions)
        prices = {o.provider_id: o.price_per_work_unit for o in run.offers if o.provider_id in run.cohort.provider_ids}
        prices.update({r.assignment.provider_id: r.price for r in run.replacements})
        run.fee = quote_fee(run.cohort, self.model_spec, run.offers, positions)
        if run.replacements:  # rule R3: the total value served, the replay included
            run.fee = recovered_request_fee(self, run, prices)
        err = run.error
        record = RequestRecord(
            request_id=run.request_id, model_id=self.model_id, cohort=run.cohort, steps=run.steps,
            status=run.status, culprit=err.culprit if err else None, reason=err.reason if err else None,
            fee=run.fee, prompt_tokens=len(run.prompt_ids), completion_tokens=len(run.generated),
            prices=prices,
            extra={"prompt_token_ids": run.prompt_ids, "completion_token_ids": run.generated,
                   "audit_seed_commitment": run.seed_commitment.hex(), "dtype": self.dtype,
                   "finish_reason": run.finish_reason, "detail": err.detail if err else None,
                   **({"speculative": run.speculative} if run.speculative is not None else {}),
                   "link": err.link if err else None, "params": run.params.__dict__ | {"stop_token_ids": list(run.params.stop_token_ids)},
                   "owner": run.owner, "replacements": [r.to_dict() for r in run.replacements]})
        try:
            await asyncio.to_thread(self.store.save, record)
        except (OSError, RecordError) as exc:  # never lose the response because the disk failed
            log.error("could not save record %s: %s", run.request_id, exc)
        self._info.put(run.request_id, request_view(record, run.offers))
        run.ledger_head = self.ledger_head()
        self._info[run.request_id]["ledger_head"] = run.ledger_head
        if self.post_request_hooks:
            self._info[run.request_id]["pending_hooks"] = len(self.post_request_hooks)
            task = asyncio.get_running_loop().create_task(self._run_hooks(record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_hooks(self, record: RequestRecord) -> None:
        info = self._info.get(record.request_id)
        merged: dict[str, Any] = {}
        for hook in list(self.post_request_hooks):
            try:
                result = await hook(record)
                if result:
                    merged.update(result)
            except Exception as exc:  # a hook bug must not take the lead down
                log.exception("post-request hook %r failed for %s", hook, record.request_id)
                merged.setdefault("hook_errors", []).append(f"{getattr(hook, '__name__', hook)}: {exc}")
            if info is not None:
                info.update(merged)
                info["pending_hooks"] = max(0, info.get("pending_hooks", 1) - 1)
                self._info.remeasure(record.request_id)  # audits and settlement grew the view: the byte bound holds
        with contextlib.suppress(OSError, RecordError):
            await asyncio.to_thread(self.store.save_extras, record.request_id, merged)
        if not self.keep_tensors:  # audits done: the next save drops this record's tensor bytes
            self.store.mark_compactable(record.request_id)
            if info is not None:
                info["tensors_discarded"] = True

    async def drain_hooks(self) -> None:
        """Wait for the background hooks scheduled so far."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- public views (rendered by verisplit.impl.node.views) ------------------------------------
    def request_info(self, request_id: str) -> dict[str, Any] | None:
        """Public info of a recent request (memory first, then the store), or None."""
        info = self._info.get(request_id)
        if info is not None:
            return info
        try:
            record = self.store.load(request_id)
        except RecordError:
            return None
        info = request_view(record)
        info.update(self.store.load_extras(request_id))
        return info

    def providers_view(self) -> list[dict[str, Any]]:
        """The live offers as published on ``/v1/providers``."""
        return providers_view(self.registry)

    async def close(self) -> None:
        if self.probes is not None:
            await self.probes.close()
        await self.drain_hooks()
        if self.audit is not None:
            with contextlib.suppress(Exception):
                self.audit.ledger.close()
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
