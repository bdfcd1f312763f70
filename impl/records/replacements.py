"""The record of a mid-request replacement (rules R1-R2 of ``verisplit.spec.recovery``), as kept in a
request record's ``extra["replacements"]``.

Invariant: ``Replacement.from_dict(r.to_dict()) == r``; the replay's output bytes travel base64-encoded
(its commitment's ``output_digest`` pins them, and the audit checks that before using them).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from verisplit.spec.cohort import Assignment
from verisplit.spec.commitment import BoundaryCommitment, commitment_from_dict, commitment_to_dict


@dataclass
class Replacement:
    """Segment ``segment_index`` was taken over by ``assignment`` from step ``at_step`` on, after
    ``failed_provider`` was lost to the outage ``reason``; the replay (rule R2) if ``at_step`` > 0."""

    segment_index: int
    at_step: int
    failed_provider: str
    reason: str
    detail: str
    assignment: Assignment
    price: int
    replay_commitment: BoundaryCommitment | None = None
    replay_output: bytes = b""
    recovery_s: float = 0.0  # from the outage's detection to the replacement ready (open + replay)

    def to_dict(self) -> dict[str, Any]:
        a = self.assignment
        return {"segment_index": self.segment_index, "at_step": self.at_step, "failed_provider": self.failed_provider,
                "reason": self.reason, "detail": self.detail, "price": self.price,
                "assignment": {"provider_id": a.provider_id, "public_key": a.public_key.hex(),
                               "first_layer": a.first_layer, "end_layer": a.end_layer},
                "replay_commitment": commitment_to_dict(self.replay_commitment) if self.replay_commitment else None,
                "replay_output": base64.b64encode(self.replay_output).decode("ascii"),
                "recovery_s": round(self.recovery_s, 6)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Replacement":
        a = d["assignment"]
        commitment = d.get("replay_commitment")
        return cls(int(d["segment_index"]), int(d["at_step"]), str(d["failed_provider"]), str(d["reason"]),
                   str(d.get("detail", "")), Assignment(str(a["provider_id"]), bytes.fromhex(a["public_key"]),
                                                        int(a["first_layer"]), int(a["end_layer"])),
                   int(d["price"]), commitment_from_dict(commitment) if commitment else None,
                   base64.b64decode(d.get("replay_output") or ""), float(d.get("recovery_s", 0.0)))


def replacements_of(record: Any) -> list[Replacement]:
    """The replacements a record names (``extra["replacements"]``); none for records without."""
    raw = (getattr(record, "extra", None) or {}).get("replacements") or []
    return [Replacement.from_dict(r) for r in raw]


def spec_replacements(replacements: list[Replacement]) -> list[tuple[int, int, Assignment]]:
    """The ``(segment_index, at_step, assignment)`` triples ``spec.recovery.effective_cohort`` takes."""
    return [(r.segment_index, r.at_step, r.assignment) for r in replacements]
