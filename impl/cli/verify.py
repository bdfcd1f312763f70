"""CLI: ``verisplit calibrate`` and ``verisplit verifier {seed, audit}``.

The verifier runs as a role inside the lead (``AuditService`` in ``post_request_hooks``); the
standalone ``verifier audit`` re-audits a stored record from the lead's data dir with the
verifier's own checkpoint copy, and exits 1 when any audited segment fails.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from verisplit.impl.cli.config import check_calibration, device_option, dtype_option, runtime_device, runtime_dtype


def _fail(message: str) -> None:
    """The one error style of every command: ``Error: MESSAGE`` on stderr, exit 1."""
    raise click.ClickException(message)


@click.command("calibrate")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="HF checkpoint folder (the verifier's copy).")
@dtype_option()
@device_option()
@click.option("--split", default=None, help="Segment ranges, e.g. '0:4,4:8' (default: two halves).")
@click.option("--prompt-len", default=16, show_default=True, type=int, help="Prompt positions per measured request.")
@click.option("--new-tokens", default=48, show_default=True, type=int, help="Decode steps per measured request.")
@click.option("--seeds", default=3, show_default=True, type=int, help="Number of random token sequences.")
@click.option("--threads", default=None, help="Comma-separated torch thread counts (default: 1 and all cores).")
@click.option("--margin", default=4.0, show_default=True, type=float, help="Tolerance / largest honest drift.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration file to write (JSON: the model id, dtype, tolerance and every measurement).")
def calibrate_command(checkpoint: Path, dtype: str | None, device: str | None, split: str | None, prompt_len: int,
                      new_tokens: int, seeds: int, threads: str | None, margin: float, out: Path) -> None:
    """Measure honest drift (decode vs prefill, chunked prefill, thread counts) per segment and store
    the tolerance with the data behind it as JSON."""
    from verisplit.impl.audit.calibrate import CalibrationError, calibrate, parse_split, write_calibration
    from verisplit.impl.runtime.config import ModelConfig

    dtype, device = runtime_dtype(dtype), runtime_device(device)
    try:
        config = ModelConfig.from_dir(checkpoint)
        try:
            ranges = parse_split(split, config.num_hidden_layers) if split else None
        except CalibrationError as exc:
            raise click.BadParameter(str(exc).removeprefix("split: "), param_hint="--split") from None
        thread_counts = [int(t) for t in threads.split(",")] if threads else None
        if thread_counts is not None and any(t < 1 for t in thread_counts):
            raise CalibrationError("threads: every count must be >= 1")
        doc = calibrate(checkpoint, dtype=dtype, device=device, split=ranges, prompt_len=prompt_len,
                        new_tokens=new_tokens, seeds=tuple(range(seeds)), threads=thread_counts, margin=margin)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
        return
    write_calibration(doc, out)
    t = doc["tolerance"]
    click.echo(f"{len(doc['measurements'])} measurements, dtype {doc['dtype']} on {doc['device']}, "
               f"max honest drift {doc['max_observed_ratio_eps']:.3g} eps units, margin {doc['margin']}")
    for key, ratio in doc["per_segment_max_ratio_eps"].items():
        click.echo(f"  segment [{key}): max drift {ratio:.3g} eps units")
    click.echo(f"tolerance: atol = rtol = {t['atol']:.3g} ({doc['scale_eps']:.3g} eps) -> {out}")


@click.group("verifier")
def verifier_group() -> None:
    """The verifier role: commit-reveal seeds and audits of stored requests."""


@verifier_group.command("seed")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the secret seed (hex, mode 0600; never overwritten).")
def seed_command(out: Path) -> None:
    """Create an audit seed and print its commitment H(seed) (publish it before serving)."""
    from verisplit.spec.audit import seed_commitment

    seed = os.urandom(32)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(f"{out}: exists; refusing to overwrite a seed")
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(seed.hex() + "\n")
    click.echo(seed_commitment(seed).hex())


def _store_root(data_dir: Path) -> Path:
    """The lead keeps records under ``DATA_DIR/requests``; a store root itself is accepted too."""
    return data_dir / "requests" if (data_dir / "requests").is_dir() else data_dir


@verifier_group.command("audit")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The verifier's own copy of the HF checkpoint (re-executes the audited segments).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The lead's data dir (records under DATA_DIR/requests).")
@click.option("--request", "request_id", required=True, help="Request id to audit (e.g. req-...).")
@click.option("--segment", "segments", multiple=True, type=int, help="Segments to audit (default: all).")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration file from `verisplit calibrate` (else --atol/--rtol).")
@click.option("--atol", type=float, default=None, help="Absolute tolerance (instead of --calibration).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance (instead of --calibration).")
@dtype_option()
@device_option()
def audit_command(checkpoint: Path, data_dir: Path, request_id: str, segments: tuple[int, ...],
                  calibration: Path | None, atol: float | None, rtol: float | None, dtype: str | None,
                  device: str | None) -> None:
    """Audit a stored request: print one JSON verdict per segment; exit 1 if any fails."""
    from verisplit.impl.audit.recovered import signer_views
    from verisplit.impl.audit.service import analyse_chain
    from verisplit.impl.audit.calibrate import load_tolerance
    from verisplit.impl.records.requests import RequestStore
    from verisplit.impl.audit.verifier import EvidenceError, Verifier, verdict_to_dict
    from verisplit.spec.audit import Tolerance

    dtype, device = runtime_dtype(dtype), runtime_device(device)
    try:
        if calibration is not None:
            tolerance = load_tolerance(calibration)
        elif atol is not None or rtol is not None:
            tolerance = Tolerance(dtype or "float32", atol or 0.0, rtol or 0.0)
        else:
            raise ValueError("tolerance: give --calibration FILE or --atol/--rtol")
        if not data_dir.is_dir():
            raise ValueError(f"--data-dir: {data_dir} is not a folder")
        record = RequestStore(_store_root(data_dir)).load(request_id)
        if calibration is not None:
            tolerance = check_calibration(calibration, record.model_id, dtype)
        if record.tensors_discarded:
            store = RequestStore(_store_root(data_dir))
            sys.exit(_report_compacted(record, store.load_extras(request_id), segments))
        analysis = analyse_chain(record)
        verifier = Verifier(checkpoint, device=device, dtype=dtype or tolerance.dtype)
        chosen = list(segments) or list(range(len(record.cohort.assignments)))
        failed = False
        if analysis.culprit is not None:
            click.echo(json.dumps({"chain": {"culprit": analysis.culprit, "link": analysis.link,
                                             "step": analysis.step, "reason": analysis.reason}}))
            failed = True
        for index in chosen:
            if not 0 <= index < len(record.cohort.assignments):
                raise ValueError(f"--segment: {index} is not in the cohort (0..{len(record.cohort.assignments) - 1})")
            if analysis.valid_steps[index] == 0:
                click.echo(json.dumps({"segment_index": index, "skipped": "no validly served steps"}))
                continue
            for view, steps in signer_views(record, index, analysis.valid_steps[index]):  # each signer (issue 13)
                try:
                    verdict = verifier.audit(view, index, tolerance, steps=steps)
                except EvidenceError as exc:
                    click.echo(json.dumps({"segment_index": index, "error": str(exc)}))
                    failed = True
                    continue
                click.echo(json.dumps(verdict_to_dict(verdict)))
                failed = failed or not verdict.passed
    except (ValueError, OSError) as exc:
        _fail(str(exc))
        return
    sys.exit(1 if failed else 0)


def _report_compacted(record: Any, extras: dict[str, Any], segments: tuple[int, ...]) -> int:
    """Print the chain verdict of a compacted record's commitments (signatures and digest chain, H1-H3),
    its recorded audits, and one "skipped" line per segment; returns the exit code (1: chain broken)."""
    from verisplit.impl.audit.verifier import record_context
    from verisplit.spec.commitment import check_chain

    broken = None
    for step in record.steps:
        verdict = check_chain(record.cohort, step.commitments, step.first_input_digest, record_context(record, step))
        if not verdict.valid:
            broken = {"culprit": verdict.culprit, "link": verdict.link, "step": step.step, "reason": verdict.reason}
            break
    chain = broken or {"valid": True, "steps": len(record.steps)}
    click.echo(json.dumps({"chain": chain, "tensors_discarded": True, "audits": extras.get("audits")}))
    for index in list(segments) or list(range(len(record.cohort.assignments))):
        click.echo(json.dumps({"segment_index": index, "skipped": "tensors discarded after audit (the lead keeps "
                                                                  "them with --keep-tensors)"}))
    return 1 if broken else 0
