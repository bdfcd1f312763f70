"""Ed25519 identities: key files, fingerprints, and the signed offer and heartbeat statements.

Key file format (one line of JSON, file mode 0600)::

    {"kind": "verisplit-ed25519", "version": 1, "seed": "<64 hex chars>", "public_key": "<64 hex chars>"}

Invariants: ``create_key_file`` never overwrites and leaves the file readable by its owner only;
``load_key_file`` refuses group/other-readable files and any file whose public key does not match
its seed. The byte layouts of ``offer_signing_bytes`` and ``heartbeat_signing_bytes`` are
documented in docs/protocol.md; both are injective (fixed-width integers, length-prefixed strings).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

KEY_KIND = "verisplit-ed25519"
KEY_VERSION = 1
OFFER_DOMAIN = b"verisplit/offer/v3\x00"  # v2: the compute dtype; v3: lead key, nonce, expiry, counter
HEARTBEAT_DOMAIN = b"verisplit/heartbeat/v2\x00"  # v2: the persistent counter
PROVE_DOMAIN = b"verisplit/prove/v1\x00"
COUNTER_BLOCK = 60_000  # a counter file reserves this many values (a minute of milliseconds) per write


class KeyFileError(ValueError):
    """A key file is missing, unreadable, malformed, or too widely readable (the message says which)."""


def fingerprint(public_key: bytes) -> str:
    """Short human-readable fingerprint: ``ed25519:`` + first 16 hex chars of SHA-256(public key)."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


def create_key_file(path: str | Path) -> SigningKey:
    """Write a fresh Ed25519 key to ``path`` (mode 0600); refuses to overwrite an existing file."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        raise KeyFileError(f"{target}: already exists; refusing to overwrite an identity (delete it first)")
    if not target.parent.is_dir():
        raise KeyFileError(f"{target.parent}: directory does not exist")
    key = SigningKey.generate()
    body = json.dumps({
        "kind": KEY_KIND, "version": KEY_VERSION,
        "seed": bytes(key).hex(), "public_key": bytes(key.verify_key).hex(),
    }) + "\n"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{target}: already exists; refusing to overwrite an identity") from None
    except OSError as exc:
        raise KeyFileError(f"{target}: cannot create key file ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())  # an identity that was reported written must survive a crash
    except OSError as exc:
        target.unlink(missing_ok=True)  # never leave a half-written key that blocks the retry
        raise KeyFileError(f"{target}: could not write the key ({exc.strerror})") from None
    os.chmod(target, 0o600)  # in case the umask widened nothing but the fs ignored the mode
    return key


def load_key_file(path: str | Path) -> SigningKey:
    """Read a key written by ``create_key_file``; every problem raises ``KeyFileError`` naming it."""
    source = Path(path)
    try:
        info = source.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{source}: key file not found (create one with `verisplit keygen --out {source}`)") from None
    except OSError as exc:
        raise KeyFileError(f"{source}: cannot stat key file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{source}: not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(f"{source}: permissions {oct(info.st_mode & 0o777)} are too open; "
                           f"the key must be readable by its owner only (chmod 600 {source})")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{source}: not a verisplit key file ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("kind") != KEY_KIND:
        raise KeyFileError(f"{source}: field 'kind' must be {KEY_KIND!r}")
    if data.get("version") != KEY_VERSION:
        raise KeyFileError(f"{source}: field 'version' must be {KEY_VERSION}, got {data.get('version')!r}")
    try:
        seed = bytes.fromhex(str(data.get("seed")))
    except ValueError:
        raise KeyFileError(f"{source}: field 'seed' is not hex") from None
    if len(seed) != 32:
        raise KeyFileError(f"{source}: field 'seed' must be 32 bytes, got {len(seed)}")
    key = SigningKey(seed)
    if str(data.get("public_key", "")).lower() != bytes(key.verify_key).hex():
        raise KeyFileError(f"{source}: field 'public_key' does not match the seed")
    return key


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("signed text field longer than 65535 bytes")
    return struct.pack("<H", len(raw)) + raw


def _blob(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("signed bytes field longer than 65535 bytes")
    return struct.pack("<H", len(value)) + value


def _fixed(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name}: must be {size} bytes, got {len(value)}")
    return value


@dataclass(frozen=True)
class SignedFields:
    """An offer as signed: every field of the wire ``Offer`` message (see verisplit.proto)."""

    protocol_version: int
    provider_id: str
    public_key: bytes
    model_id: str
    weights_digest: bytes
    num_layers: int
    first_layer: int
    end_layer: int
    price_per_work_unit: int
    endpoint: str
    kv_capacity_tokens: int
    issued_at_ms: int
    dtype: str = "float32"  # the compute dtype the provider runs; the lead refuses any other than its own
    lead_public_key: bytes = bytes(32)  # the lead this offer is for (admission: no replay to another lead)
    nonce: bytes = b""                  # the lead's single-use challenge nonce (no replay in time)
    expires_at_ms: int = 0              # unix ms after which the lead refuses the offer
    heartbeat_counter: int = 0          # the provider's persistent counter when it signed


def offer_signing_bytes(o: SignedFields) -> bytes:
    """Canonical bytes an offer signature covers (docs/protocol.md, "Offer signing bytes")."""
    return b"".join([
        OFFER_DOMAIN,
        struct.pack("<H", o.protocol_version),
        _text(o.provider_id),
        _fixed("public_key", o.public_key, 32),
        _text(o.model_id),
        _fixed("weights_digest", o.weights_digest, 32),
        struct.pack("<III", o.num_layers, o.first_layer, o.end_layer),
        struct.pack("<Q", o.price_per_work_unit),
        _text(o.endpoint),
        struct.pack("<QQ", o.kv_capacity_tokens, o.issued_at_ms),
        _text(o.dtype),
        _fixed("lead_public_key", o.lead_public_key, 32),
        _blob(o.nonce),
        struct.pack("<QQ", o.expires_at_ms, o.heartbeat_counter),
    ])


def sign_offer(o: SignedFields, key: SigningKey) -> bytes:
    """64-byte Ed25519 signature of ``offer_signing_bytes(o)``; ``o.public_key`` must be ``key``'s."""
    if o.public_key != bytes(key.verify_key):
        raise ValueError("public_key: the offer names a key other than the signing key")
    return key.sign(offer_signing_bytes(o)).signature


def offer_signature_valid(o: SignedFields, signature: bytes) -> bool:
    """True iff ``signature`` verifies over the offer's signing bytes under ``o.public_key``."""
    try:
        VerifyKey(o.public_key).verify(offer_signing_bytes(o), signature)
    except (BadSignatureError, ValueError, TypeError, struct.error, OverflowError):
        # struct.error: a field outside its fixed width (e.g. a wire protocol_version above u16)
        return False
    return True


def heartbeat_signing_bytes(provider_id: str, sent_at_ms: int, leaving: bool, counter: int = 0) -> bytes:
    """Canonical bytes a heartbeat signature covers (docs/protocol.md, "Heartbeat signing bytes")."""
    return HEARTBEAT_DOMAIN + _text(provider_id) + struct.pack("<QBQ", sent_at_ms, 1 if leaving else 0, counter)


def heartbeat_signature_valid(public_key: bytes, provider_id: str, sent_at_ms: int, leaving: bool,
                              signature: bytes, counter: int = 0) -> bool:
    """True iff ``signature`` is the provider's signature over the heartbeat's signing bytes."""
    try:
        VerifyKey(public_key).verify(heartbeat_signing_bytes(provider_id, sent_at_ms, leaving, counter), signature)
    except (BadSignatureError, ValueError, TypeError, struct.error, OverflowError):
        return False
    return True


SESSION_DOMAIN = b"verisplit/open-session/v2\x00"  # v2: the recipient provider's key and an expiry


def session_signing_bytes(session_id: str, request_id: str, model_id: str, segment_index: int, first_layer: int,
                          end_layer: int, max_length: int, audit_seed_commitment: bytes, dtype: str,
                          next_endpoint: str = "", next_public_key: bytes = b"", previous_public_key: bytes = b"",
                          recipient_public_key: bytes = b"", expires_at_ms: int = 0) -> bytes:
    """Canonical bytes the lead signs when it opens a session (docs/protocol.md, "Session opening"): the
    provider serves the session only if the signature verifies under the key of the lead it registered
    with, and repeats ``audit_seed_commitment`` in every commitment of the request. A direct-path opening
    also signs its neighbours (next endpoint and key, previous key: text, then each key as u16 length +
    bytes), appended only when one is set, so lead-mediated openings keep their bytes. v2 binds the
    opening to one provider and one time window: the recipient's key (u16 length + bytes; empty = not
    bound, refused by a provider that requires it) and a u64 ``expires_at_ms`` follow the dtype, so an
    opening replayed to another provider, or after it expired, does not verify as meant."""
    parts = [
        SESSION_DOMAIN, _text(session_id), _text(request_id), _text(model_id),
        struct.pack("<IIII", segment_index, first_layer, end_layer, max_length),
        _fixed("audit_seed_commitment", audit_seed_commitment, 32), _text(dtype),
        struct.pack("<H", len(recipient_public_key)), recipient_public_key, struct.pack("<Q", expires_at_ms),
    ]
    if next_endpoint or next_public_key or previous_public_key:
        parts += [b"direct\x00", _text(next_endpoint), struct.pack("<H", len(next_public_key)), next_public_key,
                  struct.pack("<H", len(previous_public_key)), previous_public_key]
    return b"".join(parts)


def sign_session(key: SigningKey, **fields: object) -> bytes:
    """The lead's 64-byte signature over ``session_signing_bytes(**fields)``."""
    return key.sign(session_signing_bytes(**fields)).signature  # type: ignore[arg-type]


def session_signature_valid(lead_public_key: bytes, signature: bytes, **fields: object) -> bool:
    """True iff ``signature`` is ``lead_public_key``'s signature over the session-opening bytes."""
    try:
        VerifyKey(lead_public_key).verify(session_signing_bytes(**fields), signature)  # type: ignore[arg-type]
    except (BadSignatureError, ValueError, TypeError, struct.error, OverflowError):
        return False
    return True


def prove_signing_bytes(lead_public_key: bytes, challenge: bytes, public_key: bytes) -> bytes:
    """Canonical bytes of a possession proof (docs/protocol.md, "Admission"): the provider at an
    endpoint signs the asking lead's key, the lead's fresh 32-byte challenge and its own key."""
    return PROVE_DOMAIN + _fixed("lead_public_key", lead_public_key, 32) + _fixed("challenge", challenge, 32) + \
        _fixed("public_key", public_key, 32)


def prove_signature_valid(public_key: bytes, lead_public_key: bytes, challenge: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is ``public_key``'s possession proof for this lead and challenge."""
    try:
        VerifyKey(public_key).verify(prove_signing_bytes(lead_public_key, challenge, public_key), signature)
    except (BadSignatureError, ValueError, TypeError, struct.error, OverflowError):
        return False
    return True


class CounterFile:
    """A persistent strictly increasing counter kept next to a key file (``<key>.counter``); None for
    ``path``: memory only. Values are at least the wall clock in unix ms, so even a lost file continues
    above what an earlier run sent (as long as the clock does not go back).

    Invariant: ``next()`` never returns a value it (or any earlier process on the same file) returned
    before: the file holds a high-water mark reserved ``COUNTER_BLOCK`` values ahead and is rewritten
    (atomically, fsynced) before a value past it is handed out, so a restart continues above it."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._reserved = self._value = 0
        if self.path is None:
            return
        try:
            self._reserved = int(self.path.read_text(encoding="utf-8").strip() or 0)
        except FileNotFoundError:
            self._reserved = 0
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{self.path}: not a counter file ({exc.__class__.__name__})") from None
        self._value = self._reserved

    def _reserve(self, upto: int) -> None:
        if self.path is None:
            self._reserved = upto
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{upto}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._reserved = upto

    @property
    def current(self) -> int:
        return self._value

    def next(self) -> int:
        """The next counter value (strictly above every earlier one, and >= the unix ms clock)."""
        import time

        value = max(self._value + 1, int(time.time() * 1000))
        if value > self._reserved:
            self._reserve(value + COUNTER_BLOCK)
        self._value = value
        return value
