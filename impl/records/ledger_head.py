"""The ledger head kept outside the database, and the tail-loss check against an expected head.

The head ``(seq, hash)`` of the last committed record is written to ``<ledger>.head`` after every
commit (temporary file, fsync, rename, fsync of the folder) and published in every response; a WAL
tail torn off by a crash loses the record and the in-database head together, but not this one.

Invariant: the head file is only ever replaced whole (never seen half-written); ``parse_head`` and
``read_head_file`` raise ``LedgerError`` on anything that is not a head.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from verisplit.impl.records.ledger_escrow import LedgerError

GENESIS_HASH = "00" * 32


def canonical_json(obj: Any) -> str:
    """Sorted keys, compact separators, UTF-8 text, NaN/Infinity refused (the ledger's one encoding)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _is_hex(text: object, nbytes: int) -> bool:
    if not isinstance(text, str) or len(text) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def head_file_of(path: str | Path) -> Path:
    """Where the head kept outside the database lives: ``<ledger file>.head``."""
    p = Path(path)
    return p.with_name(p.name + ".head")


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as printed in responses) -> (seq, hash); ``LedgerError`` naming the problem."""
    seq_text, _, digest = str(text).strip().partition(":")
    try:
        seq = int(seq_text)
    except ValueError:
        raise LedgerError(f"expected head: {text!r} is not SEQ:HASH") from None
    if seq < 0 or not (_is_hex(digest, 32) or (seq == 0 and digest in ("", GENESIS_HASH))):
        raise LedgerError(f"expected head: {text!r} is not SEQ:HASH (seq >= 0, 64 hex characters)")
    return seq, digest or GENESIS_HASH


def read_head_file(path: str | Path) -> tuple[int, str] | None:
    """The (seq, hash) of ``<ledger>.head`` if that file exists; ``LedgerError`` if it is malformed."""
    hp = head_file_of(path)
    try:
        data = json.loads(hp.read_text(encoding="utf-8"))
        return int(data["seq"]), str(data["hash"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"{hp}: malformed head file ({exc})") from None


def write_head_file(path: Path, head: dict[str, Any]) -> None:
    """Replace ``<ledger>.head`` atomically and durably (temporary file, fsync, rename, fsync of the folder)."""
    hp = head_file_of(path)
    tmp = hp.with_name(hp.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(canonical_json(head))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, hp)
    with contextlib.suppress(OSError):
        fd = os.open(hp.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
