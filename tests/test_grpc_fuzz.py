"""Malformed gRPC traffic and anonymous session floods against real provider and lead processes.

One module-scoped cohort (lead + 2 providers, 4-layer model). The fuzz sends over 5,000 frames of
garbage to every method (random bytes, valid messages with bytes flipped or cut, wrong wire types,
huge length prefixes, wrong session ids, invalid signatures, out-of-order steps) and requires: only
clean status codes (never UNKNOWN/INTERNAL/UNAVAILABLE), every process alive, and an honest request
served afterwards. The flood test requires an anonymous OpenSession flood to leave a provider with
no session and no reserved KV, and the honest lead's requests to keep completing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
import torch
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.node.framing import chunk_tensor, open_session_request
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort, verisplit_command
from verisplit.impl.records.keys import create_key_file, load_key_file
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.tensors import to_canonical

pytestmark = pytest.mark.net

CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED,
         grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
PROVIDER_UNARY = ["Info", "OpenSession", "CloseSession", "Prove"]
LEAD_UNARY = [("Registry", "Register"), ("Registry", "Heartbeat"), ("Admission", "Challenge")]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=4, hidden=32, heads=2, kv_heads=1, vocab=512,
                                        max_position=64, seed=6)
    with ProcessGroup(root / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4)], keys_dir=root / "keys", data_dir=root / "lead",
                                  extra_provider_args=["--kv-budget-mb", "0.05"])
        info.update(group=group, root=root, checkpoint=checkpoint, client=httpx.Client(base_url=info["http"], timeout=60))
        info["model_id"] = info["client"].get("/v1/models").json()["data"][0]["id"]
        yield info
        info["client"].close()


def honest_request_works(cohort: dict[str, Any]) -> None:
    reply = cohort["client"].post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0})
    assert reply.status_code == 200, reply.text


def all_alive(cohort: dict[str, Any]) -> bool:
    return cohort["lead"].alive() and all(c.alive() for c in cohort["provider_children"])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def garbage(rng: random.Random, valid: bytes) -> bytes:
    """One malformed (or accidentally well-formed) request body."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1 and valid:  # bit flips
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2 and valid:  # truncated
        return valid[:rng.randrange(len(valid))]
    if kind == 3:  # a length-delimited field claiming a huge length
        return bytes([(rng.randint(1, 12) << 3) | 2]) + _varint(rng.choice((1 << 31, 1 << 40, (1 << 63) - 1))) + b"x"
    if kind == 4:  # wrong wire types for known field numbers (fixed64, fixed32, start-group)
        return b"".join(bytes([(rng.randint(1, 12) << 3) | rng.choice((1, 3, 4, 5))]) + rng.randbytes(8)
                        for _ in range(rng.randint(1, 3)))
    if kind == 5:  # varint overflow
        return bytes([(rng.randint(1, 12) << 3)]) + b"\xff" * 11
    return valid + rng.randbytes(rng.randrange(1, 30))


def valid_bodies(cohort: dict[str, Any]) -> dict[str, bytes]:
    lead_key = SigningKey.generate()  # a stranger's signature: valid bytes, invalid signer
    opening = open_session_request(lead_key, session_id="fz", request_id="fz", model_id=cohort["model_id"],
                                   segment_index=0, first_layer=0, end_layer=2, max_length=8,
                                   audit_seed_commitment=bytes(32), dtype="float32")
    return {
        "Info": pb.InfoRequest().SerializeToString(),
        "OpenSession": opening.SerializeToString(),
        "CloseSession": pb.CloseSessionRequest(session_id="nope").SerializeToString(),
        "Prove": pb.ProveRequest(challenge=bytes(32), lead_public_key=bytes(32)).SerializeToString(),
        "Register": pb.SignedOffer(offer=pb.Offer(provider_id="fz", public_key=bytes(32)), signature=bytes(64)).SerializeToString(),
        "Heartbeat": pb.HeartbeatRequest(provider_id="provider-0", sent_at_ms=1, counter=1, signature=bytes(64)).SerializeToString(),
        "Challenge": pb.ChallengeRequest(public_key=bytes(32)).SerializeToString(),
        "Steps": pb.StepFrame(session_id="nope", step=0, num_positions=1,
                              input=chunk_tensor(to_canonical(torch.zeros(1, 32)))[0]).SerializeToString(),
    }


async def _fuzz(cohort: dict[str, Any], frames: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    bodies = valid_bodies(cohort)
    seen: dict[str, int] = {}
    details: dict[str, str] = {}
    targets = [p["endpoint"] for p in cohort["providers"]]
    channels = {t: grpc.aio.insecure_channel(t) for t in [*targets, cohort["grpc"]]}
    sent = 0

    async def unary(channel: grpc.aio.Channel, path: str, body: bytes) -> None:
        call = channel.unary_unary(path)  # no serializers: raw bytes on the wire
        try:
            await call(body, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code not in CLEAN:
                details.setdefault(code.name, exc.details())
        seen[f"{path} {code.name}"] = seen.get(f"{path} {code.name}", 0) + 1

    async def stream(channel: grpc.aio.Channel, messages: list[bytes]) -> None:
        # Written one by one and no more once the server has answered: a client write racing the
        # server's status makes the *client* library report INTERNAL, which says nothing about the server.
        call = channel.stream_stream("/verisplit.v1.Provider/Steps")(timeout=10)
        for message in messages:
            if call.done():
                break
            try:
                await call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                break
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in call:
                pass
        code = await call.code()
        if code not in CLEAN:
            details.setdefault(code.name, await call.details())
        seen[f"Steps {code.name}"] = seen.get(f"Steps {code.name}", 0) + 1

    def step_messages() -> list[bytes]:
        out = []
        for i in range(rng.randint(1, 6)):
            if rng.random() < 0.5:
                out.append(garbage(rng, bodies["Steps"]))
            else:  # well-formed frames: wrong session ids, out-of-order steps, inconsistent chunks
                out.append(pb.StepFrame(session_id=rng.choice(["nope", "", "x" * 200, f"s{i}"]), step=rng.randrange(5),
                                        first_position=rng.randrange(1 << 62), num_positions=rng.randrange(3),
                                        input=pb.TensorChunk(index=rng.randrange(3), count=rng.randrange(3),
                                                             total_bytes=rng.choice((0, 5, 1 << 40)),
                                                             data=rng.randbytes(rng.randrange(20)))).SerializeToString())
        return out

    try:
        while sent < frames:
            batch = []
            for _ in range(100):
                roll = rng.random()
                if roll < 0.55:
                    method = rng.choice(PROVIDER_UNARY)
                    batch.append(unary(channels[rng.choice(targets)], f"/verisplit.v1.Provider/{method}",
                                       garbage(rng, bodies[method])))
                    sent += 1
                elif roll < 0.8:
                    service, method = rng.choice(LEAD_UNARY)
                    batch.append(unary(channels[cohort["grpc"]], f"/verisplit.v1.{service}/{method}",
                                       garbage(rng, bodies[method])))
                    sent += 1
                else:
                    messages = step_messages()
                    batch.append(stream(channels[rng.choice(targets)], messages))
                    sent += len(messages)
            await asyncio.gather(*batch)
    finally:
        for channel in channels.values():
            await channel.close()
    seen["frames"] = sent
    for name, detail in details.items():
        seen[f"detail: {detail} {name}"] = 0
    return seen


def test_5000_malformed_frames_get_clean_status_codes_and_nothing_crashes(cohort: dict[str, Any]) -> None:
    seen = asyncio.run(_fuzz(cohort, 5200, seed=12))
    assert seen.pop("frames") >= 5000
    bad = {k: v for k, v in seen.items() if grpc.StatusCode[k.rsplit(" ", 1)[1]] not in CLEAN}
    assert bad == {}, bad
    assert any(k.endswith("INVALID_ARGUMENT") for k in seen)  # the garbage really reached the handlers
    assert all_alive(cohort)
    honest_request_works(cohort)


def test_anonymous_session_flood_leaves_the_honest_lead_its_capacity(cohort: dict[str, Any]) -> None:
    """600 anonymous openings (unsigned, or signed by strangers' keys) in parallel: every one is
    refused before any KV is reserved; the honest lead's requests complete during and after."""
    model_id = cohort["model_id"]
    endpoint = cohort["providers"][0]["endpoint"]

    async def flood() -> dict[str, int]:
        codes: dict[str, int] = {}
        async with grpc.aio.insecure_channel(endpoint) as channel:
            stub = pb_grpc.ProviderStub(channel)

            async def one(i: int) -> None:
                fields = dict(session_id=f"anon-{i}", request_id=f"anon-{i}", model_id=model_id, segment_index=0,
                              first_layer=0, end_layer=2, max_length=64, audit_seed_commitment=bytes(32), dtype="float32")
                request = pb.OpenSessionRequest(**fields) if i % 2 else open_session_request(SigningKey.generate(), **fields)
                try:
                    await stub.OpenSession(request, timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                codes[code] = codes.get(code, 0) + 1

            await asyncio.gather(*(one(i) for i in range(600)))
        return codes

    async def flood_and_serve() -> tuple[dict[str, int], list[int]]:
        async with httpx.AsyncClient(base_url=cohort["http"], timeout=60) as client:
            async def request() -> int:
                reply = await client.post("/v1/completions", json={"prompt": [4, 5], "max_tokens": 2, "temperature": 0})
                return reply.status_code
            results = await asyncio.gather(flood(), *(request() for _ in range(4)))
        return results[0], list(results[1:])  # type: ignore[return-value]

    codes, statuses = asyncio.run(flood_and_serve())
    assert codes == {"PERMISSION_DENIED": 600}
    assert statuses == [200, 200, 200, 200]
    with grpc.insecure_channel(endpoint) as channel:
        info = pb_grpc.ProviderStub(channel).Info(pb.InfoRequest(), timeout=5)
    assert info.open_sessions == 0 and info.kv_tokens_reserved == 0
    honest_request_works(cohort)


def test_unattached_sessions_are_reclaimed(cohort: dict[str, Any]) -> None:
    """A session opened (lead-signed) but never attached to a Steps stream is reclaimed within
    seconds, freeing its KV."""
    lead_key = load_key_file(cohort["root"] / "lead" / "lead.key")
    endpoint = cohort["providers"][1]["endpoint"]

    def opening(session_id: str) -> pb.OpenSessionRequest:
        return open_session_request(lead_key, session_id=session_id, request_id=session_id, model_id=cohort["model_id"],
                                    segment_index=1, first_layer=2, end_layer=4, max_length=32,
                                    audit_seed_commitment=bytes(32), dtype="float32")

    with grpc.insecure_channel(endpoint) as channel:
        stub = pb_grpc.ProviderStub(channel)
        stub.OpenSession(opening("idle-1"), timeout=5)
        assert stub.Info(pb.InfoRequest(), timeout=5).kv_tokens_reserved == 32
        deadline = time.time() + 30
        while stub.Info(pb.InfoRequest(), timeout=5).open_sessions and time.time() < deadline:
            time.sleep(0.5)
        info = stub.Info(pb.InfoRequest(), timeout=5)
        assert info.open_sessions == 0 and info.kv_tokens_reserved == 0
    honest_request_works(cohort)


def test_lead_routes_around_a_provider_out_of_capacity(cohort: dict[str, Any]) -> None:
    """The cheapest provider for layers [0, 2) has almost no KV budget, so it answers OpenSession
    with RESOURCE_EXHAUSTED; the lead suspends it (no blame) and re-routes to the provider that also
    covers the range: the request completes."""
    group: ProcessGroup = cohort["group"]
    key = cohort["root"] / "keys" / "tiny.key"
    create_key_file(key)
    args = ["--checkpoint", str(cohort["checkpoint"]), "--layers", "0:2", "--key", str(key), "--listen", "127.0.0.1:0",
            "--lead", cohort["grpc"], "--price", "0", "--provider-id", "tiny", "--kv-budget-mb", "0.001"]
    tiny = group.spawn("tiny", verisplit_command("provider", "serve", *args))
    group.wait_ready([tiny], timeout=120)
    try:
        assert "tiny" in [a["provider_id"] for a in cohort["client"].get("/v1/cohort").json()["assignments"]]
        honest_request_works(cohort)
        listed = {p["provider_id"]: p for p in cohort["client"].get("/v1/providers").json()["data"]}
        assert listed["tiny"]["outages"] >= 1
        assert listed["provider-0"]["outages"] == 0
    finally:
        group.stop(tiny)


def test_a_cohort_member_cannot_replay_its_openings_to_another_provider(cohort: dict[str, Any]) -> None:
    """A lead-signed opening addressed to provider-0 (what a hostile cohort member holds) replayed to
    provider-1 is refused with PERMISSION_DENIED and reserves nothing; an expired one addressed to
    provider-1 is refused with FAILED_PRECONDITION; the same opening, fresh, is served."""
    lead_key = load_key_file(cohort["root"] / "lead" / "lead.key")
    p0 = bytes(load_key_file(cohort["root"] / "keys" / "provider-0.key").verify_key)
    p1 = bytes(load_key_file(cohort["root"] / "keys" / "provider-1.key").verify_key)
    endpoint = cohort["providers"][1]["endpoint"]

    def opening(session_id: str, recipient: bytes, **kw: Any) -> pb.OpenSessionRequest:
        return open_session_request(lead_key, session_id=session_id, request_id=session_id, model_id=cohort["model_id"],
                                    segment_index=1, first_layer=2, end_layer=4, max_length=8,
                                    audit_seed_commitment=bytes(32), dtype="float32", recipient_public_key=recipient, **kw)

    with grpc.insecure_channel(endpoint) as channel:
        stub = pb_grpc.ProviderStub(channel)
        for i in range(8):
            with pytest.raises(grpc.RpcError) as refused:
                stub.OpenSession(opening(f"replay-{i}", p0), timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as expired:
            stub.OpenSession(opening("late", p1, expires_at_ms=int(time.time() * 1000) - 1000), timeout=5)
        assert expired.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert stub.Info(pb.InfoRequest(), timeout=5).open_sessions == 0
        stub.OpenSession(opening("mine", p1), timeout=5)
        assert stub.CloseSession(pb.CloseSessionRequest(session_id="mine"), timeout=5) is not None
