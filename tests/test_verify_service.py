"""AuditService: selection by commit-reveal, settlement over work served, ledger record, ejection."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest
from nacl.signing import SigningKey

from verisplit.impl.audit.service import AuditService, analyse_chain
from verisplit.impl.audit.calibrate import calibrate
from verisplit.impl.records.ledger import Ledger
from verisplit.spec.audit import Tolerance, is_audited, request_seed, reveal_valid, seed_commitment
from verisplit.spec.settlement import conserved, settle

from verify_helpers import NEW_TOKENS, PROMPT, RANGES, honest_modes, make_ckpt, run

LEAD = SigningKey(b"L" * 32)
SEED = b"s" * 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("svc") / "m")


@pytest.fixture(scope="module")
def tol(ckpt):
    t = calibrate(ckpt, dtype="float32", device="cpu", split=RANGES, prompt_len=8, new_tokens=8, seeds=(0,),
                  threads=(1,))["tolerance"]
    return Tolerance(t["dtype"], t["atol"], t["rtol"])


def _service(ckpt, tmp_path, tol, p=Fraction(1), seed=SEED):
    ejected: list[tuple[str, str]] = []
    service = AuditService(ckpt, tmp_path / "ledger.db", LEAD, p, seed, tol, lambda pid, why: ejected.append((pid, why)),
                           device="cpu", dtype="float32")
    return service, ejected


def _work_per_provider() -> dict[str, int]:
    positions = len(PROMPT) + NEW_TOKENS - 1
    return {f"p{k}": (b - a) * positions for k, (a, b) in enumerate(RANGES)}


def _unit_prices() -> dict[str, int]:
    return {p: 1 for p in _work_per_provider()}


def test_honest_all_paid_and_conserved(ckpt, tmp_path, tol):
    service, ejected = _service(ckpt, tmp_path, tol)
    record = run(ckpt, honest_modes(), request_id="h1", fee=1001)
    out = asyncio.run(service(record))
    s = out["settlement"]
    assert out["ejected"] == [] and ejected == [] and out["errors"] == []
    assert len(out["audits"]) == 3 and all(a["passed"] for a in out["audits"])
    assert s["work"] == _work_per_provider()
    expected = settle(1001, _work_per_provider(), _unit_prices(), "lead")
    assert s["payouts"] == expected.payouts and s["refund"] == 0 and s["residual"] == expected.residual
    assert sum(s["payouts"].values()) + s["residual"] + s["refund"] == 1001
    # rule A1: the request's own seed is revealed with its result and opens its commitment
    assert reveal_valid(bytes.fromhex(out["audit_seed_commitment"]), bytes.fromhex(out["audit_seed"]))
    assert out["audit_seed_commitment"] == service.seed_commitment_for("h1").hex()
    assert Ledger(tmp_path / "ledger.db").verify(bytes(LEAD.verify_key)).ok


@pytest.mark.parametrize("mode", ["noise", "replay", "prefix_range"])
def test_audit_failure_forfeits_only_that_slice(ckpt, tmp_path, tol, mode):
    service, ejected = _service(ckpt, tmp_path, tol)
    out = asyncio.run(service(run(ckpt, ["honest", mode, "honest"], request_id=f"c-{mode}", fee=999)))
    s = out["settlement"]
    honest = settle(999, _work_per_provider(), _unit_prices(), "lead")
    assert out["ejected"] == ["p1"] and [p for p, _ in ejected] == ["p1"]
    assert s["payouts"] == {"p0": honest.payouts["p0"], "p1": 0, "p2": honest.payouts["p2"]}
    assert s["refund"] == honest.payouts["p1"] and s["failed"] == ["p1"]
    assert sum(s["payouts"].values()) + s["residual"] + s["refund"] == 999
    failed = [a for a in out["audits"] if not a["passed"]]
    assert [(a["segment_index"], a["source"]) for a in failed] == [(1, "audit")]


@pytest.mark.parametrize("mode", ["wrong_key", "substitute_output"])
def test_chain_culprit_fails_and_only_valid_links_earn(ckpt, tmp_path, tol, mode):
    service, ejected = _service(ckpt, tmp_path, tol)
    record = run(ckpt, ["honest", mode, "honest"], request_id=f"ch-{mode}", fee=500)
    out = asyncio.run(service(record))
    assert out["ejected"] == ["p1"] and ejected[0][0] == "p1"
    chain = [a for a in out["audits"] if a["source"] == "chain"]
    assert len(chain) == 1 and chain[0]["provider_id"] == "p1" and not chain[0]["passed"]
    # the request aborted in its first step at link 1: only p0 served (the prompt's positions)
    work = out["settlement"]["work"]
    assert work == {"p0": 2 * len(PROMPT), "p1": 0, "p2": 0}
    assert out["settlement"]["payouts"] == {"p0": 500, "p1": 0, "p2": 0}
    assert [a["segment_index"] for a in out["audits"] if a["source"] == "audit"] == [0]


def test_nothing_served_refunds_everything(ckpt, tmp_path, tol):
    service, _ = _service(ckpt, tmp_path, tol)
    out = asyncio.run(service(run(ckpt, ["wrong_key", "honest", "honest"], request_id="none", fee=77)))
    s = out["settlement"]
    assert s["refund"] == 77 and s["payouts"] == {"p0": 0, "p1": 0, "p2": 0} and s["residual"] == 0
    assert Ledger(tmp_path / "ledger.db").verify().ok


def test_selection_follows_commit_reveal_rule(ckpt, tmp_path, tol):
    p = Fraction(1, 2)
    service, _ = _service(ckpt, tmp_path, tol, p=p, seed=b"q" * 32)
    ids = [f"sel-{i}" for i in range(6)]
    for rid in ids:
        seed = request_seed(b"q" * 32, rid)  # per request (rule A1)
        assert service.seed_commitment_for(rid) == seed_commitment(seed)
        out = asyncio.run(service(run(ckpt, ["honest", "noise", "honest"], request_id=rid)))
        audited = sorted(a["segment_index"] for a in out["audits"])
        assert audited == [k for k in range(3) if is_audited(seed, rid, k, p)] == out["audited_segments"]
        assert out["audit_seed"] == seed.hex()
        assert (out["ejected"] == ["p1"]) == (1 in audited)
    records = list(Ledger(tmp_path / "ledger.db").records())
    assert [r.body["request_id"] for r in records] == ids
    for r in records:
        assert conserved_body(r.body)


def conserved_body(body) -> bool:
    from verisplit.spec.settlement import Settlement

    return conserved(Settlement(body["fee"], body["lead"], body["payouts"], body["residual"], body["refund"],
                                frozenset(body["failed"])))


def test_duplicate_request_is_reported_not_double_settled(ckpt, tmp_path, tol):
    service, _ = _service(ckpt, tmp_path, tol)
    record = run(ckpt, honest_modes(), request_id="dup")
    first = asyncio.run(service(record))
    second = asyncio.run(service(record))
    assert first["ledger_seq"] == 1 and second["ledger_seq"] is None
    assert any("already settled" in e for e in second["errors"])
    assert len(list(Ledger(tmp_path / "ledger.db").records())) == 1


def test_bad_arguments(ckpt, tmp_path, tol):
    with pytest.raises(ValueError, match="audit_p"):
        AuditService(ckpt, tmp_path / "l.db", LEAD, Fraction(3, 2), None, tol, lambda a, b: None)
    with pytest.raises(ValueError, match="seed"):
        AuditService(ckpt, tmp_path / "l.db", LEAD, Fraction(1), b"short", tol, lambda a, b: None)


def test_analyse_chain_counts_layers_times_positions(ckpt):
    record = run(ckpt, honest_modes(), request_id="work")
    analysis = analyse_chain(record, layer_work=[1, 2, 3, 4, 5, 6])
    positions = len(PROMPT) + NEW_TOKENS - 1
    assert analysis.work == {"p0": 3 * positions, "p1": 7 * positions, "p2": 11 * positions}
    assert analysis.valid_steps == [NEW_TOKENS] * 3
