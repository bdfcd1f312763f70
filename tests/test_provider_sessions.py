"""Provider session bookkeeping in-process (fast): the reaper reclaims idle sessions whether or not a
Steps stream is attached, never one mid-step; openings are bound to their recipient and expire."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from nacl.signing import SigningKey

from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.node.framing import open_session_request
from verisplit.impl.node.provider import SESSION_IDLE_S, ProviderService, _Abort, _Session
from verisplit.impl.records.keys import SignedFields
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.loader import load_segment
from verisplit.spec.commitment import PROTOCOL_VERSION

LEAD = SigningKey(bytes([3]) * 32)


def service(tmp_path: Path, require_recipient: bool = False) -> ProviderService:
    ckpt = make_random_checkpoint(tmp_path / "ckpt", layers=2, hidden=32, heads=2, kv_heads=1, vocab=320,
                                  max_position=32, seed=1)
    seg = load_segment(ckpt, 0, 2, device="cpu", dtype="float32")
    key = SigningKey(bytes([5]) * 32)
    offer = SignedFields(protocol_version=PROTOCOL_VERSION, provider_id="p", public_key=bytes(key.verify_key),
                         model_id=seg.model_id, weights_digest=seg.weights_digest, num_layers=2, first_layer=0,
                         end_layer=2, price_per_work_unit=1, endpoint="127.0.0.1:1", kv_capacity_tokens=1000,
                         issued_at_ms=1)
    svc = ProviderService(seg, key, Behaviour(), offer, 1000, require_recipient=require_recipient)
    svc.lead_public_key = bytes(LEAD.verify_key)
    return svc


def attach(svc: ProviderService, sid: str) -> _Session:
    """A session as ``Steps`` leaves it once a stream is bound to it (busy and attached)."""
    svc.segment.open_session(sid, 8)
    state = _Session(sid, 0, 8, svc.segment, bytes(32), busy=True, attached=True)
    svc.sessions[sid] = state
    svc.kv_tokens_reserved += 8
    return state


def test_attached_idle_sessions_are_reaped_but_never_mid_step(tmp_path: Path) -> None:
    svc = service(tmp_path)
    idle = attach(svc, "idle")
    fresh = attach(svc, "fresh")
    stepping = attach(svc, "stepping")
    stepping.stepping = True
    later = time.monotonic() + SESSION_IDLE_S + 1
    fresh.last_used = later
    assert svc.reap_idle(now=later) == ["idle"]
    assert set(svc.sessions) == {"fresh", "stepping"} and svc.kv_tokens_reserved == 16
    assert idle.busy  # the stream still bound to it fails on its next frame; its KV is already free
    with pytest.raises(_Abort) as ended:
        svc.sessions["idle"]
    assert ended.value.code == grpc.StatusCode.NOT_FOUND


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Context:
    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


def open_code(svc: ProviderService, **kw: Any) -> grpc.StatusCode:
    fields: dict[str, Any] = dict(session_id="s", request_id="r", model_id=svc.segment.model_id, segment_index=0,
                                  first_layer=0, end_layer=2, max_length=8, audit_seed_commitment=bytes(32),
                                  dtype="float32")
    fields.update(kw)
    try:
        asyncio.run(svc.OpenSession(open_session_request(LEAD, **fields), Context()))  # type: ignore[arg-type]
    except Aborted as exc:
        return exc.code
    svc._close(fields["session_id"])
    return grpc.StatusCode.OK


def test_openings_are_bound_to_their_recipient_and_expire(tmp_path: Path) -> None:
    svc = service(tmp_path)
    own = bytes(svc.key.verify_key)
    other = bytes(SigningKey.generate().verify_key)
    assert open_code(svc, recipient_public_key=own) == grpc.StatusCode.OK
    assert open_code(svc, recipient_public_key=other) == grpc.StatusCode.PERMISSION_DENIED  # replayed to P2
    assert open_code(svc, recipient_public_key=own, expires_at_ms=int(time.time() * 1000) - 1) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert open_code(svc) == grpc.StatusCode.OK  # unbound openings: served until the lead signs recipients
    strict = service(tmp_path / "strict", require_recipient=True)
    assert open_code(strict) == grpc.StatusCode.PERMISSION_DENIED
    assert open_code(strict, recipient_public_key=own) == grpc.StatusCode.OK


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_registration_retries_a_nonce_refusal_and_a_full_probation_queue(tmp_path: Path) -> None:
    """A nonce evicted by a Challenge flood (FAILED_PRECONDITION "nonce: ...") and a lead at its cap of
    unproven offers (RESOURCE_EXHAUSTED) are retried with a fresh offer; other refusals are final."""
    from verisplit.impl.node.metrics import ProviderMetrics
    from verisplit.impl.node.ops import Every
    from verisplit.impl.node.provider_run import _register
    from verisplit.impl.node import verisplit_pb2 as pb

    svc = service(tmp_path)
    answers: list[Any] = [rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "nonce: unknown, used or expired"),
                          rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "offer: 256 offers already await"),
                          pb.RegisterResponse(heartbeat_interval_ms=500, lead_public_key=bytes(LEAD.verify_key))]
    offers_signed = []

    class Registry:
        async def Register(self, offer: pb.SignedOffer, timeout: float) -> pb.RegisterResponse:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    async def signed() -> pb.SignedOffer:
        offers_signed.append(1)
        return pb.SignedOffer()

    async def go() -> float | None:
        return await _register(Registry(), signed, asyncio.Event(), svc, Every(60.0), "lead", ProviderMetrics())  # type: ignore[arg-type]

    assert asyncio.run(go()) == 0.5 and len(offers_signed) == 3 and answers == []
    answers[:] = [rpc_error(grpc.StatusCode.PERMISSION_DENIED, "public_key: banned")]
    with pytest.raises(RuntimeError, match="PERMISSION_DENIED"):
        asyncio.run(go())
