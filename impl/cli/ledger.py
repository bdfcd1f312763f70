"""CLI: ``verisplit ledger {show, verify, export}`` over the signed SQLite ledger (read-only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _open(path: Path):  # type: ignore[no-untyped-def]
    from verisplit.impl.records.ledger import Ledger, LedgerError

    try:
        return Ledger(path, create=False)
    except LedgerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _lead_key(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        click.echo("error: --lead-key: expected 64 hex characters (an Ed25519 public key)", err=True)
        sys.exit(2)
    return key


@click.group("ledger")
def ledger_group() -> None:
    """Inspect, verify and export the signed settlement ledger."""


@ledger_group.command("show")
@click.option("--ledger", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def show_command(path: Path) -> None:
    """One line per record: seq, request, fee, payouts, residual, refund, failed providers, audits."""
    from rich.console import Console
    from rich.table import Table

    from verisplit.impl.records.ledger import LedgerError

    ledger = _open(path)
    table = Table(title=f"ledger {path}")
    for column in ("seq", "request", "fee", "payouts", "residual", "refund", "failed", "audits"):
        table.add_column(column)
    try:
        for record in ledger.records():
            # Display only: a malformed (tampered) body is shown as-is, never a traceback; `verify` judges it.
            b = record.body if isinstance(record.body, dict) else {}
            raw_payouts = b.get("payouts")
            payouts = " ".join(f"{p}={v}" for p, v in sorted(raw_payouts.items(), key=lambda kv: str(kv[0]))) \
                if isinstance(raw_payouts, dict) else str(raw_payouts)
            raw_audits = b.get("audits")
            audits = " ".join(f"{a.get('segment_index')}:{'pass' if a.get('passed') else 'FAIL'}" if isinstance(a, dict)
                              else "?" for a in raw_audits) if isinstance(raw_audits, list) else str(raw_audits)
            raw_failed = b.get("failed")
            failed = ",".join(str(f) for f in raw_failed) if isinstance(raw_failed, list) else str(raw_failed)
            table.add_row(str(record.seq), str(b.get("request_id")), str(b.get("fee")), payouts,
                          str(b.get("residual")), str(b.get("refund")), failed or "-", audits or "-")
    except LedgerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    Console(width=200).print(table)


@ledger_group.command("verify")
@click.option("--ledger", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--lead-key", default=None, help="Expected lead public key (hex); default: the first record's.")
def verify_command(path: Path, lead_key: str | None) -> None:
    """Re-check hash chain, signatures and conservation of every record; exit 1 naming the first bad one."""
    ledger = _open(path)
    report = ledger.verify(_lead_key(lead_key))
    if report.ok:
        click.echo(f"ok: {report.message}")
        return
    click.echo(f"FAILED: {report.message}", err=True)
    sys.exit(1)


@ledger_group.command("export")
@click.option("--ledger", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write JSON lines here (default: stdout).")
def export_command(path: Path, out: Path | None) -> None:
    """Every record as one JSON line: {seq, body, hash, signature}."""
    from verisplit.impl.records.ledger import LedgerError

    ledger = _open(path)
    try:
        lines = [json.dumps({"seq": r.seq, "body": r.body, "hash": r.hash, "signature": r.signature}, sort_keys=True)
                 for r in ledger.records()]
    except LedgerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    text = "".join(line + "\n" for line in lines)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            click.echo(f"error: {out}: cannot write the export ({exc.strerror})", err=True)
            sys.exit(2)
        click.echo(f"{len(lines)} records -> {out}")
