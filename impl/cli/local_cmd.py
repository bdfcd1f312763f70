"""``verisplit serve-local``: a lead and K providers on this machine in one command.

The layers are split evenly (sizes differ by at most one); every process is a child with its own log
file (``DATA_DIR/logs/NAME.log``) and key (``DATA_DIR/keys``); the lead keeps its records, key and
ledger in ``DATA_DIR/lead``. On SIGINT/SIGTERM the lead drains first (its in-flight requests still have
their providers), then the providers stop; a child that dies ends the whole cohort with its log tail.
Children inherit the environment, so ``VERISPLIT_LEAD_SERVE_*`` / ``VERISPLIT_PROVIDER_SERVE_*``
variables and the ``[lead]`` / ``[provider]`` tables of ``--config`` reach them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from verisplit.impl.cli.config import apply_envvars, config_option, device_option, dtype_option, log_options


@click.command("serve-local")
@config_option("serve-local")
@click.option("--providers", "num_providers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Number of provider processes (the layers are split evenly between them).")
@click.option("--checkpoint", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="HF checkpoint folder [default: the default model, SmolLM2-135M-Instruct, fetched once].")
@click.option("--random-model", is_flag=True, help="Use the embedded seeded random-weight model (offline) instead.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("verisplit-local"),
              show_default=True, help="Keys, logs and the lead's records and ledger go here.")
@click.option("--listen", default="127.0.0.1:7000", show_default=True, help="The lead's Registry gRPC address.")
@click.option("--http", "http", default="127.0.0.1:8000", show_default=True, help="The lead's HTTP API address.")
@click.option("--prices", default="1", show_default=True,
              help="Comma-separated prices per work unit; provider k offers entry k (cycling when fewer).")
@click.option("--kv-budget-mb", default=256.0, show_default=True, type=click.FloatRange(min=0.0),
              help="KV-cache memory of each provider.")
@device_option(" Passed to every provider.")
@dtype_option()
@click.option("--calibration", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Tolerance file from `verisplit calibrate`; without it audits are off (settlement still runs).")
@click.option("--audit-p", "audit_p", default=None, help="Audit probability per segment [default: 1/10 with --calibration].")
@click.option("--shutdown-grace", default=10.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds in-flight requests may run on after SIGINT/SIGTERM.")
@click.option("--api-keys", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Client API keys for the lead (one per line); required when --http is not a loopback address.")
@click.option("--operator-keys", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Operator keys for the lead's /v1/providers, /v1/audit and /metrics.")
@click.option("--timeout", "start_timeout", default=300.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Seconds to wait for every process to be ready.")
@log_options
def serve_local_command(num_providers: int, checkpoint: Path | None, random_model: bool, data_dir: Path, listen: str,
                        http: str, prices: str, kv_budget_mb: float, device: str, dtype: str, calibration: Path | None,
                        audit_p: str | None, shutdown_grace: float, api_keys: Path | None,
                        operator_keys: Path | None, start_timeout: float, log_format: str, verbose: bool) -> None:
    """Start a lead and K providers on this machine (one process each, logs per process) and serve
    until SIGINT/SIGTERM."""
    from verisplit.impl.cli.demo import provider_prices, split_layers
    from verisplit.impl.cli.lead_cmd import parse_fraction
    from verisplit.impl.node.framing import parse_host_port
    from verisplit.impl.node.ports import BindError, probe_port
    from verisplit.impl.node.procs import ChildFailed, ProcessGroup, signal_cleanup, start_local_cohort
    from verisplit.impl.runtime.config import ModelConfig
    from verisplit.impl.runtime.errors import CheckpointError

    try:
        for what, address in (("--listen", listen), ("--http", http)):
            probe_port(what, *parse_host_port(address, what))
    except (ValueError, BindError) as exc:
        raise click.ClickException(str(exc)) from None
    if audit_p is not None:
        parse_fraction(audit_p)
    from verisplit.impl.cli.lead_cmd import api_limits

    api_limits(parse_host_port(http, "--http")[0], api_keys, operator_keys, 1 << 20, 1)  # refuse before any child starts
    price_list = provider_prices(prices, num_providers)
    checkpoint = _checkpoint(checkpoint, random_model)
    try:
        config = ModelConfig.from_dir(checkpoint)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(f"--checkpoint: {exc}") from None
    ranges = split_layers(config.num_hidden_layers, num_providers)
    config_file = click.get_current_context().meta.get("verisplit.config")
    common = ["--log-format", log_format] + (["-v"] if verbose else [])
    lead_args = [*common, "--shutdown-grace", str(shutdown_grace)]
    lead_args += ["--calibration", str(calibration)] if calibration is not None else []
    lead_args += ["--audit-p", audit_p] if audit_p is not None else []
    lead_args += ["--api-keys", str(api_keys)] if api_keys is not None else []
    lead_args += ["--operator-keys", str(operator_keys)] if operator_keys is not None else []
    provider_args = [*common, "--kv-budget-mb", str(kv_budget_mb), "--device", device, "--dtype", dtype,
                     "--shutdown-grace", str(shutdown_grace)]
    if config_file is not None:
        lead_args += ["--config", str(config_file)]
        provider_args += ["--config", str(config_file)]
    signal_cleanup()
    cohort = None
    with ProcessGroup(data_dir / "logs") as group:
        try:
            started = time.monotonic()
            click.echo(f"starting a lead and {num_providers} provider(s) for {checkpoint.name} "
                       f"({config.num_hidden_layers} layers); logs in {data_dir / 'logs'}", err=True)
            cohort = start_local_cohort(group, checkpoint, ranges, keys_dir=data_dir / "keys", data_dir=data_dir / "lead",
                                        prices=price_list, extra_provider_args=provider_args, timeout=start_timeout,
                                        lead_args=lead_args, lead_listen=listen, lead_http_listen=http)
            click.echo(f"cohort ready in {time.monotonic() - started:.1f}s: API {cohort['http']}/v1, registry "
                       f"{cohort['grpc']}", err=True)
            for child, info in zip(cohort["provider_children"], cohort["providers"]):
                click.echo(f"  {info['provider_id']}: layers {info['first_layer']}:{info['end_layer']} on "
                           f"{info['endpoint']}, log {child.log_path}", err=True)
            click.echo(f"  lead: log {cohort['lead'].log_path}; stop with Ctrl-C", err=True)
            _watch(group)
        except ChildFailed as exc:
            raise click.ClickException(f"a child process failed: {exc}") from None
        except KeyboardInterrupt:
            click.echo("stopping: the lead drains first, then the providers", err=True)
            _stop_all(group, cohort, shutdown_grace)


def _checkpoint(checkpoint: Path | None, random_model: bool) -> Path:
    from verisplit.impl.runtime.default_model import default_cache_dir
    from verisplit.impl.runtime.errors import CheckpointError

    if checkpoint is not None:
        return checkpoint
    try:
        if random_model:
            from verisplit.impl.runtime.checkpoint import ensure_default_checkpoint as ensure_random

            return ensure_random(default_cache_dir())
        from verisplit.impl.runtime.default_model import ensure_default_checkpoint

        return ensure_default_checkpoint(default_cache_dir(), progress=sys.stderr.isatty())
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(f"default model: {exc}") from None


def _watch(group: object) -> None:
    """Block until a child exits (an error) or the user interrupts (KeyboardInterrupt)."""
    from verisplit.impl.node.procs import ChildFailed

    while True:
        for child in group.children:  # type: ignore[attr-defined]
            if not child.alive():
                raise ChildFailed(f"{child.name} exited with code {child.process.returncode}; log "
                                  f"{child.log_path}:\n{child.log_tail()}")
        time.sleep(0.5)


def _stop_all(group: object, cohort: dict | None, grace: float) -> None:
    if cohort is not None:
        group.stop(cohort["lead"], timeout=grace + 15)  # type: ignore[attr-defined]
        for child in cohort["provider_children"]:
            group.stop(child, timeout=grace + 5)  # type: ignore[attr-defined]
    group.close()  # type: ignore[attr-defined]


apply_envvars(serve_local_command, "VERISPLIT_SERVE_LOCAL")
