"""Registry abuse against a real lead and real providers over loopback (issue 12, registry half).

One module-scoped cohort: a lead (open admission) and two honest providers covering a 4-layer model.
Every attack goes through the lead's real gRPC Registry/Admission services with real, distinct
Ed25519 keys; after each, an honest request must still complete. Order matters only for the last
test (it stops and restarts an honest provider).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import offer_fields_from_pb, offer_fields_to_pb
from verisplit.impl.node.procs import ProcessGroup, free_port, start_local_cohort, verisplit_command
from verisplit.impl.records.keys import SignedFields, heartbeat_signing_bytes, load_key_file, sign_offer
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.spec.commitment import PROTOCOL_VERSION

pytestmark = pytest.mark.net

RANGES = [(0, 2), (2, 4)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("admission")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=4, hidden=32, heads=2, kv_heads=1, vocab=512,
                                        max_position=64, seed=5)
    with ProcessGroup(root / "logs") as group:
        info = start_local_cohort(group, checkpoint, RANGES, keys_dir=root / "keys", data_dir=root / "lead",
                                  prices=[10, 10])
        info.update(group=group, checkpoint=checkpoint, root=root, client=httpx.Client(base_url=info["http"], timeout=60))
        info["model_id"] = info["client"].get("/v1/models").json()["data"][0]["id"]
        info["channel"] = grpc.insecure_channel(info["grpc"])
        yield info
        info["channel"].close()
        info["client"].close()


def honest_request_works(cohort: dict[str, Any]) -> None:
    reply = cohort["client"].post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 3


def providers(cohort: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["provider_id"]: p for p in cohort["client"].get("/v1/providers").json()["data"]}


def make_fields(cohort: dict[str, Any], key: SigningKey, provider_id: str, first: int, end: int, price: int,
                endpoint: str, **overrides: Any) -> SignedFields:
    """A well-formed offer bound to this lead with a fresh nonce from its Admission service."""
    admission = pb_grpc.AdmissionStub(cohort["channel"])
    challenge = admission.Challenge(pb.ChallengeRequest(public_key=bytes(key.verify_key)), timeout=5)
    now = int(time.time() * 1000)
    fields = SignedFields(PROTOCOL_VERSION, provider_id, bytes(key.verify_key), cohort["model_id"], bytes(32), 4,
                          first, end, price, endpoint, 100, now, "float32", lead_public_key=bytes(challenge.lead_public_key),
                          nonce=bytes(challenge.nonce), expires_at_ms=now + 30_000, heartbeat_counter=now)
    return dataclasses.replace(fields, **overrides)


def register(cohort: dict[str, Any], fields: SignedFields, key: SigningKey) -> grpc.StatusCode:
    registry = pb_grpc.RegistryStub(cohort["channel"])
    try:
        registry.Register(pb.SignedOffer(offer=offer_fields_to_pb(fields), signature=sign_offer(fields, key)), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def test_200_junk_offers_at_price_0_on_closed_ports_are_never_routed(cohort: dict[str, Any]) -> None:
    """200 distinct keys register overlapping price-0 offers pointing at closed ports: the lead lists
    them but never routes to them (no possession proof): each one's failed probe, run inside its
    Register, drops it (nothing piles up to be re-probed), and honest requests keep completing."""
    junk = []
    for i in range(200):
        key = SigningKey.generate()
        first = i % 4
        fields = make_fields(cohort, key, f"junk-{i}", first, min(4, first + 1 + i % 3), 0, closed_port())
        assert register(cohort, fields, key) == grpc.StatusCode.OK
        junk.append(f"junk-{i}")
    listed = providers(cohort)
    assert [j for j in junk if j in listed] == []
    for _ in range(5):
        honest_request_works(cohort)
    assert {a["provider_id"] for a in cohort["client"].get("/v1/cohort").json()["assignments"]} <= {"provider-0", "provider-1"}


def test_junk_offer_naming_an_honest_endpoint_fails_the_possession_proof(cohort: dict[str, Any]) -> None:
    """A price-0 offer pointing at an honest provider's endpoint: the provider there signs with its own
    key, not the offer's, so the offer never becomes routable: its failed probe (run inside Register)
    drops it, so it is not even listed."""
    key = SigningKey.generate()
    endpoint = cohort["providers"][0]["endpoint"]
    assert register(cohort, make_fields(cohort, key, "thief-endpoint", 0, 4, 0, endpoint), key) == grpc.StatusCode.OK
    assert "thief-endpoint" not in providers(cohort)
    honest_request_works(cohort)
    assert "thief-endpoint" not in [a["provider_id"] for a in cohort["client"].get("/v1/cohort").json()["assignments"]]


def test_replayed_expired_foreign_and_nonce_less_offers_are_refused(cohort: dict[str, Any]) -> None:
    # An honest provider's signed offer, as anyone can read it from Provider.Info, replayed.
    with grpc.insecure_channel(cohort["providers"][1]["endpoint"]) as channel:
        info = pb_grpc.ProviderStub(channel).Info(pb.InfoRequest(), timeout=5)
    replay = pb_grpc.RegistryStub(cohort["channel"])
    with pytest.raises(grpc.RpcError) as caught:
        replay.Register(info.offer, timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "nonce" in caught.value.details()
    key = SigningKey.generate()
    cases = {
        "expired": (dict(expires_at_ms=int(time.time() * 1000) - 1), grpc.StatusCode.FAILED_PRECONDITION),
        "another lead": (dict(lead_public_key=bytes(SigningKey.generate().verify_key)), grpc.StatusCode.PERMISSION_DENIED),
        "no nonce": (dict(nonce=b""), grpc.StatusCode.FAILED_PRECONDITION),
        "invented nonce": (dict(nonce=b"\x01" * 32), grpc.StatusCode.FAILED_PRECONDITION),
    }
    for name, (override, code) in cases.items():
        fields = make_fields(cohort, key, f"replayer-{name.replace(' ', '-')}", 0, 4, 0, closed_port(), **override)
        assert register(cohort, fields, key) == code, name
    # A nonce is single use: the same signed offer twice is refused the second time.
    fields = make_fields(cohort, key, "once", 0, 4, 0, closed_port())
    assert register(cohort, fields, key) == grpc.StatusCode.OK
    assert register(cohort, dataclasses.replace(fields, issued_at_ms=fields.issued_at_ms + 1), key) == \
        grpc.StatusCode.FAILED_PRECONDITION
    # A nonce issued for one key cannot carry another key's offer.
    other = SigningKey.generate()
    stolen = make_fields(cohort, key, "stolen-nonce", 0, 4, 0, closed_port())
    assert register(cohort, dataclasses.replace(stolen, public_key=bytes(other.verify_key)), other) == \
        grpc.StatusCode.FAILED_PRECONDITION
    honest_request_works(cohort)


def test_stale_and_replayed_heartbeats_cannot_remove_a_live_provider(cohort: dict[str, Any]) -> None:
    """Heartbeats signed by the honest key itself (as if captured earlier): a 'leaving' heartbeat an
    hour old and one with a counter at or below the last seen are refused; the provider stays routed."""
    key = load_key_file(cohort["root"] / "keys" / "provider-1.key")
    registry = pb_grpc.RegistryStub(cohort["channel"])
    hour_ago = int(time.time() * 1000) - 3_600_000
    for counter in (hour_ago, 1, 0):
        signature = key.sign(heartbeat_signing_bytes("provider-1", hour_ago, True, counter)).signature
        with pytest.raises(grpc.RpcError) as caught:
            registry.Heartbeat(pb.HeartbeatRequest(provider_id="provider-1", sent_at_ms=hour_ago, leaving=True,
                                                   signature=signature, counter=counter), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "counter" in caught.value.details()
    assert providers(cohort)["provider-1"]["routable"] is True
    honest_request_works(cohort)


def test_squatted_id_is_refused_and_the_departed_owner_comes_back(cohort: dict[str, Any]) -> None:
    """Another key cannot take an honest provider's id, neither while it is listed nor after it left;
    the honest provider restarting with its own key registers again and serves."""
    squatter = SigningKey.generate()
    assert register(cohort, make_fields(cohort, squatter, "provider-1", 2, 4, 0, closed_port()), squatter) == \
        grpc.StatusCode.ALREADY_EXISTS
    group: ProcessGroup = cohort["group"]
    child = cohort["provider_children"][1]
    assert group.stop(child) == 0
    deadline = time.time() + 30
    while "provider-1" in providers(cohort) and time.time() < deadline:
        time.sleep(0.2)
    assert "provider-1" not in providers(cohort)  # left (graceful 'leaving' heartbeat)
    assert register(cohort, make_fields(cohort, squatter, "provider-1", 2, 4, 0, closed_port()), squatter) == \
        grpc.StatusCode.ALREADY_EXISTS
    args = ["--checkpoint", str(cohort["checkpoint"]), "--layers", "2:4", "--key", str(cohort["root"] / "keys" / "provider-1.key"),
            "--listen", "127.0.0.1:0", "--lead", cohort["grpc"], "--price", "10", "--provider-id", "provider-1"]
    again = group.spawn("provider-1-again", verisplit_command("provider", "serve", *args))
    group.wait_ready([again], timeout=120)
    assert providers(cohort)["provider-1"]["routable"] is True
    honest_request_works(cohort)
