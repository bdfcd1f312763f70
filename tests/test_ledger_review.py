"""Review regressions of the ledger: a tampered body holding NaN is reported (not a traceback) by
``verify``, and ``ledger show`` displays a malformed body instead of crashing."""

from __future__ import annotations

import json
import re
import sqlite3

from click.testing import CliRunner
from nacl.signing import SigningKey

from verisplit.impl.cli.ledger import ledger_group
from verisplit.impl.records.ledger import Ledger, settlement_body
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.settlement import settle

LEAD = SigningKey(b"R" * 32)
COHORT = Cohort("m", (Assignment("a", b"\x01" * 32, 0, 2), Assignment("b", b"\x02" * 32, 2, 4)))


def _ledger(path):
    with Ledger(path) as ledger:
        for i in range(3):
            work = {"a": 10 + i, "b": 10 + i}
            body = settlement_body(request_id=f"r{i}", model_id="m", cohort=COHORT, work=work,
                                   settlement=settle(100 + i, work, {p: 1 for p in work}, "lead"),
                                   prices={p: 1 for p in work}, audits=[])
            ledger.append(body, LEAD)


def _set_body(path, seq, edit):
    db = sqlite3.connect(path)
    text = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()[0]
    db.execute("UPDATE records SET body = ? WHERE seq = ?", (edit(text), seq))
    db.commit()
    db.close()


def test_nan_in_a_tampered_body_is_named_not_a_traceback(tmp_path):
    path = tmp_path / "ledger.db"
    _ledger(path)
    _set_body(path, 2, lambda t: re.sub(r'"fee":\d+', '"fee":NaN', t))
    with Ledger(path, create=False) as ledger:
        report = ledger.verify()  # before: ValueError from canonical_json escaped
    assert not report.ok and report.bad_seq == 2 and report.count == 1
    assert "canonical" in report.message
    result = CliRunner().invoke(ledger_group, ["verify", "--ledger", str(path)])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "record seq 2" in result.output


def test_show_displays_a_malformed_body(tmp_path):
    path = tmp_path / "ledger.db"
    _ledger(path)
    def edit(text):
        body = json.loads(text)
        body.update(payouts=[body["payouts"]], failed=[1, {"x": 2}], audits="none")
        return json.dumps(body)

    _set_body(path, 1, edit)
    result = CliRunner().invoke(ledger_group, ["show", "--ledger", str(path)])
    assert result.exit_code == 0, result.output  # before: AttributeError / TypeError traceback
    assert "r0" in result.output and "r2" in result.output
    verify = CliRunner().invoke(ledger_group, ["verify", "--ledger", str(path)])
    assert verify.exit_code == 1 and "record seq 1" in verify.output
