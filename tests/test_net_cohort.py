"""End-to-end cohort over loopback: real lead and provider processes talking gRPC, HTTP API on top.

One module-scoped cohort (lead + 4 providers, 8-layer hidden-64 fp32 model) is shared by every test;
cheating providers are started next to it at a lower price (so the router picks them) and stopped
again. The test that kills a provider runs last. Comparisons of generated tokens are exact (greedy
argmax on fp32 logits, CPU, same checkpoint).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
import torch
from nacl.signing import SigningKey

import cheatkit
from verisplit.impl.audit.verifier import record_context
from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.generate import generate_reference
from verisplit.impl.records.keys import SignedFields, create_key_file, load_key_file, offer_signing_bytes, sign_offer
from verisplit.impl.runtime.loader import load_full
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort, verisplit_command
from verisplit.impl.node.framing import offer_fields_to_pb, open_session_request
from verisplit.impl.records.requests import RequestStore
from verisplit.impl.runtime.tensors import to_canonical
from verisplit.impl.runtime.tokenizer import load_tokenizer, stop_token_ids
from verisplit.spec.commitment import PROTOCOL_VERSION, check_chain, next_step_context
from verisplit.spec.encoding import digest_encoded

pytestmark = pytest.mark.net

TESTS_DIR = Path(__file__).resolve().parent
RANGES = [(0, 2), (2, 4), (4, 6), (6, 8)]
HONEST_PRICE = 10


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cohort")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=8, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=256, seed=3)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with ProcessGroup(root / "logs", env=env) as group:
        # 0.1 MiB of KV per provider: 2 layers x 2 kv heads x 16 dims x fp32 x (K, V) = 512 B/token -> 204 tokens
        info = start_local_cohort(group, checkpoint, RANGES, keys_dir=root / "keys", data_dir=root / "lead",
                                  prices=[HONEST_PRICE] * 4, extra_provider_args=["--kv-budget-mb", "0.1"])
        info.update(group=group, checkpoint=checkpoint, root=root, client=httpx.Client(base_url=info["http"], timeout=60))
        info["model_id"] = info["client"].get("/v1/models").json()["data"][0]["id"]
        yield info
        info["client"].close()


def spawn_provider(cohort: dict[str, Any], name: str, layers: str, price: int, cheat: str | None) -> Any:
    group: ProcessGroup = cohort["group"]
    key = cohort["root"] / "keys" / f"{name}.key"
    if not key.exists():
        create_key_file(key)
    args = ("--checkpoint", str(cohort["checkpoint"]), "--layers", layers, "--key", str(key), "--listen", "127.0.0.1:0",
            "--lead", cohort["grpc"], "--price", str(price), "--provider-id", name)
    if cheat:
        child = group.spawn(name, cheatkit.provider_command(cheat, *args), extra_env=cheatkit.provider_env())
    else:
        child = group.spawn(name, verisplit_command("provider", "serve", *args))
    group.wait_ready([child], timeout=120)
    return child


def complete(client: httpx.Client, prompt: Any, max_tokens: int = 10, **kw: Any) -> httpx.Response:
    return client.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw})


def cohort_ids(client: httpx.Client) -> list[str]:
    return [a["provider_id"] for a in client.get("/v1/cohort").json()["assignments"]]


def test_greedy_output_equals_single_process_reference(cohort: dict[str, Any]) -> None:
    client = cohort["client"]
    prompt = [5, 17, 99, 260, 3, 41, 7]
    response = complete(client, prompt, max_tokens=12)
    assert response.status_code == 200, response.text
    body = response.json()
    request_id = body["id"]
    assert response.headers["x-verisplit-request-id"] == request_id
    tokens = body["verisplit"]["completion_token_ids"]
    tokenizer = load_tokenizer(cohort["checkpoint"])
    reference = generate_reference(load_full(cohort["checkpoint"], device="cpu", dtype=torch.float32), prompt, 12,
                                   eos_token_id=stop_token_ids(tokenizer))
    assert tokens == reference  # exact: fp32 on CPU, greedy
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}

    info = client.get(f"/v1/requests/{request_id}").json()
    assert info["status"] == "completed" and info["culprit"] is None
    assert [a["provider_id"] for a in info["cohort"]["assignments"]] == [f"provider-{i}" for i in range(4)]
    assert all(a["fingerprint"].startswith("ed25519:") and a["endpoint"] for a in info["cohort"]["assignments"])
    assert info["commitments_checked"] == 4 * len(tokens)
    assert info["fee"] == HONEST_PRICE * 8 * (7 + len(tokens) - 1)  # price x work x positions computed (rule F1)

    # The retained record re-verifies independently with the spec, and its bytes are the committed ones.
    record = RequestStore(cohort["root"] / "lead" / "requests").load(request_id)
    assert record.status == "completed" and len(record.steps) == len(tokens)
    context = record_context(record, record.steps[0])  # the dtype and audit-seed commitment the lead signed
    assert context.audit_seed_commitment == bytes.fromhex(record.extra["audit_seed_commitment"])
    assert context.first_position == 0 and context.num_positions == len(prompt)
    assert record.steps[0].inputs[0] == to_canonical(torch.tensor(prompt, dtype=torch.int64))
    for index, step in enumerate(record.steps):
        if index:
            context = next_step_context(context, 1)
        assert check_chain(record.cohort, step.commitments, step.first_input_digest, context).valid
        for k, commitment in enumerate(step.commitments):
            assert digest_encoded(step.inputs[k]) == commitment.input_digest
            assert digest_encoded(step.outputs[k]) == commitment.output_digest


def test_openai_client_streams_chat_and_completions(cohort: dict[str, Any]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=cohort["http"] + "/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    model_id = models.data[0].id
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    whole = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0, stream=True)
    deltas, finish, ids = [], None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(deltas) == whole.choices[0].message.content
    assert finish in ("length", "stop") and len(ids) == 1
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    text_stream = client.completions.create(model=model_id, prompt="The quick brown fox", max_tokens=6, temperature=0,
                                            stream=True)
    text_whole = client.completions.create(model=model_id, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert "".join(c.choices[0].text for c in text_stream) == text_whole.choices[0].text


def test_raw_sse_ends_with_done(cohort: dict[str, Any]) -> None:
    with cohort["client"].stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True,
                                                                   "temperature": 0}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_bad_requests_get_openai_shaped_4xx(cohort: dict[str, Any]) -> None:
    client = cohort["client"]
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and "messages" in r.json()["error"]["param"]
    r = client.post("/v1/completions", json={"prompt": "x", "model": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/completions", json={"prompt": [1, 2, 100000]})
    assert r.status_code == 400 and "100000" in r.json()["error"]["message"]
    r = client.get("/v1/requests/req-does-not-exist")
    assert r.status_code == 404 and set(r.json()["error"]) >= {"message", "type", "param", "code"}


def _provider_stub(cohort: dict[str, Any], index: int) -> tuple[grpc.Channel, pb_grpc.ProviderStub]:
    channel = grpc.insecure_channel(cohort["providers"][index]["endpoint"])
    return channel, pb_grpc.ProviderStub(channel)


LEAD_KEY: dict[str, Any] = {}


def _open(stub: pb_grpc.ProviderStub, model_id: str, session_id: str, first: int, end: int, max_length: int = 16) -> None:
    """Open a session as the lead would: signed with the lead's key (the test holds the lead's key file)."""
    stub.OpenSession(open_session_request(LEAD_KEY["key"], session_id=session_id, request_id=session_id, model_id=model_id,
                                          segment_index=1, first_layer=first, end_layer=end, max_length=max_length,
                                          audit_seed_commitment=bytes(32), dtype="float32"))


def test_providers_serve_only_session_openings_their_lead_signed(cohort: dict[str, Any]) -> None:
    """A stranger cannot open sessions (and so cannot make a provider sign commitments or hold KV): an
    unsigned opening, or one signed by another key, is refused; the lead's own key is accepted."""
    LEAD_KEY["key"] = load_key_file(cohort["root"] / "lead" / "lead.key")
    model_id = cohort["model_id"]
    channel, stub = _provider_stub(cohort, 1)
    with channel:
        fields = dict(session_id="anon", request_id="anon", model_id=model_id, segment_index=1, first_layer=2,
                      end_layer=4, max_length=8, audit_seed_commitment=bytes(32), dtype="float32")
        with pytest.raises(grpc.RpcError) as caught:
            stub.OpenSession(pb.OpenSessionRequest(**fields))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            stub.OpenSession(open_session_request(SigningKey.generate(), **fields))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:  # signed by the lead, another dtype: refused, names it
            stub.OpenSession(open_session_request(LEAD_KEY["key"], **dict(fields, dtype="bfloat16")))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "dtype" in caught.value.details()
        stub.OpenSession(open_session_request(LEAD_KEY["key"], **fields))
        stub.CloseSession(pb.CloseSessionRequest(session_id="anon"))


def test_malformed_frames_get_invalid_argument_and_server_keeps_serving(cohort: dict[str, Any]) -> None:
    LEAD_KEY["key"] = load_key_file(cohort["root"] / "lead" / "lead.key")
    model_id = cohort["model_id"]
    channel, stub = _provider_stub(cohort, 1)
    with channel:
        good = to_canonical(torch.zeros(1, 64))
        cases = {
            "input: magic": pb.TensorChunk(index=0, count=1, total_bytes=len(good), data=b"XXXX" + good[4:]),
            "input.index": pb.TensorChunk(index=3, count=4, total_bytes=len(good), data=good),
            "input.data": pb.TensorChunk(index=0, count=1, total_bytes=len(good) + 5, data=good),
            "input.count": pb.TensorChunk(index=0, count=0, total_bytes=len(good), data=good),
            "num_positions": pb.TensorChunk(index=0, count=1, total_bytes=len(good), data=good),
        }
        for n, (field, chunk) in enumerate(cases.items()):
            session = f"bad-{n}"
            _open(stub, model_id, session, 2, 4)
            positions = 2 if field == "num_positions" else 1
            frames = iter([pb.StepFrame(session_id=session, step=0, first_position=0, num_positions=positions, input=chunk)])
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Steps(frames))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, caught.value.details())
            assert caught.value.details().startswith(field), (field, caught.value.details())
        # Bytes that are not a protobuf message at all.
        raw = channel.unary_unary("/verisplit.v1.Provider/OpenSession")
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff\xff garbage")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("request: bytes are not a valid verisplit.v1.OpenSessionRequest")
        # Wrong layer range and an over-budget session are refused cleanly.
        with pytest.raises(grpc.RpcError) as caught:
            _open(stub, model_id, "wrong-range", 0, 4)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "first_layer" in caught.value.details()
        _open(stub, model_id, "big-1", 2, 4, max_length=150)
        with pytest.raises(grpc.RpcError) as caught:
            _open(stub, model_id, "big-2", 2, 4, max_length=150)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub.CloseSession(pb.CloseSessionRequest(session_id="big-1"))
        info = stub.Info(pb.InfoRequest())
        assert info.open_sessions == 0 and info.kv_tokens_reserved == 0  # failed streams freed their sessions
    assert complete(cohort["client"], [1, 2, 3], max_tokens=2).status_code == 200


def test_registry_rejects_bad_signature_and_wrong_model(cohort: dict[str, Any], tmp_path: Path) -> None:
    key = create_key_file(tmp_path / "k.key")
    fields = SignedFields(PROTOCOL_VERSION, "forger", bytes(key.verify_key), cohort["model_id"], bytes(32), 8, 0, 8, 0,
                          "127.0.0.1:1", 100, int(time.time() * 1000))
    signature = bytearray(sign_offer(fields, key))
    signature[0] ^= 1
    with grpc.insecure_channel(cohort["grpc"]) as channel:
        registry = pb_grpc.RegistryStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            registry.Register(pb.SignedOffer(offer=offer_fields_to_pb(fields), signature=bytes(signature)))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and "signature" in caught.value.details()
        other = SignedFields(**{**fields.__dict__, "model_id": "another-model"})
        with pytest.raises(grpc.RpcError) as caught:
            registry.Register(pb.SignedOffer(offer=offer_fields_to_pb(other), signature=key.sign(offer_signing_bytes(other)).signature))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "model_id" in caught.value.details()
    assert "forger" not in [p["provider_id"] for p in cohort["client"].get("/v1/providers").json()["data"]]


@pytest.mark.parametrize(("name", "cheat", "reason"), [
    ("cheat-send-other", "test_net_cheat_helpers:SendOther", "output_mismatch"),
    ("cheat-wrong-key", "test_net_cheat_helpers:SignWithOtherKey", "wrong_signer"),
])
def test_cheating_provider_is_caught_at_its_link(cohort: dict[str, Any], name: str, cheat: str, reason: str) -> None:
    client = cohort["client"]
    child = spawn_provider(cohort, name, "2:4", price=1, cheat=cheat)
    try:
        assert cohort_ids(client) == ["provider-0", name, "provider-2", "provider-3"]
        response = complete(client, [4, 8, 15, 16], max_tokens=4)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert (error["culprit"], error["reason"], error["link"]) == (name, reason, 1)
        request_id = response.headers["x-verisplit-request-id"]
        info = client.get(f"/v1/requests/{request_id}").json()
        assert (info["status"], info["culprit"], info["reason"], info["fee"]) == ("aborted", name, reason, 0)
        record = RequestStore(cohort["root"] / "lead" / "requests").load(request_id)
        assert record.status == "aborted" and record.culprit == name and len(record.steps[0].commitments) == 2
    finally:
        cohort["group"].stop(child)  # graceful: the provider deregisters itself (else its offer expires in 5 s)
    deadline = time.monotonic() + 8.0
    while cohort_ids(client) != [f"provider-{i}" for i in range(4)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cohort_ids(client) == [f"provider-{i}" for i in range(4)]


def test_shipped_cli_cannot_select_a_cheat(cohort: dict[str, Any], tmp_path: Path) -> None:
    """No option or environment variable of ``verisplit provider serve`` reaches the cheat catalogue."""
    key = tmp_path / "k.key"
    create_key_file(key)
    env = dict(os.environ, VERISPLIT_ALLOW_CHEATS="1")  # the old switch must mean nothing now
    result = subprocess.run(verisplit_command("provider", "serve", "--checkpoint", str(cohort["checkpoint"]), "--layers", "0:2",
                                              "--key", str(key), "--listen", "127.0.0.1:0", "--lead", cohort["grpc"],
                                              "--cheat", "test_net_cheat_helpers:SendOther"),
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "No such option '--cheat'" in result.stderr and "Traceback" not in result.stderr


def test_provider_that_goes_away_gives_a_clear_error(cohort: dict[str, Any]) -> None:
    """Runs last: kills provider-3 for good."""
    group: ProcessGroup = cohort["group"]
    victim = next(c for c in group.children if c.name == "provider-3")
    group.stop(victim, sig=signal.SIGKILL)
    response = complete(cohort["client"], [1, 2, 3], max_tokens=3)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["culprit"], error["reason"], error["link"]) == ("provider-3", "unavailable", 3)
    assert "provider-3" in error["message"]
