"""Recovery rules R1-R3 (``verisplit.spec.recovery``), checked on the spec's own functions.

PROVED (Z3):
- ``replacement_valid`` (part): ``covers`` on symbolic ints means every layer of the failed range is
  inside the replacement's offer (rule C1 holds for the replacement's assignment);
- ``replay_pinned``: for every number of replayed steps s <= 16, with an injective digest and any
  concatenation, two replays whose recorded inputs both pass ``replay_pinned`` against the same
  committed chain have the same input digest (the replay's input is fixed by the chain).

TESTED (concrete):
- ``replacement_valid`` (part): ``choose_replacement`` exhaustively over every set of <= 3 offers
  drawn from the intervals of a 4-layer model (prices 1-2), every failed range and exclusion set:
  None iff no admissible offer; otherwise the exact failed range, from an admissible offer, at the
  least (price, id);
- ``outage_refund_exact``: ``settle_parts`` with fee ``recovered_fee(values)`` and
  ``replacement_work`` values, exhaustively over N <= 3 providers, values 0..4, every failed pattern:
  each non-failed provider is paid exactly its value, the failed ones' values are refunded, residual 0.
"""

from __future__ import annotations

import itertools
import time
from typing import Iterator

import z3

from verisplit.proofs_z3.check_chain import INJECTIVE_DIGEST
from verisplit.proofs_z3.core import Evidence, Kind, Obligation, concrete, register, valid
from verisplit.spec.cohort import Assignment, Offer
from verisplit.spec.recovery import choose_replacement, covers, recovered_fee, replacement_work, replay_pinned
from verisplit.spec.settlement import settle_parts

CHOOSE = "verisplit.spec.recovery.choose_replacement"
COVERS = "verisplit.spec.recovery.covers"
PINNED = "verisplit.spec.recovery.replay_pinned"
CONTEXT = "verisplit.spec.recovery.replay_context"
CONCAT = "verisplit.spec.recovery.replay_input"
FEE = "verisplit.spec.recovery.recovered_fee"
WORK = "verisplit.spec.recovery.replacement_work"
PARTS = "verisplit.spec.settlement.settle_parts"


@register("replacement_valid", spec_functions=(CHOOSE, COVERS), evidence=Evidence.TESTED,
          bound="covers: symbolic ints; choose_replacement: exhaustive, <= 3 offers, L = 4")
def replacement_valid() -> Iterator[Obligation]:
    """The replacement covers exactly the failed range, from a non-excluded offer containing it, at the
    least (price, id); None exactly when no such offer exists."""
    of, oe, f, e, x = z3.Ints("of oe f e x")
    claim = z3.Implies(z3.And(f <= x, x < e), z3.And(of <= x, x < oe))
    yield valid("covers => every failed layer is inside the offer", claim, [covers(of, oe, f, e), f < e])
    start = time.perf_counter()
    layers = 4
    intervals = [(a, b) for a in range(layers) for b in range(a + 1, layers + 1)]
    shapes = [(a, b, price) for a, b in intervals for price in (1, 2)]
    for n in range(0, 4):
        for combo in itertools.combinations(shapes, n):
            offers = [Offer(f"p{k}", bytes([k + 1]) * 32, a, b, price, "e") for k, (a, b, price) in enumerate(combo)]
            for first, end in intervals:
                failed = Assignment("lost", bytes([99]) * 32, first, end)
                for mask in range(1 << n):
                    excluded = {f"p{k}" for k in range(n) if mask >> k & 1}
                    got = choose_replacement(offers, failed, excluded, {bytes([99]) * 32})
                    ok_offers = [o for o in offers if o.provider_id not in excluded and o.first_layer <= first
                                 and end <= o.end_layer]
                    if not ok_offers:
                        good = got is None
                    else:
                        best = min(ok_offers, key=lambda o: (o.price_per_work_unit, o.provider_id))
                        good = got == Assignment(best.provider_id, best.public_key, first, end)
                    if not good:
                        yield concrete("choose_replacement", False, time.perf_counter() - start,
                                       f"offers={combo} failed=[{first},{end}) excluded={sorted(excluded)}: {got}")
                        return
    yield concrete("choose_replacement exhaustive (L=4, <=3 offers)", True, time.perf_counter() - start)


@register("replay_pinned", spec_functions=(PINNED, CONTEXT, CONCAT), bound="s <= 16 replayed steps",
          assumes=(INJECTIVE_DIGEST,))
def replay_pinned_check() -> Iterator[Obligation]:
    """Two replays whose recorded inputs both match the committed input digests have equal inputs."""
    data = z3.DeclareSort("Bytes")
    digest = z3.DeclareSort("Digest")
    h = z3.Function("H", data, digest)
    h_inv = z3.Function("Hinv", digest, data)
    z = z3.Const("z", data)
    injective = z3.ForAll([z], h_inv(h(z)) == z)
    for s in range(1, 17):
        xs = [z3.Const(f"x{i}", data) for i in range(s)]
        ys = [z3.Const(f"y{i}", data) for i in range(s)]
        committed = [z3.Const(f"d{i}", digest) for i in range(s)]
        concat = z3.Function(f"Concat{s}", *([data] * s), data)
        hyps = [injective, replay_pinned(committed, [h(x) for x in xs]), replay_pinned(committed, [h(y) for y in ys])]
        yield valid(f"replay input fixed by the chain, s={s}", h(concat(*xs)) == h(concat(*ys)), hyps, "bounded")


@register("outage_refund_exact", spec_functions=(FEE, WORK, PARTS), evidence=Evidence.TESTED,
          bound="exhaustive: N <= 3, values 0..4, every failed pattern")
def outage_refund_exact() -> Iterator[Obligation]:
    """Fee = total value: payouts are exact values for the others, the failed values are refunded."""
    start = time.perf_counter()
    for n in range(1, 4):
        for values in itertools.product(range(5), repeat=n):
            if sum(values) == 0:
                continue
            fee = recovered_fee(list(values))
            for flags in itertools.product((False, True), repeat=n):
                payouts, residual, refund = settle_parts(fee, list(values), list(flags))
                want = [0 if f else v for v, f in zip(values, flags)]
                if payouts != want or residual != 0 or refund != sum(v for v, f in zip(values, flags) if f):
                    yield concrete("outage refund", False, time.perf_counter() - start,
                                   f"values={values} flags={flags}: {payouts} {residual} {refund}")
                    return
    for units, replay, served in itertools.product(range(4), repeat=3):
        if replacement_work(units, replay, served) != units * replay + units * served:
            yield concrete("replacement_work", False, time.perf_counter() - start, f"{units} {replay} {served}")
            return
    yield concrete("recovered fee pays exact values, refunds the forfeited", True, time.perf_counter() - start)


@register("replay_pinned_mutant_no_injectivity", kind=Kind.MUTANT, property="replay_pinned",
          spec_functions=(PINNED,), bound="s=2")
def replay_pinned_mutant() -> Iterator[Obligation]:
    """Mutant claim: without an injective digest the replay's input is still fixed by the chain
    (refuted: two different inputs with equal digests replay differently)."""
    data = z3.DeclareSort("Bytes")
    digest = z3.DeclareSort("Digest")
    h = z3.Function("H", data, digest)
    xs = [z3.Const(f"x{i}", data) for i in range(2)]
    ys = [z3.Const(f"y{i}", data) for i in range(2)]
    committed = [z3.Const(f"d{i}", digest) for i in range(2)]
    concat = z3.Function("Concat2", data, data, data)
    hyps = [replay_pinned(committed, [h(x) for x in xs]), replay_pinned(committed, [h(y) for y in ys])]
    yield valid("mutant replay fixed without injectivity, s=2", h(concat(*xs)) == h(concat(*ys)), hyps)
