"""The implementation adapter: real provider processes over loopback, the reference lead's code.

Layout (one pool per run, reused by every example):
- a seeded random HF checkpoint (``verisplit model make-random``) and one key file per template;
- one provider process per template (honest: ``verisplit provider serve``; a cheater: the test-only
  launcher ``python -m cheatkit.serve MODE`` from the source tree's ``tests/cheatkit``, which the
  distribution does not ship), each loading only its layer range and registering with the adapter's
  registry endpoint over gRPC;
- the lead: ``verisplit.impl.node.lead.Lead`` (registry, router ``form_cohort``, lead-mediated relay that
  checks every commitment on receipt, request store) plus ``verisplit.impl.audit.service.AuditService``
  as its post-request hook (commit-reveal audits by the verifier, settlement, signed SQLite ledger,
  ejection). It runs on an asyncio loop in this process and talks gRPC to the providers.

Per example, ``reset`` builds a fresh ``Lead`` (new registry, store and ledger); the provider processes
stay up. Their self-registrations land in a *pool* (verified, not listed); ``add_offer`` lists a
template by registering a freshly signed offer (the provider's own key, the chosen price) with the
live registry, so bans, signature checks and validation are the lead's real code paths.

The lead runs in-process (not as its own OS process) because it has no reset or de-registration hook
for a fresh example; its gRPC registry, relay and provider links are the real network paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Coroutine, TypeVar

from nacl.signing import SigningKey

from verisplit.spec.escrow import EscrowTerms

from verisplit.conformance.adapters import (
    Adapter,
    EjectResult,
    OfferResult,
    ProviderTemplate,
    ReplacementObservation,
    RequestObservation,
    RouteResult,
    StepObservation,
)
from verisplit.spec.audit import AuditVerdict, Tolerance
from verisplit.spec.cohort import Offer
from verisplit.spec.commitment import VALID, ChainVerdict
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.settlement import Settlement

T = TypeVar("T")

# The CI pool: a 4-layer model; honest providers tile it two ways, cheaters undercut them.
DEFAULT_POOL: tuple[ProviderTemplate, ...] = (
    ProviderTemplate("h0", 0, 2),
    ProviderTemplate("h1", 2, 4),
    ProviderTemplate("hfull", 0, 4),
    ProviderTemplate("c-skip_layer", 2, 4, "skip_layer"),
    ProviderTemplate("c-wrong_key", 0, 2, "wrong_key"),
    ProviderTemplate("c-substitute_output", 2, 4, "substitute_output"),
    ProviderTemplate("c-noise", 0, 2, "noise"),
    ProviderTemplate("c-sometimes", 0, 4, "sometimes"),
)
LONG_POOL: tuple[ProviderTemplate, ...] = DEFAULT_POOL + (
    ProviderTemplate("c-int8_weights", 0, 2, "int8_weights"),
    ProviderTemplate("c-replay", 2, 4, "replay"),
    ProviderTemplate("c-prefix_range", 0, 4, "prefix_range"),
    ProviderTemplate("c-lower_precision", 2, 4, "lower_precision"),
)
MODEL_ARGS = ("--arch", "llama", "--layers", "4", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
              "--vocab", "320", "--max-position", "128", "--seed", "11")
AUDIT_SEED = b"verisplit-conformance-audit-seed-v1"


def cheatkit_root() -> Path:
    """The folder holding the test-only ``cheatkit`` package: ``$VERISPLIT_CHEATKIT`` if set, else the
    source tree's ``tests/`` beside this package. Raises ``ImplAdapterError`` saying what to do when
    neither exists (an installed wheel ships no cheat code)."""
    configured = os.environ.get("VERISPLIT_CHEATKIT")
    candidates = [Path(configured)] if configured else [Path(__file__).resolve().parent.parent / "tests"]
    for root in candidates:
        if (root / "cheatkit" / "serve.py").is_file():
            return root
    raise ImplAdapterError("the cheating providers come from the test-only cheat catalogue (tests/cheatkit in a "
                           "source checkout), which the installed distribution does not ship: run from a source "
                           "checkout or set VERISPLIT_CHEATKIT to the folder that holds cheatkit/")


IMPL_ESCROW_WINDOW = 3  # the lead holds each key's last 3 payouts (probation 0: selection unchanged)


class ImplAdapterError(RuntimeError):
    """The pool could not be started or the lead failed; the message says which part and why."""


def _run_cli(*args: str) -> None:
    from verisplit.impl.node.procs import verisplit_command

    done = subprocess.run(verisplit_command(*args), capture_output=True, text=True)
    if done.returncode != 0:
        raise ImplAdapterError(f"verisplit {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def ensure_checkpoint(workdir: Path) -> Path:
    """The pool's seeded random checkpoint (created once under ``workdir``)."""
    target = workdir / "checkpoint"
    if not (target / "config.json").exists():
        tmp = workdir / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _run_cli("model", "make-random", *MODEL_ARGS, "--out", str(tmp))
        tmp.replace(target)
    return target


def ensure_tolerance(checkpoint: Path, workdir: Path, device: str | None) -> Tolerance:
    """The audit tolerance measured by ``verisplit.impl.audit.calibrate`` on this checkpoint (cached as JSON)."""
    from verisplit.impl.audit.calibrate import calibrate, load_tolerance, write_calibration

    path = workdir / f"calibration-{device or 'auto'}.json"
    if not path.exists():
        doc = calibrate(checkpoint, dtype="float32", device=device, prompt_len=8, new_tokens=8, seeds=(0, 1))
        write_calibration(doc, path)
    return load_tolerance(path)


class ImplAdapter(Adapter):
    """Real provider processes + the reference lead, audit service and ledger (see module docstring)."""

    kind = "impl"
    auto_settles = True

    def __init__(self, workdir: Path, templates: tuple[ProviderTemplate, ...] = DEFAULT_POOL,
                 audit_p: Fraction = Fraction(2, 3), device: str | None = None, start_timeout: float = 180.0,
                 direct: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.templates = templates
        self.audit_p = audit_p
        self.direct = direct  # the lead's data path: providers forward to each other (docs/protocol.md)
        self.audit_seed = AUDIT_SEED
        self.device = device
        self.lead_id = "conformance-lead"
        self._example = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="conformance-lead-loop", daemon=True)
        self._thread.start()
        self._lead: Any = None
        self._service: Any = None
        self._used_ids: set[str] = set()
        self._pool: dict[str, Any] = {}
        self._procs: Any = None
        try:
            self._start(start_timeout)
        except BaseException:
            self.close()
            raise

    # --- construction ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "workdir": str(self.workdir), "device": self.device,
                "audit_p": f"{self.audit_p.numerator}/{self.audit_p.denominator}",
                "templates": [t.to_dict() for t in self.templates], "direct": self.direct}

    @staticmethod
    def from_config(config: dict[str, Any]) -> "ImplAdapter":
        num, den = str(config.get("audit_p", "2/3")).split("/")
        templates = tuple(ProviderTemplate.from_dict(t) for t in config.get("templates") or []) or DEFAULT_POOL
        workdir = Path(config.get("workdir") or Path.cwd() / "runs" / "conform" / "replay")
        return ImplAdapter(workdir, templates, Fraction(int(num), int(den)), config.get("device"),
                           direct=bool(config.get("direct", False)))

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _start(self, timeout: float) -> None:
        import grpc

        from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
        from verisplit.impl.runtime.config import ModelConfig
        from verisplit.impl.node.framing import grpc_options
        from verisplit.impl.records.keys import create_key_file, load_key_file
        from verisplit.impl.node.procs import ProcessGroup, free_port, verisplit_command
        from verisplit.impl.audit.verifier import Verifier
        from verisplit.spec.cohort import ModelSpec

        self.checkpoint = ensure_checkpoint(self.workdir)
        config = ModelConfig.from_dir(self.checkpoint)
        self.vocab = config.vocab_size
        self.tolerance = ensure_tolerance(self.checkpoint, self.workdir, self.device)
        self.verifier = Verifier(self.checkpoint, device=self.device)
        keys_dir = self.workdir / "keys"
        keys_dir.mkdir(exist_ok=True)
        self._keys = {}
        for t in self.templates:
            path = keys_dir / f"{t.name}.key"
            self._keys[t.name] = load_key_file(path) if path.exists() else create_key_file(path)
        self._lead_key = load_key_file(keys_dir / "lead.key") if (keys_dir / "lead.key").exists() else create_key_file(keys_dir / "lead.key")
        self._session_key = SigningKey.generate()  # one lead session key for every example's Lead
        pool_service = _PoolRegistry(self)
        port = free_port()
        self.registry_endpoint = f"127.0.0.1:{port}"

        async def start_server() -> Any:
            server = grpc.aio.server(options=grpc_options())
            pb_grpc.add_RegistryServicer_to_server(pool_service, server)
            if server.add_insecure_port(self.registry_endpoint) == 0:
                raise ImplAdapterError(f"registry: could not bind {self.registry_endpoint}")
            await server.start()
            return server

        self._server = self._call(start_server())
        self.reset()
        self.model = ModelSpec(self._lead.model_id, config.num_hidden_layers)
        cheaters = [t for t in self.templates if t.behaviour != "honest"]
        cheat_root = cheatkit_root() if cheaters else None
        self._procs = ProcessGroup(self.workdir / "logs")
        children = []
        for t in self.templates:
            args = ["--checkpoint", str(self.checkpoint), "--layers", f"{t.first_layer}:{t.end_layer}",
                    "--key", str(keys_dir / f"{t.name}.key"), "--listen", "127.0.0.1:0", "--lead", self.registry_endpoint,
                    "--provider-id", t.name, "--price", "1", "--dtype", "float32"]
            if self.device:
                args += ["--device", self.device]
            if t.behaviour == "honest":
                children.append(self._procs.spawn(t.name, verisplit_command("provider", "serve", *args)))
            else:
                argv = [sys.executable, "-m", "cheatkit.serve", t.behaviour, *args]
                pythonpath = os.pathsep.join(p for p in (str(cheat_root), os.environ.get("PYTHONPATH", "")) if p)
                children.append(self._procs.spawn(t.name, argv, extra_env={"PYTHONPATH": pythonpath}))
        try:
            self._procs.wait_ready(children, timeout=timeout)
        except Exception as exc:
            raise ImplAdapterError(f"provider pool did not start: {exc}") from None
        missing = [t.name for t in self.templates if t.name not in self._pool]
        if missing:
            raise ImplAdapterError(f"providers ready but never registered: {missing}")

    # --- per example ------------------------------------------------------------------------------
    def reset(self) -> None:
        from verisplit.impl.audit.service import AuditService
        from verisplit.impl.node.lead import Lead

        if self._lead is not None:
            self._call(self._lead.close())
            self._service.ledger.close()
        self._close_leftover_sessions()
        self._example += 1
        data = self.workdir / "examples" / f"{self._example:04d}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        lead = Lead(self.checkpoint, data, offer_ttl_s=1e9, step_timeout_s=60.0, session_key=self._session_key,
                    direct=self.direct)
        # The spec routes over every live offer: it does not model demotion (a routing preference the lead
        # applies after repeated outages, issue 12), so the kill/hang actions must not demote anyone here.
        lead.registry.demote_after = 1 << 30
        service = AuditService(self.checkpoint, data / "ledger.sqlite", self._lead_key, self.audit_p, self.audit_seed,
                               self.tolerance, lead.registry.eject, lead_id=self.lead_id, device=self.device,
                               verifier=self.verifier, probation_requests=0, escrow_window=IMPL_ESCROW_WINDOW)
        self.escrow_terms = EscrowTerms(self.audit_p, 0, IMPL_ESCROW_WINDOW)
        lead.attach_audit(service)
        self._lead, self._service = lead, service
        self._summaries: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        try:
            if self._lead is not None:
                self._call(self._lead.close(), timeout=30)
            if getattr(self, "_server", None) is not None:
                self._call(self._server.stop(grace=0.5), timeout=30)
        except Exception:  # noqa: BLE001 - closing must go on to the processes
            pass
        if self._procs is not None:
            self._procs.close()
            self._procs = None
        if self._service is not None:
            self._service.ledger.close()
            self._service = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # --- registry ----------------------------------------------------------------------------------
    def public_key(self, name: str) -> bytes:
        return bytes(self._keys[name].verify_key)

    def _close_leftover_sessions(self) -> None:
        """Close, at every provider, the sessions of the previous example's requests (the lead uses the
        request id as session id, and ids repeat across examples so that reruns are deterministic)."""
        import grpc

        from verisplit.impl.node import verisplit_pb2 as pb
        from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc

        if not self._used_ids:
            return
        for fields in self._pool.values():
            with grpc.insecure_channel(fields.endpoint) as channel:
                stub = pb_grpc.ProviderStub(channel)
                for session_id in self._used_ids:
                    try:
                        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=5)
                    except grpc.RpcError:
                        pass  # not open there: nothing to close
        self._used_ids.clear()

    def add_offer(self, template: ProviderTemplate, price: int) -> OfferResult:
        from verisplit.impl.records.keys import sign_offer
        from verisplit.impl.node.registry import RegistryError

        fields = replace(self._pool[template.name], price_per_work_unit=price, issued_at_ms=int(time.time() * 1000))
        try:
            self._lead.registry.register(fields, sign_offer(fields, self._keys[template.name]))
        except RegistryError as exc:
            return OfferResult(False, exc.message)
        return OfferResult(True)

    def registered(self) -> dict[str, Offer]:
        return {o.provider_id: o for o in self._lead.registry.offers()}

    def banned_keys(self) -> frozenset[bytes]:
        return frozenset(bytes.fromhex(k) for k in self._lead.registry.banned())

    def eject(self, provider_id: str, reason: str) -> EjectResult:
        # The reference lead exposes no ejection request: only its audit hook ejects (with evidence).
        return EjectResult(False, "the lead has no ejection interface; only failed audits/chain checks eject")

    def route(self) -> RouteResult:
        from verisplit.impl.node.lead import NoCohortError

        try:
            cohort, _ = self._lead.route()
        except NoCohortError as exc:
            return RouteResult(None, _no_coverage_layer(str(exc)))
        return RouteResult(cohort)

    # --- requests ----------------------------------------------------------------------------------
    supports_faults = True

    def run_request(self, request_id: str, prompt_len: int, max_tokens: int, seed: int,
                    fault: Any = None) -> RequestObservation:
        """Run one request on the real lead. With ``fault`` (``adapters.Fault``), once ``after_tokens``
        tokens came, the provider in use for ``fault.segment`` fails: "kill" cuts the lead's channel to
        it (a dead stream; the process lives on), "hang" freezes its process (SIGSTOP, a missed step
        deadline; SIGCONT after the request). It is reported healthy again afterwards, since the spec's
        registry has no suspension (the provider is back for the next request)."""
        import signal

        from verisplit.impl.node.hops import CohortError
        from verisplit.impl.node.lead import NoCohortError, SamplingParams
        from verisplit.spec.faults import is_outage
        from verisplit.spec.recovery import effective_cohort

        rng = _prompt(prompt_len, seed, self.vocab)
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0 if seed == 0 else 1.0, top_p=1.0, seed=seed,
                                stop_token_ids=())
        try:
            run = self._lead.start(rng, params)
        except NoCohortError as exc:
            return RequestObservation(request_id, None, 0, (), VALID, error="no_coverage",
                                      error_layer=_no_coverage_layer(str(exc)))
        run.request_id = request_id  # the harness's id, so audit selection is reproducible across runs
        self._used_ids.add(request_id)
        frozen: list[int] = []
        victims: list[str] = []

        async def inject() -> None:
            triples = [(r.segment_index, r.at_step, r.assignment) for r in run.replacements]
            victim = effective_cohort(run.cohort, triples, len(run.steps)).assignments[fault.segment].provider_id
            victims.append(victim)
            endpoint = self._lead.registry.get(victim).fields.endpoint
            if fault.kind == "hang":
                pid = self._procs.children[[c.name for c in self._procs.children].index(victim)].process.pid
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
            else:
                channel, _ = self._lead._channels.pop(endpoint)
                await channel.close()

        async def drive() -> tuple[ChainVerdict, str | None]:
            verdict, outage = VALID, None
            count = 0
            try:
                async for _ in run.tokens():
                    count += 1
                    if fault is not None and count == fault.after_tokens and count < max_tokens:
                        await inject()
            except CohortError as exc:
                verdict = ChainVerdict(False, exc.link, exc.culprit, exc.reason, exc.detail)
                outage = exc.reason if is_outage(exc.reason) else None
            finally:
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            await self._lead.drain_hooks()
            return verdict, outage

        verdict, outage = self._call(drive())
        for victim in victims:
            self._lead.registry.report_healthy(victim)
        steps = []
        for s in run.steps:
            steps.append(StepObservation(s.step, s.first_position, s.num_positions, s.first_input_digest,
                                         tuple(s.commitments), tuple(digest_encoded(b) for b in s.inputs),
                                         tuple(digest_encoded(b) for b in s.outputs)))
        replacements = tuple(
            ReplacementObservation(r.segment_index, r.at_step, r.reason, r.assignment, r.replay_commitment,
                                   tuple(st.inputs[r.segment_index] for st in run.steps[:r.at_step]),
                                   digest_encoded(r.replay_output) if r.replay_commitment else bytes(32))
            for r in run.replacements)
        info = self._lead.request_info(request_id) or {}
        self._summaries[request_id] = info
        return RequestObservation(request_id, run.cohort, run.fee, tuple(steps), verdict, tuple(run.generated),
                                  audit_seed_commitment=run.seed_commitment, outage=outage, replacements=replacements)

    def audit(self, request_id: str) -> list[AuditVerdict]:
        from verisplit.impl.audit.verifier import verdict_from_dict

        info = self._summaries.get(request_id) or {}
        if info.get("hook_errors"):
            raise ImplAdapterError(f"audit hook failed for {request_id}: {info['hook_errors']}")
        return [verdict_from_dict(a) for a in info.get("audits", []) if a.get("source") == "audit"]

    def escrow_book(self) -> dict[str, Any]:
        """The lead's escrow book as its ledger records it (replayed by ``Ledger.escrow_book``)."""
        return self._service.ledger.escrow_book()

    def revealed_seed(self, request_id: str) -> bytes | None:
        """The seed the lead's audit service revealed in the finished request's summary."""
        seed = (self._summaries.get(request_id) or {}).get("audit_seed")
        return bytes.fromhex(seed) if isinstance(seed, str) else None

    def chain_finding(self, request_id: str) -> dict[str, Any] | None:
        """The audit service's own chain analysis of the record (culprit, link, reason), if any."""
        info = self._summaries.get(request_id) or {}
        for a in info.get("audits", []):
            if a.get("source") == "chain":
                return {"culprit": a["provider_id"], "link": a["segment_index"]}
        return None

    def settle(self, request_id: str) -> Settlement:
        record = self._service.ledger.get(request_id)
        if record is None:
            raise ImplAdapterError(f"ledger: no record for {request_id}")
        return _settlement(record.body)

    def ledger(self) -> list[Settlement]:
        return [_settlement(r.body) for r in self._service.ledger.records()]


def _settlement(body: dict[str, Any]) -> Settlement:
    return Settlement(int(body["fee"]), str(body["lead"]), {str(k): int(v) for k, v in body["payouts"].items()},
                      int(body["residual"]), int(body["refund"]),
                      frozenset(body["failed"]) | frozenset(body.get("forfeited") or ()),  # R3: the spec's failed set
                      {str(k): int(v) for k, v in (body.get("values") or {}).items()})


def _prompt(prompt_len: int, seed: int, vocab: int) -> list[int]:
    h = hashlib.sha256(f"conformance-prompt/{prompt_len}/{seed}".encode()).digest()
    return [(h[i % 32] + 7 * i) % vocab for i in range(prompt_len)]


def _no_coverage_layer(message: str) -> int | None:
    found = re.search(r"covers layer (\d+)", message)
    if found:
        return int(found.group(1))
    return 0 if "no provider has registered" in message else None


class _PoolRegistry:
    """The Registry gRPC service the provider processes register with: verified offers go to the
    adapter's pool (not listed for routing); heartbeats always answer ``known`` so providers never
    re-register. ``ImplAdapter.add_offer`` lists them on the live registry."""

    def __init__(self, adapter: ImplAdapter) -> None:
        self.adapter = adapter

    async def Register(self, request: Any, context: Any) -> Any:
        import grpc

        from verisplit.impl.node import verisplit_pb2 as pb
        from verisplit.impl.records.keys import offer_signature_valid
        from verisplit.impl.node.framing import offer_fields_from_pb

        fields = offer_fields_from_pb(request.offer)
        if not offer_signature_valid(fields, bytes(request.signature)):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "signature: offer does not verify")
        self.adapter._pool[fields.provider_id] = fields
        return pb.RegisterResponse(provider_id=fields.provider_id, heartbeat_interval_ms=1000, offer_ttl_ms=10**9,
                                   lead_public_key=bytes(self.adapter._session_key.verify_key))

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        from verisplit.impl.node import verisplit_pb2 as pb

        return pb.HeartbeatResponse(known=True)


def describe_pool(templates: tuple[ProviderTemplate, ...]) -> str:
    return json.dumps([t.to_dict() for t in templates])


if sys.platform == "win32":  # pragma: no cover
    raise ImportError("the implementation adapter needs POSIX process groups")
