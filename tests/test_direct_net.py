"""The direct data path on real processes (``lead serve --direct``): providers forward boundary tensors
to each other; greedy output equals one process (and so the relayed cohort, tests/test_net_cohort.py);
every link is still checked and recorded by the lead; a provider that forwards a tensor different from
what it signed is refused by its receiver and caught at its own link; speculative steps run on it too.

Model: 6-layer hidden-64 random checkpoint, fp32, CPU, providers [0,2), [2,4), [4,6).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch
from nacl.signing import SigningKey

import cheatkit
from verisplit.impl.audit.service import analyse_chain
from verisplit.impl.audit.verifier import record_context
from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort
from verisplit.impl.records.keys import create_key_file
from verisplit.impl.records.requests import RequestStore
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.generate import generate_reference
from verisplit.impl.runtime.loader import load_full
from verisplit.impl.runtime.tokenizer import load_tokenizer, stop_token_ids
from verisplit.spec.commitment import EQUIVOCATION, OUTPUT_MISMATCH, check_chain
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.faults import PROVIDER_ERROR
from verify_helpers import wait_settled

pytestmark = pytest.mark.net

TESTS_DIR = Path(__file__).resolve().parent
PROMPT = [5, 17, 99, 260, 3, 41, 7]


class ForwardTamperer(Behaviour):
    """Test cheat (not in the catalogue): reports its true output to the lead but forwards other bytes,
    under the same signed commitment, to the next segment (it patches this provider process's forward)."""

    name = "forward_tamperer"

    def __init__(self) -> None:
        from verisplit.impl.node import direct
        from verisplit.impl.node import verisplit_pb2 as pb

        original = direct.DirectLinks.forward

        def tampered(links: Any, frame: Any, results: list[Any]) -> None:
            copies = []
            for result in results:
                copy = pb.StepResult()
                copy.CopyFrom(result)
                copies.append(copy)
            data = bytearray(copies[-1].output.data)
            data[-1] ^= 0x01  # one bit of the last element
            copies[-1].output.data = bytes(data)
            original(links, frame, copies)

        direct.DirectLinks.forward = tampered  # type: ignore[method-assign]


class Equivocator(Behaviour):
    """Test cheat (not in the catalogue: it only exists on the direct data path): report the true output and its commitment to the lead, but forward other
    bytes (one bit flipped) to the next segment under a *second* commitment, validly signed over the
    forwarded bytes. The receiver's ``check_forwarded`` passes, so it computes on them; caught by: the
    lead's ``check_equivocation`` on the upstream commitment the receiver returns (``equivocation``,
    naming this provider, not the receiver). Patches this provider process's ``DirectLinks.forward``."""

    name = "equivocator"

    def __init__(self) -> None:
        from verisplit.impl.node import direct

        self.key: SigningKey | None = None
        original = direct.DirectLinks.forward
        behaviour = self

        def equivocating(links: Any, frame: Any, results: list[Any]) -> None:
            original(links, frame, behaviour._second_version(results))

        direct.DirectLinks.forward = equivocating  # type: ignore[method-assign]

    def signing_key(self, step: int, offer_key: SigningKey) -> SigningKey:
        self.key = offer_key
        return offer_key

    def _second_version(self, results: list[Any]) -> list[Any]:
        import dataclasses

        from verisplit.impl.node import verisplit_pb2 as pb
        from verisplit.impl.node.framing import Reassembler, chunk_tensor, commitment_from_pb, commitment_to_pb
        from verisplit.spec.commitment import sign_commitment
        from verisplit.spec.encoding import digest_encoded

        reassembler = Reassembler("output")
        blob = None
        for result in results:
            blob = reassembler.add(result.output)
        assert blob is not None and self.key is not None
        data = bytearray(blob)
        data[-1] ^= 0x01  # one bit of the last element
        honest = commitment_from_pb(results[-1].commitment)
        second = sign_commitment(dataclasses.replace(honest, output_digest=digest_encoded(bytes(data)),
                                                     signature=b""), self.key)
        copies = [pb.StepResult(step=results[0].step, output=chunk) for chunk in chunk_tensor(bytes(data))]
        copies[-1].commitment.CopyFrom(commitment_to_pb(second))
        return copies


class JunkBeforeForward(Behaviour):
    """Test cheat (not in the catalogue) standing in for a stranger: before each honest forward it
    sends the receiver junk ``Forward`` streams for the same session: other bytes under a stranger's
    signature for this step, and 10,001 frames for the following steps (each would once have made an
    inbox future, the first one settled as a refusal). It reports and forwards honestly otherwise."""

    name = "junk_before_forward"

    def __init__(self) -> None:
        import asyncio
        import contextlib

        import grpc

        from verisplit.impl.node import direct
        from verisplit.impl.node import verisplit_pb2 as pb
        from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
        from verisplit.impl.node.framing import chunk_tensor, commitment_from_pb, commitment_to_pb, open_channel
        from verisplit.spec.commitment import sign_commitment
        from verisplit.spec.encoding import digest_encoded

        original = direct.DirectLinks.forward
        stranger = SigningKey(b"\x05" * 32)

        def junk_frames(frame: Any, results: list[Any], step: int) -> list[Any]:
            junk = b"\x00" * 64
            c = commitment_from_pb(results[-1].commitment)
            forged = sign_commitment(dataclasses.replace(c, step=step, output_digest=digest_encoded(junk)), stranger)
            frames = [pb.StepFrame(session_id=frame.session_id, step=step, first_position=frame.first_position,
                                   num_positions=frame.num_positions, input=chunk) for chunk in chunk_tensor(junk)]
            frames[-1].upstream_commitment.CopyFrom(commitment_to_pb(forged))
            return frames

        async def send_junk_then(links: Any, frame: Any, results: list[Any]) -> None:
            link = links.links[frame.session_id]
            stub = pb_grpc.ProviderStub(open_channel(link.next_endpoint, None))
            streams = [junk_frames(frame, results, frame.step),
                       [f for step in range(frame.step + 1, frame.step + 10_002) for f in junk_frames(frame, results, step)]]
            for frames in streams:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for _ in stub.Forward(iter(frames), timeout=30):
                        pass
            original(links, frame, results)

        def forward(links: Any, frame: Any, results: list[Any]) -> None:
            task = asyncio.get_running_loop().create_task(send_junk_then(links, frame, results))
            links._tasks.add(task)
            task.add_done_callback(links._tasks.discard)

        direct.DirectLinks.forward = forward  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("direct-net")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=6, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=9)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with ProcessGroup(root / "logs", env=env) as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4), (4, 6)], keys_dir=root / "keys",
                                  data_dir=root / "lead", prices=[10] * 3, lead_args=["--direct"])
        info.update(group=group, checkpoint=checkpoint, root=root, client=httpx.Client(base_url=info["http"], timeout=120))
        yield info
        info["client"].close()


def start_test_provider(net: dict[str, Any], provider_id: str, behaviour: str) -> Any:
    """Start a price-1 provider of layers [2, 4) running this module's test-only ``behaviour`` class
    under a fresh key, and wait until it is ready (the lead then routes segment 1 to it)."""
    key = net["root"] / "keys" / f"{provider_id}.key"
    create_key_file(key)
    args = ("--checkpoint", str(net["checkpoint"]), "--layers", "2:4", "--key", str(key), "--listen", "127.0.0.1:0",
            "--lead", net["grpc"], "--price", "1", "--provider-id", provider_id)
    child = net["group"].spawn(provider_id, cheatkit.provider_command(f"test_direct_net:{behaviour}", *args),
                               extra_env=cheatkit.provider_env())
    net["group"].wait_ready([child], timeout=150)
    return child


def test_direct_greedy_equals_one_process_and_every_link_is_recorded(net: dict[str, Any]) -> None:
    client = net["client"]
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 10, "temperature": 0})
    assert response.status_code == 200, response.text
    tokens = response.json()["verisplit"]["completion_token_ids"]
    reference = generate_reference(load_full(net["checkpoint"], device="cpu", dtype=torch.float32), PROMPT, 10,
                                   eos_token_id=stop_token_ids(load_tokenizer(net["checkpoint"])))
    assert tokens == reference  # exact: fp32, greedy
    record = RequestStore(net["root"] / "lead" / "requests").load(response.json()["id"])
    assert record.status == "completed" and len(record.steps) == len(tokens)
    for step in record.steps:
        assert check_chain(record.cohort, step.commitments, step.first_input_digest, record_context(record, step)).valid
        for k, commitment in enumerate(step.commitments):  # the lead holds the bytes of every link
            assert digest_encoded(step.inputs[k]) == commitment.input_digest
            assert digest_encoded(step.outputs[k]) == commitment.output_digest
    info = client.get(f"/v1/requests/{record.request_id}").json()
    assert info["commitments_checked"] == 3 * len(tokens)


def test_forwarding_other_bytes_than_signed_is_caught_at_the_senders_link(net: dict[str, Any]) -> None:
    client = net["client"]
    group: ProcessGroup = net["group"]
    key = net["root"] / "keys" / "forger.key"
    create_key_file(key)
    args = ("--checkpoint", str(net["checkpoint"]), "--layers", "2:4", "--key", str(key), "--listen", "127.0.0.1:0",
            "--lead", net["grpc"], "--price", "1", "--provider-id", "forger")
    child = group.spawn("forger", cheatkit.provider_command("substitute_output", *args), extra_env=cheatkit.provider_env())
    group.wait_ready([child], timeout=150)
    try:
        assert [a["provider_id"] for a in client.get("/v1/cohort").json()["assignments"]][1] == "forger"
        response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert (error["culprit"], error["reason"], error["link"]) == ("forger", OUTPUT_MISMATCH, 1), error
        # refused by its receiver before computing, or caught by the lead's own H4 on the reported bytes
        assert "refused by segment 2" in error["message"] or "output digest" in error["message"], error
    finally:
        group.stop(child, timeout=5)


def test_receiver_refuses_a_forward_that_differs_from_the_signed_output(net: dict[str, Any]) -> None:
    """The sender's report to the lead is honest, so only the receiving provider's check_forwarded can
    catch it: segment 2 refuses before computing (nothing wrong is ever computed on), the request aborts
    at segment 1's link naming it, and, the dispute being unverifiable, nobody is ejected."""
    client = net["client"]
    group: ProcessGroup = net["group"]
    child = start_test_provider(net, "tamperer", "ForwardTamperer")
    try:
        assert [a["provider_id"] for a in client.get("/v1/cohort").json()["assignments"]][1] == "tamperer"
        response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert (error["culprit"], error["reason"], error["link"]) == ("tamperer", PROVIDER_ERROR, 1), error
        assert f"refused by segment 2: {OUTPUT_MISMATCH}" in error["message"], error
        settled = wait_settled(client, response.headers["x-verisplit-request-id"])  # the chain analysis ran
        assert settled.get("ejected", []) == [], settled.get("ejected")
        providers = client.get("/v1/providers").json()
        assert {"tamperer", "provider-2"} <= {p["provider_id"] for p in providers["data"]}  # neither ejected
    finally:
        group.stop(child, timeout=5)


def test_an_equivocating_sender_is_ejected_and_the_honest_receiver_is_not(net: dict[str, Any]) -> None:
    """Segment 1 reports X to the lead and forwards X' to segment 2 under a second valid signature:
    segment 2's check_forwarded passes and it computes on X' (its input digest then mismatches X), but it
    returns the upstream commitment it accepted, which proves segment 1 signed two outputs for one
    step: the request aborts naming segment 1 with ``equivocation``; segment 1 is ejected and banned,
    the honest segment 2 is neither (without the proof, the lead would blame segment 2 with
    ``input_mismatch`` and eject it); the record's chain analysis reaches the same verdict."""
    client = net["client"]
    group: ProcessGroup = net["group"]
    child = start_test_provider(net, "equivocator", "Equivocator")
    try:
        assignments = client.get("/v1/cohort").json()["assignments"]
        assert [a["provider_id"] for a in assignments][1] == "equivocator", assignments
        receiver = assignments[2]["provider_id"]
        keys = {p["provider_id"]: p["public_key"] for p in client.get("/v1/providers").json()["data"]}
        response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert (error["culprit"], error["reason"], error["link"]) == ("equivocator", EQUIVOCATION, 1), error
        request_id = response.headers["x-verisplit-request-id"]
        settled = wait_settled(client, request_id)  # the chain analysis ran
        assert settled.get("ejected", []) == ["equivocator"], settled.get("ejected")
        record = RequestStore(net["root"] / "lead" / "requests").load(request_id)
        analysis = analyse_chain(record)
        assert (analysis.culprit, analysis.reason, analysis.link) == ("equivocator", EQUIVOCATION, 1)
        providers = client.get("/v1/providers").json()
        listed = {p["provider_id"] for p in providers["data"]}
        assert receiver in listed and "equivocator" not in listed, listed
        assert keys["equivocator"] in providers["banned"] and keys[receiver] not in providers["banned"], providers["banned"]
    finally:
        group.stop(child, timeout=5)


def test_junk_forwards_from_a_stranger_do_not_fail_an_honest_request(net: dict[str, Any]) -> None:
    """Junk Forward frames reach honest segment 2 before each honest forward (this step under a stranger's
    signature, and 10,001 frames for later steps): the request completes with the same greedy tokens
    as without them, and nobody is blamed or ejected."""
    client = net["client"]
    group: ProcessGroup = net["group"]
    request = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    clean = client.post("/v1/completions", json=request)
    assert clean.status_code == 200, clean.text
    child = start_test_provider(net, "junker", "JunkBeforeForward")
    try:
        assert [a["provider_id"] for a in client.get("/v1/cohort").json()["assignments"]][1] == "junker"
        response = client.post("/v1/completions", json=request)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == clean.json()["choices"][0]["text"]
        settled = wait_settled(client, response.headers["x-verisplit-request-id"])
        assert settled.get("ejected", []) == [] and settled["status"] == "completed", settled
    finally:
        group.stop(child, timeout=5)


def test_external_lead_checks_pass_on_the_direct_path(net: dict[str, Any]) -> None:
    from verisplit.conformance.external import check_lead

    results = check_lead(net["http"], max_tokens=4)
    assert results and all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]
