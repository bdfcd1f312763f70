"""The lead's post-request hook: chain analysis, sampled audits, settlement, ledger, ejection.

For a finished ``RequestRecord`` it (1) re-derives each step's verdict with the spec's
``check_exchanged_chain`` (H1-H4) on the recorded bytes, counting work units only for valid
links (layer work x positions, exactly as ``verisplit.spec.protocol`` does); (2) audits each
segment selected by the commit-reveal rule ``is_audited(seed, request_id, k, p_k)`` over the steps
it served validly, p_k being 1 while segment k's key is on probation (``impl/audit/franchise.py``); (3) settles with the spec's ``settle`` (failed = chain culprit + failed audits;
full refund when nothing was served, as ``expected_settlement``); (4) appends one signed ledger
record (whose escrow section holds each key's payout, vests what its window releases and forfeits
what a failed key held); (5) ejects every failed provider (if it already left the registry, its key is banned all the
same); (6) returns a JSON-ready summary. Aborts that are no protocol failure (outages, ``verisplit.spec.faults``) credit the accepted links and blame nobody.

Invariants: only providers with a failing verdict (chain or audit) are ejected or forfeit; the
seed is fixed at construction and only its commitment is published until ``reveal``; an audit
that cannot run (unusable evidence, load failure) blames nobody and is reported under ``errors``.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nacl.signing import SigningKey

from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.records.ledger import Ledger, LedgerError, settlement_body
from verisplit.impl.audit.franchise import Franchise, probabilities_text
from verisplit.impl.audit.recovered import cohort_at, replay_failure, signer_views
from verisplit.impl.audit.verifier import EvidenceError, Verifier, record_context, verdict_to_dict
from verisplit.impl.records.replacements import replacements_of
from verisplit.spec.audit import AuditVerdict, Tolerance, is_audited, request_seed, seed_commitment
from verisplit.impl.runtime.tensors import boundary_facts
from verisplit.spec.commitment import MISSING_LINK, StepContext, boundary_spec, check_boundary, check_exchanged_chain
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import is_protocol_failure
from verisplit.spec.cohort import Cohort
from verisplit.spec.settlement import Settlement, settle


@dataclass
class ChainAnalysis:
    """Work served per provider over valid links, steps served validly per segment, and the first
    chain/receipt failure (segment ``link`` of step ``step``, provider ``culprit``), if any."""

    work: dict[str, int]
    valid_steps: list[int]
    culprit: str | None = None
    link: int | None = None
    step: int | None = None
    reason: str = ""
    detail: str = ""
    notes: list[str] = field(default_factory=list)
    forfeited: set[str] = field(default_factory=set)  # lost to an outage and replaced (rule R3): no payout, no blame


def boundary_failures(step_record: Any, context: StepContext, num_segments: int,
                      sizes: tuple[int, int] | None) -> list[tuple[str, str] | None]:
    """Rule H5 on every recorded output of one step (nothing judged when ``sizes`` = (hidden, vocab)
    is unknown)."""
    if sizes is None:
        return []
    out: list[tuple[str, str] | None] = []
    for index, blob in enumerate(step_record.outputs[:num_segments]):
        expected = boundary_spec(index, num_segments, context.dtype, context.num_positions, sizes[0], sizes[1])
        out.append(check_boundary(*boundary_facts(blob), expected))
    return out


def analyse_chain(record: Any, layer_work: Sequence[int] | None = None,
                  sizes: tuple[int, int] | None = None) -> ChainAnalysis:
    """Chain + receipt verdict of every recorded step (stopping at the first failure) and the work
    served. ``layer_work[i]`` is layer i's work per position (1 each by default)."""
    assignments = record.cohort.assignments
    replacements = replacements_of(record)
    work = {a.provider_id: 0 for a in assignments}
    for r in replacements:
        work.setdefault(r.assignment.provider_id, 0)
    valid_steps = [0 for _ in assignments]
    analysis = ChainAnalysis(work, valid_steps, forfeited={r.failed_provider for r in replacements} & set(work))

    def units(index: int, cohort: Any = record.cohort) -> int:
        a = cohort.assignments[index]
        if layer_work is None:
            return a.end_layer - a.first_layer
        return sum(layer_work[a.first_layer:a.end_layer])

    non_protocol_abort = getattr(record, "status", "") == "aborted" and not is_protocol_failure(getattr(record, "reason", None))
    extra = getattr(record, "extra", None) or {}
    abort_link = extra.get("link") if isinstance(extra.get("link"), int) else None

    cohort = record.cohort

    def credit(good: int, positions: int) -> None:
        for index in range(good):
            work[cohort.assignments[index].provider_id] += units(index, cohort) * positions
            valid_steps[index] += 1

    for position, step_record in enumerate(record.steps):
        context = record_context(record, step_record)
        cohort = cohort_at(record, replacements, step_record.step)
        for r in replacements:  # rule R2: a replacement's replay, checked before the step it joined at
            if r.at_step != step_record.step or r.at_step == 0:
                continue
            failure = replay_failure(record, r)
            if failure is not None:
                analysis.culprit, analysis.link, analysis.step = r.assignment.provider_id, r.segment_index, r.at_step - 1
                analysis.reason, analysis.detail = failure[0], f"replay: {failure[1]}"
                return analysis
            assert r.replay_commitment is not None
            work[r.assignment.provider_id] += units(r.segment_index, cohort) * r.replay_commitment.num_positions
        # A commitment whose exchanged bytes were not recorded counts as not received (missing_link there).
        known = min(len(step_record.commitments), len(step_record.inputs), len(step_record.outputs))
        verdict = check_exchanged_chain(cohort, step_record.commitments[:known], step_record.first_input_digest,
                                        [digest_encoded(b) for b in step_record.inputs[:known]],
                                        [digest_encoded(b) for b in step_record.outputs[:known]], context,
                                        boundary_failures(step_record, context, len(assignments), sizes),
                                        getattr(step_record, "upstream_commitments", [])[:known])
        last = position == len(record.steps) - 1
        if not verdict.valid and last and non_protocol_abort and verdict.reason == MISSING_LINK and verdict.link == known:
            # The step was cut short by an outage (a provider unreachable, erroring, slow, or sending an
            # output of the wrong shape): links the lead accepted earn, nobody is a culprit.
            credit(known if abort_link is None else min(known, abort_link), step_record.num_positions)
            analysis.notes.append(f"aborted without a protocol failure ({getattr(record, 'reason', '')}) at step "
                                  f"{step_record.step}: no culprit")
            return analysis
        if verdict.valid:
            credit(len(assignments), step_record.num_positions)
            continue
        link = min(verdict.link if verdict.link is not None else len(assignments), len(assignments))
        credit(link, step_record.num_positions)
        assignments = cohort.assignments
        analysis.link, analysis.reason, analysis.detail = min(link, len(assignments) - 1), verdict.reason or "", verdict.detail
        analysis.culprit = verdict.culprit
        analysis.step = step_record.step
        return analysis
    recorded = getattr(record, "culprit", None)
    if recorded and non_protocol_abort:
        analysis.notes.append(f"aborted without a protocol failure ({getattr(record, 'reason', '')}) by "
                              f"{recorded!r}: no culprit")
    elif recorded:
        ids = [a.provider_id for a in assignments]
        if recorded in ids:
            analysis.culprit, analysis.link = recorded, ids.index(recorded)
            analysis.reason = str(getattr(record, "reason", "") or "reported by the lead")
            analysis.detail = "failure reported by the lead outside the recorded steps"
        else:
            analysis.notes.append(f"record names culprit {recorded!r}, who is not in the cohort")
    return analysis


def settle_request(fee: int, work: dict[str, int], prices: Mapping[str, int], lead: str, failed: set[str]) -> Settlement:
    """The spec's ``settle`` over the work served at the prices the cohort members offered when the
    request was routed (rule S0 refunds the whole fee when nothing of value was served)."""
    failed_known = frozenset(p for p in failed if p in work)
    return settle(fee, work, {p: prices[p] for p in work if p in prices}, lead, failed_known)


def settlement_to_dict(s: Settlement) -> dict[str, Any]:
    return {"fee": s.fee, "lead": s.lead, "payouts": dict(s.payouts), "values": dict(s.values),
            "residual": s.residual, "refund": s.refund, "failed": sorted(s.failed)}


class AuditService:
    """Plug-in for the lead's ``post_request_hooks`` (``await service(record) -> dict``)."""

    def __init__(self, checkpoint_dir: str | Path, ledger_path: str | Path, lead_signing_key: SigningKey,
                 audit_p: Fraction, seed: bytes | None, tolerance: Tolerance,
                 eject: Callable[[str, str], None], *, lead_id: str = "lead",
                 device: str | None = None, dtype: str | None = None,
                 layer_work: Sequence[int] | None = None, verifier: Verifier | None = None,
                 ban_key: Callable[[bytes, str], None] | None = None,
                 probation_requests: int = 0, escrow_window: int = 0) -> None:
        p = Fraction(audit_p)
        if not 0 <= p <= 1:
            raise ValueError(f"audit_p: must be in [0, 1], got {audit_p}")
        if seed is not None and (not isinstance(seed, bytes) or len(seed) < 16):
            raise ValueError("seed: must be at least 16 bytes")
        self.audit_p = p
        # The lead's audit secret: each request's seed is request_seed(secret, request_id) (rule A1);
        # only per-request seeds ever leave this object, each after its request's audits are done.
        self._secret = seed if seed is not None else os.urandom(32)
        self.tolerance = tolerance
        self.lead_signing_key = lead_signing_key
        self.lead_id = lead_id
        self.layer_work = layer_work
        self._eject = eject
        # Fallback when ``eject`` raises KeyError (provider no longer listed): ban its key directly.
        # Default: the ``ban_key`` of the object ``eject`` is bound to (the lead's ``Registry``).
        self._ban_key = ban_key if ban_key is not None else getattr(getattr(eject, "__self__", None), "ban_key", None)
        self.verifier = verifier or Verifier(checkpoint_dir, device=device, dtype=dtype)
        config = ModelConfig.from_dir(checkpoint_dir)
        self.sizes = (config.hidden_size, config.vocab_size)  # for rule H5 on recorded outputs
        self.ledger = Ledger(ledger_path)
        # Franchise (issue 11, impl/audit/franchise.py): probation probabilities per key, escrow terms.
        self.franchise = Franchise(p, probation_requests, escrow_window)
        self._lock = threading.Lock()

    def seed_commitment_for(self, request_id: str) -> bytes:
        """H(seed) of ``request_id``: sent in its signed session openings before the first step."""
        return seed_commitment(request_seed(self._secret, request_id))

    def selected(self, request_id: str, segments: int, probabilities: Sequence[Fraction] | None = None) -> list[int]:
        """The segments rule A2 selects under the request's own seed (rule A1); segment k at
        ``probabilities[k]`` (probation, rule P1) if given, else at the operator's p."""
        seed = request_seed(self._secret, request_id)
        return [k for k in range(segments)
                if is_audited(seed, request_id, k, self.audit_p if probabilities is None else probabilities[k])]

    async def __call__(self, record: Any) -> dict[str, Any]:
        """Audit, settle and record ``record`` (audits in a worker thread), then eject the failed."""
        result, failed = await asyncio.to_thread(self.process, record)
        ejected: list[str] = []
        keys = {a.provider_id: a.public_key for a in record.cohort.assignments}
        for provider_id, reason in failed.items():
            try:
                try:
                    self._eject(provider_id, reason)
                except KeyError:
                    # Already gone from the registry (left or expired): still ban the key it signed with.
                    if self._ban_key is None:
                        raise
                    self._ban_key(keys[provider_id], reason, provider_id)
                ejected.append(provider_id)
            except Exception as exc:  # noqa: BLE001 - report, never lose the settlement
                result["errors"].append(f"eject {provider_id!r}: {exc}")
        result["ejected"] = ejected
        return result

    async def settle_pending(self, store: Any) -> list[str]:
        """Crash recovery at lead start: settle, oldest first, every request ``store`` recorded that the
        ledger does not hold (a lead killed after saving a record, before appending its settlement).
        Exactly once: ids already in the ledger are skipped, and ``Ledger.append`` refuses a second
        record of one request. Returns the ids settled now."""
        from verisplit.impl.records.requests import RecordError

        done = self.ledger.request_ids()
        settled: list[str] = []
        for request_id in store.list_ids():
            if request_id in done:
                continue
            try:
                record = store.load(request_id)
            except (RecordError, OSError, ValueError, KeyError):
                continue
            result = await self(record)
            if result.get("ledger_seq") is not None:
                settled.append(request_id)
            try:
                store.save_extras(request_id, result)
            except (RecordError, OSError):
                pass
        return settled

    def process(self, record: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """Everything but ejection: returns (summary, failed provider -> reason)."""
        with self._lock:
            return self._process(record)

    def _process(self, record: Any) -> tuple[dict[str, Any], dict[str, str]]:
        analysis = analyse_chain(record, self.layer_work, self.sizes)
        assignments = record.cohort.assignments
        verdicts: list[tuple[str, AuditVerdict]] = []
        errors: list[str] = list(analysis.notes)
        seed = request_seed(self._secret, record.request_id)
        sent = (getattr(record, "extra", None) or {}).get("audit_seed_commitment")
        if sent is not None and sent != seed_commitment(seed).hex():
            errors.append("the record's audit-seed commitment is not this service's for the request")
        if analysis.culprit is not None and analysis.link is not None:
            reason = f"chain: {analysis.reason}" + (f" at step {analysis.step}" if analysis.step is not None else "")
            if analysis.detail:
                reason += f" ({analysis.detail})"
            verdicts.append(("chain", AuditVerdict(record.request_id, analysis.link, analysis.culprit, False,
                                                   math.inf, math.inf, reason)))
        # -- franchise: per-segment audit probability from the key's history (probation, P1) --
        try:
            probabilities = self.franchise.segment_probabilities(record.cohort, self.ledger.escrow_book())
        except LedgerError as exc:  # history unreadable: audit every segment
            errors.append(f"franchise: {exc}; auditing every segment")
            probabilities = [Fraction(1)] * len(assignments)
        # -- end franchise --
        audited_segments = self.selected(record.request_id, len(assignments), probabilities)
        for index in audited_segments:
            if analysis.valid_steps[index] == 0:
                continue
            for view, steps in signer_views(record, index, analysis.valid_steps[index]):  # each signer on its own steps
                if view.cohort.assignments[index].provider_id == analysis.culprit:
                    continue  # already failed by the chain
                try:
                    verdict = self.verifier.audit(view, index, self.tolerance, steps=steps)
                except (EvidenceError, ValueError, OSError) as exc:
                    errors.append(f"audit of segment {index}: {exc}")
                    continue
                verdicts.append(("audit", verdict))
        failed: dict[str, str] = {}
        for _, verdict in verdicts:
            if not verdict.passed and verdict.provider_id not in failed:
                failed[verdict.provider_id] = verdict.reason or "failed audit"
        fee = int(getattr(record, "fee", 0) or 0)
        prices = dict(getattr(record, "prices", None) or {})
        forfeited = frozenset(analysis.forfeited - set(failed))  # rule R3: slice refunded, nobody ejected
        settlement = settle_request(fee, analysis.work, prices, self.lead_id, set(failed) | forfeited)
        audits = [dict(verdict_to_dict(v), source=source) for source, v in verdicts]
        chain = None
        if analysis.culprit is not None:
            chain = {"culprit": analysis.culprit, "link": analysis.link, "step": analysis.step,
                     "reason": analysis.reason, "detail": analysis.detail}
        members = Cohort(record.cohort.model_id, record.cohort.assignments
                         + tuple(r.assignment for r in replacements_of(record)))
        body = settlement_body(request_id=record.request_id, model_id=record.model_id, cohort=members, forfeited=forfeited,
                               work=analysis.work, settlement=settlement, prices=prices, audits=audits, chain=chain,
                               extra={"audit_seed_commitment": seed_commitment(seed).hex(), "audit_seed": seed.hex(),
                                      "audit_p": str(self.audit_p),
                                      "tolerance": {"dtype": self.tolerance.dtype, "atol": self.tolerance.atol,
                                                    "rtol": self.tolerance.rtol}},
                               escrow_terms=self.franchise.terms())
        if forfeited:
            body["extra"]["replacements"] = [{k: v for k, v in r.to_dict().items() if k != "replay_output"}
                                             for r in replacements_of(record)]
        ledger_seq: int | None = None
        escrow: dict[str, Any] | None = None
        try:
            appended = self.ledger.append(body, self.lead_signing_key)
            ledger_seq = appended.seq
            escrow = dict(self.franchise.summary(appended.body), audit_p=probabilities_text(probabilities))
        except LedgerError as exc:
            errors.append(f"ledger: {exc}")
        summary = {"audits": audits, "settlement": dict(settlement_to_dict(settlement), work=dict(analysis.work), prices=prices),
                   "ejected": sorted(failed), "audit_seed_commitment": seed_commitment(seed).hex(),
                   # the reveal (rule A1): only now, with the chain final and the audits done
                   "audit_seed": seed.hex(), "audited_segments": audited_segments,
                   "ledger_seq": ledger_seq, "escrow": escrow, "errors": errors,
                   "ledger_head": f"{self.ledger.head[0]}:{self.ledger.head[1]}", "forfeited": sorted(forfeited)}
        return summary, failed
