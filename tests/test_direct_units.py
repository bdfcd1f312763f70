"""The receiving side of the direct path without processes: ``check_forwarded`` (spec) and
``DirectLinks`` (a forwarded input is handed to its step only if it passes the check)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.node.direct import MAX_REJECTS_PER_STREAM, DirectLinks, UpstreamRefused
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


def _links(timeout_s: float = 5, reject_grace_s: float = 0.2) -> DirectLinks:
    """A receiver whose session "s" (request req-1, sender SENDER) is at step 2."""
    links = DirectLinks(timeout_s=timeout_s, reject_grace_s=reject_grace_s)
    links.open("s", pb.OpenSessionRequest(session_id="s", request_id="req-1",
                                          previous_public_key=bytes(SENDER.verify_key)))
    links.links["s"].step = 2
    return links


STRANGER = SigningKey(b"\x07" * 32)


def _junk(step: int = 2) -> list[list[pb.StepFrame]]:
    """Streams a stranger can send: other bytes under its own signature, a forged signature, an
    undecodable commitment, a broken chunk sequence, and the honest commitment replayed for step 3."""
    forged = BoundaryCommitment(**{**_signed(b"\x03" * 300).__dict__, "signature": bytes(64)})
    broken = _frames(BLOB, _signed())
    broken[-1].input.index = 5
    undecodable = _frames(BLOB, _signed())
    undecodable[-1].upstream_commitment.input_digest = b"short"
    replayed = _frames(BLOB, _signed())
    for f in replayed:
        f.step = 3
    return [_frames(b"\x02" * 300, _signed(b"\x02" * 300, key=STRANGER)), _frames(b"\x03" * 300, forged), undecodable,
            broken, replayed]


def test_junk_forwards_from_a_stranger_do_not_poison_the_step() -> None:
    """Junk arriving first (every kind a stranger can send, for this step and the next) is dropped and
    counted; the honest forward that arrives after it is the one handed over."""
    async def scenario() -> tuple[bytes, DirectLinks]:
        links = _links()
        for stream in _junk():
            async for _ in links.receive(_feed(stream)):
                pass
        waiting = asyncio.ensure_future(links.upstream_input(pb.StepFrame(session_id="s", step=2, from_upstream=True)))
        await asyncio.sleep(0.3)  # longer than the grace: no junk frame armed a refusal
        assert not waiting.done()
        async for _ in links.receive(_feed(_frames(BLOB, _signed()))):
            pass
        return await waiting, links

    blob, links = asyncio.run(scenario())
    assert blob == BLOB and links.rejected == 5
    inbox = links.links["s"].inbox  # the step-3 replay left only a pending slot of the next step
    assert links.links["s"].step == 3 and set(inbox) <= {3} and not any(f.done() for f in inbox.values())


def test_a_stranger_alone_ends_in_the_deadline_not_its_reason() -> None:
    async def scenario() -> None:
        links = _links(timeout_s=0.5)
        waiting = asyncio.ensure_future(links.upstream_input(pb.StepFrame(session_id="s", step=2, from_upstream=True)))
        async for _ in links.receive(_feed(_junk()[0])):
            pass
        await waiting

    with pytest.raises(UpstreamRefused, match="no valid input from segment k-1"):
        asyncio.run(scenario())


def test_future_step_flood_keeps_the_inbox_bounded_and_is_cut_off() -> None:
    """10,001 frames for successive future steps: at most two inbox slots ever exist (the session's next
    step and the one after), the stream is cut off after MAX_REJECTS_PER_STREAM bad frames, and the
    honest forward still goes through."""
    sizes: list[int] = []

    async def scenario() -> tuple[bytes, DirectLinks, int]:
        links = _links()
        consumed = 0

        async def flood() -> AsyncIterator[pb.StepFrame]:
            nonlocal consumed
            for step in range(2, 10_003):
                frame = _frames(BLOB, _signed(key=STRANGER, step=step))[0]
                frame.step = step
                consumed += 1
                sizes.append(len(links.links["s"].inbox))
                yield frame

        async for _ in links.receive(flood()):
            pass
        waiting = asyncio.ensure_future(links.upstream_input(pb.StepFrame(session_id="s", step=2, from_upstream=True)))
        async for _ in links.receive(_feed(_frames(BLOB, _signed()))):
            pass
        return await waiting, links, consumed

    blob, links, consumed = asyncio.run(scenario())
    assert blob == BLOB and max(sizes) <= 2 and len(links.links["s"].inbox) <= 2
    assert consumed == MAX_REJECTS_PER_STREAM and links.rejected == MAX_REJECTS_PER_STREAM


def test_a_signed_forward_over_other_bytes_loses_to_the_honest_one_within_the_grace() -> None:
    """k-1's own commitment replayed over other bytes (an eavesdropper's best) arms a refusal, but the
    honest forward arriving within ``reject_grace_s`` is handed over."""
    async def scenario() -> bytes:
        links = _links(reject_grace_s=2)
        waiting = asyncio.ensure_future(links.upstream_input(pb.StepFrame(session_id="s", step=2, from_upstream=True)))
        async for _ in links.receive(_feed(_frames(b"\x02" * 300, _signed()))):
            pass
        async for _ in links.receive(_feed(_frames(BLOB, _signed()))):
            pass
        return await waiting

    assert asyncio.run(scenario()) == BLOB


@pytest.mark.parametrize("sent,ok", [(BLOB, True), (b"\x02" * 300, False)])
def test_receiver_hands_over_only_checked_input(sent: bytes, ok: bool) -> None:
    async def scenario() -> bytes:
        links = _links()
        waiting = asyncio.ensure_future(links.upstream_input(pb.StepFrame(session_id="s", step=2, from_upstream=True)))
        async for _ in links.receive(_feed(_frames(sent, _signed()))):
            pass
        return await waiting

    if ok:
        assert asyncio.run(scenario()) == BLOB
    else:
        with pytest.raises(UpstreamRefused, match=OUTPUT_MISMATCH):
            asyncio.run(scenario())


def test_step_records_keep_upstream_commitments_across_save_and_load(tmp_path: Path) -> None:
    """The chain analysis proves an equivocation from the stored record, so the upstream commitments
    must survive save/load (None where a segment returned none); records without them load as []."""
    from verisplit.impl.records.requests import RequestRecord, RequestStore, StepRecord
    from verisplit.spec.cohort import Assignment, Cohort

    cohort = Cohort("m", (Assignment("a", bytes(SENDER.verify_key), 0, 2), Assignment("b", bytes(STRANGER.verify_key), 2, 4)))
    c = _signed()
    steps = [StepRecord(0, 0, 1, bytes(32), [c, c], [BLOB, BLOB], [BLOB, BLOB], [None, c]),
             StepRecord(1, 1, 1, bytes(32), [c], [BLOB], [BLOB])]
    store = RequestStore(tmp_path)
    store.save(RequestRecord("req-1", "m", cohort, steps, "aborted", "a", "equivocation", 0, 1, 1))
    loaded = store.load("req-1")
    assert loaded.steps[0].upstream_commitments == [None, c] and loaded.steps[1].upstream_commitments == []
