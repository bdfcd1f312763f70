"""Cohort formation: choose providers whose layer ranges tile the model exactly, at least cost.

Rules (docs/spec.md, "Cohort formation"):
- C1 an assignment is a non-empty sub-range of its provider's offer;
- C2 assignments tile [0, num_layers) exactly, in order (no gap, no overlap);
- C3 a provider (identity = its key) appears at most once;
- C4 ``form_cohort`` returns the cheapest such cohort; ties: fewer hops, then provider ids, then
  boundaries (lexicographic), so the choice is a deterministic function of the offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from verisplit.spec.arith import all_of, any_of, is_symbolic, ite
from verisplit.spec.validation import (is_int, require_instance, require_int, require_same_length, require_sequence,
                                       require_str)


class NoCoverage(ValueError):
    """No cohort can tile the model; ``layer`` is the first layer no offer covers."""

    def __init__(self, layer: int, num_layers: int) -> None:
        super().__init__(f"no offer covers layer {layer} (model has layers 0..{num_layers - 1})")
        self.layer = layer


class InvalidOffer(ValueError):
    """An offer is malformed (the message names the provider and the field)."""


class InvalidModel(ValueError):
    """A ``ModelSpec`` is malformed (the message starts with the field: model_id, num_layers, layer_work)."""


class InvalidCohort(ValueError):
    """A cohort, assignment, segment list or quote argument is malformed (the message names the field).

    Raised for ill-typed input only; a well-typed cohort that breaks rules C1-C3 is not an error but a
    list of ``Violation``s (``cohort_violations``)."""


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
        """Raise ``InvalidModel`` naming the field unless model_id is a str, num_layers an int >= 1 and
        layer_work empty (1 per layer) or one int >= 1 per layer (never bool or float)."""
        require_str(self.model_id, "model_id", InvalidModel)
        require_int(self.num_layers, "num_layers", InvalidModel, minimum=1)
        if not isinstance(self.layer_work, (tuple, list)):
            raise InvalidModel(f"layer_work: must be a tuple of integers, got {type(self.layer_work).__name__}")
        if not self.layer_work:
            object.__setattr__(self, "layer_work", tuple([1] * self.num_layers))
        object.__setattr__(self, "layer_work", tuple(self.layer_work))
        if len(self.layer_work) != self.num_layers:
            raise InvalidModel(f"layer_work: {len(self.layer_work)} entries for {self.num_layers} layers")
        for index, work in enumerate(self.layer_work):
            if not is_int(work):
                raise InvalidModel(f"layer_work: entry {index} must be an integer, got {work!r}")
            if work < 1:
                raise InvalidModel("layer_work: every layer's work must be >= 1")


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


def _require_model(model: Any) -> "ModelSpec":
    return require_instance(model, ModelSpec, "model", InvalidModel)


def _require_offers(offers: Any) -> list["Offer"]:
    items = require_sequence(offers, "offers", InvalidOffer)
    for index, offer in enumerate(items):
        require_instance(offer, Offer, f"offers[{index}]", InvalidOffer)
    return items


def _require_cohort(cohort: Any) -> "Cohort":
    """``cohort`` if it is a Cohort whose assignments are well-typed, else ``InvalidCohort`` naming the field."""
    require_instance(cohort, Cohort, "cohort", InvalidCohort)
    require_str(cohort.model_id, "cohort.model_id", InvalidCohort)
    if not isinstance(cohort.assignments, tuple):
        raise InvalidCohort(f"cohort.assignments: must be a tuple, got {type(cohort.assignments).__name__}")
    for index, a in enumerate(cohort.assignments):
        where = f"cohort.assignments[{index}]"
        require_instance(a, Assignment, where, InvalidCohort)
        require_str(a.provider_id, f"{where}.provider_id", InvalidCohort)
        if not isinstance(a.public_key, bytes):
            raise InvalidCohort(f"{where}.public_key: must be bytes, got {type(a.public_key).__name__}")
        require_int(a.first_layer, f"{where}.first_layer", InvalidCohort)
        require_int(a.end_layer, f"{where}.end_layer", InvalidCohort)
    return cohort


def segment_work(model: ModelSpec, first_layer: int, end_layer: int) -> int:
    """Work units of layers [first_layer, end_layer) for one token position (sum of layer work).

    Requires ``0 <= first_layer <= end_layer <= num_layers`` (else ``InvalidCohort`` naming the field)."""
    _require_model(model)
    require_int(first_layer, "first_layer", InvalidCohort, minimum=0, maximum=model.num_layers)
    require_int(end_layer, "end_layer", InvalidCohort, minimum=first_layer, maximum=model.num_layers)
    total = 0
    for layer in range(first_layer, end_layer):
        total += model.layer_work[layer]
    return total


def validate_offer(offer: Offer) -> None:
    """Raise ``InvalidOffer`` naming the field if the offer is malformed: provider_id a non-empty str,
    public_key 32 bytes, first_layer an int >= 0, end_layer an int > first_layer, price_per_work_unit
    an int >= 0 (never bool or float), endpoint a str."""
    if not isinstance(offer, Offer):
        raise InvalidOffer(f"offer: must be an Offer, got {type(offer).__name__}")
    if not isinstance(offer.provider_id, str):
        raise InvalidOffer(f"offer: provider_id must be a string, got {offer.provider_id!r}")
    if not offer.provider_id:
        raise InvalidOffer("offer: provider_id must be non-empty")
    who = f"offer from '{offer.provider_id}'"
    for name in ("first_layer", "end_layer", "price_per_work_unit"):
        value = getattr(offer, name)
        if not is_int(value):
            raise InvalidOffer(f"{who}: {name} must be an integer, got {value!r}")
    if offer.first_layer < 0:
        raise InvalidOffer(f"{who}: first_layer {offer.first_layer} is negative")
    if offer.end_layer <= offer.first_layer:
        raise InvalidOffer(f"{who}: end_layer {offer.end_layer} must exceed first_layer {offer.first_layer}")
    if offer.price_per_work_unit < 0:
        raise InvalidOffer(f"{who}: price_per_work_unit {offer.price_per_work_unit} is negative")
    if not isinstance(offer.public_key, bytes):
        raise InvalidOffer(f"{who}: public_key must be bytes, got {type(offer.public_key).__name__}")
    if len(offer.public_key) != 32:
        raise InvalidOffer(f"{who}: public_key must be 32 bytes (Ed25519), got {len(offer.public_key)}")
    if not isinstance(offer.endpoint, str):
        raise InvalidOffer(f"{who}: endpoint must be a string, got {offer.endpoint!r}")


def _segment_lists(firsts: Any, ends: Any) -> tuple[list[Any], list[Any]]:
    """firsts/ends as lists of equal length, each entry an int (not bool) or a Z3 term."""
    first_list = require_sequence(firsts, "firsts", InvalidCohort)
    end_list = require_sequence(ends, "ends", InvalidCohort)
    require_same_length(first_list, end_list, "firsts, ends", InvalidCohort)
    for name, values in (("firsts", first_list), ("ends", end_list)):
        for index, value in enumerate(values):
            if not (is_int(value) or is_symbolic(value)):
                raise InvalidCohort(f"{name}[{index}]: must be an integer, got {value!r}")
    return first_list, end_list


def _require_layers(num_layers: Any) -> Any:
    if not (is_int(num_layers) or is_symbolic(num_layers)):
        raise InvalidCohort(f"num_layers: must be an integer, got {num_layers!r}")
    return num_layers


def tiling_conditions(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> list[Any]:
    """The conditions whose conjunction is rule C2 (exact, ordered tiling of [0, num_layers)).

    ``firsts`` and ``ends`` must have equal length (segment k is [firsts[k], ends[k])); a length
    mismatch or a non-integer entry raises ``InvalidCohort`` (nothing is cut short as ``zip`` would).
    Condition k (k < n) says segment k starts where segment k-1 ended (0 for k = 0) and is
    non-empty; the last condition says the final segment ends at ``num_layers``. Works on ints and
    on Z3 Ints. Z3: ``tiling_iff`` in proofs/z3/check_tiling.py; Lean: ``Verisplit.tiles_iff_coverage``.
    """
    first_list, end_list = _segment_lists(firsts, ends)
    _require_layers(num_layers)
    conditions: list[Any] = []
    previous_end: Any = 0
    for index in range(len(first_list)):
        first, end = first_list[index], end_list[index]
        conditions.append(all_of(first == previous_end, first < end))
        previous_end = end
    conditions.append(previous_end == num_layers)
    return conditions


def tiles_exactly(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> Any:
    """Rule C2 as one predicate: at least one segment (``firsts`` non-empty) and the conjunction of
    ``tiling_conditions``; equal-length inputs required (``InvalidCohort`` otherwise).
    Z3: ``tiling_iff`` (proofs/z3/check_tiling.py); Lean: ``Verisplit.tiles_iff_coverage``."""
    conditions = tiling_conditions(firsts, ends, num_layers)
    if len(conditions) == 1:  # no segment
        return False
    return all_of(*conditions)


RANGE_VIOLATIONS = ("gap", "overlap", "empty_range", "out_of_bounds")


def range_violation_conditions(firsts: Sequence[Any], ends: Sequence[Any], num_layers: Any) -> list[list[tuple[str, Any]]]:
    """The layer-range part of ``cohort_violations`` as conditions, one list per segment index plus a
    last list for the trailing gap: ``(kind, condition)`` pairs, the violation present iff its
    condition holds. Segment k (with ``previous_end`` the furthest end so far, 0 at the start):
    ``gap`` first > previous_end, ``overlap`` first < previous_end, ``empty_range`` end <= first,
    ``out_of_bounds`` first < 0 or end > num_layers; trailing ``gap``: previous_end < num_layers.
    Runs on ints and on Z3 Ints (equal-length inputs required, ``InvalidCohort`` otherwise).

    Invariant: no condition holds iff ``tiles_exactly(firsts, ends, num_layers)`` (num_layers >= 1).
    Z3: ``violations_iff_tiling`` (proofs/z3/check_tiling.py); Lean: ``Verisplit.noRangeViolations_iff_tiles``.
    """
    first_list, end_list = _segment_lists(firsts, ends)
    _require_layers(num_layers)
    rows: list[list[tuple[str, Any]]] = []
    previous_end: Any = 0
    for index in range(len(first_list)):
        first, end = first_list[index], end_list[index]
        rows.append([("gap", first > previous_end), ("overlap", first < previous_end), ("empty_range", end <= first),
                     ("out_of_bounds", any_of(first < 0, end > num_layers))])
        previous_end = ite(end > previous_end, end, previous_end)
    rows.append([("gap", previous_end < num_layers)])
    return rows


def _range_detail(kind: str, first: int, end: int, previous_end: int, num_layers: int) -> str:
    if kind == "gap":
        return f"layers [{previous_end}, {first}) are not assigned"
    if kind == "overlap":
        return f"layers [{first}, {previous_end}) assigned twice"
    if kind == "empty_range":
        return f"range [{first}, {end}) is empty"
    return f"range [{first}, {end}) leaves [0, {num_layers})"


def cohort_violations(cohort: Cohort, model: ModelSpec, offers: Sequence[Offer]) -> list[Violation]:
    """Every violated rule of C1-C3 for ``cohort``; the empty list means the cohort is valid.

    Per segment, in order: the layer-range violations of ``range_violation_conditions`` (gap,
    overlap, empty_range, out_of_bounds), then unknown_provider or outside_offer / wrong_key, then
    duplicate_provider; last, a trailing gap (an empty cohort is one gap at segment 0). Ill-typed
    input raises ``InvalidCohort`` / ``InvalidModel`` / ``InvalidOffer`` naming the field.

    Invariant: empty iff ``tiles_exactly`` holds, every assignment lies inside its provider's
    offer with the offer's key, and no provider repeats. Z3: ``cohort_violations_bridge`` (the whole
    function, exhaustively on small cases), ``router_valid`` (proofs/z3/check_tiling.py); the layer-range
    part is ``range_violation_conditions``, proved symbolically. Lean: ``Verisplit.noRangeViolations_iff_tiles``.
    """
    _require_cohort(cohort)
    _require_model(model)
    offer_list = _require_offers(offers)
    by_id = {offer.provider_id: offer for offer in offer_list}
    firsts = [a.first_layer for a in cohort.assignments]
    ends = [a.end_layer for a in cohort.assignments]
    rows = range_violation_conditions(firsts, ends, model.num_layers)
    violations: list[Violation] = []
    seen: set[str] = set()
    seen_keys: set[bytes] = set()
    previous_end = 0
    for index, assignment in enumerate(cohort.assignments):
        first, end = assignment.first_layer, assignment.end_layer
        for kind, holds in rows[index]:
            if holds:
                violations.append(Violation(kind, index, _range_detail(kind, first, end, previous_end, model.num_layers)))
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
        elif assignment.public_key in seen_keys:
            violations.append(Violation("duplicate_provider", index, "the assignment's key already serves another segment"))
        seen.add(assignment.provider_id)
        seen_keys.add(assignment.public_key)
        previous_end = max(previous_end, end)
    for kind, holds in rows[-1]:
        if holds:
            violations.append(Violation(kind, len(cohort.assignments),
                                        f"layers [{previous_end}, {model.num_layers}) are not assigned"))
    return violations


def cohort_cost(cohort: Cohort, model: ModelSpec, offers: Sequence[Offer]) -> int:
    """Price of one token position through the cohort: sum of price x segment work.

    Requires a cohort without violations of the offers given (every provider has an offer, every
    range inside the model), else ``InvalidCohort`` naming the assignment."""
    _require_cohort(cohort)
    _require_model(model)
    for offer in _require_offers(offers):
        validate_offer(offer)
    by_id = {offer.provider_id: offer for offer in offers}
    total = 0
    for index, a in enumerate(cohort.assignments):
        if a.provider_id not in by_id:
            raise InvalidCohort(f"cohort.assignments[{index}].provider_id: '{a.provider_id}' has no offer")
        if not 0 <= a.first_layer <= a.end_layer <= model.num_layers:
            raise InvalidCohort(f"cohort.assignments[{index}]: range [{a.first_layer}, {a.end_layer}) is outside the model")
        total += by_id[a.provider_id].price_per_work_unit * segment_work(model, a.first_layer, a.end_layer)
    return total


def first_uncovered_layer(offers: Sequence[Offer], num_layers: int) -> int | None:
    """The smallest layer no offer covers, or None. Tiling without provider repeats exists iff None
    (greedy furthest-reach never needs a provider twice, because offers are intervals).
    Offers are validated (``InvalidOffer``); num_layers must be an int >= 1 (``InvalidModel``)."""
    for offer in _require_offers(offers):
        validate_offer(offer)
    require_int(num_layers, "num_layers", InvalidModel, minimum=1)
    for layer in range(num_layers):
        if not any(o.first_layer <= layer < o.end_layer for o in offers):
            return layer
    return None


def firsts_from_ends(ends: Sequence[Any]) -> list[Any]:
    """``form_cohort``'s reconstruction of assignments from its chosen end boundaries: segment 0
    starts at 0 and segment k+1 starts where segment k ends. Runs on ints and on Z3 Ints.

    Invariant: with ``0 < ends[0] < ends[1] < ... < ends[-1] = L`` the segments
    ``[firsts_from_ends(ends)[k], ends[k])`` tile [0, L) exactly. Z3: ``router_reconstruction``
    (proofs/z3/check_tiling.py)."""
    end_list = require_sequence(ends, "ends", InvalidCohort)
    firsts: list[Any] = []
    start: Any = 0
    for end in end_list:
        firsts.append(start)
        start = end
    return firsts


ROUTER_CANDIDATES_PER_LAYER = 8  # k: the router considers, per layer, only the k cheapest offers covering it

RankKey = tuple[int, int, tuple[str, ...], tuple[int, ...]]  # (cost, hops, provider ids, end boundaries)


def router_candidates(offers: Sequence[Offer], num_layers: int, k: int = ROUTER_CANDIDATES_PER_LAYER) -> list[Offer]:
    """The offers ``form_cohort`` searches: for every layer, the ``k`` cheapest offers covering it (ties:
    provider id), as one list sorted by provider id. At most ``k * num_layers`` offers however many are
    listed; every layer some offer covers is still covered (each keeps at least one), so coverage, and
    with it the existence of a repeat-free tiling, is unchanged. ``k`` must be an int >= 1
    (``InvalidCohort``). Z3: ``router_valid`` (proofs/z3/check_tiling.py)."""
    require_int(k, "k", InvalidCohort, minimum=1)
    chosen: dict[str, Offer] = {}
    for layer in range(num_layers):
        covering = [o for o in offers if o.first_layer <= layer < o.end_layer]
        covering.sort(key=lambda o: (o.price_per_work_unit, o.provider_id))
        for offer in covering[:k]:
            chosen[offer.provider_id] = offer
    return [chosen[p] for p in sorted(chosen)]


def _prefix_work(model: ModelSpec) -> list[int]:
    prefix = [0]
    for work in model.layer_work:
        prefix.append(prefix[-1] + work)
    return prefix


def _cheapest_any(ordered: Sequence[Offer], model: ModelSpec) -> RankKey | None:
    """The best ranking key over tilings that may use an offer more than once (C3 relaxed): a shortest
    path over layer positions, O(num_layers^2 x offers). A lower bound for the C3-constrained search."""
    num_layers = model.num_layers
    prefix = _prefix_work(model)
    best: list[RankKey | None] = [None] * (num_layers + 1)
    best[num_layers] = (0, 0, (), ())
    for position in range(num_layers - 1, -1, -1):
        found: RankKey | None = None
        for offer in ordered:
            if not offer.first_layer <= position < offer.end_layer:
                continue
            for end in range(position + 1, min(offer.end_layer, num_layers) + 1):
                rest = best[end]
                if rest is None:
                    continue
                cost = offer.price_per_work_unit * (prefix[end] - prefix[position]) + rest[0]
                candidate = (cost, rest[1] + 1, (offer.provider_id,) + rest[2], (end,) + rest[3])
                if found is None or candidate < found:
                    found = candidate
        best[position] = found
    return best[0]


ROUTER_SEARCH_BUDGET = 4000  # states the exact C3 search may expand before the router answers greedily


def _relaxed_bounds(ordered: Sequence[Offer], model: ModelSpec) -> list[tuple[int, int] | None]:
    """For every position p, the (cost, hops) of the best relaxed completion from p (None: none)."""
    num_layers = model.num_layers
    prefix = _prefix_work(model)
    best: list[tuple[int, int] | None] = [None] * (num_layers + 1)
    best[num_layers] = (0, 0)
    for position in range(num_layers - 1, -1, -1):
        found: tuple[int, int] | None = None
        for offer in ordered:
            if not offer.first_layer <= position < offer.end_layer:
                continue
            for end in range(position + 1, min(offer.end_layer, num_layers) + 1):
                rest = best[end]
                if rest is not None:
                    candidate = (offer.price_per_work_unit * (prefix[end] - prefix[position]) + rest[0], rest[1] + 1)
                    if found is None or candidate < found:
                        found = candidate
        best[position] = found
    return best


def _furthest_reach(ordered: Sequence[Offer], model: ModelSpec) -> RankKey:
    """A C3-valid tiling found greedily: from each position, the unused offer covering it that reaches
    furthest (ties: cheaper, then smaller id), used to its end. Never repeats an offer: every offer
    used before ends at or before the current position. Requires full coverage."""
    prefix = _prefix_work(model)
    position, cost, ids, ends = 0, 0, [], []
    while position < model.num_layers:
        covering = [o for o in ordered if o.first_layer <= position < o.end_layer]
        pick = min(covering, key=lambda o: (-min(o.end_layer, model.num_layers), o.price_per_work_unit, o.provider_id))
        end = min(pick.end_layer, model.num_layers)
        cost += pick.price_per_work_unit * (prefix[end] - prefix[position])
        ids.append(pick.provider_id)
        ends.append(end)
        position = end
    return (cost, len(ids), tuple(ids), tuple(ends))


def _cheapest_repeat_free(ordered: Sequence[Offer], model: ModelSpec,
                          budget: int = ROUTER_SEARCH_BUDGET) -> RankKey | None:
    """The best ranking key over tilings that use each offer at most once (C3): best-first search over
    states (next layer, used offers whose range reaches past it), a partial tiling ranked by its key
    plus the relaxed bound of its position (a lower bound of every completion, so the first complete
    tiling taken is the optimum). An offer ending at or before the next layer cannot be used again and
    is dropped from the state. After ``budget`` expanded states the greedy ``_furthest_reach`` tiling
    is answered instead, so the search is bounded by budget x offers x layers."""
    import heapq

    num_layers = model.num_layers
    prefix = _prefix_work(model)
    reach = {offer.provider_id: offer.end_layer for offer in ordered}
    bound = _relaxed_bounds(ordered, model)
    start = bound[0]
    if start is None:
        return None
    heap: list[tuple[int, int, tuple[str, ...], tuple[int, ...], int, int, int, frozenset[str]]] = [
        (start[0], start[1], (), (), 0, 0, 0, frozenset())]
    closed: set[tuple[int, frozenset[str]]] = set()
    expanded = 0
    while heap:
        _, _, ids, ends, position, cost, hops, used = heapq.heappop(heap)
        if position == num_layers:
            return (cost, hops, ids, ends)
        if (position, used) in closed:
            continue
        closed.add((position, used))
        expanded += 1
        if expanded > budget:
            return _furthest_reach(ordered, model)
        for offer in ordered:
            if offer.provider_id in used or not (offer.first_layer <= position < offer.end_layer):
                continue
            for end in range(position + 1, min(offer.end_layer, num_layers) + 1):
                rest = bound[end]
                if rest is None:
                    continue
                live = frozenset(p for p in used | {offer.provider_id} if reach[p] > end)
                if (end, live) in closed:
                    continue
                g = cost + offer.price_per_work_unit * (prefix[end] - prefix[position])
                heapq.heappush(heap, (g + rest[0], hops + 1 + rest[1], ids + (offer.provider_id,), ends + (end,),
                                      end, g, hops + 1, live))
    return None


def form_cohort(offers: Sequence[Offer], model: ModelSpec) -> Cohort:
    """The cheapest valid cohort (rules C1-C4) over ``router_candidates(offers)``, or ``NoCoverage``
    naming the first unreachable layer. Malformed input raises ``InvalidOffer`` / ``InvalidModel``
    naming the field; two offers under one id or one key raise ``InvalidOffer`` (the registry lists
    one offer per key, so C3 "one key, one segment" is "one offer, one segment").

    Search (docs/spec.md, "Router complexity"): first the relaxed shortest path over layer positions
    (``_cheapest_any``, polynomial); when its best tiling uses no offer twice it is the exact optimum,
    since the C3-valid tilings are a subset of those it ranks. Only when the relaxed optimum reuses an
    offer (an offer bracketing a cheaper one inside its own range) does the exact C3 search run, on the
    at most ``k x num_layers`` candidates. Same ranking key either way: cost, hops, ids, boundaries.
    Z3: ``router_valid`` (the whole function, exhaustively and on seeded random registries,
    proofs/z3/check_tiling.py); its reconstruction step is ``firsts_from_ends``, proved symbolically.
    Tests: brute-force optimality (tests/test_spec_cohort.py, tests/test_router_bounded.py).
    """
    _require_model(model)
    offer_list = _require_offers(offers)
    for offer in offer_list:
        validate_offer(offer)
    ids = [offer.provider_id for offer in offer_list]
    if len(set(ids)) != len(ids):
        raise InvalidOffer("offers: a provider_id appears in more than one offer")
    keys = [offer.public_key for offer in offer_list]
    if len(set(keys)) != len(keys):  # rule C3 is on keys: one identity, one offer, one segment
        raise InvalidOffer("offers: a public_key appears in more than one offer")
    gap = first_uncovered_layer(offer_list, model.num_layers)
    if gap is not None:
        raise NoCoverage(gap, model.num_layers)
    ordered = router_candidates(offer_list, model.num_layers)
    best = _cheapest_any(ordered, model)
    if best is not None and len(set(best[2])) != len(best[2]):
        best = _cheapest_repeat_free(ordered, model)
    if best is None:  # unreachable: full coverage implies a repeat-free tiling exists
        raise NoCoverage(0, model.num_layers)
    by_id = {offer.provider_id: offer for offer in offer_list}
    ends = list(best[3])
    firsts = firsts_from_ends(ends)
    assignments: list[Assignment] = []
    for index, provider_id in enumerate(best[2]):
        assignments.append(Assignment(provider_id, by_id[provider_id].public_key, firsts[index], ends[index]))
    return Cohort(model.model_id, tuple(assignments))


def quote_fee(cohort: Cohort, model: ModelSpec, offers: Sequence[Offer], positions: int) -> int:
    """The client's fee for ``positions`` token positions: sum of price x work over the cohort.

    ``positions`` must be an int >= 0 (``InvalidCohort`` naming positions, a ``ValueError``), so the fee
    is never negative; the cohort must be priceable (see ``cohort_cost``)."""
    require_int(positions, "positions", InvalidCohort, minimum=0)
    return cohort_cost(cohort, model, offers) * positions
