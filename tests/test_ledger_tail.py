"""Ledger tail loss and read-only verify: a writer killed mid-life leaves its last records in the WAL;
cutting the WAL's tail loses the last record together with the in-database head, and only a head kept
outside (the head file, or one published in a response) detects it, naming the first missing seq.
``ledger verify`` never writes: the database and its WAL are byte-identical before and after."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

from click.testing import CliRunner
from nacl.signing import SigningKey

from verisplit.impl.cli.ledger import ledger_group
from verisplit.impl.records.ledger import Ledger, LedgerError
from verisplit.impl.records.ledger_head import head_file_of, parse_head, read_head_file

import pytest

WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_ledger_store import LEAD, body
    from verisplit.impl.records.ledger import Ledger
    ledger = Ledger(sys.argv[1])
    ledger._db.execute("PRAGMA wal_autocheckpoint=0")  # keep every record in the WAL, as a busy lead would
    for i in range(int(sys.argv[2])):
        ledger.append(body(i), LEAD)
    print(ledger.head[0], ledger.head[1])
    os._exit(0)  # like kill -9: no close, no checkpoint; the WAL stays behind
""")
LEAD = SigningKey(b"K" * 32)


def _crashed_writer(path, count: int) -> tuple[int, str]:
    import pathlib

    script = WRITER.format(tests=str(pathlib.Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", script, str(path), str(count)], check=True, capture_output=True,
                         text=True, timeout=60).stdout.split()
    return int(out[0]), out[1]


def _digests(path) -> dict[str, str]:
    files = [path, path.with_name(path.name + "-wal")]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}


def test_head_file_tracks_every_commit(tmp_path):
    path = tmp_path / "ledger.db"
    seq, digest = _crashed_writer(path, 3)
    assert (seq, digest) == read_head_file(path) == parse_head(f"{seq}:{digest}")
    with Ledger(path, read_only=True) as ledger:
        assert ledger.head == (3, digest)
        assert ledger.verify(bytes(LEAD.verify_key), expect_head=(seq, digest)).ok


def test_wal_tail_cut_is_detected_and_verify_never_writes(tmp_path):
    path = tmp_path / "ledger.db"
    seq, digest = _crashed_writer(path, 4)
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0
    with open(wal, "r+b") as handle:  # cut into the last transaction's commit frame
        handle.truncate(wal.stat().st_size - 200)
    before = _digests(path)
    with Ledger(path, read_only=True) as ledger:
        plain = ledger.verify(bytes(LEAD.verify_key))
        assert plain.ok and plain.count == 3  # the in-database head went with the record: no complaint
        report = ledger.verify(bytes(LEAD.verify_key), expect_head=(seq, digest))
    assert not report.ok and report.bad_seq == 4 and "seq 4 is missing" in report.message
    result = CliRunner().invoke(ledger_group, ["verify", "--ledger", str(path)])  # the head file by default
    assert result.exit_code == 1 and "record seq 4 is missing" in result.output
    result = CliRunner().invoke(ledger_group, ["verify", "--ledger", str(path), "--expect-head", f"{seq}:{digest}"])
    assert result.exit_code == 1 and "seq 4" in result.output
    result = CliRunner().invoke(ledger_group, ["verify", "--ledger", str(path), "--expect-head", "3:" + "ab" * 32])
    assert result.exit_code == 1 and "seq 3" in result.output  # present, but not with that hash
    assert _digests(path) == before  # read-only: database and WAL byte-identical, nothing checkpointed
    assert set(before) == {"ledger.db", "ledger.db-wal"}


def test_older_head_passes_and_bad_heads_are_refused(tmp_path):
    path = tmp_path / "ledger.db"
    _crashed_writer(path, 3)
    with Ledger(path, read_only=True) as ledger:
        first = next(ledger.records())
        assert ledger.verify(expect_head=(1, first.hash)).ok  # an earlier head is still a prefix
        assert ledger.verify(expect_head=(0, "00" * 32)).ok
        with pytest.raises(LedgerError):
            ledger.append({}, LEAD)
    for bad in ("x:y", "3:abc", "-1:" + "00" * 32):
        with pytest.raises(LedgerError):
            parse_head(bad)
    head_file_of(path).write_text("not json")
    result = CliRunner().invoke(ledger_group, ["verify", "--ledger", str(path)])
    assert result.exit_code != 0 and "malformed head file" in result.output
