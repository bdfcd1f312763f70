"""The franchise made real: probation for new keys and a vesting escrow of each key's own payouts.

An identity is an Ed25519 key, and a key is free: a banned provider is back under a fresh one at once,
so "future earnings" (the franchise F of ``deterrence.py``) deter nobody. What deters is what is
*held* when a provider cheats. Two rules make it real, both keyed by the provider's public key and
both replayable from the settlement ledger alone (docs/spec.md, "Franchise: probation and escrow"):

- **P1 probation**: a key's segment is audited at probability 1 until the key has served
  ``probation_requests`` (M) requests, then at the operator's p (``audit_probability``).
- **E1 vesting**: a key's payout from a request is held; it vests once the key has served
  ``escrow_window`` (V) later requests. The escrow is a window of the key's last V payouts, oldest
  first, zero-padded for a fresh key (``escrow_step``): a request the key served without failing
  pushes its payout in and releases the oldest (V = 0: payouts vest at once).
- **E2 forfeit**: a request in which the key fails (chain or audit; it is then ejected and banned)
  forfeits everything the key holds, plus that request's own payout (which rule S2 already makes 0).
  Forfeited amounts go back to the clients of the requests they were earned on (``FORFEIT_TO``).
- **E3 conservation**: for every key, and in total, ``held + vested + forfeited == paid`` (all payouts
  ever made to it), after every request (``account_step``).
- **E4 idle**: a request in which a key served no work and did not fail changes nothing for it (it is
  not a served request: neither probation nor vesting advance).
- **E5 resize**: when the operator changes V, a key's window is resized at its next request: a longer
  window is zero-padded at the old end, a shorter one releases its oldest amounts (``resize_window``).

A "served request" of a key is a settled request in which the key served work > 0 and did not fail;
``KeyAccount.served`` counts them. Requests, not seconds: the rules are deterministic functions of
the ledger's records, so ``ledger verify`` re-derives every held, vested and forfeited amount.
Amounts are integer currency units (like fees); probabilities are ``Fraction``s. The core functions
(``audit_probability``, ``window_total``, ``escrow_step``, ``account_step``, ``resize_window``) run on
ints and on Z3 terms (proofs/z3/check_escrow.py); ``settle_escrow`` applies them to a whole request.
Bad input raises ``InvalidEscrowInput`` (a ValueError) naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Collection, Mapping, Sequence

from verisplit.spec.arith import is_symbolic, ite
from verisplit.spec.validation import require_int, require_probability, require_sequence, require_str

FORFEIT_TO = "client_refund"  # forfeited escrow is refunded to the client of the request it was earned on
DEFAULT_PROBATION_REQUESTS = 20
DEFAULT_ESCROW_WINDOW = 10
MAX_ESCROW_WINDOW = 10_000


class InvalidEscrowInput(ValueError):
    """An argument of an escrow function is ill-typed or out of range; the message starts with the field."""


# ---- the rules on amounts (ints or Z3 terms) ----------------------------------------------------------

def audit_probability(p: Any, served: Any, probation_requests: Any) -> Any:
    """Rule P1: the probability at which a key's segment is audited, 1 while the key has served fewer
    than ``probation_requests`` requests, else the operator's ``p``.

    Concretely ``p`` must be an int or Fraction in [0, 1] and the counts ints >= 0
    (``InvalidEscrowInput``); returns a ``Fraction``. Symbolic (Z3) arguments are not checked.
    Z3: ``probation_full_audit`` (proofs/z3/check_escrow.py), ``escrow_shard_corollary``
    (proofs/z3/check_deterrence.py); Lean: ``Verisplit.auditProbability_probation``,
    ``Verisplit.auditProbability_after``.
    """
    if not (is_symbolic(p) or is_symbolic(served) or is_symbolic(probation_requests)):
        probability = require_probability(p, "p", InvalidEscrowInput)
        require_int(served, "served", InvalidEscrowInput, minimum=0)
        require_int(probation_requests, "probation_requests", InvalidEscrowInput, minimum=0)
        return Fraction(1) if served < probation_requests else probability
    return ite(served < probation_requests, 1, p)


def window_total(window: Sequence[Any]) -> Any:
    """What a key holds: the sum of its escrow window (a list or tuple of amounts).

    Z3: ``escrow_conservation``, ``escrow_vesting``, ``escrow_forfeit`` (proofs/z3/check_escrow.py);
    Lean: ``Verisplit.accountStep_conserves``."""
    total: Any = 0
    for amount in window:
        total = total + amount
    return total


def escrow_step(window: Sequence[Any], payout: Any, failed: Any) -> tuple[list[Any], Any, Any]:
    """Rules E1-E2 for one served (or failed) request of a key: returns (window', vested_now,
    forfeited_now). Not failed: the payout enters at the new end and the oldest amount vests (for an
    empty window, V = 0, the payout itself vests). Failed: everything held and the payout are
    forfeited and the window becomes all zeros. The window keeps its length.

    Z3: ``escrow_conservation``, ``escrow_vesting``, ``escrow_forfeit`` (proofs/z3/check_escrow.py);
    Lean: ``Verisplit.escrowStep_noFail``, ``Verisplit.escrowStep_fail``, ``Verisplit.runNoFail_window``.
    """
    held = window_total(window)
    shifted = list(window) + [payout]
    vested_now = ite(failed, 0, shifted[0])
    new_window = [ite(failed, 0, amount) for amount in shifted[1:]]
    forfeited_now = ite(failed, held + payout, 0)
    return new_window, vested_now, forfeited_now


def account_step(window: Sequence[Any], vested: Any, forfeited: Any, paid: Any, payout: Any,
                 failed: Any) -> tuple[list[Any], Any, Any, Any]:
    """A key's escrow totals after one request (rules E1-E3): ``escrow_step`` plus running sums;
    returns (window', vested', forfeited', paid'). Invariant (E3): ``window_total + vested + forfeited
    == paid`` is preserved. Z3: ``escrow_conservation``, ``escrow_vesting``, ``escrow_forfeit``
    (proofs/z3/check_escrow.py); Lean: ``Verisplit.accountStep_conserves``, ``Verisplit.run_conserves``."""
    new_window, vested_now, forfeited_now = escrow_step(window, payout, failed)
    return new_window, vested + vested_now, forfeited + forfeited_now, paid + payout


def resize_window(window: Sequence[Any], size: int) -> tuple[list[Any], Any]:
    """Rule E5: ``window`` resized to ``size`` slots; returns (window', released). Growing pads zeros at
    the old end (the amounts held keep their place next to the newest end, so none vests later than V'
    requests after it was earned); shrinking releases (vests) the oldest ``len - size`` amounts. ``size``
    is a concrete int in [0, 10000] (``InvalidEscrowInput``).
    Z3: ``escrow_conservation`` (proofs/z3/check_escrow.py)."""
    require_int(size, "size", InvalidEscrowInput, minimum=0, maximum=MAX_ESCROW_WINDOW)
    amounts = list(window)
    if size >= len(amounts):
        return [0] * (size - len(amounts)) + amounts, 0
    cut = len(amounts) - size
    return amounts[cut:], window_total(amounts[:cut])


# ---- whole requests over a book of accounts (concrete) -----------------------------------------------

@dataclass(frozen=True)
class KeyAccount:
    """One key's escrow: the window of held amounts (oldest first) with the request each was earned
    on (``None`` for padding), the served-request count (P1, E1) and the E3 totals."""

    window: tuple[int, ...] = ()
    sources: tuple[str | None, ...] = ()
    served: int = 0
    paid: int = 0
    vested: int = 0
    forfeited: int = 0

    @property
    def held(self) -> int:
        return window_total(self.window)


@dataclass(frozen=True)
class Movement:
    """An amount that vested or was forfeited, with the request it was earned on."""

    request_id: str
    amount: int


@dataclass(frozen=True)
class EscrowMember:
    """One cohort member of a settled request, as settlement saw it."""

    provider_id: str
    public_key: str  # hex of the Ed25519 key: escrow and probation follow keys, not provider ids
    work: int
    payout: int
    failed: bool


@dataclass(frozen=True)
class MemberEscrow:
    """What one request did to one key: its probation state before the request (``served_before`` and
    the ``audit_p`` its segments were audited at, rule P1), its payout (now held), what vested and
    what was forfeited (with their source requests) and what it holds afterwards."""

    public_key: str
    provider_ids: tuple[str, ...]
    served_before: int
    audit_p: Fraction
    payout: int
    failed: bool
    vested: tuple[Movement, ...] = ()
    forfeited: tuple[Movement, ...] = ()
    held_after: int = 0


@dataclass(frozen=True)
class EscrowTerms:
    """The operator's franchise settings in force for a request: base audit probability p, probation
    M and window V (in requests), and where forfeited escrow goes."""

    audit_p: Fraction = Fraction(0)
    probation_requests: int = 0
    escrow_window: int = 0
    forfeit_to: str = FORFEIT_TO


@dataclass(frozen=True)
class EscrowOutcome:
    """The book after a request and one ``MemberEscrow`` per key of its cohort (cohort order)."""

    book: dict[str, KeyAccount]
    members: tuple[MemberEscrow, ...] = field(default=())


def validate_terms(terms: Any) -> EscrowTerms:
    """``terms`` if it is an ``EscrowTerms`` with p in [0, 1], M and V ints in range and the documented
    forfeit destination; else ``InvalidEscrowInput`` naming the field."""
    if not isinstance(terms, EscrowTerms):
        raise InvalidEscrowInput(f"terms: must be EscrowTerms, got {type(terms).__name__}")
    require_probability(terms.audit_p, "audit_p", InvalidEscrowInput)
    require_int(terms.probation_requests, "probation_requests", InvalidEscrowInput, minimum=0)
    require_int(terms.escrow_window, "escrow_window", InvalidEscrowInput, minimum=0, maximum=MAX_ESCROW_WINDOW)
    if terms.forfeit_to != FORFEIT_TO:
        raise InvalidEscrowInput(f"forfeit_to: must be {FORFEIT_TO!r}, got {terms.forfeit_to!r}")
    return terms


def open_account(window: int) -> KeyAccount:
    """A fresh key's account: ``window`` zero slots, nothing served, paid or held."""
    require_int(window, "window", InvalidEscrowInput, minimum=0, maximum=MAX_ESCROW_WINDOW)
    return KeyAccount(window=(0,) * window, sources=(None,) * window)


def member_step(account: KeyAccount, request_id: str, payout: int, failed: bool, window: int
                ) -> tuple[KeyAccount, tuple[Movement, ...], tuple[Movement, ...]]:
    """Rules E1-E5 on one key for one request it served (or failed in). Failed: ``account_step`` forfeits
    the whole window and the payout (E2), and the emptied window takes the new size. Otherwise: resize
    to ``window`` (E5, the oldest amounts of a shrinking window vest), then ``account_step``; the
    sources move with their amounts. Returns (account', vested, forfeited), the
    movements naming the request each amount was earned on (zero amounts are not listed)."""
    if not isinstance(account, KeyAccount):
        raise InvalidEscrowInput(f"account: must be a KeyAccount, got {type(account).__name__}")
    require_str(request_id, "request_id", InvalidEscrowInput, non_empty=True)
    require_int(payout, "payout", InvalidEscrowInput, minimum=0)
    if not isinstance(failed, bool):
        raise InvalidEscrowInput(f"failed: must be a bool, got {failed!r}")
    if len(account.sources) != len(account.window):
        raise InvalidEscrowInput(f"account: {len(account.sources)} sources for a window of {len(account.window)}")
    if failed:  # E2 first: a failing key forfeits everything it holds, a resize releases nothing to it
        zeros, vested_total, forfeited_total, paid = account_step(account.window, account.vested, account.forfeited,
                                                                  account.paid, payout, True)
        new_window, _ = resize_window(zeros, window)
        shifted = tuple(account.sources) + (request_id,)
        forfeited = tuple(Movement(str(s), a) for s, a in zip(shifted, list(account.window) + [payout]) if a > 0)
        after = KeyAccount(window=tuple(new_window), sources=(None,) * window, served=account.served, paid=paid,
                           vested=vested_total, forfeited=forfeited_total)
        return after, (), forfeited
    amounts, released = resize_window(account.window, window)  # E5
    if window >= len(account.window):
        sources: tuple[str | None, ...] = (None,) * (window - len(account.window)) + account.sources
        vested: list[Movement] = []
    else:
        cut = len(account.window) - window
        sources = account.sources[cut:]
        vested = [Movement(str(s), a) for s, a in zip(account.sources[:cut], account.window[:cut]) if a > 0]
    new_window, vested_total, forfeited_total, paid = account_step(amounts, account.vested + released,
                                                                   account.forfeited, account.paid, payout, False)
    shifted_amounts = list(amounts) + [payout]
    shifted = tuple(sources) + (request_id,)
    if shifted_amounts[0] > 0:
        vested.append(Movement(str(shifted[0]), shifted_amounts[0]))
    new_sources = tuple(s if a > 0 else None for s, a in zip(shifted[1:], new_window))
    after = KeyAccount(window=tuple(new_window), sources=new_sources, served=account.served + 1,
                       paid=paid, vested=vested_total, forfeited=forfeited_total)
    return after, tuple(vested), ()


def cohort_members(cohort: Any, work: Sequence[int], payouts: Mapping[str, int],
                   failed: Collection[str]) -> list[EscrowMember]:
    """The ``EscrowMember`` of each cohort assignment, in cohort order: its provider id, its key (hex),
    the work it served (``work[k]`` for segment k), its payout and whether it failed."""
    return [EscrowMember(a.provider_id, a.public_key.hex(), w, payouts[a.provider_id], a.provider_id in failed)
            for a, w in zip(cohort.assignments, work)]


def settle_escrow(book: Mapping[str, KeyAccount], request_id: str, members: Sequence[EscrowMember],
                  terms: EscrowTerms) -> EscrowOutcome:
    """Apply one settled request to the escrow ``book`` (public key hex -> ``KeyAccount``; absent keys
    are fresh). Members sharing a key are one account (payouts and work summed, failed if any failed).
    Per key, in cohort order: ``served_before`` and ``audit_p = audit_probability(p, served_before, M)``
    (rule P1) are taken before the request; then a failed key forfeits (E2), a key that served work
    steps its window (E1), an idle key is unchanged (E4). ``book`` is not modified.

    Invalid input raises ``InvalidEscrowInput`` naming the field (a payout for zero work, a negative
    amount, an empty request id, duplicate provider ids, bad terms). Z3: ``escrow_book_concrete``
    (proofs/z3/check_escrow.py, seeded random request sequences)."""
    validate_terms(terms)
    require_str(request_id, "request_id", InvalidEscrowInput, non_empty=True)
    if not isinstance(book, Mapping):
        raise InvalidEscrowInput(f"book: must be a mapping, got {type(book).__name__}")
    items = require_sequence(members, "members", InvalidEscrowInput)
    grouped: dict[str, list[EscrowMember]] = {}
    seen: set[str] = set()
    for index, member in enumerate(items):
        if not isinstance(member, EscrowMember):
            raise InvalidEscrowInput(f"members[{index}]: must be an EscrowMember, got {type(member).__name__}")
        require_str(member.provider_id, f"members[{index}].provider_id", InvalidEscrowInput, non_empty=True)
        require_str(member.public_key, f"members[{index}].public_key", InvalidEscrowInput, non_empty=True)
        require_int(member.work, f"members[{index}].work", InvalidEscrowInput, minimum=0)
        require_int(member.payout, f"members[{index}].payout", InvalidEscrowInput, minimum=0)
        if not isinstance(member.failed, bool):
            raise InvalidEscrowInput(f"members[{index}].failed: must be a bool, got {member.failed!r}")
        if member.work == 0 and member.payout > 0:
            raise InvalidEscrowInput(f"members[{index}].payout: {member.payout} paid for zero work")
        if member.provider_id in seen:
            raise InvalidEscrowInput(f"members[{index}].provider_id: {member.provider_id!r} appears twice")
        seen.add(member.provider_id)
        grouped.setdefault(member.public_key, []).append(member)
    new_book = dict(book)
    out: list[MemberEscrow] = []
    for key, group in grouped.items():
        account = new_book.get(key)
        if account is None:
            account = open_account(terms.escrow_window)
        elif not isinstance(account, KeyAccount):
            raise InvalidEscrowInput(f"book[{key!r}]: must be a KeyAccount, got {type(account).__name__}")
        payout = sum(m.payout for m in group)
        work = sum(m.work for m in group)
        failed = any(m.failed for m in group)
        served_before = account.served
        p_k = audit_probability(terms.audit_p, served_before, terms.probation_requests)
        vested: tuple[Movement, ...] = ()
        forfeited: tuple[Movement, ...] = ()
        if failed or work > 0:  # E1/E2; otherwise E4: unchanged
            account, vested, forfeited = member_step(account, request_id, payout, failed, terms.escrow_window)
            new_book[key] = account
        out.append(MemberEscrow(public_key=key, provider_ids=tuple(m.provider_id for m in group),
                                served_before=served_before, audit_p=p_k, payout=payout, failed=failed,
                                vested=vested, forfeited=forfeited, held_after=account.held))
    return EscrowOutcome(new_book, tuple(out))


def account_conserved(account: KeyAccount) -> bool:
    """Rule E3 on one account: held + vested + forfeited == paid."""
    return account.held + account.vested + account.forfeited == account.paid


def book_totals(book: Mapping[str, KeyAccount]) -> dict[str, int]:
    """Totals over every key: held, vested, forfeited and paid (E3 in total: the first three add up to
    the last)."""
    totals = {"held": 0, "vested": 0, "forfeited": 0, "paid": 0}
    for account in book.values():
        totals["held"] += account.held
        totals["vested"] += account.vested
        totals["forfeited"] += account.forfeited
        totals["paid"] += account.paid
    return totals



# ---- does the franchise deter? (rules D3-D5) ----------------------------------------------------------
#
# Cost model (ASSUMED, docs/proofs.md `savings_within_value`): cheating on work of value v = price x work
# saves at most the provider's own compute cost for that work, and that cost is at most v (nobody
# offers below cost), so a cheat of kind k saves at most ``sigma_k * v`` with ``sigma_k <= 1`` the
# fraction of the compute it skips. Requests a key serves are taken to have equal value v when the
# held escrow is counted in requests (ASSUMED `uniform_request_value`).

# The most each cheat kind of ``threats.CAUGHT_BY`` saves, as a fraction of the value of the work it
# serves (its bound over segment sizes; ``savings_fraction`` gives it for a segment of L layers).
SAVINGS_BOUND: dict[str, Fraction] = {
    "skip_layer": Fraction(1),         # 1/L of the segment: all of it for a one-layer segment
    "int8_weights": Fraction(1, 2),    # int8 instead of 16/32-bit matmuls: at most half the cost
    "lower_precision": Fraction(1, 2),  # half-width arithmetic: at most half the cost
    "noise": Fraction(0),              # perturbs a correct output: computes everything
    "other_model": Fraction(1),        # a smaller or cheaper model: up to all of it
    "prefix_range": Fraction(1),       # runs floor(L/2) of L layers: all of it for L = 1
    "replay": Fraction(1),             # cached outputs: no compute on the replayed steps
    "wrong_key": Fraction(0),          # computes honestly, signs with another key
    "substitute_output": Fraction(1),  # sends bytes it need not have computed
    "sometimes": Fraction(1),          # its inner cheat's savings on the steps it cheats: at most all
}


class DeterrenceError(ValueError):
    """A probation / escrow / p configuration under which some cheat kind profits; the message names
    p, the probation, the window, the kind, its expected loss and savings (x value) and what to raise."""


def savings_fraction(kind: str, layers: int) -> Fraction:
    """The cost model's savings of cheat ``kind`` on a segment of ``layers`` layers, as a fraction of
    the value of the work: ``skip_layer`` skips 1 of L layers (1/L), ``prefix_range`` runs L//2 of
    them ((L - L//2)/L), every other kind its ``SAVINGS_BOUND``. ``InvalidEscrowInput`` for an unknown
    kind or a layer count that is not an int >= 1."""
    require_str(kind, "kind", InvalidEscrowInput)
    if kind not in SAVINGS_BOUND:
        raise InvalidEscrowInput(f"kind: unknown cheat kind {kind!r} (known: {sorted(SAVINGS_BOUND)})")
    require_int(layers, "layers", InvalidEscrowInput, minimum=1)
    if kind == "skip_layer":
        return Fraction(1, layers)
    if kind == "prefix_range":
        return Fraction(layers - layers // 2, layers)
    return SAVINGS_BOUND[kind]


def escrow_expected_loss(p: Any, held: Any, payout: Any) -> Any:
    """Rule D3: what a key expects to lose by cheating on a request whose segment is caught with
    probability ``p``: ``p * (held + payout)``, everything it holds (E2) plus the request's payout
    (S2). At least ``p * held`` whenever the payout is >= 0. Ints, Fractions or Z3 terms.
    Z3: ``escrow_expected_loss_bound``, ``escrow_shard_corollary`` (proofs/z3/check_deterrence.py);
    Lean: ``Verisplit.escrowLoss_ge``, ``Verisplit.escrow_shard_deterred``."""
    return p * (held + payout)


def escrow_margin(p: Any, held: Any, payout: Any, savings: Any) -> Any:
    """``escrow_expected_loss(p, held, payout) - savings`` (>= 0: cheating on this request does not
    pay), the franchise's ``deterrence.margin_from_expected_loss`` with the escrow in place of F.
    Z3: ``escrow_shard_corollary`` (proofs/z3/check_deterrence.py); Lean: ``Verisplit.escrow_shard_deterred``."""
    from verisplit.spec.deterrence import margin_from_expected_loss

    return margin_from_expected_loss(escrow_expected_loss(p, held, payout), savings)


def exposure_requests(probation_requests: Any, escrow_window: Any) -> Any:
    """Rule D4: the fewest requests' worth of value a key has at stake when it is first audited at the
    operator's p: the ``min(M, V)`` payouts of its probation still held, plus the request's own.
    Z3: ``escrow_shard_corollary`` (proofs/z3/check_deterrence.py)."""
    return ite(probation_requests < escrow_window, probation_requests, escrow_window) + 1


def franchise_margin(p: Any, probation_requests: Any, escrow_window: Any, savings_fraction: Any) -> Any:
    """Rule D4 per unit of request value: ``p * exposure_requests(M, V) - sigma``. Under uniform request
    values v this times v is ``escrow_margin`` at the first p-audited request, for every v, so its sign
    does not depend on the shard's size (D5). Z3: ``escrow_shard_corollary``
    (proofs/z3/check_deterrence.py), ``deterrence_config_concrete``; Lean: ``Verisplit.franchise_scales``."""
    return p * exposure_requests(probation_requests, escrow_window) - savings_fraction


@dataclass(frozen=True)
class KindMargin:
    """One cheat kind under a configuration, all per unit of request value: detection probability
    (1 for chain kinds, p for audit kinds), expected loss, savings and their difference; and the margin
    during probation (detection 1)."""

    kind: str
    caught_by: str
    detection_p: Fraction
    expected_loss: Fraction
    savings: Fraction
    margin: Fraction
    probation_margin: Fraction

    @property
    def deterred(self) -> bool:
        return self.margin >= 0


@dataclass(frozen=True)
class DeterrenceReport:
    """Whether a configuration deters every cheat kind (``deterred``), per kind, with the worst one."""

    p: Fraction
    probation_requests: int
    escrow_window: int
    exposure: int
    kinds: tuple[KindMargin, ...]

    @property
    def worst(self) -> KindMargin:
        return min(self.kinds, key=lambda k: (k.margin, k.kind))

    @property
    def deterred(self) -> bool:
        return all(k.deterred for k in self.kinds)


def _number(value: Fraction) -> str:
    """``0.3`` for an exact short decimal, else ``a/b``."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for prime in (2, 5):
        while den % prime == 0:
            den //= prime
    if den == 1:
        text = f"{float(value):.6f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


def deterrence_report(p: Fraction, probation_requests: int, escrow_window: int,
                      savings: Mapping[str, Fraction] | None = None) -> DeterrenceReport:
    """Rules D3-D5 for every cheat kind of ``threats.CAUGHT_BY``: detection probability 1 for chain
    kinds, p for audit kinds; expected loss ``detection * exposure_requests(M, V)`` and savings
    ``savings[kind]`` (default ``SAVINGS_BOUND``), both per unit of request value. During probation
    the detection probability is 1 for every kind (P1), so the margin there is ``exposure - sigma``
    with at least one request's value at stake. ``InvalidEscrowInput`` names a bad argument (p not in
    [0, 1], counts not ints >= 0, a savings entry for an unknown kind, missing or negative)."""
    from verisplit.spec.threats import CAUGHT_BY, CHAIN

    probability = require_probability(p, "p", InvalidEscrowInput)
    require_int(probation_requests, "probation_requests", InvalidEscrowInput, minimum=0)
    require_int(escrow_window, "escrow_window", InvalidEscrowInput, minimum=0, maximum=MAX_ESCROW_WINDOW)
    model = SAVINGS_BOUND if savings is None else savings
    if not isinstance(model, Mapping):
        raise InvalidEscrowInput(f"savings: must be a mapping kind -> Fraction, got {type(model).__name__}")
    unknown = sorted(str(k) for k in model if k not in CAUGHT_BY)
    if unknown:
        raise InvalidEscrowInput(f"savings: unknown cheat kind(s) {unknown}")
    exposure = exposure_requests(probation_requests, escrow_window)
    rows: list[KindMargin] = []
    for kind, caught_by in CAUGHT_BY.items():
        if kind not in model:
            raise InvalidEscrowInput(f"savings['{kind}']: missing (the cost model needs every cheat kind)")
        sigma = model[kind]
        if isinstance(sigma, bool) or not isinstance(sigma, (int, Fraction)) or sigma < 0:
            raise InvalidEscrowInput(f"savings['{kind}']: must be an int or Fraction >= 0, got {sigma!r}")
        detection = Fraction(1) if caught_by == CHAIN else probability
        margin = Fraction(franchise_margin(detection, probation_requests, escrow_window, Fraction(sigma)))
        probation = Fraction(franchise_margin(Fraction(1), probation_requests, escrow_window, Fraction(sigma)))
        rows.append(KindMargin(kind, caught_by, detection, detection * exposure, Fraction(sigma), margin, probation))
    return DeterrenceReport(probability, probation_requests, escrow_window, exposure, tuple(rows))


def check_deterrence_config(p: Fraction, probation_requests: int = DEFAULT_PROBATION_REQUESTS,
                            escrow_window: int = DEFAULT_ESCROW_WINDOW,
                            savings: Mapping[str, Fraction] | None = None) -> DeterrenceReport:
    """The report of ``deterrence_report`` if every kind is deterred, else ``DeterrenceError`` naming the
    worst kind's numbers and what would deter it, e.g. ``p = 1/20 with probation 20 requests and an
    escrow window of 5 requests does not deter replay: expected loss 0.3 x value < savings 1 x value;
    raise p to at least 1/6 or the window to at least 19 requests``. The defaults (p = 1/10, M = 20,
    V = 10) deter every kind: 1/10 x 11 = 1.1 >= 1. Z3: ``deterrence_config_concrete``
    (proofs/z3/check_deterrence.py, exhaustive over small configurations)."""
    report = deterrence_report(p, probation_requests, escrow_window, savings)
    if report.deterred:
        return report
    worst = report.worst
    held = report.exposure - 1
    p_text = str(report.p.numerator) if report.p.denominator == 1 else f"{report.p.numerator}/{report.p.denominator}"
    message = (f"p = {p_text} with probation {probation_requests} requests and an escrow window of "
               f"{escrow_window} requests does not deter {worst.kind}: expected loss {_number(worst.expected_loss)} x "
               f"value < savings {_number(worst.savings)} x value")
    p_needed = worst.savings / report.exposure
    advice = [f"raise p to at least {p_needed.numerator}/{p_needed.denominator}"]
    if worst.detection_p > 0:
        needed = -(-worst.savings // worst.detection_p) - 1  # smallest V with detection * (V + 1) >= sigma
        needed = max(int(needed), 0)
        if probation_requests < needed and probation_requests < escrow_window:
            advice.append(f"the probation and the window to at least {needed} requests (a probation of "
                          f"{probation_requests} leaves only {held} held at the first sampled audit)")
        else:
            advice.append(f"the window to at least {needed} requests")
    raise DeterrenceError(f"{message}; {' or '.join(advice)}")
