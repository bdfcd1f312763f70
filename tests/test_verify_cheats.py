"""In-process detection: every catalogued cheat at one segment is caught at exactly that segment
(by the chain/receipt check or by the audit), and honest segments always pass.

Tolerance: calibrated on the same tiny model by ``verisplit.impl.audit.calibrate`` (margin 4), never
guessed; fp32 on CPU for the full catalogue, bf16 for a subset.
"""

from __future__ import annotations

import math

import pytest

from verisplit.impl.audit.service import analyse_chain
from verisplit.impl.audit.calibrate import calibrate
from cheatkit.cheats import CATALOGUE
from verisplit.impl.audit.verifier import OTHER_WEIGHTS, Verifier
from verisplit.spec.audit import Tolerance
from verisplit.spec.commitment import StepContext, check_chain, check_receipt
from verisplit.spec.encoding import digest_encoded
from verisplit.spec.threats import CAUGHT_BY

from verify_helpers import RANGES, honest_modes, make_ckpt, prompt_for, run


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("verify") / "m")


def _tolerance(ckpt, dtype: str) -> Tolerance:
    doc = calibrate(ckpt, dtype=dtype, device="cpu", split=RANGES, prompt_len=8, new_tokens=8, seeds=(0,),
                    threads=(1,))
    t = doc["tolerance"]
    assert doc["max_observed_ratio_eps"] * 4 <= doc["scale_eps"] + 1e-9
    return Tolerance(t["dtype"], t["atol"], t["rtol"])


@pytest.fixture(scope="module")
def tol32(ckpt):
    return _tolerance(ckpt, "float32")


@pytest.fixture(scope="module")
def verifier(ckpt):
    return Verifier(ckpt, device="cpu", dtype="float32")


def _audit_all(verifier, record, tol):
    analysis = analyse_chain(record)
    verdicts = {}
    for k in range(len(RANGES)):
        if analysis.valid_steps[k] and k != analysis.link:
            verdicts[k] = verifier.audit(record, k, tol, steps=analysis.valid_steps[k])
    return analysis, verdicts


@pytest.mark.parametrize("seed", range(4))
def test_honest_cohort_never_flagged(ckpt, verifier, tol32, seed):
    record = run(ckpt, honest_modes(), request_id=f"honest-{seed}", prompt=prompt_for(seed))
    analysis, verdicts = _audit_all(verifier, record, tol32)
    assert analysis.culprit is None and record.culprit is None
    assert sorted(verdicts) == [0, 1, 2]
    for v in verdicts.values():
        assert v.passed, v
        assert v.ratio <= 0.5  # calibrated with margin 4: honest drift sits well inside


@pytest.mark.parametrize("target", [0, 2])
@pytest.mark.parametrize("mode", CATALOGUE)
def test_each_cheat_caught_at_exactly_its_segment(ckpt, verifier, tol32, mode, target):
    modes = honest_modes()
    modes[target] = mode
    record = run(ckpt, modes, request_id=f"{mode}-{target}")
    analysis, verdicts = _audit_all(verifier, record, tol32)
    culprit = f"p{target}"
    if CAUGHT_BY[mode] == "chain":
        assert record.culprit == culprit and analysis.culprit == culprit and analysis.link == target
        assert analysis.reason == {"wrong_key": "wrong_signer", "substitute_output": "output_mismatch"}[mode]
        assert all(v.passed for v in verdicts.values())  # segments before it served honestly
        assert set(verdicts) == set(range(target))
    else:
        assert record.culprit is None and analysis.culprit is None, "audit-caught cheats keep the chain valid"
        failed = {k for k, v in verdicts.items() if not v.passed}
        assert failed == {target}, {k: (v.passed, v.ratio) for k, v in verdicts.items()}
        assert verdicts[target].ratio > 1 and verdicts[target].reason


def test_chain_cheats_per_spec_checks(ckpt):
    """wrong_key fails the spec's check_chain (H1) and substitute_output the receipt rule (H4), naming the provider."""
    record = run(ckpt, ["honest", "wrong_key", "honest"], request_id="wk")
    step = record.steps[0]
    verdict = check_chain(record.cohort, step.commitments, step.first_input_digest,
                          StepContext(record.model_id, record.request_id, 0, 0, step.num_positions))
    assert (verdict.valid, verdict.link, verdict.culprit, verdict.reason) == (False, 1, "p1", "wrong_signer")
    record = run(ckpt, ["honest", "substitute_output", "honest"], request_id="so")
    step = record.steps[0]
    c = step.commitments[1]
    assert check_receipt(c, digest_encoded(step.inputs[1]), digest_encoded(step.outputs[1]))[0] == "output_mismatch"
    assert check_receipt(step.commitments[0], digest_encoded(step.inputs[0]), digest_encoded(step.outputs[0])) is None


@pytest.mark.parametrize("mode", ["honest", "int8_weights", "lower_precision", "noise", "skip_layer"])
def test_bf16_detection(ckpt, mode):
    tol = _tolerance(ckpt, "bfloat16")
    verifier = Verifier(ckpt, device="cpu", dtype="bfloat16")
    record = run(ckpt, ["honest", mode, "honest"], dtype="bfloat16", request_id=f"bf16-{mode}")
    _, verdicts = _audit_all(verifier, record, tol)
    assert {k for k, v in verdicts.items() if not v.passed} == (set() if mode == "honest" else {1})


def test_tampered_evidence_is_a_receipt_failure_not_a_reexecution(ckpt, verifier, tol32):
    record = run(ckpt, honest_modes(), request_id="tamper")
    blob = bytearray(record.steps[1].outputs[2])
    blob[-1] ^= 1
    record.steps[1].outputs[2] = bytes(blob)
    v = verifier.audit(record, 2, tol32)
    assert not v.passed and "output_mismatch" in v.reason and math.isinf(v.ratio)
    assert verifier.audit(record, 1, tol32).passed


def test_other_weights_digest_fails(ckpt, tmp_path, tol32):
    record = run(ckpt, honest_modes(), request_id="digest")
    from verisplit.impl.runtime.checkpoint import make_random_checkpoint

    other = make_random_checkpoint(tmp_path / "o", layers=6, hidden=64, heads=4, kv_heads=2, max_position=128, seed=12)
    v = Verifier(other, device="cpu", dtype="float32").audit(record, 1, tol32)
    assert not v.passed and v.reason.startswith(OTHER_WEIGHTS)


def test_tolerance_dtype_must_match(ckpt, verifier):
    record = run(ckpt, honest_modes(), request_id="dtype")
    with pytest.raises(ValueError, match="calibrated for bfloat16"):
        verifier.audit(record, 1, Tolerance("bfloat16", 0.03, 0.03))
