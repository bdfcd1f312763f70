"""`lead serve` refuses a configuration that does not deter cheating, naming the numbers (issue 11 (c))."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import click
import pytest

from verisplit.impl.cli.lead_cmd import AuditSettings, franchise_terms


def _settings(**kw: object) -> AuditSettings:
    return AuditSettings(ledger=Path("l.db"), lead_key=Path("k"), **kw)  # type: ignore[arg-type]


def test_defaults_deter_at_one_in_ten() -> None:
    assert franchise_terms(_settings(), Fraction(1, 10)) == (20, 10)


def test_a_short_escrow_window_is_refused_with_the_numbers() -> None:
    with pytest.raises(click.ClickException) as caught:
        franchise_terms(_settings(escrow_window=2, probation_requests=2), Fraction(1, 20))
    message = caught.value.message
    assert "does not deter" in message and "1/20" in message and "window" in message


def test_allow_undeterred_starts_anyway_and_no_audits_means_no_franchise() -> None:
    assert franchise_terms(_settings(escrow_window=0, probation_requests=0, allow_undeterred=True), Fraction(1, 10)) == (0, 0)
    assert franchise_terms(_settings(), Fraction(0)) == (0, 0)
