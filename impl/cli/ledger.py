"""CLI: ``verisplit ledger {show, verify, export}`` over the signed SQLite ledger (read-only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def _open(path: Path):  # type: ignore[no-untyped-def]
    from verisplit.impl.records.ledger import Ledger, LedgerError

    try:
        return Ledger(path, read_only=True)  # SQLite mode=ro: no pragma, no checkpoint, no write
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None


def _lead_key(public_hex: str | None, key_file: Path | None) -> bytes | None:
    """The expected lead public key from --lead-public-key HEX or --lead-key FILE (as ``lead serve``)."""
    if public_hex is not None and key_file is not None:
        raise click.UsageError("give --lead-public-key or --lead-key, not both")
    if key_file is not None:
        from verisplit.impl.records.keys import KeyFileError, load_key_file

        try:
            return bytes(load_key_file(key_file).verify_key)
        except KeyFileError as exc:
            raise click.ClickException(f"--lead-key: {exc}") from None
    if public_hex is None:
        return None
    try:
        key = bytes.fromhex(public_hex.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise click.BadParameter("expected 64 hex characters (an Ed25519 public key)", param_hint="--lead-public-key")
    return key


@click.group("ledger")
def ledger_group() -> None:
    """Inspect, verify and export the signed settlement ledger."""


@ledger_group.command("show")
@click.option("--ledger", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The ledger database (lead-data/ledger.db); opened read-only.")
def show_command(path: Path) -> None:
    """One line per record (seq, time, request, fee, payouts, residual, refund, failed, audits), then
    per-provider totals: work units, price, value (price x work) and payout."""
    from rich.console import Console

    from verisplit.impl.records.ledger import LedgerError

    ledger = _open(path)
    try:
        bodies = [(record.seq, record.body if isinstance(record.body, dict) else {}) for record in ledger.records()]
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console(width=200)
    console.print(_records_table(path, bodies))
    console.print(_totals_table(bodies))


def _records_table(path: Path, bodies: list[tuple[int, dict]]) -> Any:
    """Display only: a malformed (tampered) body is shown as-is, never a traceback; ``verify`` judges it."""
    from rich.table import Table

    table = Table(title=f"ledger {path}")
    for column in ("seq", "recorded (UTC)", "request", "fee", "payouts", "residual", "refund", "failed", "audits"):
        table.add_column(column)
    for seq, b in bodies:
        raw_payouts = b.get("payouts")
        payouts = " ".join(f"{p}={v}" for p, v in sorted(raw_payouts.items(), key=lambda kv: str(kv[0]))) \
            if isinstance(raw_payouts, dict) else str(raw_payouts)
        raw_audits = b.get("audits")
        audits = " ".join(f"{a.get('segment_index')}:{'pass' if a.get('passed') else 'FAIL'}" if isinstance(a, dict)
                          else "?" for a in raw_audits) if isinstance(raw_audits, list) else str(raw_audits)
        raw_failed = b.get("failed")
        failed = ",".join(str(f) for f in raw_failed) if isinstance(raw_failed, list) else str(raw_failed)
        table.add_row(str(seq), _when(b.get("recorded_at_ms")), str(b.get("request_id")), str(b.get("fee")), payouts,
                      str(b.get("residual")), str(b.get("refund")), failed or "-", audits or "-")
    return table


def _when(ms: object) -> str:
    if isinstance(ms, bool) or not isinstance(ms, int):
        return "-"
    import datetime

    try:
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def provider_totals(bodies: list[tuple[int, dict]]) -> dict[str, dict[str, Any]]:
    """Per provider over all records: layers served, work units, prices seen, value and payout (sums of
    the records' integer fields; a field that is not an integer is skipped, ``verify`` judges it)."""
    totals: dict[str, dict[str, Any]] = {}
    for _, b in bodies:
        layers = {a.get("provider_id"): f"[{a.get('first_layer')}, {a.get('end_layer')})"
                  for a in b.get("cohort") or [] if isinstance(a, dict)}
        for field_name in ("work", "values", "payouts"):
            mapping = b.get(field_name)
            for pid, value in (mapping.items() if isinstance(mapping, dict) else ()):
                row = totals.setdefault(str(pid), {"layers": set(), "work": 0, "prices": set(), "values": 0,
                                                   "payouts": 0, "records": set()})
                if isinstance(value, int) and not isinstance(value, bool):
                    row[field_name] += value
                row["records"].add(b.get("request_id"))
                if pid in layers:
                    row["layers"].add(layers[pid])
        prices = b.get("prices")
        for pid, price in (prices.items() if isinstance(prices, dict) else ()):
            if str(pid) in totals:
                totals[str(pid)]["prices"].add(str(price))
    return totals


def _totals_table(bodies: list[tuple[int, dict]]) -> Any:
    from rich.table import Table

    table = Table(title="per-provider totals")
    for column in ("provider", "layers", "records", "work units", "price", "value", "payout"):
        table.add_column(column, justify="right" if column in ("records", "work units", "value", "payout") else "left")
    for pid, row in sorted(provider_totals(bodies).items()):
        table.add_row(pid, " ".join(sorted(row["layers"])) or "-", str(len(row["records"])), str(row["work"]),
                      ",".join(sorted(row["prices"])) or "-", str(row["values"]), str(row["payouts"]))
    return table


@ledger_group.command("verify")
@click.option("--ledger", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The ledger database (lead-data/ledger.db); opened read-only.")
@click.option("--lead-public-key", "lead_public_key", default=None,
              help="Expected lead public key (64 hex characters) [default: the first record's].")
@click.option("--lead-key", "lead_key_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Expected lead key, as the key file given to `lead serve --lead-key` (its public key is used).")
@click.option("--expect-head", "expect_head", default=None, metavar="SEQ:HASH",
              help="A ledger head published earlier (the `ledger_head` of a response): its record must be in "
                   "the file with that hash [default: the head file LEDGER.head, if present].")
def verify_command(path: Path, lead_public_key: str | None, lead_key_file: Path | None, expect_head: str | None) -> None:
    """Re-check hash chain, signatures and conservation of every record, and that no record past an
    expected head was lost; exit 1 naming the first bad (or missing) seq. Never writes the ledger."""
    from verisplit.impl.records.ledger import LedgerError
    from verisplit.impl.records.ledger_head import parse_head, read_head_file

    expected = _lead_key(lead_public_key, lead_key_file)
    try:
        head = parse_head(expect_head) if expect_head is not None else read_head_file(path)
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    ledger = _open(path)
    try:
        report = ledger.verify(expected, expect_head=head)
    finally:
        ledger.close()
    if report.ok:
        click.echo(f"ok: {report.message}")
        return
    click.echo(f"FAILED: {report.message}", err=True)
    sys.exit(1)


@ledger_group.command("export")
@click.option("--ledger", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The ledger database (lead-data/ledger.db); opened read-only.")
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
        raise click.ClickException(str(exc)) from None
    text = "".join(line + "\n" for line in lines)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"{out}: cannot write the export ({exc.strerror})") from None
        click.echo(f"{len(lines)} records -> {out}")
