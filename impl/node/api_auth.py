"""API keys of the lead's HTTP API, the OpenAI way (``Authorization: Bearer <key>``).

Key files hold one key per line (blank lines and ``#`` comments ignored); a key is 16 to 256
printable ASCII characters without spaces. Client keys (``--api-keys``) reach the client endpoints;
operator keys (``--operator-keys``) reach those and the operator endpoints too.

Invariants:
- Only SHA-256 digests of keys are held in memory; a presented key is hashed and compared with
  every stored digest by ``hmac.compare_digest`` (no early exit, so timing does not reveal which
  digest prefix matched).
- A request's ``owner`` is ``key_id(key)``: 16 hex digits of the key's digest (never the key), or
  ``None`` when the API runs without keys (loopback only: ``check_exposure``).
- Without keys the API is open; it may then listen only on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

CLIENT = "client"
OPERATOR = "operator"
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256


class KeyFileError(ValueError):
    """A key file is unreadable or holds a malformed key (the message names the file and line)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_id(digest: bytes) -> str:
    """The public id of a key with SHA-256 ``digest`` (what request records store as their owner)."""
    return digest.hex()[:16]


def read_key_file(path: Path, what: str) -> list[str]:
    """The keys in ``path`` (one per line), or ``KeyFileError`` naming ``what``, the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{what}: cannot read {path}: {exc}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
            raise KeyFileError(f"{what}: {path} line {number}: a key must be {MIN_KEY_CHARS} to {MAX_KEY_CHARS} "
                               f"characters (got {len(key)})")
        if not all("!" <= c <= "~" for c in key):
            raise KeyFileError(f"{what}: {path} line {number}: a key must be printable ASCII without spaces")
        keys.append(key)
    if not keys:
        raise KeyFileError(f"{what}: {path} holds no key")
    return keys


@dataclass
class Principal:
    """Who sent a request: a key's id and role, or (no keys configured) nobody in particular."""

    owner: str | None
    role: str


@dataclass
class ApiKeys:
    """The digests of the client and operator keys; empty means the API runs without keys."""

    client: list[bytes] = field(default_factory=list)
    operator: list[bytes] = field(default_factory=list)

    @classmethod
    def from_files(cls, api_keys: Path | None, operator_keys: Path | None) -> "ApiKeys":
        """Read both files (either may be absent); raises ``KeyFileError``."""
        client = [_digest(k) for k in read_key_file(api_keys, "--api-keys")] if api_keys else []
        operator = [_digest(k) for k in read_key_file(operator_keys, "--operator-keys")] if operator_keys else []
        return cls(client, operator)

    @classmethod
    def of(cls, client: list[str], operator: list[str] | None = None) -> "ApiKeys":
        """Keys given in memory (tests, embedding)."""
        return cls([_digest(k) for k in client], [_digest(k) for k in operator or []])

    @property
    def enabled(self) -> bool:
        return bool(self.client or self.operator)

    def identify(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header value, or None when it is missing or no key
        matches. Without keys everyone is an anonymous operator (loopback only)."""
        if not self.enabled:
            return Principal(None, OPERATOR)
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _digest(token.strip())
        role = None
        for stored in self.operator:  # every digest is compared: no early exit
            if hmac.compare_digest(digest, stored):
                role = OPERATOR
        for stored in self.client:
            if hmac.compare_digest(digest, stored) and role is None:
                role = CLIENT
        return Principal(key_id(digest), role) if role is not None else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal or ``localhost``) names only this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(http_host: str, keys: ApiKeys) -> None:
    """Refuse (``ValueError``) to serve the API on a non-loopback address without API keys."""
    if not keys.enabled and not is_loopback(http_host):
        raise ValueError(f"--http: {http_host!r} is not a loopback address, and the API would be open to anyone "
                         "who can reach it: pass --api-keys FILE (client keys, one per line) and/or "
                         "--operator-keys FILE, or listen on 127.0.0.1")
