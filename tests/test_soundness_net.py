"""Verification against an adversary who has read the code (issue 11), on real processes over loopback.

1. Audit selection is unpredictable while it matters: every public endpoint, queried while a request
   is live, yields nothing that opens its audit-seed commitment, so nobody does better than chance;
   afterwards the revealed seed opens the commitment every provider signed, and the audited segments
   are exactly the ones it selects.
2. Boundary laundering: a provider that emits a low-precision (or NaN) boundary is caught at its own
   link on receipt (bad_boundary), ejected and paid 0; the honest successor is never blamed; its
   colluding layer-skipping neighbour is caught by the audit when it is next routed; requests go on.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Iterator

import httpx
import pytest

import cheatkit
from verisplit.impl.audit.calibrate import calibrate, write_calibration
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort, verisplit_command
from verisplit.impl.records.keys import create_key_file
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.spec.audit import is_audited, reveal_valid
from verify_helpers import wait_settled

pytestmark = pytest.mark.net
HEX32 = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("soundness")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=31)
    calibration = write_calibration(calibrate(checkpoint, dtype="float32", device="cpu", split=[(0, 2), (2, 4)],
                                              prompt_len=8, new_tokens=8, seeds=(0, 1)), root / "calibration.json")
    # probation 1 (the least that deters at p = 1/2): these tests are about seeds and boundaries;
    # tests/test_franchise_net.py covers probation
    lead_args = ["--audit-p", "1/2", "--calibration", str(calibration), "--lead-key", str(root / "keys" / "lead.key"),
                 "--probation-requests", "1"]
    with ProcessGroup(root / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4)], keys_dir=root / "keys", data_dir=root / "lead",
                                  prices=[5, 5], lead_args=lead_args, extra_provider_args=["--dtype", "float32"])
        info.update(group=group, checkpoint=checkpoint, root=root, client=httpx.Client(base_url=info["http"], timeout=120))
        yield info
        info["client"].close()


def test_no_public_endpoint_reveals_a_live_audit_seed(net: dict[str, Any]) -> None:
    client: httpx.Client = net["client"]
    public = ["/v1/audit", "/v1/providers", "/v1/cohort", "/v1/models", "/healthz"]
    selections = []
    for n in range(10):
        body = {"prompt": f"seed probe {n}", "max_tokens": 48, "temperature": 0, "stream": True}
        seen_while_live: list[str] = []
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            request_id = response.headers["x-verisplit-request-id"]
            lines = response.iter_lines()
            while True:
                # While the request is live (no final record yet), scrape everything anyone on the
                # network can read. Once the chain is final the seed may be revealed: that is rule A1.
                record = client.get(f"/v1/requests/{request_id}")
                live = record.status_code == 404 or record.json().get("status") not in ("completed", "aborted")
                if live:
                    seen_while_live.append(record.text)
                    seen_while_live += [client.get(path).text for path in public]
                line = next(lines, None)
                if line is None or line.strip() == "data: [DONE]":
                    break
        assert seen_while_live, "the request was never observed live"
        info = wait_settled(client, request_id)
        commitment = bytes.fromhex(info["audit_seed_commitment"])
        candidates = {m for text in seen_while_live for m in HEX32.findall(text)}
        assert not any(reveal_valid(commitment, bytes.fromhex(c)) for c in candidates)
        # afterwards: the seed is revealed, opens what every provider signed, and selected the audits
        seed = bytes.fromhex(info["audit_seed"])
        assert reveal_valid(commitment, seed)
        signed = {c["audit_seed_commitment"] for s in info["steps"] for c in s["commitments"]}
        assert signed == {commitment.hex()}
        per_segment_p = [Fraction(q) for q in info["escrow"]["audit_p"]]  # 1 on a key's first request, then 1/2
        assert set(per_segment_p) <= {Fraction(1), Fraction(1, 2)}
        selected = [k for k in range(2) if is_audited(seed, request_id, k, per_segment_p[k])]
        assert sorted(a["segment_index"] for a in info["audits"] if a["source"] == "audit") == selected
        assert info["audited_segments"] == selected
        selections.append(tuple(selected))
    # Nothing observable opened a live seed, so an outsider's best guess is p itself; the selections
    # themselves vary from request to request (the draw is per request, not one fixed pattern).
    assert len(set(selections)) > 1


def _spawn(net: dict[str, Any], name: str, layers: str, price: int, cheat: str | None) -> None:
    key = net["root"] / "keys" / f"{name}.key"
    if not key.exists():
        create_key_file(key)
    args = ("--checkpoint", str(net["checkpoint"]), "--layers", layers, "--key", str(key), "--listen", "127.0.0.1:0",
            "--lead", net["grpc"], "--price", str(price), "--provider-id", name, "--dtype", "float32")
    group: ProcessGroup = net["group"]
    if cheat:
        child = group.spawn(name, cheatkit.provider_command(cheat, *args), extra_env=cheatkit.provider_env())
    else:
        child = group.spawn(name, verisplit_command("provider", "serve", *args))
    group.wait_ready([child], timeout=120)


@pytest.mark.parametrize("cheat", ["test_net_cheat_helpers:Bf16Boundary", "test_net_cheat_helpers:NanBoundary"])
def test_a_laundered_boundary_is_blamed_on_its_signer_and_routed_around(net: dict[str, Any], cheat: str) -> None:
    client: httpx.Client = net["client"]
    name = "launder-" + cheat.rsplit(":", 1)[1].lower()
    _spawn(net, name, "0:2", 1, cheat)            # cheaper than provider-0: the router picks it
    _spawn(net, name + "-skip", "2:4", 1, "skip_layer")  # its colluding neighbour, also cheaper
    reply = client.post("/v1/completions", json={"prompt": "launder", "max_tokens": 3, "temperature": 0})
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert (error["culprit"], error["reason"], error["link"]) == (name, "bad_boundary", 0)
    info = wait_settled(client, error["request_id"])
    assert name in info["ejected"] and info["settlement"]["payouts"].get(name, 0) == 0
    assert name + "-skip" not in info["ejected"]  # the receiver is never blamed for what it was sent
    listed = {p["provider_id"] for p in client.get("/v1/providers").json()["data"]}
    assert name not in listed
    # The neighbour that skips layers is caught by its own audit when it is next routed (p = 1/2 per
    # segment: a few requests); requests keep being served, and honest providers are never blamed.
    for attempt in range(12):
        reply = client.post("/v1/completions", json={"prompt": f"after {attempt}", "max_tokens": 3, "temperature": 0})
        assert reply.status_code == 200, reply.text
        info = wait_settled(client, reply.json()["id"])
        assert set(info["ejected"]) <= {name + "-skip"}
        if name + "-skip" in info["ejected"]:
            break
    else:
        pytest.fail("the layer-skipping neighbour was never caught")
    listed = {p["provider_id"] for p in client.get("/v1/providers").json()["data"]}
    assert {"provider-0", "provider-1"} <= listed and name + "-skip" not in listed
