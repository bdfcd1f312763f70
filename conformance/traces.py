"""JSON traces: the actions a run took (events in) and what the implementation did (outcomes out).

Format ``verisplit-conformance-trace`` version 1 (docs/conformance.md, "Traces")::

    {"format": "verisplit-conformance-trace", "version": 1,
     "adapter": {...Adapter.config()...},
     "steps": [{"index": 0, "rule": "add_offer", "args": {...}, "outcome": {...}}, ...],
     "result": "pass" | "divergence" | "error",
     "divergence": null | {"step": i, "rule": "...", "message": "..."}}

``replay`` re-runs a trace's actions (the ``args`` only) through a fresh harness, so a saved failure
reproduces with one command, and reports where the new outcomes drift from the recorded ones.
Invariant: a trace written by ``Trace.save`` loads back with ``Trace.load`` to an equal object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verisplit.spec.audit import AuditVerdict
from verisplit.spec.cohort import Cohort
from verisplit.spec.commitment import ChainVerdict, commitment_to_dict
from verisplit.spec.settlement import Settlement

TRACE_FORMAT = "verisplit-conformance-trace"
TRACE_VERSION = 1
RULES = ("add_offer", "form_cohort", "run_request", "audit", "settle", "eject")


class TraceError(ValueError):
    """A trace file is malformed; the message names the field."""


def cohort_to_dict(c: Cohort | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"model_id": c.model_id, "assignments": [[a.provider_id, a.first_layer, a.end_layer, a.public_key.hex()]
                                                    for a in c.assignments]}


def chain_verdict_to_dict(v: ChainVerdict) -> dict[str, Any]:
    return {"valid": v.valid, "link": v.link, "culprit": v.culprit, "reason": v.reason}


def verdict_to_dict(v: AuditVerdict) -> dict[str, Any]:
    return {"request_id": v.request_id, "segment_index": v.segment_index, "provider_id": v.provider_id,
            "passed": v.passed, "max_abs": _num(v.max_abs), "ratio": _num(v.ratio), "reason": v.reason}


def settlement_to_dict(s: Settlement) -> dict[str, Any]:
    return {"fee": s.fee, "lead": s.lead, "payouts": dict(s.payouts), "residual": s.residual, "refund": s.refund,
            "failed": sorted(s.failed)}


def step_to_dict(step: Any) -> dict[str, Any]:
    return {"step": step.step, "first_position": step.first_position, "num_positions": step.num_positions,
            "first_input_digest": step.first_input_digest.hex(),
            "commitments": [commitment_to_dict(c) for c in step.commitments],
            "sent_digests": [d.hex() for d in step.sent_digests],
            "received_digests": [d.hex() for d in step.received_digests]}


def _num(x: float) -> float | str:
    return x if x == x and x not in (float("inf"), float("-inf")) else repr(x)


@dataclass
class Trace:
    """An in-memory trace; ``steps`` grow as the harness acts."""

    adapter: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    result: str = "pass"
    divergence: dict[str, Any] | None = None

    @staticmethod
    def new(adapter_config: dict[str, Any]) -> "Trace":
        return Trace(adapter=dict(adapter_config))

    def add(self, rule: str, args: dict[str, Any], outcome: dict[str, Any]) -> None:
        self.steps.append({"index": len(self.steps), "rule": rule, "args": args, "outcome": outcome})

    def mark_divergence(self, rule: str, message: str) -> None:
        if self.divergence is None:
            self.result = "divergence"
            self.divergence = {"step": len(self.steps) - 1, "rule": rule, "message": message}

    def mark_error(self, message: str) -> None:
        if self.divergence is None:
            self.result = "error"
            self.divergence = {"step": len(self.steps) - 1, "rule": "error", "message": message}

    def to_dict(self) -> dict[str, Any]:
        return {"format": TRACE_FORMAT, "version": TRACE_VERSION, "adapter": self.adapter, "steps": self.steps,
                "result": self.result, "divergence": self.divergence}

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @staticmethod
    def from_dict(data: Any) -> "Trace":
        if not isinstance(data, dict):
            raise TraceError("trace: top level must be a JSON object")
        if data.get("format") != TRACE_FORMAT:
            raise TraceError(f"format: expected '{TRACE_FORMAT}', got {data.get('format')!r}")
        if data.get("version") != TRACE_VERSION:
            raise TraceError(f"version: unsupported trace version {data.get('version')!r} (this build reads {TRACE_VERSION})")
        if not isinstance(data.get("adapter"), dict) or "kind" not in data["adapter"]:
            raise TraceError("adapter: missing or not an object with a 'kind'")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise TraceError("steps: missing or not a list")
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or step.get("rule") not in RULES or not isinstance(step.get("args"), dict):
                raise TraceError(f"steps[{i}]: needs 'rule' (one of {RULES}) and an 'args' object")
        return Trace(adapter=data["adapter"], steps=steps, result=str(data.get("result", "pass")),
                     divergence=data.get("divergence"))

    @staticmethod
    def load(path: Path) -> "Trace":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TraceError(f"trace: no such file {path}") from None
        except json.JSONDecodeError as exc:
            raise TraceError(f"trace: {path} is not valid JSON ({exc})") from None
        return Trace.from_dict(data)


@dataclass
class ReplayReport:
    """Outcome of a replay: the new trace, its divergence (if any) and steps whose outcome drifted."""

    trace: Trace
    divergence: str | None
    drift: list[str]

    @property
    def ok(self) -> bool:
        return self.divergence is None


def run_action(harness: Any, rule: str, args: dict[str, Any]) -> dict[str, Any]:
    """Dispatch one trace step to the harness (the single path shared by the machine and replay)."""
    if rule == "add_offer":
        return harness.add_offer(str(args["name"]), int(args["price"]))
    if rule == "form_cohort":
        return harness.form_cohort()
    if rule == "run_request":
        fault = None
        if isinstance(args.get("fault"), dict):  # a kill / hang action (issue 13)
            from verisplit.conformance.adapters import Fault

            f = args["fault"]
            fault = Fault(str(f["kind"]), int(f["segment"]), int(f["after_tokens"]))
        return harness.run_request(int(args["prompt_len"]), int(args["max_tokens"]), int(args["seed"]), fault)
    if rule == "audit":
        return harness.audit(str(args["request_id"]))
    if rule == "settle":
        return harness.settle(str(args["request_id"]))
    if rule == "eject":
        return harness.eject(str(args["provider_id"]))
    raise TraceError(f"rule: unknown rule {rule!r}")


def replay(trace: Trace, adapter: Any = None) -> ReplayReport:
    """Re-run ``trace``'s actions on ``adapter`` (default: rebuilt from the trace's adapter config).

    Returns the first divergence from the spec (None if the replay conforms) and the indexes whose
    outcomes differ from the recorded ones (informative: a fixed bug changes outcomes)."""
    from verisplit.conformance.adapters import make_adapter
    from verisplit.conformance.harness import Divergence, Harness

    own = adapter is None
    if adapter is None:
        adapter = make_adapter(trace.adapter)
    harness = Harness(adapter, Trace.new(adapter.config()), namespace=trace.adapter.get("request_namespace"))
    drift: list[str] = []
    divergence: str | None = None
    try:
        for step in trace.steps:
            try:
                outcome = run_action(harness, step["rule"], step["args"])
            except Divergence as exc:
                divergence = f"step {step.get('index')}: {exc}"
                break
            recorded = step.get("outcome")
            if recorded is not None and json.loads(json.dumps(outcome)) != recorded:
                drift.append(f"step {step.get('index')} ({step['rule']}): outcome differs from the recorded one")
    finally:
        if own:
            adapter.close()
    return ReplayReport(harness.trace, divergence, drift)
