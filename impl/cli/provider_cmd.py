"""``verisplit provider serve``: serve one layer range of a checkpoint to a lead.

Every user error (used port, bad key file, bad layer range, unreachable checkpoint, refused offer)
ends with one ``Error: ...`` line and exit 1 (usage errors: exit 2), never a traceback. Settings come
from flags, ``VERISPLIT_PROVIDER_SERVE_*`` variables or the ``[provider]`` table of ``--config``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from verisplit.impl.cli.config import (apply_envvars, config_option, device_option, dtype_option, log_options,
                                       runtime_device, runtime_dtype)
from verisplit.impl.records.keys import KeyFileError, fingerprint, load_key_file

DEFAULT_LEAD = "127.0.0.1:7000"
DEFAULT_LEAD_HTTP = "http://127.0.0.1:8000"


def parse_layers(value: str) -> tuple[int, int] | int:
    """``A:B`` -> (A, B); ``auto`` -> 0; ``auto:N`` -> N (the length to choose)."""
    from verisplit.impl.node.placement import PlacementError, parse_auto

    try:
        auto = parse_auto(value)
    except PlacementError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--layers") from None
    if auto is not None:
        return auto
    first, sep, end = value.partition(":")
    if not sep or not first.strip().isdigit() or not end.strip().isdigit():
        raise click.BadParameter(f"{value!r} is not A:B (layers A..B-1, e.g. 0:4), auto or auto:N",
                                 param_hint="--layers")
    a, b = int(first), int(end)
    if b <= a:
        raise click.BadParameter(f"{value!r}: B must be greater than A", param_hint="--layers")
    return a, b


def _behaviour() -> Any:
    """The provider's behaviour: honest, unless Python code that invoked this command in-process put
    another ``Behaviour`` in the click context object (the test-only cheat launcher in
    ``tests/cheatkit`` does; no command-line option or environment variable can)."""
    from verisplit.impl.node.behaviour import Behaviour

    obj = click.get_current_context().obj
    return obj if isinstance(obj, Behaviour) else Behaviour()


@click.group("provider")
def provider_group() -> None:
    """Run a provider that serves one layer range."""


@provider_group.command("serve")
@config_option("provider")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Hugging Face checkpoint folder (the same model as the lead's).")
@click.option("--layers", "layers", required=True,
              help="Layers to serve: A:B (A..B-1), or auto / auto:N to take the range the lead's registry most "
                   "needs (least covered, then cheapest to fill; reads --lead-http).")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="This provider's identity: a key file from `verisplit keygen`.")
@click.option("--listen", default="127.0.0.1:0", show_default=True,
              help="HOST:PORT for the Provider gRPC service (port 0: any free port). Never shared with another process.")
@click.option("--lead", default=DEFAULT_LEAD, show_default=True,
              help="The lead's registry: HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT.")
@click.option("--lead-http", default=DEFAULT_LEAD_HTTP, show_default=True,
              help="The lead's HTTP API, read by --layers auto (GET /v1/providers).")
@click.option("--price", default=1, show_default=True, type=click.IntRange(min=0), help="Price per work unit.")
@click.option("--kv-budget-mb", default=256.0, show_default=True, type=click.FloatRange(min=0.0),
              help="KV-cache memory for all sessions together; beyond it OpenSession answers RESOURCE_EXHAUSTED.")
@device_option()
@dtype_option()
@click.option("--provider-id", default=None, help="Provider id [default: p- and the key fingerprint].")
@click.option("--advertise", default=None, help="HOST:PORT the lead should dial [default: the bound listen address].")
@click.option("--metrics", default=None,
              help="HOST:PORT for a Prometheus /metrics listener (e.g. 127.0.0.1:9101) [default: none].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Private key (PEM) for --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CA (PEM) to verify the lead's registry over TLS.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch intra-op threads [default: torch's choice].")
@click.option("--shutdown-grace", default=10.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds open sessions may run on after SIGINT/SIGTERM (a second signal stops at once).")
@click.option("--max-sessions", default=64, show_default=True, type=click.IntRange(min=1),
              help="Concurrent sessions held for the lead (more: RESOURCE_EXHAUSTED).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)
@log_options
def provider_serve(checkpoint: Path, layers: str, key_path: Path, listen: str, lead: str, lead_http: str, price: int,
                   kv_budget_mb: float, device: str, dtype: str, provider_id: str | None, advertise: str | None,
                   metrics: str | None, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
                   threads: int | None, shutdown_grace: float, max_sessions: int, ready_file: Path | None,
                   log_format: str, verbose: bool) -> None:
    """Load layers A:B (or an automatic range) of CHECKPOINT, register a signed offer with the lead and
    serve sessions until SIGINT/SIGTERM."""
    from verisplit.impl.node.framing import parse_endpoint, parse_host_port
    from verisplit.impl.node.ops import setup_logging
    from verisplit.impl.node.provider_run import ProviderSettings

    setup_logging(log_format, verbose)
    chosen = parse_layers(layers)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    try:
        parse_host_port(listen, "--listen")
        parse_endpoint(lead)
        if advertise:
            parse_endpoint(advertise)
        if metrics:
            parse_host_port(metrics, "--metrics")
        key = load_key_file(key_path)
    except (ValueError, KeyFileError) as exc:
        raise click.ClickException(str(exc)) from None
    behaviour = _behaviour()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    pid = provider_id or f"p-{fingerprint(bytes(key.verify_key)).split(':')[1][:12]}"
    first, end = chosen if isinstance(chosen, tuple) else (None, None)
    settings = ProviderSettings(checkpoint=checkpoint, first_layer=first, end_layer=end, key=key, listen=listen, lead=lead,
                                provider_id=pid, price=price, kv_budget_mb=kv_budget_mb, device=runtime_device(device),
                                dtype=runtime_dtype(dtype), advertise=advertise, tls_cert=tls_cert, tls_key=tls_key,
                                tls_ca=tls_ca, behaviour=behaviour, ready_file=ready_file,
                                auto_length=None if isinstance(chosen, tuple) else chosen, lead_http=lead_http,
                                metrics=metrics, shutdown_grace_s=shutdown_grace, max_sessions=max_sessions,
                                counter_file=key_path.with_name(key_path.name + ".counter"))
    run_provider(settings)


def run_provider(settings: Any) -> None:
    """Run ``serve_provider`` until a signal; every expected failure becomes a ClickException."""
    from verisplit.impl.node.placement import PlacementError
    from verisplit.impl.node.ports import BindError, install_stop
    from verisplit.impl.node.provider_run import serve_provider
    from verisplit.impl.runtime.errors import CheckpointError, DeviceUnavailableError, SegmentInputError

    async def main() -> None:
        stop, hard = asyncio.Event(), asyncio.Event()
        install_stop(stop, hard)
        await serve_provider(settings, stop, hard)

    try:
        asyncio.run(main())
    except BindError as exc:
        raise click.ClickException(str(exc)) from None
    except (CheckpointError, SegmentInputError, DeviceUnavailableError, PlacementError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"provider {settings.provider_id}: {exc}") from None


apply_envvars(provider_group, "VERISPLIT_PROVIDER")
