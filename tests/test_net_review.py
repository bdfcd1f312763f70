"""Review regressions of the network layer, in-process (no child processes): HTTP input validation,
OpenAI-shaped errors for unexpected failures, unencodable commitments/offers blamed on their sender,
and the lead's bound on a provider's output size."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node.api import create_app
from verisplit.impl.audit.service import analyse_chain
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.node.framing import FramingError, chunk_tensor
from verisplit.impl.records.keys import SignedFields, offer_signature_valid, sign_offer
from verisplit.impl.node.hops import output_byte_limit
from verisplit.impl.node.lead import Lead
from verisplit.impl.node.registry import Registry, RegistryError
from verisplit.spec.commitment import check_exchanged_link as link_failure
from verisplit.impl.records.requests import RequestRecord, StepRecord
from verisplit.spec.cohort import Assignment, Cohort, ModelSpec
from verisplit.spec.commitment import PROTOCOL_VERSION, BoundaryCommitment, StepContext, sign_commitment
from verisplit.spec.encoding import digest_encoded

pytestmark = pytest.mark.net


@pytest.fixture(scope="module")
def lead(tmp_path_factory: pytest.TempPathFactory) -> Lead:
    root = tmp_path_factory.mktemp("review")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1, vocab=300,
                                        max_position=64, seed=1)
    return Lead(checkpoint, root / "data")


@pytest.fixture(scope="module")
def client(lead: Lead) -> TestClient:
    return TestClient(create_app(lead), raise_server_exceptions=False)


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


# --- HTTP input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 2, "seed": 1 << 64}),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 2, "seed": -(1 << 63) - 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "seed": 10 ** 30}),
])
def test_out_of_range_seed_is_a_400_naming_seed(client: TestClient, path: str, body: dict[str, Any]) -> None:
    # Before: accepted, then torch.Generator.manual_seed raised deep in the relay -> plain-text 500.
    response = client.post(path, json=body)
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "seed" and "seed" in error["message"]


def test_invalid_json_names_the_body_not_a_character_offset(client: TestClient) -> None:
    response = client.post("/v1/completions", content=b'{"prompt": "hi",', headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = _error(response)
    assert error["message"].startswith("body: not valid JSON") and error["param"] is None
    assert error["code"] == "invalid_json"


def test_empty_prompt_list_says_empty(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"prompt": [], "max_tokens": 2})
    assert response.status_code == 400
    assert _error(response)["message"] == "prompt: must not be empty"


def test_bad_stop_is_refused_before_a_cohort_is_formed(client: TestClient, lead: Lead,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(lead, "route", lambda: calls.append(1) or (_ for _ in ()).throw(AssertionError("routed")))
    response = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 2, "stop": ["a", ""]})
    assert response.status_code == 400 and _error(response)["param"] == "stop"
    assert calls == []


def test_unexpected_failure_is_an_openai_shaped_500(client: TestClient, lead: Lead,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(lead, "route", broken)
    response = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 2, "seed": 1})
    assert response.status_code == 500
    error = _error(response)
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]


# --- offers and commitments whose fields do not fit their signed widths -----------------------------

def test_offer_with_protocol_version_beyond_u16_is_unauthenticated_not_a_crash() -> None:
    key = SigningKey(bytes([7]) * 32)
    fields = SignedFields(70000, "p0", bytes(key.verify_key), "m", bytes(32), 4, 0, 4, 1, "127.0.0.1:9", 10, 1)
    signature = key.sign(b"anything").signature
    assert offer_signature_valid(fields, signature) is False  # before: struct.error escaped
    registry = Registry(ModelSpec("m", 4))
    with pytest.raises(RegistryError) as caught:
        registry.register(fields, signature)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    honest = dataclasses.replace(fields, protocol_version=1)
    assert offer_signature_valid(honest, sign_offer(honest, key))


def _signed(key: SigningKey, context: StepContext, first: int, end: int, index: int, inp: bytes, out: bytes
            ) -> BoundaryCommitment:
    unsigned = BoundaryCommitment(PROTOCOL_VERSION, context.model_id, bytes(32), context.request_id, context.step, index, first, end,
                                  context.first_position, context.num_positions, digest_encoded(inp),
                                  digest_encoded(out), bytes(32))
    return sign_commitment(unsigned, key)


def test_unencodable_commitment_is_bad_signature_by_its_sender() -> None:
    key = SigningKey(bytes([3]) * 32)
    assignment = Assignment("p0", bytes(key.verify_key), 0, 2)
    context = StepContext("m", "req-1", 0, 0, 1)
    inp, out = b"in-bytes", b"out-bytes"
    good = _signed(key, context, 0, 2, 0, inp, out)
    assert link_failure(assignment, 0, good, digest_encoded(inp), digest_encoded(out), context) is None
    forged = dataclasses.replace(good, protocol_version=1 + 0xFFFF * 2)  # fits the wire's uint32, not u16
    failure = link_failure(assignment, 0, forged, digest_encoded(inp), digest_encoded(out), context)
    assert failure is not None and failure[0] == "bad_signature"  # before: struct.error, nobody blamed
    wrong_out = link_failure(assignment, 0, good, digest_encoded(inp), digest_encoded(b"other"), context)
    assert wrong_out is not None and wrong_out[0] == "output_mismatch"

    # The post-request analysis names the same culprit instead of crashing the hook (no settlement).
    key1 = SigningKey(bytes([4]) * 32)
    cohort = Cohort("m", (assignment, Assignment("p1", bytes(key1.verify_key), 2, 4)))
    mid = b"mid-bytes"
    c0 = _signed(key, context, 0, 2, 0, inp, mid)
    c1 = dataclasses.replace(_signed(key1, context, 2, 4, 1, mid, out), protocol_version=70000)
    step = StepRecord(0, 0, 1, digest_encoded(inp), [c0, c1], [inp, mid], [mid, out])
    record = RequestRecord("req-1", "m", cohort, [step], "aborted", "p1", "bad_signature", 10, 1, 1)
    analysis = analyse_chain(record)
    assert (analysis.culprit, analysis.link, analysis.reason) == ("p1", 1, "bad_signature")
    assert analysis.work == {"p0": 2, "p1": 0}


# --- output size bound -----------------------------------------------------------------------------

def test_lead_bounds_a_hops_output_to_one_boundary_tensor(lead: Lead) -> None:
    config = lead.config
    hidden_limit = output_byte_limit(config, 3, last=False)
    assert 3 * config.hidden_size * 4 < hidden_limit < 3 * config.hidden_size * 4 + 8192
    assert output_byte_limit(config, 3, last=True) > 3 * config.vocab_size * 4
    # The hop's reassembler refuses an announced output above that limit at its first chunk.
    from verisplit.impl.node.hops import Hop as _Hop

    hop = _Hop.__new__(_Hop)
    from verisplit.impl.node.framing import Reassembler

    hop.reassembler = Reassembler("output")
    hop.reassembler.max_tensor_bytes = hidden_limit
    huge = chunk_tensor(b"x" * 16, 16)[0]
    huge.total_bytes = 1 << 29  # 512 MiB announced: accepted by the 1 GiB default before
    with pytest.raises(FramingError, match="output.total_bytes"):
        hop.reassembler.add(huge)
    assert isinstance(huge, pb.TensorChunk)


def test_exchange_applies_the_limit(lead: Lead) -> None:
    """``_Hop.exchange(max_output_bytes=...)`` installs the limit before reading anything."""
    import asyncio

    from verisplit.impl.node.hops import MALFORMED_OUTPUT, CohortError, Hop as _Hop
    from verisplit.impl.node.registry import RegisteredOffer

    class Call:
        def __init__(self) -> None:
            self.sent: list[Any] = []

        async def write(self, frame: Any) -> None:
            self.sent.append(frame)

        async def read(self) -> Any:
            chunk = pb.TensorChunk(index=0, count=2, total_bytes=1 << 29, data=b"x")
            return pb.StepResult(step=0, output=chunk)

    key = SigningKey(bytes([5]) * 32)
    fields = SignedFields(PROTOCOL_VERSION, "p0", bytes(key.verify_key), lead.model_id, bytes(32), 2, 0, 2, 1, "127.0.0.1:9", 10, 1)
    hop = _Hop(0, RegisteredOffer(fields, b"", 0.0), 0, 2, None, 5.0)  # type: ignore[arg-type]
    hop.call = Call()
    context = StepContext(lead.model_id, "req-x", 0, 0, 1)
    limit = output_byte_limit(lead.config, 1, last=False)
    with pytest.raises(CohortError) as caught:
        asyncio.run(hop.exchange("s", context, b"\x00" * 8, limit))
    assert caught.value.reason == MALFORMED_OUTPUT and "total_bytes" in caught.value.detail
    assert caught.value.culprit == "p0"
