"""What the lead publishes: request records, live offers and the audit settings, as JSON-ready dicts.

Pure functions of the lead's state; no I/O. ``commitments_checked`` counts the commitments that
passed the lead's receipt checks (the failing one of an aborted request is not counted).
"""

from __future__ import annotations

from typing import Any, Sequence

from verisplit.impl.node.registry import Registry
from verisplit.impl.records.keys import fingerprint
from verisplit.impl.records.requests import RequestRecord, cohort_to_dict
from verisplit.spec.cohort import Offer
from verisplit.spec.commitment import commitment_to_dict
from verisplit.spec.faults import is_protocol_failure


def request_view(record: RequestRecord, offers: Sequence[Offer] = ()) -> dict[str, Any]:
    """The public info of one request (``GET /v1/requests/{id}``), endpoints taken from ``offers``."""
    endpoints = {o.provider_id: o.endpoint for o in offers}
    cohort = cohort_to_dict(record.cohort)
    for a in cohort["assignments"]:
        a["endpoint"] = endpoints.get(a["provider_id"])
        a["fingerprint"] = fingerprint(bytes.fromhex(a["public_key"]))
    failed_link = 1 if record.status == "aborted" and is_protocol_failure(record.reason) else 0
    return {
        "id": record.request_id, "object": "verisplit.request", "model": record.model_id, "status": record.status,
        "culprit": record.culprit, "reason": record.reason, "detail": record.extra.get("detail"),
        "link": record.extra.get("link"), "fee": record.fee, "cohort": cohort,
        "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                  "total_tokens": record.prompt_tokens + record.completion_tokens},
        "prompt_token_ids": record.extra.get("prompt_token_ids"),
        "completion_token_ids": record.extra.get("completion_token_ids"),
        "finish_reason": record.extra.get("finish_reason"),
        "dtype": record.extra.get("dtype"),
        # H(seed) as every provider signed it before serving; the seed itself ("audit_seed") is added
        # by the audit service only once this request's audits are done (rule A1)
        "audit_seed_commitment": record.extra.get("audit_seed_commitment"),
        "owner": record.extra.get("owner"),  # the creating key's id; the API checks it and never shows it
        "tensors_discarded": record.tensors_discarded,
        # a speculative request's counts and rule K2's parameters (k, max_ngram, max_tokens); None otherwise
        "speculative": record.extra.get("speculative"),
        # providers replaced mid-request (rules R1-R3), without the replay's output bytes
        "replacements": [{k: v for k, v in r.items() if k != "replay_output"} for r in record.extra.get("replacements", [])],
        "commitments_checked": sum(len(s.commitments) for s in record.steps) - failed_link,
        "steps": [{"step": s.step, "first_position": s.first_position, "num_positions": s.num_positions,
                   "first_input_digest": s.first_input_digest.hex(),
                   "commitments": [commitment_to_dict(c) for c in s.commitments]} for s in record.steps],
    }


def providers_view(registry: Registry) -> list[dict[str, Any]]:
    """The live offers (``GET /v1/providers``)."""
    out = []
    for e in registry.entries():
        f = e.fields
        out.append({"provider_id": f.provider_id, "first_layer": f.first_layer, "end_layer": f.end_layer,
                    "price_per_work_unit": f.price_per_work_unit, "endpoint": f.endpoint,
                    "public_key": f.public_key.hex(), "fingerprint": fingerprint(f.public_key),
                    "weights_digest": f.weights_digest.hex(), "kv_capacity_tokens": f.kv_capacity_tokens,
                    "protocol_version": f.protocol_version,
                    "last_seen_s_ago": round(registry.clock() - e.last_seen, 3),
                    "routable": e.proven and e.suspended is None, "proven": e.proven, "suspended": e.suspended,
                    "outages": e.outages})
    return out


def audit_view(service: Any) -> dict[str, Any]:
    """What the lead publishes about auditing: p and the tolerance. Seeds are per request (rule A1): a
    request's seed commitment is in its signed session openings and commitments, and the seed itself
    only in its record once its audits are done, so nothing here can predict a live selection."""
    if service is None:
        return {"enabled": False, "p": "0", "seeds": "none"}
    p = service.audit_p
    return {"enabled": p > 0, "p": f"{p.numerator}/{p.denominator}",
            "seeds": "per request: HMAC of the lead's secret and the request id; H(seed) is signed into every "
                     "session opening and commitment, the seed is revealed in /v1/requests/{id} after the audits",
            "tolerance": {"dtype": service.tolerance.dtype, "atol": service.tolerance.atol,
                          "rtol": service.tolerance.rtol}}
