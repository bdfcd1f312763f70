"""The spec's test vectors regenerate identically, and read back correctly as another node would."""

from __future__ import annotations

import json
import re

import pytest

from verisplit.conformance import vectors
from verisplit.spec import audit, commitment, encoding, settlement


def test_vectors_regenerate_identically() -> None:
    problems = vectors.check()
    assert problems == [], "\n".join(problems) + "\n" + vectors.diff()[:4000]


def test_check_detects_a_changed_file(tmp_path) -> None:
    vectors.write(tmp_path)
    for name in vectors.GENERATORS:
        (tmp_path / f"{name}.md").write_text("doc")
    assert vectors.check(tmp_path) == []
    path = tmp_path / "settlement.json"
    doc = json.loads(path.read_text())
    doc["cases"][0]["expected"]["residual"] = doc["cases"][0]["expected"].get("residual", 0) + 1
    path.write_text(vectors.render(doc))
    assert vectors.check(tmp_path) == ["settlement.json: differs from a fresh generation"]


def _load(kind: str) -> dict:
    doc = json.loads((vectors.VECTORS_DIR / f"{kind}.json").read_text())
    assert doc["kind"] == kind and doc["version"] == vectors.VERSIONS[kind]
    return doc


def test_tensor_vectors_decode_and_digest() -> None:
    doc = _load("tensor_digest")
    dtypes = {c["dtype"] for c in doc["cases"]}
    assert dtypes == set(encoding.DTYPE_CODES)
    for case in doc["cases"]:
        frame = encoding.decode_tensor(bytes.fromhex(case["encoding_hex"]))
        assert frame == encoding.TensorFrame(case["dtype"], tuple(case["shape"]), bytes.fromhex(case["data_hex"]))
        assert encoding.digest_encoded(bytes.fromhex(case["encoding_hex"])).hex() == case["digest_hex"]


def test_bfloat16_bytes_match_torch() -> None:
    import torch
    for case in _load("tensor_digest")["cases"]:
        if case["dtype"] != "bfloat16":
            continue
        values = [float(v) for v in case["values"]]
        finite = [i for i, v in enumerate(values) if v == v]  # NaN payloads are implementation-defined
        t = torch.tensor([values[i] for i in finite], dtype=torch.float32).to(torch.bfloat16)
        data = bytes.fromhex(case["data_hex"])
        expected = b"".join(data[2 * i:2 * i + 2] for i in finite)
        assert t.view(torch.uint8).numpy().tobytes() == expected, case["name"]


def test_reject_vectors_are_rejected() -> None:
    for case in _load("encoding_reject")["cases"]:
        with pytest.raises(encoding.EncodingError) as info:
            encoding.decode_tensor(bytes.fromhex(case["frame_hex"]))
        assert str(info.value).startswith(case["error_field"] + ":")


def test_commitment_vectors_verify() -> None:
    for case in _load("commitment_signature")["cases"]:
        c = commitment.commitment_from_dict(case["commitment"])
        assert commitment.signing_bytes(c).hex() == case["signing_bytes_hex"]
        assert commitment.signature_valid(c) is case["signature_valid"]
        assert c.signer.hex() == case["public_key_hex"]


def test_chain_vectors_cover_every_reason() -> None:
    doc = _load("chain_verdict")
    cohort = vectors.cohort_from_dict(doc["cohort"])
    fields = dict(doc["context"])
    fields["audit_seed_commitment"] = bytes.fromhex(fields["audit_seed_commitment"])
    context = commitment.StepContext(**fields)
    seen = set()
    for case in doc["cases"]:
        if case["check"] == "chain":
            items = [commitment.commitment_from_dict(c) for c in case["commitments"]]
            verdict = commitment.check_chain(cohort, items, bytes.fromhex(case["first_input_digest_hex"]), context)
            assert {"valid": verdict.valid, "link": verdict.link, "culprit": verdict.culprit,
                    "reason": verdict.reason} == case["expected"], case["name"]
            seen.add(verdict.reason)
        elif case["check"] == "boundary":
            expected_boundary = (case["expected_boundary"][0], tuple(case["expected_boundary"][1]))
            failure = commitment.check_boundary(case["dtype"], case["shape"], case["all_finite"], expected_boundary)
            assert {"ok": failure is None, "reason": None if failure is None else failure[0]} == case["expected"], case["name"]
            seen.add(case["expected"]["reason"])
        else:
            seen.add(case["expected"]["reason"])
    assert set(commitment.REASONS) <= seen


def _settle_case(case: dict) -> settlement.Settlement:
    return settlement.settle(case["fee"], case["work_by_provider"], case["price_by_provider"], "lead", case["failed"])


def test_settlement_vectors_conserve() -> None:
    for case in _load("settlement")["cases"]:
        if "error_field" in case["expected"]:
            with pytest.raises(settlement.SettlementError):
                _settle_case(case)
            continue
        expected = case["expected"]
        assert sum(expected["payouts"].values()) + expected["residual"] + expected["refund"] == case["fee"]
        assert 0 <= expected["residual"] <= len(case["work_by_provider"]) - 1


def test_audit_and_cohort_vectors_have_both_outcomes() -> None:
    kinds = {c["expected"].get("error", "cohort") for c in _load("cohort_formation")["cases"] if "cohort" not in c}
    assert {"cohort", "no_coverage", "invalid_offer"} <= kinds
    doc = _load("audit_selection")
    picks = [d["audited"]["1/2"] for c in doc["cases"] for d in c["draws"]]
    assert True in picks and False in picks
    for case in doc["cases"]:
        seed = bytes.fromhex(case["seed_hex"])
        assert audit.seed_commitment(seed).hex() == case["seed_commitment_hex"]


def test_settlement_vectors_replay_through_settle() -> None:
    """Every case's expected values/payouts/residual/refund (or error field) is what ``settle`` returns,
    as an implementer reading the file would check (not only conservation of the stored numbers), and
    the values are price x work as the format document says."""
    cases = _load("settlement")["cases"]
    names = {c["name"] for c in cases}
    assert {"single-provider", "zero-work-provider", "all-failed", "max-residual", "fee-equals-quote",
            "fee-above-quote", "zero-price-provider", "zero-total-value", "error-missing-price"} <= names
    assert any(c["fee"] == 0 for c in cases)
    for case in cases:
        expected = case["expected"]
        if "error_field" in expected:
            with pytest.raises(settlement.SettlementError) as info:
                _settle_case(case)
            assert str(info.value).split(":", 1)[0] == expected["error_field"], case["name"]
            continue
        s = _settle_case(case)
        assert (s.values, s.payouts, s.residual, s.refund) == (
            expected["values"], expected["payouts"], expected["residual"], expected["refund"]), case["name"]
        assert expected["values"] == {p: case["price_by_provider"][p] * w for p, w in case["work_by_provider"].items()}
        assert expected["conserved"] is True


def test_settlement_vectors_at_the_quote_pay_exactly_the_values() -> None:
    exact = [c for c in _load("settlement")["cases"]
             if "values" in c["expected"] and c["fee"] == sum(c["expected"]["values"].values())]
    assert len(exact) >= 3
    for case in exact:
        expected = case["expected"]
        assert expected["residual"] == 0, case["name"]
        for p, value in expected["values"].items():
            assert expected["payouts"][p] == (0 if p in case["failed"] else value), case["name"]


def test_cohort_vectors_replay_through_form_cohort_and_violations() -> None:
    from verisplit.spec import cohort as spec_cohort

    cases = _load("cohort_formation")["cases"]
    for case in cases:
        model = spec_cohort.ModelSpec(case["model"]["model_id"], case["model"]["num_layers"],
                                      tuple(case["model"]["layer_work"]))
        offers = [vectors.offer_from_dict(o) for o in case["offers"]]
        expected = case["expected"]
        if "cohort" in case:  # a hand-broken cohort: cohort_violations
            found = spec_cohort.cohort_violations(vectors.cohort_from_dict(case["cohort"]), model, offers)
            assert [{"kind": v.kind, "segment_index": v.segment_index} for v in found] == expected["violations"], case["name"]
        elif expected.get("error") == "no_coverage":
            with pytest.raises(spec_cohort.NoCoverage) as info:
                spec_cohort.form_cohort(offers, model)
            assert info.value.layer == expected["layer"], case["name"]
        elif expected.get("error") == "invalid_offer":
            with pytest.raises(spec_cohort.InvalidOffer, match=re.escape(expected["message"])):
                spec_cohort.form_cohort(offers, model)
        else:
            chosen = spec_cohort.form_cohort(offers, model)
            assert chosen == vectors.cohort_from_dict(expected["cohort"]), case["name"]
            assert spec_cohort.cohort_cost(chosen, model, offers) == expected["cost"], case["name"]
            assert spec_cohort.cohort_violations(chosen, model, offers) == []


def test_audit_vectors_replay_through_is_audited() -> None:
    from fractions import Fraction

    doc = _load("audit_selection")
    assert bytes.fromhex(doc["seed_domain_hex"]) == audit.SEED_DOMAIN
    assert bytes.fromhex(doc["draw_domain_hex"]) == audit.DRAW_DOMAIN
    for case in doc["cases"]:
        seed = bytes.fromhex(case["seed_hex"])
        assert audit.reveal_valid(bytes.fromhex(case["seed_commitment_hex"]), seed) is case["reveal_valid"]
        for draw in case["draws"]:
            k = draw["segment_index"]
            assert audit.audit_draw(seed, case["request_id"], k) == int(draw["draw"]), case["name"]
            for p_text, selected in draw["audited"].items():
                assert audit.is_audited(seed, case["request_id"], k, Fraction(p_text)) is selected, (case["name"], k, p_text)
    for row in doc["boundary"]:
        assert audit.draw_selects(int(row["draw"]), Fraction(row["p"])) is row["selected"]
