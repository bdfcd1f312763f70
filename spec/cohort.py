"""Cohort formation: choose providers whose layer ranges tile the model exactly, at least cost.

Rules (docs/spec.md, "Cohort formation"):
- C1 an assignment is a non-empty sub-range of its provider's offer;
- C2 assignments tile [0, num_layers) exactly, in order (no gap, no overlap);
- C3 a provider appears at most once;
- C4 ``form_cohort`` returns the cheapest such cohort; ties: fewer hops, then provider ids, then
  boundaries (lexicographic), so the choice is a deterministic function of the offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from verisplit.spec.arith import all_of


class NoCoverage(ValueError):
    """No cohort can tile the model; ``layer`` is the first layer no offer covers."""

    def __init__(self, layer: int, num_layers: int) -> None:
        super().__init__(f"no offer covers layer {layer} (model has layers 0..{num_layers - 1})")
        self.layer = layer


class InvalidOffer(ValueError):
    """An offer is malformed (the message names the provider and the field)."""


@dataclass(frozen=True)
class Offer:
    """A provider's standing offer to serve layers [first_layer, end_layer) (end exclusive)."""

    provider_id: str
    public_key: bytes
    first_layer: int
    end_layer: int
    price_per_work_unit: int
    endpoint: str


@dataclass(frozen=True)
class ModelSpec:
    """The model as the protocol sees it: an id, its layer count and the work of each layer."""

    model_id: str
    num_layers: int
    layer_work: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers: must be >= 1, got {self.num_layers}")
        if not self.layer_work:
            object.__setattr__(self, "layer_work", tuple([1] * self.num_layers))
        if len(self.layer_work) != self.num_layers:
            raise ValueError(f"layer_work: {len(self.layer_work)} entries for {self.num_layers} layers")
        if any(w < 1 for w in self.layer_work):
            raise ValueError("layer_work: every layer's work must be >= 1")


@dataclass(frozen=True)
class Assignment:
    """Provider ``provider_id`` (key ``public_key``) runs layers [first_layer, end_layer)."""

    provider_id: str
    public_key: bytes
    first_layer: int
    end_layer: int


@dataclass(frozen=True)
class Cohort:
    """An ordered chain of assignments; segment index k is ``assignments[k]``."""

    model_id: str
    assignments: tuple[Assignment, ...]

    @property
    def provider_ids(self) -> tuple[str, ...]:
        return tuple(a.provider_id for a in self.assignments)


@dataclass(frozen=True)
class Violation:
    """One broken cohort rule: ``kind`` is gap, overlap, empty_range, out_of_bounds,
    outside_offer, unknown_provider, wrong_key or duplicate_provider."""

    kind: str
    segment_index: int
    detail: str


def segment_work(model: ModelSpec, first_layer: int, end_layer: int) -> int:
    """Work units of layers [first_layer, end_layer) for one token position (sum of layer work)."""
    total = 0
    for layer in range(first_layer, end_layer):
        total += model.layer_work[layer]
    return total


def validate_offer(offer: Offer) -> None:
    """Raise ``InvalidOffer`` naming the field if the offer is malformed."""
    who = f"offer from '{offer.provider_id}'"
    if not offer.provider_id:
        raise InvalidOffer("offer: provider_id must be non-empty")
    if offer.first_layer < 0:
        raise InvalidOffer(f"{who}: first_layer {offer.first_layer} is negative")
    if offer.end_layer <= offer.first_layer:
        raise InvalidOffer(f"{who}: end_layer {offer.end_layer} must exceed first_layer {offer.first_layer}")
    if offer.price_per_work_unit < 0:
        raise InvalidOffer(f"{who}: price_per_work_unit {offer.price_per_work_unit} is negative")
    if len(offer.public_key) != 32:
        raise InvalidOffer(f"{who}: public_key must be 32 bytes (Ed25519), got {len(offer.public_key)}")


def tiling_conditions(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> list[Any]:
    """The conditions whose conjunction is rule C2 (exact, ordered tiling of [0, num_layers)).

    Condition k (k < n) says segment k starts where segment k-1 ended (0 for k = 0) and is
    non-empty; the last condition says the final segment ends at ``num_layers``. Works on ints and
    on Z3 Ints. Z3: ``tiling_iff`` in proofs/z3/check_tiling.py; Lean: ``Verisplit.tiles_iff_coverage``.
    """
    conditions: list[Any] = []
    previous_end: Any = 0
    for first, end in zip(firsts, ends):
        conditions.append(all_of(first == previous_end, first < end))
        previous_end = end
    conditions.append(previous_end == num_layers)
    return conditions


def tiles_exactly(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> Any:
    """Rule C2 as one predicate: the conjunction of ``tiling_conditions`` (and at least one segment)."""
    if len(firsts) == 0:
        return False
    return all_of(*tiling_conditions(firsts, ends, num_layers))


def cohort_violations(cohort: Cohort, model: ModelSpec, offers: Sequence[Offer]) -> list[Violation]:
    """Every violated rule of C1-C3 for ``cohort``; the empty list means the cohort is valid.

    Invariant: empty iff ``tiles_exactly`` holds, every assignment lies inside its provider's
    offer with the offer's key, and no provider repeats. Z3: ``tiling_iff``, ``router_valid``
    (proofs/z3/check_tiling.py); Lean: ``Verisplit.tiles_iff_coverage``.
    """
    violations: list[Violation] = []
    by_id = {offer.provider_id: offer for offer in offers}
    seen: set[str] = set()
    previous_end = 0
    if not cohort.assignments:
        return [Violation("gap", 0, f"empty cohort leaves layers [0, {model.num_layers}) uncovered")]
    for index, assignment in enumerate(cohort.assignments):
        first, end = assignment.first_layer, assignment.end_layer
        if first > previous_end:
            violations.append(Violation("gap", index, f"layers [{previous_end}, {first}) are not assigned"))
        if first < previous_end:
            violations.append(Violation("overlap", index, f"layers [{first}, {previous_end}) assigned twice"))
        if end <= first:
            violations.append(Violation("empty_range", index, f"range [{first}, {end}) is empty"))
        if first < 0 or end > model.num_layers:
            violations.append(Violation("out_of_bounds", index, f"range [{first}, {end}) leaves [0, {model.num_layers})"))
        offer = by_id.get(assignment.provider_id)
        if offer is None:
            violations.append(Violation("unknown_provider", index, f"'{assignment.provider_id}' has no offer"))
        else:
            if not (offer.first_layer <= first and end <= offer.end_layer):
                violations.append(Violation("outside_offer", index, f"[{first}, {end}) is outside offer [{offer.first_layer}, {offer.end_layer})"))
            if offer.public_key != assignment.public_key:
                violations.append(Violation("wrong_key", index, "assignment key differs from the offer's key"))
        if assignment.provider_id in seen:
            violations.append(Violation("duplicate_provider", index, f"'{assignment.provider_id}' appears twice"))
        seen.add(assignment.provider_id)
        previous_end = max(previous_end, end)
    if previous_end < model.num_layers:
        violations.append(Violation("gap", len(cohort.assignments), f"layers [{previous_end}, {model.num_layers}) are not assigned"))
    return violations


def cohort_cost(cohort: Cohort, model: ModelSpec, offers: Sequence[Offer]) -> int:
    """Price of one token position through the cohort: sum of price x segment work."""
    by_id = {offer.provider_id: offer for offer in offers}
    total = 0
    for a in cohort.assignments:
        total += by_id[a.provider_id].price_per_work_unit * segment_work(model, a.first_layer, a.end_layer)
    return total


def first_uncovered_layer(offers: Sequence[Offer], num_layers: int) -> int | None:
    """The smallest layer no offer covers, or None. Tiling without provider repeats exists iff None
    (greedy furthest-reach never needs a provider twice, because offers are intervals)."""
    for layer in range(num_layers):
        if not any(o.first_layer <= layer < o.end_layer for o in offers):
            return layer
    return None


def form_cohort(offers: Sequence[Offer], model: ModelSpec) -> Cohort:
    """The cheapest valid cohort (rules C1-C4), or ``NoCoverage`` naming the first unreachable layer.

    Exact search: dynamic programming over (next layer, providers used). Cost is exponential in the
    number of offers overlapping a layer only in the worst case; registries are small.
    Z3: ``router_valid`` (proofs/z3/check_tiling.py). Tests: brute-force optimality.
    """
    for offer in offers:
        validate_offer(offer)
    ids = [offer.provider_id for offer in offers]
    if len(set(ids)) != len(ids):
        raise InvalidOffer("offers: a provider_id appears in more than one offer")
    gap = first_uncovered_layer(offers, model.num_layers)
    if gap is not None:
        raise NoCoverage(gap, model.num_layers)
    ordered = sorted(offers, key=lambda o: o.provider_id)
    num_layers = model.num_layers

    @lru_cache(maxsize=None)
    def best_from(position: int, used: frozenset[str]) -> tuple[int, int, tuple[str, ...], tuple[int, ...]] | None:
        # key = (cost, hops, provider ids in order, end boundaries in order)
        if position == num_layers:
            return (0, 0, (), ())
        best: tuple[int, int, tuple[str, ...], tuple[int, ...]] | None = None
        for offer in ordered:
            if offer.provider_id in used or not (offer.first_layer <= position < offer.end_layer):
                continue
            for end in range(position + 1, min(offer.end_layer, num_layers) + 1):
                rest = best_from(end, used | {offer.provider_id})
                if rest is None:
                    continue
                cost = offer.price_per_work_unit * segment_work(model, position, end) + rest[0]
                candidate = (cost, rest[1] + 1, (offer.provider_id,) + rest[2], (end,) + rest[3])
                if best is None or candidate < best:
                    best = candidate
        return best

    best = best_from(0, frozenset())
    if best is None:  # unreachable: full coverage implies a repeat-free tiling exists
        raise NoCoverage(0, num_layers)
    by_id = {offer.provider_id: offer for offer in offers}
    assignments: list[Assignment] = []
    start = 0
    for provider_id, end in zip(best[2], best[3]):
        assignments.append(Assignment(provider_id, by_id[provider_id].public_key, start, end))
        start = end
    return Cohort(model.model_id, tuple(assignments))


def quote_fee(cohort: Cohort, model: ModelSpec, offers: Sequence[Offer], positions: int) -> int:
    """The client's fee for ``positions`` token positions: sum of price x work over the cohort."""
    return cohort_cost(cohort, model, offers) * positions
