"""CLI of the networked roles: ``verisplit keygen`` here; ``provider serve`` (``provider_cmd``),
``lead serve`` (``lead_cmd``) and ``serve-local`` (``local_cmd``) in their own modules.

This module keeps the names other code imports from it (``provider_serve``, ``run_lead``,
``attach_audit_service``, ``parse_fraction``...). Every user error ends with one ``Error: ...`` line
and exit 1 (usage errors exit 2), never a traceback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from verisplit.impl.cli.config import apply_envvars
from verisplit.impl.cli.lead_cmd import (AuditPlan, AuditSettings, attach_audit_service, audit_plan, lead_group,
                                         lead_serve, parse_fraction, read_seed_file)
from verisplit.impl.cli.provider_cmd import parse_layers, provider_group, provider_serve
from verisplit.impl.records.keys import KeyFileError, create_key_file, fingerprint

__all__ = ["AuditPlan", "AuditSettings", "attach_audit_service", "audit_plan", "keygen_command", "lead_group",
           "lead_serve", "parse_fraction", "parse_layers", "provider_group", "provider_serve", "read_seed_file",
           "run_lead"]


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


apply_envvars(keygen_command, "VERISPLIT_KEYGEN")


async def run_lead(lead: Any, listen: str, http_host: str, http_port: int, tls_cert: Path | None, tls_key: Path | None,
                   ready_file: Path | None, stop: asyncio.Event | None = None) -> None:
    """Serve an already built ``lead`` on this event loop until ``stop`` (or a signal); see
    ``verisplit.impl.node.lead_run.serve_lead`` (which binds before building, as ``lead serve`` does)."""
    from verisplit.impl.node.lead_run import LeadServeSettings, serve_lead

    settings = LeadServeSettings(listen=listen, http_host=http_host, http_port=http_port, tls_cert=tls_cert,
                                 tls_key=tls_key, ready_file=ready_file)
    await serve_lead(settings, lambda: lead, stop)
