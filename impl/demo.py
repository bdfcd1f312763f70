"""``verisplit demo``: a 4-provider cohort on loopback, one streamed completion, and what was verified.

Creates the embedded default model once (a seeded random Llama checkpoint in the cache folder), a key
per provider, starts the providers and the lead as child processes, streams a chat completion
through the cohort, then prints the cohort, the commitments checked and (when the verifier's hooks
are installed) audits and payouts. Children are always cleaned up (exit, exception, Ctrl-C, SIGTERM).
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


def default_cache_dir() -> Path:
    """``$VERISPLIT_HOME``, else ``$XDG_CACHE_HOME/verisplit``, else ``~/.cache/verisplit``."""
    if os.environ.get("VERISPLIT_HOME"):
        return Path(os.environ["VERISPLIT_HOME"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "verisplit"


def split_layers(num_layers: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous non-empty ranges tiling [0, num_layers), sizes differing by at most one."""
    if not 1 <= parts <= num_layers:
        raise click.BadParameter(f"{parts} providers cannot split {num_layers} layers (1..{num_layers})",
                                 param_hint="--providers")
    bounds = [num_layers * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


@click.command("demo")
@click.option("--checkpoint", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Use this HF checkpoint instead of the embedded default model.")
@click.option("--providers", "num_providers", default=4, show_default=True, type=click.IntRange(min=1),
              help="Number of provider processes.")
@click.option("--prompt", default="Explain verified split inference in one sentence.", show_default=True)
@click.option("--max-tokens", default=24, show_default=True, type=click.IntRange(min=1))
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep keys, logs and request records here (default: a temporary folder, removed afterwards).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the default model is built (default: $VERISPLIT_HOME or ~/.cache/verisplit).")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0.0, max=2.0))
def demo_command(checkpoint: Path | None, num_providers: int, prompt: str, max_tokens: int, workdir: Path | None,
                 cache_dir: Path | None, seed: int, temperature: float) -> None:
    """Run a local cohort of providers on the default model and stream one verified completion."""
    from rich.console import Console

    from verisplit.impl.config import ModelConfig
    from verisplit.impl.errors import CheckpointError
    from verisplit.impl.procs import ChildFailed, ProcessGroup, signal_cleanup, start_local_cohort

    console = Console()
    started = time.monotonic()
    try:
        if checkpoint is None:
            from verisplit.impl.checkpoint import ensure_default_checkpoint

            with console.status("building the embedded default model (first run only)..."):
                checkpoint = ensure_default_checkpoint(cache_dir or default_cache_dir())
        config = ModelConfig.from_dir(checkpoint)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(f"checkpoint: {exc}") from None
    ranges = split_layers(config.num_hidden_layers, num_providers)
    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="verisplit-demo-")) if workdir is None else workdir
    signal_cleanup()
    ok = False
    try:
        with ProcessGroup(work / "logs") as group:
            with console.status(f"starting the lead and {num_providers} providers on loopback..."):
                cohort = start_local_cohort(group, checkpoint, ranges, keys_dir=work / "keys", data_dir=work / "lead")
            console.print(f"[bold]cohort ready[/] in {time.monotonic() - started:.1f}s; lead API at {cohort['http']}")
            request_id, text = _stream(console, cohort["http"], prompt, max_tokens, seed, temperature)
            info = _request_info(cohort["http"], request_id)
            _print_report(console, info)
            ok = info.get("status") == "completed"
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
    audits = info.get("audits")
    if audits:
        audit_table = Table(title="audits")
        keys = sorted({k for a in audits for k in a} if isinstance(audits, list) else [])
        for key in keys:
            audit_table.add_column(str(key))
        for audit in audits:
            audit_table.add_row(*[_short(audit.get(k)) for k in keys])
        console.print(audit_table)
    settlement = info.get("settlement")
    if settlement:
        pay_table = Table(title="settlement")
        pay_table.add_column("party")
        pay_table.add_column("amount", justify="right")
        for provider, amount in (settlement.get("payouts") or {}).items():
            pay_table.add_row(str(provider), str(amount))
        for key in ("residual", "refund", "fee"):
            if key in settlement:
                pay_table.add_row(key, str(settlement[key]))
        console.print(pay_table)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
