"""The receiving side of the direct path without processes: ``check_forwarded`` (spec) and
``DirectLinks`` (a forwarded input is handed to its step only if it passes the check)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node.direct import DirectLinks, UpstreamRefused
from verisplit.impl.node.framing import chunk_tensor, commitment_to_pb
from verisplit.spec.commitment import (BAD_SIGNATURE, OUTPUT_MISMATCH, RANGE_MISMATCH, REPLAY, WRONG_REQUEST,
                                       WRONG_SIGNER, BoundaryCommitment, check_forwarded, sign_commitment)
from verisplit.spec.encoding import digest_encoded

SENDER = SigningKey(bytes(range(32)))
BLOB = b"\x01" * 300


def _signed(blob: bytes = BLOB, step: int = 2, key: SigningKey = SENDER) -> BoundaryCommitment:
    unsigned = BoundaryCommitment(2, "m", bytes(32), "req-1", step, 0, 0, 2, 7, 1, bytes(32), digest_encoded(blob),
                                  bytes(32))
    return sign_commitment(unsigned, key)


def test_check_forwarded_blames_the_sender_for_each_fault() -> None:
    key = bytes(SENDER.verify_key)
    args = ("req-1", 2, 7, 1)
    assert check_forwarded(_signed(), key, *args, digest_encoded(BLOB)) is None
    assert check_forwarded(_signed(), key, *args, digest_encoded(b"other"))[0] == OUTPUT_MISMATCH
    assert check_forwarded(_signed(key=SigningKey(bytes(32))), key, *args, digest_encoded(BLOB))[0] == WRONG_SIGNER
    forged = BoundaryCommitment(**{**_signed().__dict__, "signature": bytes(64)})
    assert check_forwarded(forged, key, *args, digest_encoded(BLOB))[0] == BAD_SIGNATURE
    assert check_forwarded(_signed(), key, "req-2", 2, 7, 1, digest_encoded(BLOB))[0] == WRONG_REQUEST
    assert check_forwarded(_signed(step=1), key, *args, digest_encoded(BLOB))[0] == REPLAY
    assert check_forwarded(_signed(), key, "req-1", 2, 8, 1, digest_encoded(BLOB))[0] == RANGE_MISMATCH


def _frames(blob: bytes, commitment: BoundaryCommitment) -> list[pb.StepFrame]:
    frames = [pb.StepFrame(session_id="s", step=2, first_position=7, num_positions=1, input=c) for c in chunk_tensor(blob)]
    frames[-1].upstream_commitment.CopyFrom(commitment_to_pb(commitment))
    return frames


async def _feed(frames: list[pb.StepFrame]) -> AsyncIterator[pb.StepFrame]:
    for frame in frames:
        yield frame


@pytest.mark.parametrize("sent,ok", [(BLOB, True), (b"\x02" * 300, False)])
def test_receiver_hands_over_only_checked_input(sent: bytes, ok: bool) -> None:
    async def scenario() -> bytes:
        links = DirectLinks(timeout_s=5)
        links.open("s", pb.OpenSessionRequest(session_id="s", request_id="req-1",
                                              previous_public_key=bytes(SENDER.verify_key)))
        waiting = asyncio.ensure_future(links.upstream_input(pb.StepFrame(session_id="s", step=2, from_upstream=True)))
        async for _ in links.receive(_feed(_frames(sent, _signed()))):
            pass
        return await waiting

    if ok:
        assert asyncio.run(scenario()) == BLOB
    else:
        with pytest.raises(UpstreamRefused, match=OUTPUT_MISMATCH):
            asyncio.run(scenario())
