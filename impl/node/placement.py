"""``provider serve --layers auto``: choose the layer range the lead's registry most needs.

The provider reads the live offers from the lead's ``GET /v1/providers`` (plain HTTP, no change to
the Registry gRPC) and the model from ``GET /v1/models``, then ``choose_range`` picks, among the
windows of ``length`` consecutive layers, in this order of preference (like Petals' automatic block
choice, which serves the blocks with the least throughput):

1. the most layers that no live offer covers (fill gaps first);
2. the least coverage: the smallest sum, over the window, of how many offers cover each layer;
3. the cheapest to fill: the smallest cost of the cheapest cohort (the spec's ``form_cohort``) once
   this provider's offer is added at its price (a window that still leaves a gap counts as infinite);
4. the lowest first layer.

``length`` (``auto:N``) defaults to: the longest uncovered run when there is a gap; else the median
length of the live offers; the whole model when there are none. The choice is made once at startup
from a snapshot: providers that start at the same moment may choose the same range.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

from verisplit.spec.cohort import InvalidOffer, ModelSpec, NoCoverage, Offer, cohort_cost, form_cohort

log = logging.getLogger("verisplit.provider")


class PlacementError(ValueError):
    """The range cannot be chosen (lead unreachable, other model, bad N)."""


@dataclass(frozen=True)
class Choice:
    first_layer: int
    end_layer: int
    uncovered: int   # layers of the window no live offer covered
    coverage: int    # sum over the window of offers covering each layer
    cost: float      # cost of the cheapest cohort with this offer added (inf: still a gap)

    def describe(self) -> str:
        cost = "no complete cohort yet" if math.isinf(self.cost) else f"cheapest cohort cost {int(self.cost)}"
        return (f"layers {self.first_layer}:{self.end_layer} ({self.uncovered} uncovered, coverage {self.coverage}, "
                f"{cost})")


def parse_auto(value: str) -> int | None:
    """``auto`` -> 0 (length chosen), ``auto:N`` -> N; anything else -> None (not an auto request)."""
    text = value.strip().lower()
    if text == "auto":
        return 0
    head, sep, tail = text.partition(":")
    if head == "auto" and sep:
        if not tail.isdigit() or int(tail) < 1:
            raise PlacementError(f"--layers: {value!r}: N in auto:N must be a positive integer")
        return int(tail)
    return None


def coverage(offers: Sequence[Offer], num_layers: int) -> list[int]:
    """How many offers cover each layer."""
    counts = [0] * num_layers
    for offer in offers:
        for layer in range(max(0, offer.first_layer), min(num_layers, offer.end_layer)):
            counts[layer] += 1
    return counts


def default_length(offers: Sequence[Offer], num_layers: int) -> int:
    counts = coverage(offers, num_layers)
    longest = run = 0
    for count in counts:
        run = run + 1 if count == 0 else 0
        longest = max(longest, run)
    if longest:
        return longest
    if not offers:
        return num_layers
    lengths = sorted(o.end_layer - o.first_layer for o in offers)
    return max(1, min(num_layers, lengths[len(lengths) // 2]))


def choose_range(offers: Sequence[Offer], model: ModelSpec, price: int, length: int = 0,
                 me: str = "auto-candidate") -> Choice:
    """The window the registry most needs (module docstring); ``length`` 0 picks the default length."""
    n = model.num_layers
    size = length or default_length(offers, n)
    if not 1 <= size <= n:
        raise PlacementError(f"--layers: auto:{size} asks for {size} layers, the model has {n}")
    counts = coverage(offers, n)
    others = [o for o in offers if o.provider_id != me]
    keys = {o.public_key for o in others}
    own_key = bytes(32)
    while own_key in keys:  # rule C3 is on keys: the candidate needs one of its own
        own_key = (int.from_bytes(own_key, "big") + 1).to_bytes(32, "big")
    best: tuple[Any, ...] | None = None
    chosen: Choice | None = None
    for first in range(0, n - size + 1):
        window = counts[first:first + size]
        candidate = Offer(me, own_key, first, first + size, price, "127.0.0.1:1")
        try:
            cost: float = float(cohort_cost(form_cohort([*others, candidate], model), model, [*others, candidate]))
        except (NoCoverage, InvalidOffer):
            cost = math.inf
        choice = Choice(first, first + size, sum(1 for c in window if c == 0), sum(window), cost)
        key = (-choice.uncovered, choice.coverage, choice.cost, first)
        if best is None or key < best:
            best, chosen = key, choice
    assert chosen is not None
    return chosen


def offers_from_view(rows: Sequence[dict[str, Any]]) -> list[Offer]:
    """``GET /v1/providers`` rows as spec ``Offer``s."""
    out = []
    for row in rows:
        out.append(Offer(str(row["provider_id"]), bytes.fromhex(row.get("public_key") or "00" * 32),
                         int(row["first_layer"]), int(row["end_layer"]), int(row["price_per_work_unit"]),
                         str(row.get("endpoint") or "")))
    return out


async def fetch_offers(lead_http: str, model_id: str, wait_s: float = 60.0) -> tuple[list[Offer], int]:
    """(live offers, num_layers) from the lead's HTTP API, retrying for ``wait_s`` while it is unreachable."""
    import httpx

    deadline = time.monotonic() + wait_s
    delay = 0.2
    async with httpx.AsyncClient(base_url=lead_http.rstrip("/"), timeout=5.0) as client:
        while True:
            try:
                models = (await client.get("/v1/models")).raise_for_status().json()["data"]
                rows = (await client.get("/v1/providers")).raise_for_status().json()["data"]
                break
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if time.monotonic() + delay > deadline:
                    raise PlacementError(f"--lead-http {lead_http}: cannot read the lead's offers ({exc})") from None
                log.info("--layers auto: lead HTTP %s not reachable yet (%s); retrying", lead_http, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except (KeyError, ValueError, TypeError) as exc:
                raise PlacementError(f"--lead-http {lead_http}: unexpected answer ({exc})") from None
    served = {m.get("id"): m for m in models if isinstance(m, dict)}
    if model_id not in served:
        raise PlacementError(f"--lead-http {lead_http}: the lead serves {sorted(map(str, served))}, "
                             f"this checkpoint is {model_id!r}")
    return offers_from_view(rows), int(served[model_id]["num_layers"])
