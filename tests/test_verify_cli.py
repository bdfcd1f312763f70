"""CLI: ``verisplit calibrate`` writes a tolerance with its data; ``verifier audit`` audits a stored record."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from verisplit.impl.audit.calibrate import CalibrationError, load_tolerance
from verisplit.impl.cli.verify import calibrate_command, verifier_group
from verisplit.impl.records.requests import RequestStore

from verify_helpers import honest_modes, make_ckpt, run


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("cli") / "m")


@pytest.fixture(scope="module")
def calibration(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "tol.json"
    result = CliRunner().invoke(calibrate_command, [
        "--checkpoint", str(ckpt), "--dtype", "float32", "--device", "cpu", "--split", "0:2,2:4,4:6",
        "--prompt-len", "6", "--new-tokens", "6", "--seeds", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_calibration_file_holds_tolerance_and_data(calibration):
    doc = json.loads(calibration.read_text())
    assert doc["format"] == "verisplit-calibration" and doc["dtype"] == "float32"
    assert len(doc["measurements"]) == 2 * 3  # two schedules x three segments
    assert set(doc["per_segment_max_ratio_eps"]) == {"0:2", "2:4", "4:6"}
    assert doc["scale_eps"] == doc["margin"] * max(doc["max_observed_ratio_eps"], doc["floor_eps"])
    tol = load_tolerance(calibration)
    assert tol.atol == pytest.approx(doc["scale_eps"] * doc["eps"]) and tol.dtype == "float32"


def test_calibrate_rejects_bad_arguments(ckpt, tmp_path):
    result = CliRunner().invoke(calibrate_command, ["--checkpoint", str(ckpt), "--split", "0:3,4:6",
                                                    "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "split" in result.output and not (tmp_path / "x.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(CalibrationError, match="format"):
        load_tolerance(bad)
    with pytest.raises(CalibrationError, match="no such"):
        load_tolerance(tmp_path / "missing.json")


@pytest.mark.parametrize("mode,code", [("honest", 0), ("skip_layer", 1)])
def test_verifier_audit_stored_record(ckpt, calibration, tmp_path, mode, code):
    record = run(ckpt, ["honest", mode, "honest"], request_id=f"cli-{mode}")
    RequestStore(tmp_path / "requests").save(record)
    result = CliRunner().invoke(verifier_group, [
        "audit", "--checkpoint", str(ckpt), "--data-dir", str(tmp_path), "--request", record.request_id,
        "--calibration", str(calibration), "--device", "cpu"])
    assert result.exit_code == code, result.output
    verdicts = [json.loads(line) for line in result.output.splitlines()]
    assert [v["segment_index"] for v in verdicts] == [0, 1, 2]
    assert [v["passed"] for v in verdicts] == [True, mode == "honest", True]


def test_verifier_audit_unknown_request(ckpt, calibration, tmp_path):
    result = CliRunner().invoke(verifier_group, [
        "audit", "--checkpoint", str(ckpt), "--data-dir", str(tmp_path), "--request", "nope",
        "--calibration", str(calibration)])
    assert result.exit_code == 1 and "no record" in result.output


def test_verifier_seed_never_overwrites(tmp_path):
    runner = CliRunner()
    out = tmp_path / "seed.hex"
    first = runner.invoke(verifier_group, ["seed", "--out", str(out)])
    assert first.exit_code == 0 and len(first.output.strip()) == 64
    from verisplit.spec.audit import reveal_valid

    assert reveal_valid(bytes.fromhex(first.output.strip()), bytes.fromhex(out.read_text().strip()))
    second = runner.invoke(verifier_group, ["seed", "--out", str(out)])
    assert second.exit_code == 1 and "refusing" in second.output
