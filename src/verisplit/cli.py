"""The one console command, ``verisplit``, with lazily imported subcommands.

Each subcommand lives in the module that owns its job; this file only maps names to
``module:attribute`` so that ``verisplit prove`` or ``verisplit spec`` never imports torch.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, one-line help shown by `verisplit --help`)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "spec": ("verisplit.spec.cli", "spec_group", "Executable-spec helpers: form cohorts, settle fees, check chains."),
    "prove": ("verisplit.proofs_z3.runner", "prove_command", "Run every Z3 check and mutant; exit non-zero on any failure."),
    "model": ("verisplit.impl.cli.model", "model_group", "Model checkpoints: make seeded random HF checkpoints, inspect."),
    "keygen": ("verisplit.impl.cli.net", "keygen_command", "Create an Ed25519 identity file (mode 0600)."),
    "provider": ("verisplit.impl.cli.provider_cmd", "provider_group", "Run a provider that serves one layer range."),
    "lead": ("verisplit.impl.cli.lead_cmd", "lead_group", "Run the lead: registry, router, relay and HTTP API."),
    "serve-local": ("verisplit.impl.cli.local_cmd", "serve_local_command",
                    "Start a lead and K providers on this machine in one go (logs per process)."),
    "demo": ("verisplit.impl.cli.demo", "demo_command", "Run a local 4-provider cohort on the embedded default model."),
    "verifier": ("verisplit.impl.cli.verify", "verifier_group", "Run the verifier role (audits by commit-reveal)."),
    "calibrate": ("verisplit.impl.cli.verify", "calibrate_command", "Measure honest drift and store the audit tolerance."),
    "ledger": ("verisplit.impl.cli.ledger", "ledger_group", "Inspect, verify and export the signed settlement ledger."),
    "conform": ("verisplit.conformance.cli", "conform_group", "Conformance: reference impl vs spec, or an external node."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = LAZY_COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, short_help = entry
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "?"
            return _unavailable(cmd_name, short_help, f"needs the Python module '{missing}' ({exc})")
        command = getattr(module, attr)
        try:  # every option also reads VERISPLIT_<COMMAND PATH>_<OPTION> (see impl/cli/config.py)
            from verisplit.impl.cli.config import apply_envvars
        except ImportError:  # pragma: no cover - a partial installation without the impl package
            return command
        return apply_envvars(command, f"VERISPLIT_{cmd_name}".upper().replace("-", "_"))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, LAZY_COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, short_help: str, why: str) -> click.Command:
    @click.command(name=name, help=short_help, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(
            f"'verisplit {name}' is not available in this installation: {why}. "
            "Install the extras: pip install 'verisplit[all]'"
        )

    return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="verisplit")
def main() -> None:
    """verisplit: verified split inference across independent providers."""


if __name__ == "__main__":
    main()
