"""On-disk retention of each request's boundary tensors and commitments (for audits and replay).

Layout under ``root``::

    <request_id>/record.json          metadata, cohort, per-step commitments and tensor references
    <request_id>/extras.json          optional: public info added after the request (hook outputs)
    tensors/<sha256-hex>.vstn          canonical tensor bytes, content-addressed (shared across steps)

Invariants:
- ``save`` is atomic: tensors are written first (each via a temporary file and ``os.replace``), then
  the record folder is built under a temporary name and renamed into place, so a reader never sees a
  half-written record and a crash leaves no record that references missing tensors.
- ``load`` returns the exact bytes that were saved; each tensor file is checked against its digest.
- At most ``max_requests`` records are kept, and (``max_bytes``) at most that many bytes of record
  files and the tensors they reference (each shared tensor counted once), except that the newest
  record is always kept; the oldest (by save order) are deleted first, together with tensors no
  remaining record references.
- Compaction (``mark_compactable``, done at the next ``save``): a compacted record keeps its
  commitments (digests, signatures), token ids and extras but no tensor bytes; it loads with
  ``tensors_discarded`` true and empty ``inputs``/``outputs``. The lead marks a record once its
  audits are done (unless ``--keep-tensors``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.commitment import BoundaryCommitment, commitment_from_dict, commitment_to_dict

RECORD_FORMAT = 1
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RecordError(ValueError):
    """A record is missing or malformed, or a request id is not acceptable (the message says which)."""


@dataclass
class StepRecord:
    """One step: the commitments of every segment and the canonical bytes exchanged, per segment index."""

    step: int
    first_position: int
    num_positions: int
    first_input_digest: bytes
    commitments: list[BoundaryCommitment]
    inputs: list[bytes]
    outputs: list[bytes]
    # Direct data path: per segment index, the upstream commitment that segment returned as accepted
    # from k-1 (None: none); kept so the chain analysis can prove an equivocation (check_exchanged_chain).
    upstream_commitments: list[BoundaryCommitment | None] = field(default_factory=list)


@dataclass
class RequestRecord:
    """Everything retained about one request."""

    request_id: str
    model_id: str
    cohort: Cohort
    steps: list[StepRecord]
    status: str  # "completed" | "aborted"
    culprit: str | None
    reason: str | None
    fee: int
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able detail (token ids, endpoints, error text)
    prices: dict[str, int] = field(default_factory=dict)  # price per work unit each cohort member offered when routed
    tensors_discarded: bool = False  # a compacted record: commitments kept, exchanged bytes dropped after its audits


def check_request_id(request_id: str) -> str:
    """Return ``request_id`` if safe as a folder name, else raise ``RecordError``."""
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise RecordError(f"request_id: {request_id!r} must match {REQUEST_ID.pattern}")
    return request_id


def cohort_to_dict(cohort: Cohort) -> dict[str, Any]:
    return {"model_id": cohort.model_id, "assignments": [
        {"provider_id": a.provider_id, "public_key": a.public_key.hex(), "first_layer": a.first_layer,
         "end_layer": a.end_layer} for a in cohort.assignments]}


def cohort_from_dict(data: dict[str, Any]) -> Cohort:
    return Cohort(str(data["model_id"]), tuple(
        Assignment(str(a["provider_id"]), bytes.fromhex(a["public_key"]), int(a["first_layer"]), int(a["end_layer"]))
        for a in data["assignments"]))


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RequestStore:
    """Bounded, atomic store of ``RequestRecord``s (thread-safe within one process)."""

    def __init__(self, root: Path, max_requests: int = 1000, max_bytes: int | None = None) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests: must be >= 1, got {max_requests}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes: must be >= 1, got {max_bytes}")
        self.root = Path(root)
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.tensors = self.root / "tensors"
        self.tensors.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}  # tensor name -> bytes on disk
        self._json_sizes: dict[str, int] = {}  # request id -> bytes of its record.json and extras.json
        self._extras_sizes: dict[str, int] = {}
        self._compactable: set[str] = set()
        self._index: dict[str, tuple[int, set[str]]] = self._scan()  # id -> (saved_at_ns, tensor names)

    # --- writing --------------------------------------------------------------------------
    def save(self, record: RequestRecord) -> None:
        """Write ``record`` atomically (replacing an older record of the same id), then prune."""
        check_request_id(record.request_id)
        with self._lock:
            steps = []
            for s in record.steps:
                steps.append({
                    "step": s.step, "first_position": s.first_position, "num_positions": s.num_positions,
                    "first_input_digest": s.first_input_digest.hex(),
                    "commitments": [commitment_to_dict(c) for c in s.commitments],
                    "inputs": [self._put(b) for b in s.inputs],
                    "outputs": [self._put(b) for b in s.outputs],
                    **({"upstream_commitments": [None if c is None else commitment_to_dict(c)
                                                 for c in s.upstream_commitments]} if s.upstream_commitments else {}),
                })
            saved_at = max([time.time_ns()] + [t + 1 for t, _ in self._index.values()])
            body = {
                "format": RECORD_FORMAT, "request_id": record.request_id, "model_id": record.model_id,
                "cohort": cohort_to_dict(record.cohort), "status": record.status, "culprit": record.culprit,
                "reason": record.reason, "fee": record.fee, "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens, "saved_at_ns": saved_at, "prices": record.prices,
                "extra": record.extra, "steps": steps,
            }
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-record-", dir=self.root))
            try:
                (tmp / "record.json").write_text(json.dumps(body), encoding="utf-8")
                final = self.root / record.request_id
                extras = final / "extras.json"
                if extras.is_file():
                    shutil.copy2(extras, tmp / "extras.json")
                if final.exists():
                    old = Path(tempfile.mkdtemp(prefix=".tmp-old-", dir=self.root))
                    os.replace(final, old / "r")
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            names = {n for s in steps for n in s["inputs"] + s["outputs"]}
            self._index[record.request_id] = (saved_at, names)
            self._json_sizes[record.request_id] = len(json.dumps(body)) + self._extras_sizes.get(record.request_id, 0)
            self._compactable.discard(record.request_id)
            self._compact_marked()
            self._prune()

    def mark_compactable(self, request_id: str) -> None:
        """Let the next ``save`` drop this record's tensor bytes (its audits are done)."""
        with self._lock:
            if request_id in self._index:
                self._compactable.add(request_id)

    def compact(self, request_id: str) -> None:
        """Drop the tensor bytes of one record now (keeps its commitments and extras); idempotent."""
        with self._lock:
            self._compactable.add(request_id)
            self._compact_marked()

    def retained_bytes(self) -> int:
        """Bytes of the retained record files and of the tensors they reference."""
        referenced: set[str] = set()
        for _, names in self._index.values():
            referenced |= names
        return sum(self._json_sizes.values()) + sum(self._sizes.get(n, 0) for n in referenced)

    def _compact_marked(self) -> None:
        dropped: set[str] = set()
        for rid in sorted(self._compactable):
            path = self.root / rid / "record.json"
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            body["tensors_discarded"] = True
            data = json.dumps(body)
            _atomic_write(path, data.encode("utf-8"))
            saved_at, names = self._index.get(rid, (int(body.get("saved_at_ns", 0)), set()))
            self._index[rid] = (saved_at, set())
            self._json_sizes[rid] = len(data) + self._extras_sizes.get(rid, 0)
            dropped |= names
        self._compactable.clear()
        self._unlink_unreferenced(dropped)

    def save_extras(self, request_id: str, extras: dict[str, Any]) -> None:
        """Atomically write the request's public extras (e.g. hook outputs); the record must exist."""
        folder = self.root / check_request_id(request_id)
        if not (folder / "record.json").is_file():
            raise RecordError(f"request_id: no record {request_id!r}")
        data = json.dumps(extras).encode("utf-8")
        _atomic_write(folder / "extras.json", data)
        with self._lock:
            if request_id in self._json_sizes:
                self._json_sizes[request_id] = self._json_sizes[request_id] - self._extras_sizes.get(request_id, 0) + len(data)
                self._extras_sizes[request_id] = len(data)

    def load_extras(self, request_id: str) -> dict[str, Any]:
        path = self.root / check_request_id(request_id) / "extras.json"
        if not path.is_file():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    def _put(self, blob: bytes) -> str:
        name = _digest(blob)
        path = self.tensors / f"{name}.vstn"
        if not path.exists():
            _atomic_write(path, blob)
        self._sizes[name] = len(blob)
        return name

    # --- reading --------------------------------------------------------------------------
    def list_ids(self) -> list[str]:
        """Ids of the retained records, oldest first (re-read from disk, so other processes' saves show)."""
        with self._lock:
            self._index = self._scan()
            return [rid for _, rid in self._ordered()]

    def load(self, request_id: str) -> RequestRecord:
        """The record as saved; a missing record or tensor, or a tensor whose bytes changed, raises ``RecordError``."""
        folder = self.root / check_request_id(request_id)
        path = folder / "record.json"
        if not path.is_file():
            raise RecordError(f"request_id: no record {request_id!r} in {self.root}")
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            discarded = bool(body.get("tensors_discarded"))
            get = (lambda name: None) if discarded else self._get
            steps = [StepRecord(
                step=int(s["step"]), first_position=int(s["first_position"]), num_positions=int(s["num_positions"]),
                first_input_digest=bytes.fromhex(s["first_input_digest"]),
                commitments=[commitment_from_dict(c) for c in s["commitments"]],
                inputs=[b for b in (get(name) for name in s["inputs"]) if b is not None],
                outputs=[b for b in (get(name) for name in s["outputs"]) if b is not None],
                upstream_commitments=[None if c is None else commitment_from_dict(c)
                                      for c in s.get("upstream_commitments", [])],
            ) for s in body["steps"]]
            return RequestRecord(
                request_id=body["request_id"], model_id=body["model_id"], cohort=cohort_from_dict(body["cohort"]),
                steps=steps, status=body["status"], culprit=body["culprit"], reason=body["reason"], fee=int(body["fee"]),
                prompt_tokens=int(body["prompt_tokens"]), completion_tokens=int(body["completion_tokens"]),
                extra=dict(body.get("extra") or {}),
                prices={str(k): int(v) for k, v in (body.get("prices") or {}).items()}, tensors_discarded=discarded)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, RecordError):
                raise
            raise RecordError(f"{path}: malformed record ({exc.__class__.__name__}: {exc})") from None

    def _get(self, name: str) -> bytes:
        path = self.tensors / f"{name}.vstn"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise RecordError(f"{path}: tensor file referenced by a record is missing") from None
        if _digest(blob) != name:
            raise RecordError(f"{path}: tensor bytes do not match their digest (file altered)")
        return blob

    # --- retention ------------------------------------------------------------------------
    def _scan(self) -> dict[str, tuple[int, set[str]]]:
        index: dict[str, tuple[int, set[str]]] = {}
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or folder.name == "tensors" or not folder.is_dir():
                continue
            try:
                text = (folder / "record.json").read_text(encoding="utf-8")
                body = json.loads(text)
            except (OSError, ValueError):
                continue
            names = set() if body.get("tensors_discarded") else {
                n for st in body.get("steps", []) for n in st.get("inputs", []) + st.get("outputs", [])}
            index[folder.name] = (int(body.get("saved_at_ns", 0)), names)
            extras = folder / "extras.json"
            self._extras_sizes[folder.name] = extras.stat().st_size if extras.is_file() else 0
            self._json_sizes[folder.name] = len(text) + self._extras_sizes[folder.name]
        for path in self.tensors.glob("*.vstn"):
            with contextlib.suppress(OSError):
                self._sizes[path.stem] = path.stat().st_size
        return index

    def _ordered(self) -> list[tuple[int, str]]:
        return sorted((saved, rid) for rid, (saved, _) in self._index.items())

    def _prune(self) -> None:
        """Delete the oldest records while over ``max_requests`` or ``max_bytes`` (the newest stays)."""
        ordered = self._ordered()
        excess = len(ordered) - self.max_requests
        dropped: set[str] = set()
        refs: Counter[str] = Counter(n for _, names in self._index.values() for n in names)
        total = sum(self._json_sizes.values()) + sum(self._sizes.get(n, 0) for n in refs)
        for index, (_, rid) in enumerate(ordered[:-1]):
            over_bytes = self.max_bytes is not None and total > self.max_bytes
            if index >= excess and not over_bytes:
                break
            shutil.rmtree(self.root / rid, ignore_errors=True)
            names = self._index.pop(rid)[1]
            dropped |= names
            total -= self._json_sizes.pop(rid, 0)
            self._extras_sizes.pop(rid, None)
            for name in names:
                refs[name] -= 1
                if refs[name] == 0:
                    total -= self._sizes.get(name, 0)
            self._compactable.discard(rid)
        self._unlink_unreferenced(dropped)

    def _unlink_unreferenced(self, names: set[str]) -> None:
        referenced: set[str] = set()
        for _, kept in self._index.values():
            referenced |= kept
        for name in names - referenced:
            (self.tensors / f"{name}.vstn").unlink(missing_ok=True)
            self._sizes.pop(name, None)
