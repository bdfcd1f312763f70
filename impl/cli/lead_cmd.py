"""``verisplit lead serve``: registry (gRPC), router, relay, audits, settlement and the HTTP API.

Both ports are bound before anything is written: a used port exits 1 naming the address and leaves
the data folder untouched. Settings come from flags, ``VERISPLIT_LEAD_SERVE_*`` variables or the
``[lead]`` table of ``--config``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from verisplit.impl.cli.config import apply_envvars, check_calibration, config_option, log_options
from verisplit.impl.records.keys import KeyFileError, create_key_file, fingerprint, load_key_file

log = logging.getLogger("verisplit.lead")


@click.group("lead")
def lead_group() -> None:
    """Run the lead: registry, router, relay and HTTP API."""


@lead_group.command("serve")
@config_option("lead")
@click.option("--listen", default="127.0.0.1:7000", show_default=True,
              help="HOST:PORT for the Registry gRPC service (providers register here).")
@click.option("--http", "http", default="127.0.0.1:8000", show_default=True,
              help="HOST:PORT for the OpenAI-compatible HTTP API, /healthz, /readyz and /metrics.")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint folder for the config, tokenizer and model id (the lead runs no layers itself; "
                   "audits re-execute from it).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where request records (every boundary tensor of the last --retention requests), the lead key "
                   "and the ledger are kept.")
@click.option("--retention", default=1000, show_default=True, type=click.IntRange(min=1), help="Requests kept on disk.")
@click.option("--heartbeat-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between provider heartbeats.")
@click.option("--offer-ttl", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Offers unheard for this long are dropped.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Serve the registry over TLS (PEM certificate).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Private key (PEM) for --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="CA (PEM): dial providers over TLS, verifying against it.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Settlement ledger (SQLite) [default: DATA_DIR/ledger.db].")
@click.option("--lead-key", "lead_key_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Key file signing ledger records [default: DATA_DIR/lead.key, created with mode 0600 if absent].")
@click.option("--audit-p", "audit_p", default=None,
              help="Audit probability per (request, segment), e.g. 1/10 [default: 1/10 with --calibration; 0 without]. "
                   "0 disables audits; settlement and the ledger still run.")
@click.option("--audit-seed-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Audit seed (hex, e.g. from `verisplit verifier seed`) [default: a fresh random seed].")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Tolerance file from `verisplit calibrate` for this model; required for audits (no guessed tolerance).")
@click.option("--no-audit", is_flag=True, help="Disable audits (same as --audit-p 0).")
@click.option("--probation-requests", default=None, type=click.IntRange(min=0),
              help="A new key's segments are audited at p = 1 for its first N served requests (rule P1) "
                   "[default: 20 when auditing].")
@click.option("--escrow-window", default=None, type=click.IntRange(min=0),
              help="Payouts vest only after the key serves N later requests; ejection forfeits the unvested "
                   "(rule E1) [default: 10 when auditing].")
@click.option("--allow-undeterred", is_flag=True,
              help="Start even when p, probation and escrow do not deter cheating (for measurements such as "
                   "bench/franchise.py's baseline; logged as a warning).")
@click.option("--shutdown-grace", default=10.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds in-flight requests may run on after SIGINT/SIGTERM before they are cut at their next "
                   "token (a second signal cuts at once).")
@click.option("--api-keys", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Client API keys, one per line (Authorization: Bearer KEY); required, with or instead of "
                   "--operator-keys, when --http is not a loopback address.")
@click.option("--operator-keys", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Operator keys, one per line: the only keys that reach /v1/providers, /v1/audit and /metrics.")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=click.IntRange(min=1024),
              help="Largest HTTP request body accepted (413 beyond).")
@click.option("--max-concurrent", default=16, show_default=True, type=click.IntRange(min=1),
              help="Completion requests in flight per API key (per client address without keys); 429 beyond.")
@click.option("--retention-bytes", default=2 << 30, show_default=True, type=click.IntRange(min=1 << 16),
              help="Bytes of request records kept on disk (and about as much in memory); the oldest go first.")
@click.option("--keep-tensors", is_flag=True,
              help="Keep every boundary tensor of a record after its audits (default: digests only once audited).")
@click.option("--admission", type=click.Choice(["open", "allowlist"]), default="open", show_default=True,
              help="Who may register: open (any key; new keys are on probation, earnings in escrow) or allowlist "
                   "(only the keys in --allowlist). Either way offers are bound to this lead, single-use and "
                   "routable only after the provider's endpoint proved it holds the key.")
@click.option("--allowlist", "allowlist_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="With --admission allowlist: provider public keys, hex, one per line (# comments).")
@click.option("--demote-after", default=3, show_default=True, type=click.IntRange(min=1),
              help="Outages within 10 minutes after which a provider is left out of routing while others cover "
                   "its layers (a demotion, not an ejection: nobody is blamed).")
@click.option("--speculative", default=0, show_default=True, type=click.IntRange(min=0, max=16),
              help="Speculative decoding: draft up to K tokens by prompt lookup and verify them in one traversal "
                   "of the cohort (0: off; greedy output unchanged up to fp drift, see docs/BENCHMARKS.md).")
@click.option("--direct", is_flag=True,
              help="Direct data path: providers forward boundary tensors to each other (K+1 trips per token instead "
                   "of 2K); the lead still checks every link before a token is released (docs/protocol.md).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)
@log_options
def lead_serve(listen: str, http: str, checkpoint: Path, data_dir: Path, retention: int, heartbeat_interval: float,
               offer_ttl: float, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
               ledger_path: Path | None, lead_key_path: Path | None, audit_p: str | None, audit_seed_file: Path | None,
               calibration: Path | None, no_audit: bool, probation_requests: int | None, escrow_window: int | None,
               allow_undeterred: bool, shutdown_grace: float, api_keys: Path | None, operator_keys: Path | None,
               max_body_bytes: int, max_concurrent: int, retention_bytes: int, keep_tensors: bool,
               admission: str, allowlist_path: Path | None, demote_after: int, speculative: int, direct: bool,
               ready_file: Path | None, log_format: str, verbose: bool) -> None:
    """Serve the registry (gRPC) and the HTTP API; route and relay every request through a cohort;
    audit, settle and record every finished request (see docs/protocol.md, "Lead auditing")."""
    from verisplit.impl.node.framing import parse_host_port
    from verisplit.impl.node.lead_run import LeadServeSettings, serve_lead
    from verisplit.impl.node.ops import setup_logging
    from verisplit.impl.node.ports import BindError
    from verisplit.impl.runtime.config import ModelConfig
    from verisplit.impl.runtime.errors import CheckpointError

    setup_logging(log_format, verbose)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    try:
        parse_host_port(listen, "--listen")
        http_host, http_port = parse_host_port(http, "--http")
        config = ModelConfig.from_dir(checkpoint)
    except (ValueError, CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    limits = api_limits(http_host, api_keys, operator_keys, max_body_bytes, max_concurrent)
    settings = AuditSettings(ledger=ledger_path or data_dir / "ledger.db", lead_key=lead_key_path or data_dir / "lead.key",
                             audit_p=audit_p, seed_file=audit_seed_file, calibration=calibration, no_audit=no_audit,
                             probation_requests=probation_requests, escrow_window=escrow_window,
                             allow_undeterred=allow_undeterred)
    from verisplit.impl.node.admission import AdmissionPolicy, load_allowlist

    if (admission == "allowlist") != (allowlist_path is not None):
        raise click.BadParameter("--admission allowlist and --allowlist FILE go together", param_hint="--allowlist")
    try:
        policy = AdmissionPolicy(allowlist=load_allowlist(allowlist_path) if allowlist_path is not None else None,
                                 demote_after=demote_after)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"--allowlist: {exc}") from None
    model_id = config.name_or_path or checkpoint.resolve().name
    plan = audit_plan(settings, model_id)  # every check that reads only, before any port or file

    def build() -> Any:
        from verisplit.impl.node.lead import Lead

        try:
            lead = Lead(checkpoint, data_dir, retention=retention, tls_ca=tls_ca, heartbeat_interval_s=heartbeat_interval,
                        offer_ttl_s=offer_ttl, admission=policy, speculative=speculative, direct=direct)
            lead.configure_retention(retention_bytes, keep_tensors)
        except (ValueError, CheckpointError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        attach_audit_service(lead, checkpoint, settings, plan)
        return lead

    serve = LeadServeSettings(listen=listen, http_host=http_host, http_port=http_port, tls_cert=tls_cert,
                              tls_key=tls_key, ready_file=ready_file, grace_s=shutdown_grace, api=limits)
    try:
        asyncio.run(serve_lead(serve, build))
    except BindError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"lead: {exc}") from None


def api_limits(http_host: str, api_keys: Path | None, operator_keys: Path | None, max_body_bytes: int,
               max_concurrent: int) -> Any:
    """The HTTP API's ``ApiLimits`` from the flags; refuses (ClickException) a non-loopback ``--http``
    without keys and any malformed key file."""
    from verisplit.impl.node.api_auth import ApiKeys, KeyFileError, check_exposure
    from verisplit.impl.node.api_limits import ApiLimits

    try:
        keys = ApiKeys.from_files(api_keys, operator_keys)
        check_exposure(http_host, keys)
    except (KeyFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return ApiLimits(keys, max_body_bytes, max_concurrent)


@dataclass(frozen=True)
class AuditSettings:
    """The lead's auditing flags (see ``lead serve --help``)."""

    ledger: Path
    lead_key: Path
    audit_p: str | None = None
    seed_file: Path | None = None
    calibration: Path | None = None
    no_audit: bool = False
    probation_requests: int | None = None
    escrow_window: int | None = None
    allow_undeterred: bool = False


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


@dataclass(frozen=True)
class AuditPlan:
    """What ``audit_plan`` decided from the flags and files (nothing created yet)."""

    p: Fraction
    tolerance: Any
    seed: bytes | None
    probation_requests: int = 0
    escrow_window: int = 0


def audit_plan(settings: AuditSettings, model_id: str | None = None) -> AuditPlan:
    """Check the auditing flags and read the calibration and seed (read-only).

    Rules: audits need a calibrated tolerance, so ``--audit-p`` > 0 without ``--calibration`` is an
    error, and with neither flag auditing is off (logged as a warning); a calibration measured for
    another model is refused."""
    from verisplit.spec.audit import Tolerance

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
        if model_id is not None:
            tolerance = check_calibration(settings.calibration, model_id)
        else:
            from verisplit.impl.audit.calibrate import CalibrationError, load_tolerance

            try:
                tolerance = load_tolerance(settings.calibration)
            except CalibrationError as exc:
                raise click.ClickException(f"--calibration: {exc}") from None
    else:
        tolerance = Tolerance("none", 0.0, 0.0)  # never used: no segment is selected at p = 0
    seed = read_seed_file(settings.seed_file) if settings.seed_file is not None else None
    probation, window = franchise_terms(settings, p)
    return AuditPlan(p, tolerance, seed, probation, window)


def franchise_terms(settings: AuditSettings, p: Fraction) -> tuple[int, int]:
    """Probation and escrow window for ``p`` (defaults when auditing, 0 without audits), refused with the
    numbers when they do not deter every cheat kind of the spec's cost model (``check_deterrence_config``)."""
    from verisplit.impl.audit.franchise import DeterrenceError, check_startup, describe
    from verisplit.spec.escrow import DEFAULT_ESCROW_WINDOW, DEFAULT_PROBATION_REQUESTS

    if p == 0:
        if settings.probation_requests or settings.escrow_window:
            log.warning("franchise: --probation-requests/--escrow-window have no effect without audits")
        return 0, 0
    probation = DEFAULT_PROBATION_REQUESTS if settings.probation_requests is None else settings.probation_requests
    window = DEFAULT_ESCROW_WINDOW if settings.escrow_window is None else settings.escrow_window
    try:
        report = check_startup(p, probation, window)
    except DeterrenceError as exc:
        if not settings.allow_undeterred:
            raise click.ClickException(f"this configuration does not deter cheating: {exc}") from None
        log.warning("franchise: --allow-undeterred: %s", exc)
        return probation, window
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--escrow-window") from None
    log.info(describe(report))
    return probation, window


def attach_audit_service(lead: Any, checkpoint: Path, settings: AuditSettings, plan: AuditPlan | None = None) -> Any:
    """Build the ``AuditService`` for ``lead`` from ``settings`` and attach it; returns it. Settlement
    and the signed ledger run in every case. The lead key is loaded, or created (mode 0600) when absent."""
    from verisplit.impl.audit.service import AuditService

    plan = plan or audit_plan(settings, lead.model_id)
    if settings.calibration is None and not settings.no_audit and settings.audit_p is None:
        log.warning("AUDITS DISABLED: no --calibration file was given (a tolerance is never guessed); "
                    "settlement and the ledger still run. Run `verisplit calibrate` and pass --calibration.")
    try:
        if settings.lead_key.exists():
            key = load_key_file(settings.lead_key)
        else:
            settings.lead_key.parent.mkdir(parents=True, exist_ok=True)
            key = create_key_file(settings.lead_key)
            log.info("created lead key %s (%s)", settings.lead_key, fingerprint(bytes(key.verify_key)))
    except (KeyFileError, OSError) as exc:
        raise click.ClickException(f"--lead-key: {exc}") from None
    try:
        settings.ledger.parent.mkdir(parents=True, exist_ok=True)
        service = AuditService(checkpoint, settings.ledger, key, plan.p, plan.seed, plan.tolerance, lead.registry.eject,
                               lead_id=f"lead-{fingerprint(bytes(key.verify_key)).split(':')[1][:12]}",
                               ban_key=lead.registry.ban_key, probation_requests=plan.probation_requests,
                               escrow_window=plan.escrow_window)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"--ledger: {exc}") from None
    lead.use_session_key(key)  # one lead identity: it signs session openings and the ledger
    lead.attach_audit(service)
    p = plan.p
    log.info("audit: p = %s, per-request seeds (committed in each session opening), ledger %s, lead key %s",
             f"{p.numerator}/{p.denominator}", settings.ledger, fingerprint(bytes(key.verify_key)))
    return service


apply_envvars(lead_group, "VERISPLIT_LEAD")
