"""``verisplit spec``: run the executable spec's functions from the command line (torch-free)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from verisplit.spec.audit import is_audited, seed_commitment
from verisplit.spec.cohort import InvalidOffer, ModelSpec, NoCoverage, Offer, cohort_violations, form_cohort
from verisplit.spec.commitment import StepContext, check_chain, commitment_from_dict
from verisplit.spec.cohort import Assignment, Cohort
from verisplit.spec.settlement import SettlementError, settle


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path}: not valid JSON ({exc})") from None


def _offer(item: dict[str, Any], index: int) -> Offer:
    try:
        return Offer(str(item["provider_id"]), bytes.fromhex(item.get("public_key", "00" * 32)),
                     int(item["first_layer"]), int(item["end_layer"]),
                     int(item.get("price_per_work_unit", 1)), str(item.get("endpoint", "")))
    except (KeyError, ValueError, TypeError) as exc:
        raise click.ClickException(f"offers[{index}]: invalid or missing field ({exc})") from None


@click.group(name="spec")
def spec_group() -> None:
    """Executable-spec helpers (pure Python, no torch)."""


@spec_group.command(name="form-cohort")
@click.argument("offers_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--layers", "num_layers", type=click.IntRange(min=1), required=True, help="Number of model layers.")
@click.option("--work", "layer_work", default="", help="Comma-separated work per layer (default 1 each).")
def form_cohort_command(offers_file: Path, num_layers: int, layer_work: str) -> None:
    """Form the cheapest cohort from OFFERS_FILE (a JSON list of offers)."""
    data = _read_json(offers_file)
    if not isinstance(data, list):
        raise click.ClickException(f"{offers_file}: expected a JSON list of offers")
    offers = [_offer(item, i) for i, item in enumerate(data)]
    try:
        work = tuple(int(w) for w in layer_work.split(",")) if layer_work else ()
        model = ModelSpec("cli-model", num_layers, work)
        cohort = form_cohort(offers, model)
    except (NoCoverage, InvalidOffer, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    result = [{"provider_id": a.provider_id, "first_layer": a.first_layer, "end_layer": a.end_layer} for a in cohort.assignments]
    click.echo(json.dumps({"cohort": result, "violations": [v.kind for v in cohort_violations(cohort, model, offers)]}, indent=2))


def _assignments(items: tuple[str, ...], option: str, what: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.ClickException(f"{option} '{item}': expected PROVIDER={what}")
        try:
            out[name] = int(value)
        except ValueError:
            raise click.ClickException(f"{option} '{item}': {what.lower().replace('_', ' ')} must be an integer") from None
    return out


@spec_group.command(name="settle")
@click.option("--fee", type=int, required=True, help="Fee in the smallest currency unit.")
@click.option("--work", "works", multiple=True, required=True, help="PROVIDER=WORK_UNITS (repeat).")
@click.option("--price", "prices", multiple=True, help="PROVIDER=PRICE_PER_WORK_UNIT (repeat); see --default-price.")
@click.option("--default-price", type=int, default=1, show_default=True,
              help="Price of a provider given no --price.")
@click.option("--lead", default="lead", show_default=True, help="Lead id that takes the residual.")
@click.option("--failed", multiple=True, help="Provider that failed its audit (repeat).")
def settle_command(fee: int, works: tuple[str, ...], prices: tuple[str, ...], default_price: int, lead: str,
                   failed: tuple[str, ...]) -> None:
    """Split FEE by the value (price x work) each provider served; failed providers forfeit, the
    lead takes the residual."""
    work_by_provider = _assignments(works, "--work", "WORK_UNITS")
    given = _assignments(prices, "--price", "PRICE_PER_WORK_UNIT")
    unknown = sorted(set(given) - set(work_by_provider))
    if unknown:
        raise click.ClickException(f"--price: provider(s) {unknown} have no --work")
    price_by_provider = {name: given.get(name, default_price) for name in work_by_provider}
    try:
        s = settle(fee, work_by_provider, price_by_provider, lead, set(failed))
    except SettlementError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"payouts": s.payouts, "values": s.values, "residual": s.residual, "refund": s.refund,
                           "lead": s.lead}, indent=2))


@spec_group.command(name="check-chain")
@click.argument("chain_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check_chain_command(chain_file: Path) -> None:
    """Check one step's commitments: JSON with cohort, context, first_input_digest, commitments."""
    data = _read_json(chain_file)
    try:
        cohort = Cohort(data["model_id"], tuple(
            Assignment(a["provider_id"], bytes.fromhex(a["public_key"]), int(a["first_layer"]), int(a["end_layer"]))
            for a in data["cohort"]))
        context = StepContext(data["model_id"], data["request_id"], int(data["step"]), int(data["first_position"]), int(data["num_positions"]))
        commitments = [commitment_from_dict(c) for c in data["commitments"]]
        first = bytes.fromhex(data["first_input_digest"])
    except (KeyError, ValueError, TypeError) as exc:
        raise click.ClickException(f"{chain_file}: invalid chain document ({exc})") from None
    verdict = check_chain(cohort, commitments, first, context)
    click.echo(json.dumps({"valid": verdict.valid, "link": verdict.link, "culprit": verdict.culprit,
                           "reason": verdict.reason, "detail": verdict.detail}, indent=2))
    if not verdict.valid:
        raise SystemExit(1)


@spec_group.command(name="audit")
@click.option("--seed", "seed_hex", required=True, help="Revealed audit seed (hex).")
@click.option("--request", "request_id", required=True, help="Request id.")
@click.option("--segments", type=click.IntRange(min=1), required=True, help="Number of segments in the cohort.")
@click.option("--p", "probability", default="1/10", show_default=True, help="Audit probability as a fraction, e.g. 1/10.")
def audit_command(seed_hex: str, request_id: str, segments: int, probability: str) -> None:
    """Which segments of a request the revealed seed selects for audit."""
    try:
        seed = bytes.fromhex(seed_hex)
        p = Fraction(probability)
        selected = [k for k in range(segments) if is_audited(seed, request_id, k, p)]
    except ValueError as exc:
        raise click.ClickException(f"invalid argument: {exc}") from None
    click.echo(json.dumps({"seed_commitment": seed_commitment(seed).hex(), "audited_segments": selected}, indent=2))
