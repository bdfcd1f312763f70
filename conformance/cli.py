"""``verisplit conform``: reference implementation vs spec, vectors, trace replay, external nodes.

- ``verisplit conform [--profile ci|long] [--adapter impl|spec] [--traces DIR] [--device cpu|cuda]``
  runs the state machine (default: the real-process implementation, CI profile) and exits 1 on a
  divergence, printing the minimal failing trace and the command that replays it;
- ``verisplit conform vectors --check | --write``;
- ``verisplit conform replay TRACE.json [--adapter spec|impl]``;
- ``verisplit conform provider --endpoint HOST:PORT --checkpoint DIR --layers A:B``;
- ``verisplit conform lead --url URL``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from verisplit.conformance import vectors as vector_files


def _check_device(device: str | None) -> str | None:
    if device is None or device == "cpu":
        return device
    if device.startswith("cuda"):
        try:
            import torch
        except ModuleNotFoundError:
            raise click.ClickException("--device cuda: torch is not installed") from None
        if not torch.cuda.is_available():
            raise click.ClickException(f"--device {device}: CUDA was requested but no CUDA device is available here")
        return device
    raise click.BadParameter(f"{device!r} (expected cpu, cuda or cuda:N)", param_hint="--device")


def _default_trace_dir() -> Path:
    return Path.cwd() / "runs" / "conform" / time.strftime("%Y%m%d-%H%M%S")


def run_conformance(adapter_kind: str, profile_name: str, trace_dir: Path, device: str | None,
                    examples: int | None, direct: bool = False) -> int:
    """Run the machine; print a summary; return the exit code (0 conforms, 1 divergence)."""
    from verisplit.conformance.adapters import SpecAdapter
    from verisplit.conformance.harness import Divergence
    from verisplit.conformance.machine import PROFILES, run_machine

    profile = PROFILES[profile_name if adapter_kind == "impl" else ("spec" if profile_name == "ci" else profile_name)]
    start = time.monotonic()
    if adapter_kind == "impl":
        from verisplit.conformance.impl_adapter import DEFAULT_POOL, LONG_POOL, ImplAdapter, ImplAdapterError

        pool = LONG_POOL if profile_name == "long" else DEFAULT_POOL
        click.echo(f"starting {len(pool)} provider processes (behaviours: "
                   f"{', '.join(sorted({t.behaviour for t in pool}))}) ...")
        try:
            adapter = ImplAdapter(trace_dir / "pool", pool, device=device, direct=direct)
        except ImplAdapterError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        adapter = SpecAdapter()
    click.echo(f"pool ready in {time.monotonic() - start:.1f}s; running profile '{profile.name}' "
               f"({examples or profile.max_examples} examples x <= {profile.steps} steps) on the {adapter.kind} adapter")
    stats = None
    code = 0
    # The in-process reference lead logs every ejection at WARNING; here ejections are expected
    # (cheaters are offered on purpose) and each one is recorded in the JSON traces instead.
    logging.getLogger("verisplit.lead").setLevel(logging.ERROR)
    try:
        from verisplit.conformance.machine import RunStats

        stats = RunStats()
        try:
            stats = run_machine(adapter, profile, trace_dir / "traces", max_examples=examples)
        except Divergence as exc:
            code = 1
            click.echo(f"DIVERGENCE: {exc}", err=True)
        except Exception as exc:  # noqa: BLE001 - any crash of the system under test is a failure
            code = 1
            click.echo(f"FAILURE: {type(exc).__name__}: {exc}", err=True)
    finally:
        adapter.close()
    failure = trace_dir / "traces" / "failure.json"
    total = time.monotonic() - start
    if code:
        click.echo(f"minimal failing trace: {failure}", err=True)
        click.echo(f"replay it with: verisplit conform replay {failure}", err=True)
    else:
        click.echo(f"conforms: {stats.examples if stats else '?'} examples, {stats.actions if stats else '?'} actions, "
                   f"{stats.requests if stats else '?'} requests, {stats.cheaters_offered if stats else '?'} cheater offers; "
                   f"traces in {trace_dir / 'traces'}; {total:.1f}s")
    return code


@click.group("conform", invoke_without_command=True)
@click.option("--profile", type=click.Choice(["ci", "long"]), default="ci", show_default=True,
              help="ci: fixed small example count within the CI budget; long: many more examples and cheats.")
@click.option("--adapter", "adapter_kind", type=click.Choice(["impl", "spec"]), default="impl", show_default=True,
              help="impl: real provider processes + the reference lead; spec: the in-process spec adapter.")
@click.option("--examples", type=click.IntRange(min=1), default=None, help="Override the profile's example count.")
@click.option("--traces", "trace_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where traces go (default: runs/conform/<time>/).")
@click.option("--device", default=None, help="cpu (default) or cuda: where the implementation side computes.")
@click.option("--direct", is_flag=True, help="impl adapter: the lead uses the direct data path (providers forward "
                                              "to each other); every verdict must still be the spec's.")
@click.pass_context
def conform_group(ctx: click.Context, profile: str, adapter_kind: str, examples: int | None, trace_dir: Path | None,
                  device: str | None, direct: bool) -> None:
    """Conformance: the reference implementation against the executable spec (the default action),
    test vectors, trace replay, and checks of external providers and leads."""
    if ctx.invoked_subcommand is not None:
        return
    device = _check_device(device)
    sys.exit(run_conformance(adapter_kind, profile, trace_dir or _default_trace_dir(), device, examples, direct))


@conform_group.command("vectors")
@click.option("--check", "mode", flag_value="check", default=True, help="Regenerate in memory and diff (default).")
@click.option("--write", "mode", flag_value="write", help="Rewrite conformance/vectors/*.json.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Vector folder (default: the package's conformance/vectors).")
def vectors_command(mode: str, directory: Path | None) -> None:
    """Regenerate the spec's test vectors and diff them (--check) or rewrite them (--write)."""
    folder = directory or vector_files.VECTORS_DIR
    if mode == "write":
        for name in vector_files.write(folder):
            click.echo(f"wrote {folder / name}")
        return
    problems = vector_files.check(folder)
    if problems:
        click.echo(vector_files.diff(folder)[:20000], err=True)
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
        click.echo("vectors differ from the spec: regenerate with `verisplit conform vectors --write` "
                   "(and bump the kind's version if a field's meaning changed)", err=True)
        sys.exit(1)
    click.echo(f"vectors match the spec: {len(vector_files.GENERATORS)} kinds in {folder}")


@conform_group.command("replay")
@click.argument("trace_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--adapter", "adapter_kind", type=click.Choice(["recorded", "spec", "impl"]), default="recorded",
              show_default=True, help="Replay on the adapter recorded in the trace, or on another one.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the replay's own trace here.")
def replay_command(trace_path: Path, adapter_kind: str, out: Path | None) -> None:
    """Replay TRACE.json step by step against the spec; exit 1 if it still diverges."""
    from verisplit.conformance.adapters import make_adapter
    from verisplit.conformance.traces import Trace, TraceError, replay

    try:
        trace = Trace.load(trace_path)
    except TraceError as exc:
        raise click.ClickException(str(exc)) from None
    config = dict(trace.adapter)
    if adapter_kind == "spec" and config.get("kind") != "spec":
        config = {"kind": "spec"}
    elif adapter_kind == "impl":
        config = {**config, "kind": "impl"} if config.get("kind") == "impl" else {"kind": "impl"}
    adapter = make_adapter(config)
    try:
        report = replay(trace, adapter)
    finally:
        adapter.close()
    if out is not None:
        report.trace.save(out)
    for line in report.drift:
        click.echo(f"drift: {line}")
    if report.divergence:
        click.echo(f"DIVERGENCE reproduced at {report.divergence}", err=True)
        sys.exit(1)
    click.echo(f"replayed {len(trace.steps)} steps: conforms to the spec")


@conform_group.command("provider")
@click.option("--endpoint", required=True, help="HOST:PORT of the provider's gRPC service.")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The reference checkpoint to re-execute the provider's range on.")
@click.option("--layers", required=True, help="The layer range A:B the provider serves.")
@click.option("--tolerance", "tolerance_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration file from `verisplit calibrate` (default: calibrate now, on this checkpoint).")
@click.option("--device", default=None, help="cpu (default) or cuda for the reference re-execution.")
@click.option("--lead-key", "lead_key_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Key file of the lead the provider registered with (it serves only that lead's signed session openings).")
def provider_command(endpoint: str, checkpoint: Path, layers: str, tolerance_path: Path | None, device: str | None,
                     lead_key_path: Path | None) -> None:
    """Protocol-level checks of any provider; prints one PASS/FAIL line per check."""
    from verisplit.conformance.external import check_provider, print_report

    device = _check_device(device)
    try:
        first, end = (int(x) for x in layers.split(":"))
    except ValueError:
        raise click.BadParameter(f"{layers!r} (expected A:B)", param_hint="--layers") from None
    lead_key = None
    if lead_key_path is not None:
        from verisplit.impl.records.keys import KeyFileError, load_key_file

        try:
            lead_key = load_key_file(lead_key_path)
        except KeyFileError as exc:
            raise click.ClickException(f"--lead-key: {exc}") from None
    results = check_provider(endpoint, checkpoint, first, end, tolerance_path=tolerance_path, device=device,
                             lead_key=lead_key)
    sys.exit(print_report(f"provider {endpoint} layers [{first}, {end})", results))


@conform_group.command("lead")
@click.option("--url", required=True, help="Base URL of the lead's HTTP API, e.g. http://127.0.0.1:8000.")
@click.option("--max-tokens", default=3, show_default=True, type=click.IntRange(min=1), help="Tokens per probe request.")
def lead_command(url: str, max_tokens: int) -> None:
    """API and relay-rule checks of any lead; prints one PASS/FAIL line per check."""
    from verisplit.conformance.external import check_lead, print_report

    results = check_lead(url, max_tokens=max_tokens)
    sys.exit(print_report(f"lead {url}", results))
