"""Unit tests of the network layer's pieces, no child processes: keys, framing, records, registry, proto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from verisplit.impl.node import verisplit_pb2 as pb
from verisplit.impl.cli.net import keygen_command
from verisplit.impl.node.framing import FramingError, Reassembler, chunk_tensor
from verisplit.impl.records.keys import KeyFileError, SignedFields, create_key_file, load_key_file, offer_signature_valid, sign_offer
from verisplit.impl.node.registry import Registry, RegistryError
from verisplit.impl.records.requests import RecordError, RequestRecord, RequestStore, StepRecord
from verisplit.spec.cohort import Assignment, Cohort, ModelSpec
from verisplit.spec.commitment import PROTOCOL_VERSION, BoundaryCommitment, sign_commitment

pytestmark = pytest.mark.net
IMPL = Path(__file__).resolve().parent.parent / "impl" / "node"


# --- keys ------------------------------------------------------------------------------------------

def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "id.key"
    runner = CliRunner()
    first = runner.invoke(keygen_command, ["--out", str(out)])
    assert first.exit_code == 0, first.output
    assert out.stat().st_mode & 0o777 == 0o600
    key = load_key_file(out)
    assert bytes(key.verify_key).hex() in first.output
    before = out.read_bytes()
    second = runner.invoke(keygen_command, ["--out", str(out)])
    assert second.exit_code != 0 and "refusing to overwrite" in second.output
    assert out.read_bytes() == before


def test_key_file_problems_are_named(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_key_file(path)
    os.chmod(path, 0o600)
    path.write_text('{"kind": "verisplit-ed25519", "version": 1, "seed": "zz"}')
    with pytest.raises(KeyFileError, match="'seed'"):
        load_key_file(path)
    path.write_text("not json")
    with pytest.raises(KeyFileError, match="not a verisplit key file"):
        load_key_file(path)
    with pytest.raises(KeyFileError, match="not found"):
        load_key_file(tmp_path / "missing.key")


# --- framing ---------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(min_value=1, max_value=64))
def test_chunks_reassemble_to_the_same_bytes(blob: bytes, chunk_bytes: int) -> None:
    chunks = chunk_tensor(blob, chunk_bytes)
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    reassembler = Reassembler("input")
    results = [reassembler.add(c) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1) and results[-1] == blob
    assert not reassembler.in_progress


def test_reassembler_names_the_bad_field() -> None:
    chunks = chunk_tensor(b"abcdefgh", 3)
    r = Reassembler("output")
    r.add(chunks[0])
    with pytest.raises(FramingError, match=r"^output\.index"):
        r.add(chunks[2])
    with pytest.raises(FramingError, match=r"^output\.total_bytes"):
        Reassembler("output", max_tensor_bytes=4).add(chunks[0])
    with pytest.raises(FramingError, match=r"^input\.data"):
        Reassembler("input").add(pb.TensorChunk(index=0, count=1, total_bytes=2, data=b"abc"))


# --- records ---------------------------------------------------------------------------------------

def _record(request_id: str, n_steps: int = 2) -> RequestRecord:
    key = SigningKey(bytes(32))
    cohort = Cohort("m", (Assignment("p0", bytes(key.verify_key), 0, 2), Assignment("p1", bytes(key.verify_key), 2, 4)))
    steps = []
    for s in range(n_steps):
        ins = [f"{request_id}-in-{s}-{k}".encode() for k in range(2)]
        outs = [ins[1], f"{request_id}-out-{s}".encode()]
        commitments = [sign_commitment(BoundaryCommitment(PROTOCOL_VERSION, "m", bytes(32), request_id, s, k, 2 * k, 2 * k + 2, s, 1,
                                                          bytes(32), bytes(32), bytes(32)), key) for k in range(2)]
        steps.append(StepRecord(s, s, 1, bytes(range(32)), commitments, ins, outs))
    return RequestRecord(request_id, "m", cohort, steps, "completed", None, None, 7, 3, n_steps)


def test_records_round_trip_and_detect_tampering(tmp_path: Path) -> None:
    store = RequestStore(tmp_path)
    original = _record("req-a")
    store.save(original)
    assert store.load("req-a") == original
    assert store.list_ids() == ["req-a"]
    tensor = next((tmp_path / "tensors").glob("*.vstn"))
    tensor.write_bytes(b"tampered")
    with pytest.raises(RecordError, match="do not match their digest"):
        store.load("req-a")
    with pytest.raises(RecordError, match="request_id"):
        store.load("../etc")
    with pytest.raises(RecordError, match="no record"):
        store.load("req-missing")


def test_records_retention_drops_oldest_and_their_tensors(tmp_path: Path) -> None:
    store = RequestStore(tmp_path, max_requests=2)
    for name in ("req-1", "req-2", "req-3"):
        store.save(_record(name))
    assert store.list_ids() == ["req-2", "req-3"]
    assert not (tmp_path / "req-1").exists()
    kept = {p.stem for p in (tmp_path / "tensors").glob("*.vstn")}
    needed = set()
    for rid in ("req-2", "req-3"):
        assert store.load(rid).request_id == rid
        needed |= {__import__("hashlib").sha256(b).hexdigest() for s in store.load(rid).steps for b in s.inputs + s.outputs}
    assert kept == needed  # nothing of req-1 left behind, nothing of the others lost
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


# --- registry --------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _offer(key: SigningKey, provider_id: str = "p0", first: int = 0, end: int = 4, issued: int = 1) -> SignedFields:
    return SignedFields(PROTOCOL_VERSION, provider_id, bytes(key.verify_key), "m", bytes(32), 4, first, end, 3, "127.0.0.1:9", 10, issued)


def test_registry_verifies_expires_ejects_and_bans() -> None:
    clock = Clock()
    registry = Registry(ModelSpec("m", 4), offer_ttl_s=5.0, clock=clock)
    key = SigningKey(bytes([1]) * 32)
    fields = _offer(key)
    signature = sign_offer(fields, key)
    assert offer_signature_valid(fields, signature)
    with pytest.raises(RegistryError) as caught:
        registry.register(_offer(key, first=1), signature)  # signature over other fields
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    registry.register(fields, signature)
    assert [o.provider_id for o in registry.offers()] == ["p0"]
    thief = SigningKey(bytes([2]) * 32)
    with pytest.raises(RegistryError, match="another key"):
        registry.register(_offer(thief), sign_offer(_offer(thief), thief))
    with pytest.raises(RegistryError, match="older"):
        registry.register(_offer(key, issued=0), sign_offer(_offer(key, issued=0), key))
    clock.now = 6.0
    assert registry.offers() == []  # no heartbeat within the TTL
    registry.register(_offer(key, issued=2), sign_offer(_offer(key, issued=2), key))
    registry.eject("p0", "failed audit")
    assert registry.offers() == [] and registry.banned() == {bytes(key.verify_key).hex(): "failed audit"}
    with pytest.raises(RegistryError, match="banned") as caught:
        registry.register(_offer(key, issued=3), sign_offer(_offer(key, issued=3), key))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


# --- generated code --------------------------------------------------------------------------------

def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    """Regenerating with grpc_tools.protoc (and the import fix-up of docs/protocol.md) gives the same files."""
    shutil.copy(IMPL / "verisplit.proto", tmp_path / "verisplit.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(tmp_path), f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", str(tmp_path / "verisplit.proto")], check=True)
    grpc_text = (tmp_path / "verisplit_pb2_grpc.py").read_text()
    grpc_text = grpc_text.replace("import verisplit_pb2 as verisplit__pb2",
                                  "from verisplit.impl.node import verisplit_pb2 as verisplit__pb2")
    assert (tmp_path / "verisplit_pb2.py").read_text() == (IMPL / "verisplit_pb2.py").read_text()
    assert grpc_text == (IMPL / "verisplit_pb2_grpc.py").read_text()


def test_key_file_write_failure_leaves_no_partial_identity(tmp_path, monkeypatch) -> None:
    """A failed write removes the half-written file, so a retry can create the key."""
    from verisplit.impl.records import keys

    target = tmp_path / "k.key"
    real_fsync = keys.os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys.os, "fsync", failing_fsync)
    with pytest.raises(keys.KeyFileError, match="could not write the key"):
        keys.create_key_file(target)
    assert not target.exists()
    monkeypatch.setattr(keys.os, "fsync", real_fsync)
    keys.create_key_file(target)
    assert target.stat().st_mode & 0o777 == 0o600
