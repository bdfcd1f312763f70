"""The franchise rules of ``verisplit.spec.escrow``: probation (P1), vesting escrow (E1-E5) and whether a
configuration deters (D3-D5), on random request sequences (Hypothesis) and the documented examples;
every public function rejects bad input with ``InvalidEscrowInput`` naming the field."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verisplit.spec import escrow
from verisplit.spec.escrow import (DEFAULT_ESCROW_WINDOW, DEFAULT_PROBATION_REQUESTS, FORFEIT_TO, SAVINGS_BOUND,
                                   DeterrenceError, EscrowMember, EscrowTerms, InvalidEscrowInput, KeyAccount,
                                   Movement, account_conserved, account_step, audit_probability, book_totals,
                                   check_deterrence_config, deterrence_report, escrow_expected_loss, escrow_margin,
                                   escrow_step, exposure_requests, franchise_margin, member_step, open_account,
                                   resize_window, savings_fraction, settle_escrow, validate_terms, window_total)
from verisplit.spec.threats import CAUGHT_BY

# one request for one key: (work, payout, failed)
REQUEST = st.tuples(st.sampled_from([0, 1, 4]), st.integers(0, 50), st.booleans())


def _members(rows: list[tuple[int, int, bool]]) -> list[EscrowMember]:
    return [EscrowMember(f"p{i}", f"k{i}", work, payout if work else 0, failed)
            for i, (work, payout, failed) in enumerate(rows)]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5), st.integers(0, 4), st.lists(st.lists(REQUEST, min_size=1, max_size=3), max_size=15))
def test_random_sequences_conserve_and_account_every_payout_once(window: int, probation: int,
                                                                  requests: list[list[tuple[int, int, bool]]]) -> None:
    book: dict[str, KeyAccount] = {}
    served: Counter[str] = Counter()
    earned: dict[tuple[str, str], int] = {}
    moved: Counter[tuple[str, str]] = Counter()
    for n, rows in enumerate(requests):
        rid = f"r{n}"
        before = dict(book)
        outcome = settle_escrow(book, rid, _members(rows), EscrowTerms(Fraction(1, 10), probation, window))
        book = outcome.book
        for entry, (work, _, failed) in zip(outcome.members, rows):
            key = entry.public_key
            assert entry.served_before == served[key]
            assert entry.audit_p == (1 if served[key] < probation else Fraction(1, 10))  # P1
            if failed:  # E2
                held_before = before[key].held if key in before else 0
                assert entry.held_after == 0 and entry.vested == ()
                assert sum(m.amount for m in entry.forfeited) == held_before + entry.payout
            elif work:  # E1
                served[key] += 1
                assert entry.forfeited == ()
            else:  # E4
                assert (entry.vested, entry.forfeited) == ((), ()) and before.get(key) == book.get(key)
            if work or failed:
                earned[(rid, key)] = entry.payout
            for m in entry.vested + entry.forfeited:
                moved[(m.request_id, key)] += m.amount
        for key, account in book.items():
            assert account_conserved(account)  # E3 per key
            assert len(account.window) == window and account.served == served[key]
        totals = book_totals(book)
        assert totals["held"] + totals["vested"] + totals["forfeited"] == totals["paid"]  # E3 in total
        held: Counter[tuple[str, str]] = Counter()
        for key, account in book.items():
            for source, amount in zip(account.sources, account.window):
                held[(str(source), key)] += amount
        for (rid_, key), amount in earned.items():
            assert held[(rid_, key)] + moved[(rid_, key)] == amount  # each payout is in exactly one place


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.lists(st.integers(0, 100), max_size=12))
def test_without_failures_the_window_is_the_last_v_payouts(window: int, payouts: list[int]) -> None:
    slots: list[int] = [0] * window
    vested = forfeited = paid = 0
    for x in payouts:
        slots, vested, forfeited, paid = account_step(slots, vested, forfeited, paid, x, False)
    history = [0] * window + payouts
    assert slots == (history[len(history) - window:] if window else [])
    assert vested == sum(payouts[:max(0, len(payouts) - window)]) and forfeited == 0 and paid == sum(payouts)


def test_worked_example_from_the_docs() -> None:
    """docs/spec.md: V = 2, payouts 10, 20, 30 served, then a failure."""
    book: dict[str, KeyAccount] = {}
    results = []
    for rid, payout, failed in (("r1", 10, False), ("r2", 20, False), ("r3", 30, False), ("r4", 0, True)):
        out = settle_escrow(book, rid, [EscrowMember("p", "k", 4, payout, failed)], EscrowTerms(Fraction(1, 10), 2, 2))
        book = out.book
        results.append(out.members[0])
    assert [m.audit_p for m in results] == [1, 1, Fraction(1, 10), Fraction(1, 10)]
    assert [m.held_after for m in results] == [10, 30, 50, 0]
    assert results[2].vested == (Movement("r1", 10),)
    assert results[3].forfeited == (Movement("r2", 20), Movement("r3", 30))
    account = book["k"]
    assert (account.held, account.vested, account.forfeited, account.paid, account.served) == (0, 10, 50, 60, 3)


def test_window_zero_vests_at_once_and_one_key_under_two_ids_is_one_account() -> None:
    members = [EscrowMember("a", "k", 2, 7, False), EscrowMember("b", "k", 3, 5, False)]
    out = settle_escrow({}, "r", members, EscrowTerms(Fraction(1, 2), 0, 0))
    assert len(out.members) == 1 and out.members[0].provider_ids == ("a", "b")
    assert out.members[0].vested == (Movement("r", 12),) and out.book["k"].vested == 12
    failed = settle_escrow({}, "r", [EscrowMember("a", "k", 2, 7, False), EscrowMember("b", "k", 3, 0, True)],
                           EscrowTerms(Fraction(1, 2), 0, 3))
    assert failed.members[0].failed and failed.members[0].forfeited == (Movement("r", 7),)


def test_resize_vests_the_oldest_or_pads_and_a_failure_forfeits_before_resizing() -> None:
    assert resize_window([1, 2, 3], 1) == ([3], 3) and resize_window([1, 2], 4) == ([0, 0, 1, 2], 0)
    account = KeyAccount((4, 5, 6), ("r1", "r2", "r3"), served=3, paid=15)
    after, vested, forfeited = member_step(account, "r4", 7, False, 2)
    assert after.window == (6, 7) and after.sources == ("r3", "r4")
    assert vested == (Movement("r1", 4), Movement("r2", 5)) and forfeited == () and account_conserved(after)
    after, vested, forfeited = member_step(account, "r4", 0, True, 1)
    assert after.window == (0,) and vested == () and sum(m.amount for m in forfeited) == 15
    assert after.served == 3 and account_conserved(after)


def test_probation_probability() -> None:
    assert audit_probability(Fraction(1, 10), 0, 20) == 1
    assert audit_probability(Fraction(1, 10), 19, 20) == 1
    assert audit_probability(Fraction(1, 10), 20, 20) == Fraction(1, 10)
    assert audit_probability(Fraction(1, 10), 5, 0) == Fraction(1, 10)
    assert isinstance(audit_probability(Fraction(1, 3), 0, 1), Fraction)


def test_escrow_step_and_loss_on_ints() -> None:
    assert escrow_step([1, 2], 3, False) == ([2, 3], 1, 0)
    assert escrow_step([1, 2], 3, True) == ([0, 0], 0, 6)
    assert escrow_step([], 3, False) == ([], 3, 0)
    assert window_total((1, 2, 3)) == 6
    assert escrow_expected_loss(Fraction(1, 10), 100, 10) == 11
    assert escrow_margin(Fraction(1, 10), 100, 10, 5) == 6
    assert exposure_requests(20, 10) == 11 and exposure_requests(3, 10) == 4
    assert franchise_margin(Fraction(1, 10), 20, 10, 1) == Fraction(1, 10)


# ---- deterrence of a configuration -----------------------------------------------------------------------

def test_the_defaults_deter_every_kind() -> None:
    report = check_deterrence_config(Fraction(1, 10))
    assert (report.probation_requests, report.escrow_window) == (DEFAULT_PROBATION_REQUESTS, DEFAULT_ESCROW_WINDOW)
    assert report.deterred and report.exposure == 11 and report.worst.margin == Fraction(1, 10)
    assert {k.kind for k in report.kinds} == set(CAUGHT_BY)
    assert all(k.probation_margin >= 0 for k in report.kinds)


def test_a_weak_configuration_is_refused_with_its_numbers() -> None:
    with pytest.raises(DeterrenceError) as caught:
        check_deterrence_config(Fraction(1, 20), 20, 5)
    message = str(caught.value)
    assert message.startswith("p = 1/20 with probation 20 requests and an escrow window of 5 requests does not deter ")
    assert "expected loss 0.3 x value < savings 1 x value" in message
    assert "raise p to at least 1/6 or the window to at least 19 requests" in message
    check_deterrence_config(Fraction(1, 6), 20, 5)
    check_deterrence_config(Fraction(1, 20), 20, 19)
    with pytest.raises(DeterrenceError, match="0.3 x value < savings 0.5 x value"):
        check_deterrence_config(Fraction(1, 20), 20, 5, {k: Fraction(1, 2) for k in CAUGHT_BY})


def test_a_short_probation_is_named() -> None:
    with pytest.raises(DeterrenceError, match="a probation of 3 leaves only 3 held"):
        check_deterrence_config(Fraction(1, 10), 3, 10)
    with pytest.raises(DeterrenceError, match="p = 0 "):
        check_deterrence_config(Fraction(0), 20, 10)
    assert isinstance(DeterrenceError("x"), ValueError)


def test_chain_kinds_are_caught_with_probability_one() -> None:
    report = deterrence_report(Fraction(0), 0, 0)
    rows = {k.kind: k for k in report.kinds}
    assert rows["substitute_output"].detection_p == 1 and rows["substitute_output"].deterred
    assert rows["skip_layer"].detection_p == 0 and not rows["skip_layer"].deterred


def test_cost_model() -> None:
    assert set(SAVINGS_BOUND) == set(CAUGHT_BY)
    assert all(0 <= v <= 1 for v in SAVINGS_BOUND.values())
    assert savings_fraction("skip_layer", 4) == Fraction(1, 4) and savings_fraction("skip_layer", 1) == 1
    assert savings_fraction("prefix_range", 4) == Fraction(1, 2) and savings_fraction("prefix_range", 3) == Fraction(2, 3)
    assert savings_fraction("replay", 7) == 1
    for kind in CAUGHT_BY:
        for layers in range(1, 9):
            assert savings_fraction(kind, layers) <= SAVINGS_BOUND[kind]


# ---- validation -----------------------------------------------------------------------------------------

BAD = [
    (lambda: audit_probability(0.1, 0, 1), "p"),
    (lambda: audit_probability(Fraction(1, 2), -1, 1), "served"),
    (lambda: audit_probability(Fraction(1, 2), 0, True), "probation_requests"),
    (lambda: resize_window([1], -1), "size"),
    (lambda: resize_window([1], 1.0), "size"),
    (lambda: open_account(-2), "window"),
    (lambda: member_step("acct", "r", 1, False, 1), "account"),
    (lambda: member_step(open_account(1), "", 1, False, 1), "request_id"),
    (lambda: member_step(open_account(1), "r", -1, False, 1), "payout"),
    (lambda: member_step(open_account(1), "r", 1, 0, 1), "failed"),
    (lambda: member_step(KeyAccount((1,), ()), "r", 1, False, 1), "account"),
    (lambda: settle_escrow([], "r", [], EscrowTerms()), "book"),
    (lambda: settle_escrow({}, 7, [], EscrowTerms()), "request_id"),
    (lambda: settle_escrow({}, "r", "members", EscrowTerms()), "members"),
    (lambda: settle_escrow({}, "r", [("p", "k", 1, 1, False)], EscrowTerms()), "members[0]"),
    (lambda: settle_escrow({}, "r", [EscrowMember("p", "k", 0, 3, False)], EscrowTerms()), "members[0].payout"),
    (lambda: settle_escrow({}, "r", [EscrowMember("p", "k", 1.5, 3, False)], EscrowTerms()), "members[0].work"),
    (lambda: settle_escrow({}, "r", [EscrowMember("p", "k", 1, 1, "no")], EscrowTerms()), "members[0].failed"),
    (lambda: settle_escrow({}, "r", [EscrowMember("p", "k", 1, 1, False)] * 2, EscrowTerms()), "members[1].provider_id"),
    (lambda: settle_escrow({"k": 3}, "r", [EscrowMember("p", "k", 1, 1, False)], EscrowTerms()), "book['k']"),
    (lambda: settle_escrow({}, "r", [], "terms"), "terms"),
    (lambda: validate_terms(EscrowTerms(Fraction(3, 2))), "audit_p"),
    (lambda: validate_terms(EscrowTerms(Fraction(1, 2), -1)), "probation_requests"),
    (lambda: validate_terms(EscrowTerms(Fraction(1, 2), 0, 10**6)), "escrow_window"),
    (lambda: validate_terms(EscrowTerms(Fraction(1, 2), 0, 1, "pool")), "forfeit_to"),
    (lambda: savings_fraction("teleport", 2), "kind"),
    (lambda: savings_fraction("skip_layer", 0), "layers"),
    (lambda: deterrence_report(0.1, 1, 1), "p"),
    (lambda: deterrence_report(Fraction(1, 2), -1, 1), "probation_requests"),
    (lambda: deterrence_report(Fraction(1, 2), 1, None), "escrow_window"),
    (lambda: deterrence_report(Fraction(1, 2), 1, 1, {"teleport": 1}), "savings"),
    (lambda: deterrence_report(Fraction(1, 2), 1, 1, {"skip_layer": 1}), "savings['int8_weights']"),
    (lambda: deterrence_report(Fraction(1, 2), 1, 1, dict(SAVINGS_BOUND, noise=-1)), "savings['noise']"),
    (lambda: deterrence_report(Fraction(1, 2), 1, 1, dict(SAVINGS_BOUND, noise=0.5)), "savings['noise']"),
    (lambda: check_deterrence_config("1/10"), "p"),
]


@pytest.mark.parametrize("call,field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_raises_invalid_escrow_input_naming_the_field(call, field: str) -> None:
    with pytest.raises(InvalidEscrowInput) as caught:
        call()
    assert str(caught.value).startswith(field), (field, str(caught.value))


def test_every_public_function_is_exercised() -> None:
    import inspect

    public = {name for name, obj in vars(escrow).items() if inspect.isfunction(obj) and obj.__module__ == escrow.__name__
              and not name.startswith("_")}
    covered = {"audit_probability", "window_total", "escrow_step", "account_step", "resize_window", "validate_terms",
               "open_account", "member_step", "settle_escrow", "account_conserved", "book_totals", "savings_fraction",
               "escrow_expected_loss", "escrow_margin", "exposure_requests", "franchise_margin", "deterrence_report",
               "check_deterrence_config", "cohort_members"}
    assert public == covered
    assert FORFEIT_TO == "client_refund"


def test_cohort_members_follow_the_cohort_and_name_failures() -> None:
    from verisplit.spec.cohort import Assignment, Cohort

    cohort = Cohort("m", (Assignment("a", b"\x01" * 32, 0, 1), Assignment("b", b"\x02" * 32, 1, 2)))
    members = escrow.cohort_members(cohort, [3, 4], {"a": 6, "b": 0}, {"b"})
    assert members == [EscrowMember("a", "01" * 32, 3, 6, False), EscrowMember("b", "02" * 32, 4, 0, True)]
