"""Verification on the real network: the lead process audits (p = 1), settles, writes the signed ledger
and ejects, with real provider processes on loopback.

One module-scoped lead (``lead serve --audit-p 1 --calibration ...``) and an honest pool (h0 [0,2),
h1 [2,4), price 10) on a 4-layer hidden-64 fp32 model. Cheaters are started per phase, all on one
side of the split, with prices below the honest ones and distinct from each other: the router picks
the cheapest, the audit hook ejects it, and the next request routes to the next cheater (so each
case also checks that an ejected provider is routed around). Token comparisons are exact (greedy,
fp32, CPU); audit comparisons use the tolerance measured by ``verisplit.impl.audit.calibrate`` here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch

from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.audit.calibrate import calibrate, write_calibration
import cheatkit
from cheatkit.cheats import CATALOGUE
from verisplit.spec.threats import CAUGHT_BY
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.generate import generate_reference
from verisplit.impl.records.keys import create_key_file, load_key_file
from verisplit.impl.runtime.loader import load_full, load_segment
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort, verisplit_command
from verisplit.impl.runtime.tokenizer import load_tokenizer, stop_token_ids
from verisplit.spec.audit import reveal_valid, request_seed
from verify_helpers import wait_settled
from verisplit.spec.settlement import conserved, settle

pytestmark = pytest.mark.net

TESTS_DIR = Path(__file__).resolve().parent
HONEST_PRICE = 10
PROMPT = [5, 17, 99, 260, 3, 41, 7]
MAX_TOKENS = 4
SEED_HEX = "5e" * 32
# Cheaters per phase: (mode, price); all in one phase sit on the same range, cheapest first.
PHASE_UPPER = [("wrong_key", 1), ("substitute_output", 2), ("skip_layer", 3), ("replay", 4), ("noise", 5)]
PHASE_LOWER = [("int8_weights", 1), ("lower_precision", 2), ("other_model", 3), ("prefix_range", 4), ("sometimes", 5)]
# Offered price of every provider these tests start (settlement pays price x work).
PRICES = {"provider-0": HONEST_PRICE, "provider-1": HONEST_PRICE, "wide": 1, "dier": 1,
          **{f"c-{mode}": price for mode, price in PHASE_UPPER + PHASE_LOWER}}


class DieAtStep(Behaviour):
    """Test helper (not a cheat): the provider process dies while serving step 2."""

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if step == 2:
            os._exit(3)
        return output


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("verify-net")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=21)
    calibration = write_calibration(calibrate(checkpoint, dtype="float32", device="cpu", split=[(0, 2), (2, 4)],
                                              prompt_len=8, new_tokens=8, seeds=(0, 1)), root / "calibration.json")
    (root / "seed.hex").write_text(SEED_HEX + "\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    lead_args = ["--audit-p", "1", "--calibration", str(calibration), "--audit-seed-file", str(root / "seed.hex"),
                 "--lead-key", str(root / "keys" / "lead.key")]
    with ProcessGroup(root / "logs", env=env) as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4)], keys_dir=root / "keys", data_dir=root / "lead",
                                  prices=[HONEST_PRICE] * 2, lead_args=lead_args)
        info.update(group=group, checkpoint=checkpoint, root=root, ledger=root / "lead" / "ledger.db",
                    client=httpx.Client(base_url=info["http"], timeout=120))
        yield info
        info["client"].close()


def spawn(net: dict[str, Any], specs: list[tuple[str, str, int, str | None]]) -> dict[str, Any]:
    """Start providers (name, layers, price, cheat) in parallel and wait until all are ready."""
    group: ProcessGroup = net["group"]
    children = {}
    for name, layers, price, cheat in specs:
        key = net["root"] / "keys" / f"{name}.key"
        if not key.exists():
            create_key_file(key)
        args = ("--checkpoint", str(net["checkpoint"]), "--layers", layers, "--key", str(key), "--listen", "127.0.0.1:0",
                "--lead", net["grpc"], "--price", str(price), "--provider-id", name, "--dtype", "float32")
        if cheat:
            children[name] = group.spawn(name, cheatkit.provider_command(cheat, *args), extra_env=cheatkit.provider_env())
        else:
            children[name] = group.spawn(name, verisplit_command("provider", "serve", *args))
    group.wait_ready(list(children.values()), timeout=150)
    return children


def listed(client: httpx.Client) -> dict[str, Any]:
    return {p["provider_id"]: p for p in client.get("/v1/providers").json()["data"]}


def cohort_of(client: httpx.Client) -> list[tuple[str, int, int]]:
    return [(a["provider_id"], a["first_layer"], a["end_layer"]) for a in client.get("/v1/cohort").json()["assignments"]]


def run_request(client: httpx.Client) -> tuple[httpx.Response, dict[str, Any]]:
    """One greedy completion; returns the response and the request info once the audit hook finished."""
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0})
    return response, wait_settled(client, response.headers["x-verisplit-request-id"])


def expected_work(info: dict[str, Any]) -> dict[str, int]:
    """Layers x positions over the links the lead accepted (recomputed from the public info alone)."""
    assignments = info["cohort"]["assignments"]
    work = {a["provider_id"]: 0 for a in assignments}
    accepted = info["commitments_checked"]
    for step in info["steps"]:
        for a in assignments[:min(accepted, len(assignments))]:
            work[a["provider_id"]] += (a["end_layer"] - a["first_layer"]) * step["num_positions"]
        accepted -= len(assignments)
    return work


def check_settlement(info: dict[str, Any], failed: set[str]) -> None:
    s = info["settlement"]
    work = expected_work(info)
    assert s["work"] == work
    assert set(s["failed"]) == failed
    spec = settle(s["fee"], work, {p: PRICES[p] for p in work}, s["lead"], frozenset(failed))
    assert (s["payouts"], s["residual"], s["refund"]) == (dict(spec.payouts), spec.residual, spec.refund)
    assert conserved(spec)
    assert isinstance(info["ledger_seq"], int) and info["ledger_seq"] >= 1


def test_honest_cohort_all_paid_ledger_verifies_and_seed_opens(net: dict[str, Any]) -> None:
    client = net["client"]
    audit = client.get("/v1/audit").json()
    assert audit["p"] == "1/1" and audit["enabled"] and "seed_commitment" not in audit  # seeds are per request
    response, info = run_request(client)
    assert response.status_code == 200, response.text
    assert info["status"] == "completed" and info["ejected"] == [] and not info.get("errors")
    assert sorted(a["segment_index"] for a in info["audits"]) == [0, 1]
    assert all(a["passed"] and a["source"] == "audit" and a["ratio"] <= 1 for a in info["audits"])
    check_settlement(info, set())
    assert all(v > 0 for v in info["settlement"]["payouts"].values())
    done = subprocess.run(verisplit_command("ledger", "verify", "--ledger", str(net["ledger"]), "--lead-public-key",
                                            bytes(load_key_file(net["root"] / "keys" / "lead.key").verify_key).hex()),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr
    assert client.get("/v1/audit/reveal").status_code == 404  # no endpoint reveals seeds any more
    seed = request_seed(bytes.fromhex(SEED_HEX), info["id"])  # the lead's secret is SEED_HEX (--audit-seed-file)
    assert info["audit_seed"] == seed.hex() and reveal_valid(bytes.fromhex(info["audit_seed_commitment"]), seed)


def test_provider_serves_a_strict_sub_range_of_its_offer(net: dict[str, Any]) -> None:
    """Spec rule C1: h0 offers [0,2) but the router assigns it [0,1) next to a cheaper [1,4) offer."""
    client = net["client"]
    children = spawn(net, [("wide", "1:4", 1, None)])
    try:
        assert cohort_of(client) == [("provider-0", 0, 1), ("wide", 1, 4)]
        response, info = run_request(client)
        assert response.status_code == 200, response.text
        tokens = response.json()["verisplit"]["completion_token_ids"]
        reference = generate_reference(load_full(net["checkpoint"], device="cpu", dtype=torch.float32), PROMPT,
                                       MAX_TOKENS, eos_token_id=stop_token_ids(load_tokenizer(net["checkpoint"])))
        assert tokens == reference
        commitment = info["steps"][0]["commitments"][0]
        assert (commitment["first_layer"], commitment["end_layer"]) == (0, 1)
        # The committed weights digest is the sub-range's own (that of a fresh load of [0, 1)).
        fresh = load_segment(net["checkpoint"], 0, 1, device="cpu", dtype="float32").weights_digest
        assert commitment["weights_digest"] == fresh.hex()
        assert all(a["passed"] for a in info["audits"]) and info["ejected"] == []
        check_settlement(info, set())
    finally:
        net["group"].stop(children["wide"])
    deadline = time.monotonic() + 8
    while "wide" in listed(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cohort_of(client) == [("provider-0", 0, 2), ("provider-1", 2, 4)]


def _cheat_phase(net: dict[str, Any], phase: list[tuple[str, int]], layers: str, segment: int) -> None:
    client = net["client"]
    names = {mode: f"c-{mode}" for mode, _ in phase}
    children = spawn(net, [(names[mode], layers, price, mode) for mode, price in phase])
    try:
        for mode, _ in phase:
            name = names[mode]
            key_hex = listed(client)[name]["public_key"]
            route = cohort_of(client)
            assert route[segment][0] == name, (mode, route)
            response, info = run_request(client)
            failing = [a for a in info["audits"] if not a["passed"]]
            assert [a["provider_id"] for a in failing] == [name], (mode, info["audits"])
            assert failing[0]["source"] == CAUGHT_BY[mode] and failing[0]["segment_index"] == segment
            if CAUGHT_BY[mode] == "chain":
                assert response.status_code == 502 and response.json()["error"]["culprit"] == name
            else:
                assert response.status_code == 200 and info["status"] == "completed"
            honest = [a for a in info["audits"] if a["provider_id"] != name]
            assert all(a["passed"] for a in honest)
            assert info["ejected"] == [name]
            check_settlement(info, {name})
            assert info["settlement"]["payouts"][name] == 0
            if info["settlement"]["fee"]:
                assert info["settlement"]["refund"] > 0  # the cheater's slice goes back to the client
            assert name not in listed(client)
            assert key_hex in client.get("/v1/providers").json()["banned"]
    finally:
        for child in children.values():
            net["group"].stop(child, timeout=5)


def test_each_upper_cheat_is_caught_ejected_and_forfeits(net: dict[str, Any]) -> None:
    _cheat_phase(net, PHASE_UPPER, "2:4", 1)


def test_each_lower_cheat_is_caught_ejected_and_forfeits(net: dict[str, Any]) -> None:
    _cheat_phase(net, PHASE_LOWER, "0:2", 0)


def test_catalogue_is_covered() -> None:
    assert sorted(m for m, _ in PHASE_UPPER + PHASE_LOWER) == sorted(CATALOGUE)


def test_provider_going_away_mid_request_blames_nobody(net: dict[str, Any]) -> None:
    """A non-protocol fault (the provider died at step 2) is an outage: the lead replaces it mid-request
    (issue 13, rules R1-R3: the honest provider of the same range replays the past inputs and carries
    on), the client gets its completion, nobody is blamed, ejected or banned, and the lost provider's
    slice is forfeited (refunded) while everyone else is paid exactly price x work."""
    client = net["client"]
    children = spawn(net, [("dier", "2:4", 1, "test_verify_net:DieAtStep")])
    try:
        assert cohort_of(client)[1][0] == "dier"
        key_hex = listed(client)["dier"]["public_key"]
        response, info = run_request(client)
        assert response.status_code == 200, response.text
        assert (info["status"], info["culprit"]) == ("completed", None)
        [replacement] = info["replacements"]
        assert (replacement["failed_provider"], replacement["reason"]) == ("dier", "unavailable")
        assert replacement["assignment"]["provider_id"] != "dier" and replacement["at_step"] == 2
        assert info["ejected"] == [] and all(a["passed"] for a in info["audits"])
        assert key_hex not in client.get("/v1/providers").json()["banned"]
        s = info["settlement"]
        assert s["payouts"]["dier"] == 0 and s["refund"] == s["values"]["dier"] > 0
        assert all(s["payouts"][p] == s["values"][p] > 0 for p in s["payouts"] if p != "dier")
        assert sum(s["payouts"].values()) + s["residual"] + s["refund"] == s["fee"]
    finally:
        net["group"].stop(children["dier"], timeout=5)


def test_tampered_ledger_is_caught_by_ledger_verify(net: dict[str, Any], tmp_path: Path) -> None:
    client = net["client"]
    response, _ = run_request(client)  # at least one record exists
    assert response.status_code in (200, 502)
    copy = tmp_path / "ledger.db"
    source = sqlite3.connect(str(net["ledger"]))
    target = sqlite3.connect(str(copy))
    source.backup(target)  # a consistent snapshot (the lead holds the file open in WAL mode)
    source.close()
    seq, body = target.execute("SELECT seq, body FROM records ORDER BY seq LIMIT 1").fetchone()
    doc = json.loads(body)
    doc["residual"] += 1  # a forged record: more for the lead than the spec's settle gives
    target.execute("UPDATE records SET body = ? WHERE seq = ?", (json.dumps(doc, sort_keys=True, separators=(",", ":")), seq))
    target.commit()
    target.close()
    done = subprocess.run(verisplit_command("ledger", "verify", "--ledger", str(copy)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "FAILED" in done.stderr and f"{seq}" in done.stderr, done.stdout + done.stderr


def test_cheats_apply_to_the_assigned_sub_range(tmp_path: Path) -> None:
    """In process: a cheater's view of a sub-range applies its cheat to that range (a prefix_range
    cheater offering [0,4) assigned [2,4) runs only layer 2), an honest view shares the loaded weights,
    and both declare the digest of a fresh load of the range."""
    import asyncio

    from nacl.signing import SigningKey

    from cheatkit.cheats import make_behaviour
    from verisplit.impl.records.keys import SignedFields
    from verisplit.impl.node.provider import ProviderService
    from verisplit.spec.commitment import PROTOCOL_VERSION

    ckpt = make_random_checkpoint(tmp_path / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=320,
                                  max_position=64, seed=2)

    def load(a: int, b: int) -> Any:
        return load_segment(ckpt, a, b, device="cpu", dtype="float32")

    fresh = load(2, 4).weights_digest
    for mode, expected_layers in (("honest", [2, 3]), ("prefix_range", [2]), ("skip_layer", [3])):
        behaviour = make_behaviour(mode)
        loaded = load(0, 4)
        behaviour.prepare(loaded)
        key = SigningKey(bytes(32))
        offer = SignedFields(protocol_version=PROTOCOL_VERSION, provider_id="p", public_key=bytes(key.verify_key),
                             model_id=loaded.model_id, weights_digest=loaded.weights_digest, num_layers=4, first_layer=0,
                             end_layer=4, price_per_work_unit=1, endpoint="127.0.0.1:1", kv_capacity_tokens=1000,
                             issued_at_ms=1)
        service = ProviderService(loaded, key, behaviour, offer, 1000, load_range=load)
        view = asyncio.run(service.view(2, 4))
        assert view.layer_indices == expected_layers and view.weights_digest == fresh, mode
        assert asyncio.run(service.view(2, 4)) is view  # cached per range
        if mode == "honest":
            assert view.module.layers["2"].self_attn.q_proj.weight is loaded.module.layers["2"].self_attn.q_proj.weight


def test_eject_of_a_provider_that_already_left_still_bans_its_key(tmp_path: Path) -> None:
    """AuditService falls back to Registry.ban_key when Registry.eject finds no offer (KeyError)."""
    import asyncio

    from verify_helpers import keys, make_ckpt, run

    from verisplit.impl.audit.service import AuditService
    from verisplit.impl.node.registry import Registry
    from verisplit.spec.audit import Tolerance
    from verisplit.spec.cohort import ModelSpec

    ckpt = make_ckpt(tmp_path / "ckpt")
    record = run(ckpt, ["honest", "wrong_key", "honest"], request_id="gone")
    registry = Registry(ModelSpec(record.model_id, 6))  # nobody listed: the culprit already left
    service = AuditService(ckpt, tmp_path / "ledger.db", SigningKey_(), 0, b"s" * 32, Tolerance("float32", 1e-5, 1e-5),
                           registry.eject)
    out = asyncio.run(service(record))
    assert out["ejected"] == ["p1"] and not out["errors"]
    assert registry.banned() == {bytes(keys()[1].verify_key).hex(): out["audits"][0]["reason"]}


def SigningKey_() -> Any:
    from nacl.signing import SigningKey

    return SigningKey(bytes([9]) * 32)
