"""CLI of the networked roles: ``verisplit keygen``, ``verisplit provider serve``, ``verisplit lead serve``.

Every user error (bad key file, bad layer range, unreachable checkpoint, refused offer) ends with a
one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from verisplit.impl.records.keys import KeyFileError, create_key_file, fingerprint, load_key_file


@click.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Key file to create (mode 0600; never overwritten).")
def keygen_command(out: Path) -> None:
    """Create an Ed25519 identity file (mode 0600)."""
    try:
        key = create_key_file(out)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out} (public key {bytes(key.verify_key).hex()}, {fingerprint(bytes(key.verify_key))})")


def _layers(value: str) -> tuple[int, int]:
    first, sep, end = value.partition(":")
    if not sep or not first.strip().isdigit() or not end.strip().isdigit():
        raise click.BadParameter(f"{value!r} is not A:B (layers A..B-1, e.g. 0:4)", param_hint="--layers")
    a, b = int(first), int(end)
    if b <= a:
        raise click.BadParameter(f"{value!r}: B must be greater than A", param_hint="--layers")
    return a, b


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("verisplit").setLevel(logging.INFO)


def _behaviour() -> Any:
    """The provider's behaviour: honest, unless Python code that invoked this command in-process put
    another ``Behaviour`` in the click context object (the test-only cheat launcher in
    ``tests/cheatkit`` does; no command-line option or environment variable can)."""
    from verisplit.impl.node.behaviour import Behaviour

    obj = click.get_current_context().obj
    return obj if isinstance(obj, Behaviour) else Behaviour()


def _install_stop(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


@click.group("provider")
def provider_group() -> None:
    """Run a provider that serves one layer range."""


@provider_group.command("serve")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path), help="HF checkpoint folder.")
@click.option("--layers", "layers", required=True, help="Layer range A:B (A..B-1) to load and serve.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Key file from `verisplit keygen`.")
@click.option("--listen", required=True, help="HOST:PORT for the Provider gRPC service (port 0: any free port).")
@click.option("--lead", required=True, help="The lead's registry: HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT.")
@click.option("--price", default=1, show_default=True, type=click.IntRange(min=0), help="Price per work unit.")
@click.option("--kv-budget-mb", default=256.0, show_default=True, type=click.FloatRange(min=0.0),
              help="KV-cache memory for all sessions together; beyond it OpenSession answers RESOURCE_EXHAUSTED.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if available).")
@click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp32 on CPU, checkpoint dtype on CUDA).")
@click.option("--provider-id", default=None, help="Provider id (default: derived from the key fingerprint).")
@click.option("--advertise", default=None, help="HOST:PORT the lead should dial (default: the bound listen address).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help="Private key (PEM) for --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help="CA (PEM) to verify the lead's registry over TLS.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch intra-op threads (default: torch's choice).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def provider_serve(checkpoint: Path, layers: str, key_path: Path, listen: str, lead: str, price: int, kv_budget_mb: float,
                   device: str | None, dtype: str | None, provider_id: str | None, advertise: str | None,
                   tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, threads: int | None,
                   ready_file: Path | None, verbose: bool) -> None:
    """Load layers A:B of CHECKPOINT, register a signed offer with the lead and serve sessions."""
    from verisplit.impl.runtime.errors import CheckpointError, DeviceUnavailableError, SegmentInputError
    from verisplit.impl.node.framing import parse_endpoint, parse_host_port
    from verisplit.impl.node.provider_run import ProviderSettings, serve_provider

    _logging(verbose)
    first, end = _layers(layers)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    try:
        parse_host_port(listen, "--listen")
        parse_endpoint(lead)
        if advertise:
            parse_endpoint(advertise)
        key = load_key_file(key_path)
    except (ValueError, KeyFileError) as exc:
        raise click.ClickException(str(exc)) from None
    behaviour = _behaviour()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    pid = provider_id or f"p-{fingerprint(bytes(key.verify_key)).split(':')[1][:12]}"
    settings = ProviderSettings(checkpoint=checkpoint, first_layer=first, end_layer=end, key=key, listen=listen, lead=lead,
                                provider_id=pid, price=price, kv_budget_mb=kv_budget_mb, device=device, dtype=dtype,
                                advertise=advertise, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                behaviour=behaviour, ready_file=ready_file)

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(asyncio.get_running_loop(), stop)
        await serve_provider(settings, stop)

    try:
        asyncio.run(main())
    except (CheckpointError, SegmentInputError, DeviceUnavailableError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"provider {pid}: {exc}") from None


@click.group("lead")
def lead_group() -> None:
    """Run the lead: registry, router, relay and HTTP API."""


@lead_group.command("serve")
@click.option("--listen", required=True, help="HOST:PORT for the Registry gRPC service (providers register here).")
@click.option("--http", "http", required=True, help="HOST:PORT for the OpenAI-compatible HTTP API.")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint folder for the config, tokenizer and model id (the lead runs no layers).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where request records are kept.")
@click.option("--retention", default=1000, show_default=True, type=click.IntRange(min=1), help="Requests kept on disk.")
@click.option("--heartbeat-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05), help="Seconds between provider heartbeats.")
@click.option("--offer-ttl", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Offers unheard for this long are dropped.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help="Serve the registry over TLS (PEM certificate).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help="Private key (PEM) for --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None, help="CA (PEM): dial providers over TLS, verifying against it.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Settlement ledger (SQLite) [default: DATA_DIR/ledger.db].")
@click.option("--lead-key", "lead_key_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Ed25519 key signing ledger records [default: DATA_DIR/lead.key, created with mode 0600 if absent].")
@click.option("--audit-p", "audit_p", default=None,
              help="Audit probability per (request, segment), e.g. 1/10 [default: 1/10 with --calibration; 0 without]. "
                   "0 disables audits; settlement and the ledger still run.")
@click.option("--audit-seed-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Audit seed (hex, e.g. from `verisplit verifier seed`) [default: a fresh random seed].")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Tolerance file from `verisplit calibrate`; required for audits (no guessed tolerance).")
@click.option("--no-audit", is_flag=True, help="Disable audits (same as --audit-p 0).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def lead_serve(listen: str, http: str, checkpoint: Path, data_dir: Path, retention: int, heartbeat_interval: float,
               offer_ttl: float, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
               ledger_path: Path | None, lead_key_path: Path | None, audit_p: str | None, audit_seed_file: Path | None,
               calibration: Path | None, no_audit: bool, ready_file: Path | None, verbose: bool) -> None:
    """Serve the registry (gRPC) and the HTTP API; route and relay every request through a cohort;
    audit, settle and record every finished request (see docs/protocol.md, "Lead auditing")."""
    from verisplit.impl.runtime.errors import CheckpointError
    from verisplit.impl.node.framing import parse_host_port
    from verisplit.impl.node.lead import Lead

    _logging(verbose)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    try:
        parse_host_port(listen, "--listen")
        http_host, http_port = parse_host_port(http, "--http")
        lead = Lead(checkpoint, data_dir, retention=retention, tls_ca=tls_ca, heartbeat_interval_s=heartbeat_interval,
                    offer_ttl_s=offer_ttl)
    except (ValueError, CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    settings = AuditSettings(ledger=ledger_path or data_dir / "ledger.db", lead_key=lead_key_path or data_dir / "lead.key",
                             audit_p=audit_p, seed_file=audit_seed_file, calibration=calibration, no_audit=no_audit)
    attach_audit_service(lead, checkpoint, settings)
    try:
        asyncio.run(run_lead(lead, listen, http_host, http_port, tls_cert, tls_key, ready_file))
    except OSError as exc:
        raise click.ClickException(f"lead: {exc}") from None


@dataclass(frozen=True)
class AuditSettings:
    """The lead's auditing flags (see ``lead serve --help``)."""

    ledger: Path
    lead_key: Path
    audit_p: str | None = None
    seed_file: Path | None = None
    calibration: Path | None = None
    no_audit: bool = False


def parse_fraction(text: str, param_hint: str = "--audit-p") -> Fraction:
    """``"1/10"``, ``"0.25"`` or ``"0"`` as a Fraction in [0, 1]; anything else is a BadParameter."""
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"{text!r} is not a fraction such as 1/10 or 0.1", param_hint=param_hint) from None
    if not 0 <= value <= 1:
        raise click.BadParameter(f"{text!r} must lie in [0, 1]", param_hint=param_hint)
    return value


def read_seed_file(path: Path) -> bytes:
    """The hex seed in ``path`` (at least 16 bytes), or a ClickException naming the problem."""
    try:
        seed = bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.ClickException(f"--audit-seed-file: {path} does not hold a hex seed ({exc})") from None
    if len(seed) < 16:
        raise click.ClickException(f"--audit-seed-file: {path} holds {len(seed)} bytes; at least 16 are needed")
    return seed


def attach_audit_service(lead: Any, checkpoint: Path, settings: AuditSettings) -> Any:
    """Build the ``AuditService`` for ``lead`` from ``settings`` and attach it; returns it.

    Rules: audits need a calibrated tolerance, so ``--audit-p`` > 0 without ``--calibration`` is an
    error, and with neither flag auditing is off (logged as a warning); settlement and the signed
    ledger run in every case. The lead key is loaded, or created (mode 0600) when absent.
    """
    from verisplit.impl.audit.service import AuditService
    from verisplit.impl.audit.calibrate import CalibrationError, load_tolerance
    from verisplit.spec.audit import Tolerance

    log = logging.getLogger("verisplit.lead")
    if settings.no_audit:
        p = Fraction(0)
    elif settings.audit_p is not None:
        p = parse_fraction(settings.audit_p)
    else:
        p = Fraction(1, 10) if settings.calibration is not None else Fraction(0)
    if p > 0 and settings.calibration is None:
        raise click.BadParameter("auditing needs a calibrated tolerance: pass --calibration FILE (from `verisplit "
                                 "calibrate`) or --no-audit", param_hint="--calibration")
    if settings.calibration is not None and p > 0:
        try:
            tolerance = load_tolerance(settings.calibration)
        except CalibrationError as exc:
            raise click.ClickException(f"--calibration: {exc}") from None
    else:
        tolerance = Tolerance("none", 0.0, 0.0)  # never used: no segment is selected at p = 0
        if settings.calibration is None and not settings.no_audit and settings.audit_p is None:
            log.warning("AUDITS DISABLED: no --calibration file was given (a tolerance is never guessed); "
                        "settlement and the ledger still run. Run `verisplit calibrate` and pass --calibration.")
    try:
        if settings.lead_key.exists():
            key = load_key_file(settings.lead_key)
        else:
            settings.lead_key.parent.mkdir(parents=True, exist_ok=True)
            key = create_key_file(settings.lead_key)
            log.warning("created lead key %s (%s)", settings.lead_key, fingerprint(bytes(key.verify_key)))
    except (KeyFileError, OSError) as exc:
        raise click.ClickException(f"--lead-key: {exc}") from None
    seed = read_seed_file(settings.seed_file) if settings.seed_file is not None else None
    try:
        settings.ledger.parent.mkdir(parents=True, exist_ok=True)
        service = AuditService(checkpoint, settings.ledger, key, p, seed, tolerance, lead.registry.eject,
                               lead_id=f"lead-{fingerprint(bytes(key.verify_key)).split(':')[1][:12]}",
                               ban_key=lead.registry.ban_key)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"--ledger: {exc}") from None
    lead.use_session_key(key)  # one lead identity: it signs session openings and the ledger
    lead.attach_audit(service)
    log.warning("audit: p = %s, per-request seeds (committed in each session opening), ledger %s, lead key %s",
                f"{p.numerator}/{p.denominator}", settings.ledger, fingerprint(bytes(key.verify_key)))
    return service


async def run_lead(lead: Any, listen: str, http_host: str, http_port: int, tls_cert: Path | None, tls_key: Path | None,
                   ready_file: Path | None, stop: asyncio.Event | None = None) -> None:
    """Run the registry server and the HTTP API on this event loop until ``stop`` (or a signal)."""
    import grpc
    import uvicorn

    from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
    from verisplit.impl.node.api import create_app
    from verisplit.impl.node.framing import add_service, grpc_options
    from verisplit.impl.node.registry import RegistryService
    from verisplit.impl.node.framing import server_credentials

    stop = stop or asyncio.Event()
    _install_stop(asyncio.get_running_loop(), stop)
    server = grpc.aio.server(options=grpc_options())
    add_service(pb_grpc.add_RegistryServicer_to_server, RegistryService(lead.registry), server)
    if tls_cert is not None and tls_key is not None:
        port = server.add_secure_port(listen, server_credentials(tls_cert, tls_key))
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"--listen: could not bind {listen}")
    await server.start()
    sock = socket.socket(socket.AF_INET6 if ":" in http_host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((http_host, http_port))
    config = uvicorn.Config(create_app(lead), log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    http_server = _QuietServer(config)
    serve_task = asyncio.create_task(http_server.serve(sockets=[sock]))
    while not http_server.started:
        if serve_task.done():
            await serve_task
            raise OSError("--http: the HTTP server stopped during startup")
        await asyncio.sleep(0.02)
    bound = sock.getsockname()[1]
    host = listen.rpartition(":")[0]
    logging.getLogger("verisplit.lead").info("lead for %s: registry %s, HTTP http://%s:%d", lead.model_id, listen,
                                             http_host, bound)
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"grpc": f"{host}:{port}", "http": f"http://{http_host}:{bound}"}), encoding="utf-8")
        os.replace(tmp, ready_file)
    try:
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({serve_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        http_server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve_task, timeout=5)
        await server.stop(grace=1.0)
        await lead.close()


try:
    import uvicorn as _uvicorn

    class _QuietServer(_uvicorn.Server):
        """uvicorn server that leaves signal handling to us (one stop event for both servers)."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

        def install_signal_handlers(self) -> None:
            return None
except ImportError:  # pragma: no cover - the net extra is missing; lead serve reports it
    _QuietServer = None  # type: ignore[assignment,misc]
