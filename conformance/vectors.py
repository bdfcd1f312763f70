"""Test vectors generated from the executable spec with fixed seeds (the contract with other nodes).

One JSON file per kind in ``conformance/vectors/`` (format documented in ``vectors/<kind>.md``):
``{"kind", "version", "generator", "seed", "spec_versions", "cases": [...]}``. Every value is computed
by calling ``verisplit.spec`` functions on inputs derived from ``random.Random(seed)`` and
deterministic Ed25519 keys, so regeneration is bit-identical. Nothing here needs torch: bfloat16 bytes
are made by hand from float32 bits (round to nearest even).

Invariant: ``generate_all()`` is a pure function of this file and the spec; ``check()`` returns the
names of files whose committed text differs from a fresh generation (empty list = in sync).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from nacl.signing import SigningKey

from verisplit.spec import audit, cohort, commitment, encoding, settlement

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
GENERATOR = "verisplit.conformance.vectors"
KEY_DOMAIN = b"verisplit/conformance/key/v1\x00"
VERSIONS: dict[str, int] = {
    "tensor_digest": 1,
    "encoding_reject": 1,
    "commitment_signature": 2,  # 2: protocol v2 signing bytes (dtype, audit_seed_commitment)
    "chain_verdict": 2,  # 2: commitments sign dtype and the audit-seed commitment; rule H5 boundary cases
    "settlement": 2,  # 2: price_by_provider added; slices split by value (price x work)
    "cohort_formation": 1,
    "audit_selection": 1,
}
SEEDS: dict[str, int] = {
    "tensor_digest": 1001,
    "encoding_reject": 1002,
    "commitment_signature": 1003,
    "chain_verdict": 1004,
    "settlement": 1005,
    "cohort_formation": 1006,
    "audit_selection": 1007,
}


# --- helpers ------------------------------------------------------------------------------------

def deterministic_key(name: str) -> SigningKey:
    """Ed25519 key whose 32-byte seed is ``SHA-256(KEY_DOMAIN + name)`` (documented in the README)."""
    return SigningKey(hashlib.sha256(KEY_DOMAIN + name.encode("utf-8")).digest())


def key_seed_hex(name: str) -> str:
    """Hex of the seed behind ``deterministic_key(name)``."""
    return hashlib.sha256(KEY_DOMAIN + name.encode("utf-8")).hexdigest()


def fake_digest(label: str) -> bytes:
    """A 32-byte stand-in digest, ``SHA-256(label)``, for fields whose content does not matter."""
    return hashlib.sha256(label.encode("utf-8")).digest()


def bf16_bits(value: float) -> int:
    """bfloat16 bit pattern of ``value``: float32 bits rounded to nearest even on the low 16 bits.

    NaN maps to the quiet NaN 0x7FC0 (sign kept). Matches ``torch.tensor(v).to(torch.bfloat16)``.
    """
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    if math.isnan(value):
        return ((bits >> 16) & 0x8000) | 0x7FC0
    rounding = 0x7FFF + ((bits >> 16) & 1)
    return ((bits + rounding) >> 16) & 0xFFFF


def pack_values(dtype: str, values: list[Any]) -> bytes:
    """Little-endian element bytes of ``values`` in ``dtype`` (bf16 via ``bf16_bits``)."""
    if dtype == "bfloat16":
        return b"".join(struct.pack("<H", bf16_bits(float(v))) for v in values)
    fmt = {"float32": "f", "float16": "e", "int64": "q", "int32": "i", "uint8": "B", "int8": "b"}[dtype]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def _values(rng: random.Random, dtype: str, count: int) -> list[Any]:
    if dtype in ("float32", "float16", "bfloat16"):
        out: list[Any] = []
        for _ in range(count):
            scale = 10.0 ** rng.randint(-3, 3)
            value = rng.uniform(-1.0, 1.0) * scale
            out.append(struct.unpack("<e", struct.pack("<e", value))[0] if dtype == "float16" else value)
        return out
    bounds = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1), "uint8": (0, 255), "int8": (-128, 127)}
    low, high = bounds[dtype]
    return [rng.randint(low, high) for _ in range(count)]


def _float_repr(dtype: str, values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            out.append(repr(v))  # "nan", "inf", "-inf" as strings (JSON has no such numbers)
        else:
            out.append(v)
    return out


def _tensor_case(name: str, dtype: str, shape: tuple[int, ...], values: list[Any]) -> dict[str, Any]:
    data = pack_values(dtype, values)
    encoded = encoding.encode_tensor(dtype, shape, data)
    return {
        "name": name,
        "dtype": dtype,
        "shape": list(shape),
        "values": _float_repr(dtype, values),
        "data_hex": data.hex(),
        "encoding_hex": encoded.hex(),
        "digest_hex": encoding.tensor_digest(dtype, shape, data).hex(),
    }


def _document(kind: str, cases: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": kind,
        "version": VERSIONS[kind],
        "generator": GENERATOR,
        "seed": SEEDS[kind],
        "spec_versions": {"encoding": encoding.ENCODING_VERSION, "protocol": commitment.PROTOCOL_VERSION},
        "cases": cases,
    }
    doc.update(extra)
    return doc


# --- tensor digests -----------------------------------------------------------------------------

def tensor_digest_vectors() -> dict[str, Any]:
    """Canonical encoding and digest of tensors of every dtype and several ranks (incl. empty, scalar)."""
    rng = random.Random(SEEDS["tensor_digest"])
    cases: list[dict[str, Any]] = []
    shapes: list[tuple[int, ...]] = [(), (1,), (5,), (2, 3), (2, 1, 3), (0,), (2, 0, 3)]
    for dtype in encoding.DTYPE_CODES:
        for shape in shapes:
            values = _values(rng, dtype, encoding.element_count(shape))
            cases.append(_tensor_case(f"{dtype}-{'x'.join(map(str, shape)) or 'scalar'}", dtype, shape, values))
    specials = [0.0, -0.0, 1.0, -2.5, math.inf, -math.inf, math.nan, 1e-40, 65504.0, 3.140625]
    for dtype in ("float32", "float16", "bfloat16"):
        cases.append(_tensor_case(f"{dtype}-specials", dtype, (len(specials),), specials))
    # Rounding cases for bf16 (ties to even, carry into the exponent).
    ties = [1.00390625, 1.01171875, 1.0078125, 255.5, 3.3895313892515355e38]
    cases.append(_tensor_case("bfloat16-rounding", "bfloat16", (len(ties),), ties))
    cases.append(_tensor_case("int64-extremes", "int64", (4,), [0, -1, 2**63 - 1, -(2**63)]))
    rank8 = (1, 2, 1, 1, 2, 1, 1, 1)
    cases.append(_tensor_case("float32-rank8", "float32", rank8, _values(rng, "float32", 4)))
    return _document("tensor_digest", cases, domain_hex=encoding.TENSOR_DOMAIN.hex())


def _reject_case(name: str, blob: bytes) -> dict[str, Any]:
    try:
        encoding.decode_tensor(blob)
    except encoding.EncodingError as exc:
        return {"name": name, "frame_hex": blob.hex(), "error_field": str(exc).split(":", 1)[0]}
    raise AssertionError(f"vector {name}: frame unexpectedly decodes")


def encoding_reject_vectors() -> dict[str, Any]:
    """Malformed frames a decoder must reject, with the header field the spec names."""
    good = encoding.encode_tensor("float32", (2,), pack_values("float32", [1.0, 2.0]))
    cases = [
        _reject_case("short-header", good[:5]),
        _reject_case("bad-magic", b"XSTN" + good[4:]),
        _reject_case("bad-version", good[:4] + bytes([2]) + good[5:]),
        _reject_case("unknown-dtype", good[:5] + bytes([99]) + good[6:]),
        _reject_case("rank-too-large", good[:6] + bytes([9]) + good[7:]),
        _reject_case("reserved-nonzero", good[:7] + bytes([1]) + good[8:]),
        _reject_case("truncated-dims", good[:12]),
        _reject_case("nbytes-disagrees", good[:16] + struct.pack("<Q", 4) + good[24:28]),
        _reject_case("data-truncated", good[:-1]),
        _reject_case("data-trailing", good + b"\x00"),
    ]
    return _document("encoding_reject", cases)


# --- commitments ----------------------------------------------------------------------------------

def _commitment(rng: random.Random, model_id: str, request_id: str) -> commitment.BoundaryCommitment:
    first = rng.randint(0, 60)
    return commitment.BoundaryCommitment(
        protocol_version=commitment.PROTOCOL_VERSION,
        model_id=model_id,
        weights_digest=rng.randbytes(32),
        request_id=request_id,
        step=rng.randint(0, 500),
        segment_index=rng.randint(0, 7),
        first_layer=first,
        end_layer=first + rng.randint(1, 20),
        first_position=rng.randint(0, 4000),
        num_positions=rng.randint(1, 64),
        input_digest=rng.randbytes(32),
        output_digest=rng.randbytes(32),
        signer=b"\x00" * 32,
    )


def _signature_case(name: str, key_name: str, c: commitment.BoundaryCommitment) -> dict[str, Any]:
    """One commitment-signature vector: the key, the commitment, its signing bytes and validity."""
    return {
        "name": name,
        "key_name": key_name,
        "key_seed_hex": key_seed_hex(key_name),
        "public_key_hex": bytes(deterministic_key(key_name).verify_key).hex(),
        "commitment": commitment.commitment_to_dict(c),
        "signing_bytes_hex": commitment.signing_bytes(c).hex(),
        "signature_valid": commitment.signature_valid(c),
    }


def commitment_signature_vectors() -> dict[str, Any]:
    """``signing_bytes`` and Ed25519 signatures of commitments under deterministic keys."""
    rng = random.Random(SEEDS["commitment_signature"])
    cases: list[dict[str, Any]] = []
    texts = [("tiny-llama", "req-0"), ("meta-llama/Llama-3-70B", "0123456789abcdef" * 4), ("modèle-ü", "r/é/∑"), ("m", "")]
    for index in range(8):
        model_id, request_id = texts[index % len(texts)]
        key_name = f"provider-{index % 3}"
        unsigned = _commitment(rng, model_id, request_id)
        signed = commitment.sign_commitment(unsigned, deterministic_key(key_name))
        cases.append(_signature_case(f"commitment-{index}", key_name, signed))
    extreme = commitment.BoundaryCommitment(
        protocol_version=0xFFFF, model_id="x" * 300, weights_digest=b"\xff" * 32, request_id="r",
        step=2**64 - 1, segment_index=2**32 - 1, first_layer=0, end_layer=2**32 - 1,
        first_position=2**64 - 1, num_positions=2**64 - 1, input_digest=b"\x00" * 32,
        output_digest=b"\x01" * 32, signer=b"\x00" * 32)
    signed = commitment.sign_commitment(extreme, deterministic_key("provider-extreme"))
    cases.append(_signature_case("commitment-extremes", "provider-extreme", signed))
    cases.append(_signature_case("commitment-tampered-step", "provider-extreme", replace(signed, step=signed.step - 1)))
    return _document("commitment_signature", cases, domain_hex=commitment.COMMITMENT_DOMAIN.hex())


# --- chain verdicts -------------------------------------------------------------------------------

def _cohort_dict(c: cohort.Cohort) -> dict[str, Any]:
    return {"model_id": c.model_id, "assignments": [
        {"provider_id": a.provider_id, "public_key_hex": a.public_key.hex(), "first_layer": a.first_layer,
         "end_layer": a.end_layer} for a in c.assignments]}


def cohort_from_dict(data: dict[str, Any]) -> cohort.Cohort:
    """Inverse of the vectors' cohort form."""
    return cohort.Cohort(str(data["model_id"]), tuple(
        cohort.Assignment(str(a["provider_id"]), bytes.fromhex(a["public_key_hex"]), int(a["first_layer"]),
                          int(a["end_layer"])) for a in data["assignments"]))


def _context_dict(context: commitment.StepContext) -> dict[str, Any]:
    return {"model_id": context.model_id, "request_id": context.request_id, "step": context.step,
            "first_position": context.first_position, "num_positions": context.num_positions,
            "protocol_version": context.protocol_version, "dtype": context.dtype,
            "audit_seed_commitment": context.audit_seed_commitment.hex()}


def _verdict_dict(verdict: commitment.ChainVerdict) -> dict[str, Any]:
    return {"valid": verdict.valid, "link": verdict.link, "culprit": verdict.culprit, "reason": verdict.reason}


def honest_chain(c: cohort.Cohort, context: commitment.StepContext, first_input: bytes,
                 keys: dict[str, SigningKey], label: str) -> list[commitment.BoundaryCommitment]:
    """A correctly signed, correctly chained step for cohort ``c`` (outputs are ``fake_digest`` values)."""
    chain: list[commitment.BoundaryCommitment] = []
    previous = first_input
    for index, a in enumerate(c.assignments):
        output = fake_digest(f"{label}/out/{index}")
        unsigned = commitment.BoundaryCommitment(
            context.protocol_version, context.model_id, fake_digest(f"weights/{a.first_layer}-{a.end_layer}"),
            context.request_id, context.step, index, a.first_layer, a.end_layer, context.first_position,
            context.num_positions, previous, output, b"\x00" * 32)
        chain.append(commitment.sign_commitment(unsigned, keys[a.provider_id]))
        previous = output
    return chain


def chain_verdict_vectors() -> dict[str, Any]:
    """Verdicts of ``check_chain`` (H1-H3) for a valid chain and one broken chain per reason, and of
    ``check_receipt`` (H4) for the lead's on-receipt comparison."""
    names = ["alice", "bob", "carol"]
    keys = {n: deterministic_key(n) for n in names}
    keys["mallory"] = deterministic_key("mallory")
    c = cohort.Cohort("tiny-llama", (
        cohort.Assignment("alice", bytes(keys["alice"].verify_key), 0, 3),
        cohort.Assignment("bob", bytes(keys["bob"].verify_key), 3, 5),
        cohort.Assignment("carol", bytes(keys["carol"].verify_key), 5, 8)))
    context = commitment.StepContext("tiny-llama", "req-chain", 4, 17, 1)
    first_input = fake_digest("first-input")
    good = honest_chain(c, context, first_input, keys, "good")

    def resign(item: commitment.BoundaryCommitment, key: SigningKey) -> commitment.BoundaryCommitment:
        return commitment.sign_commitment(item, key)

    broken: list[tuple[str, list[commitment.BoundaryCommitment]]] = [("valid", list(good))]
    chain = list(good)
    chain[1] = replace(chain[1], signature=bytes([chain[1].signature[0] ^ 1]) + chain[1].signature[1:])
    broken.append(("bad_signature-link1", chain))
    chain = list(good)
    chain[2] = resign(chain[2], keys["mallory"])
    broken.append(("wrong_signer-link2", chain))
    chain = list(good)
    chain[0] = resign(replace(chain[0], model_id="other-model"), keys["alice"])
    broken.append(("wrong_request-model-link0", chain))
    chain = list(good)
    chain[1] = resign(replace(chain[1], request_id="req-other"), keys["bob"])
    broken.append(("wrong_request-request-link1", chain))
    chain = list(good)
    chain[1] = resign(replace(chain[1], step=context.step - 1), keys["bob"])
    broken.append(("duplicate_or_replay-link1", chain))
    chain = list(good)
    chain[2] = resign(replace(chain[2], step=context.step + 1), keys["carol"])
    broken.append(("step_gap-link2", chain))
    chain = list(good)
    chain[1] = resign(replace(chain[1], end_layer=6), keys["bob"])
    broken.append(("range_mismatch-layers-link1", chain))
    chain = list(good)
    chain[0] = resign(replace(chain[0], first_position=context.first_position + 1), keys["alice"])
    broken.append(("range_mismatch-positions-link0", chain))
    chain = list(good)
    chain[2] = resign(replace(chain[2], input_digest=fake_digest("substituted")), keys["carol"])
    broken.append(("input_mismatch-link2", chain))
    chain = list(good)
    chain[0] = resign(replace(chain[0], input_digest=fake_digest("altered-prompt")), keys["alice"])
    broken.append(("input_mismatch-first-link0", chain))
    broken.append(("missing_link-link2", list(good[:2])))
    broken.append(("missing_link-empty", []))
    broken.append(("extra-commitment", list(good) + [good[2]]))
    chain = list(good)
    chain[1] = resign(replace(chain[1], segment_index=2), keys["bob"])
    broken.append(("range_mismatch-segment-link1", chain))
    chain = list(good)
    chain[1] = resign(replace(chain[1], dtype="bfloat16"), keys["bob"])
    broken.append(("wrong_dtype-link1", chain))
    chain = list(good)
    chain[2] = resign(replace(chain[2], audit_seed_commitment=fake_digest("another-seed")), keys["carol"])
    broken.append(("wrong_request-seed-commitment-link2", chain))
    cases: list[dict[str, Any]] = []
    for name, items in broken:
        verdict = commitment.check_chain(c, items, first_input, context)
        cases.append({"name": name, "check": "chain", "first_input_digest_hex": first_input.hex(),
                      "commitments": [commitment.commitment_to_dict(x) for x in items],
                      "expected": _verdict_dict(verdict)})
    receipts = [
        ("receipt-ok", good[1].input_digest, good[1].output_digest),
        ("receipt-input_mismatch", fake_digest("sent-other"), good[1].output_digest),
        ("receipt-output_mismatch", good[1].input_digest, fake_digest("returned-other")),
    ]
    for name, sent, received in receipts:
        failure = commitment.check_receipt(good[1], sent, received)
        cases.append({"name": name, "check": "receipt", "commitment": commitment.commitment_to_dict(good[1]),
                      "sent_input_digest_hex": sent.hex(), "received_output_digest_hex": received.hex(),
                      "expected": {"ok": failure is None, "reason": None if failure is None else failure[0]}})
    boundary_expected = commitment.boundary_spec(0, 3, "float32", 1, 8, 32)
    boundaries = [
        ("boundary-ok", "float32", [1, 8], True),
        ("boundary-bad_boundary-dtype", "bfloat16", [1, 8], True),
        ("boundary-bad_boundary-shape", "float32", [1, 9], True),
        ("boundary-bad_boundary-nonfinite", "float32", [1, 8], False),
        ("boundary-bad_boundary-not-a-tensor", None, None, False),
    ]
    for name, dtype, shape, finite in boundaries:
        failure = commitment.check_boundary(dtype, shape, finite, boundary_expected)
        cases.append({"name": name, "check": "boundary", "dtype": dtype, "shape": shape, "all_finite": finite,
                      "expected_boundary": [boundary_expected[0], list(boundary_expected[1])],
                      "expected": {"ok": failure is None, "reason": None if failure is None else failure[0]}})
    return _document("chain_verdict", cases, cohort=_cohort_dict(c), context=_context_dict(context),
                     reasons=list(commitment.REASONS))


# --- settlement -------------------------------------------------------------------------------------

def _settlement_case(name: str, fee: Any, works: dict[str, Any], prices: Any, failed: list[str]) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "fee": fee, "work_by_provider": works, "price_by_provider": prices,
                            "failed": failed}
    try:
        result = settlement.settle(fee, works, prices, "lead", failed)
    except settlement.SettlementError as exc:
        case["expected"] = {"error_field": str(exc).split(":", 1)[0]}
        return case
    case["expected"] = {"values": result.values, "payouts": result.payouts, "residual": result.residual,
                        "refund": result.refund, "conserved": settlement.conserved(result)}
    return case


def settlement_vectors() -> dict[str, Any]:
    """``settle`` on seeded random work and price vectors (fees at, around and away from the quote)
    and hand-picked edges (fee 0, all failed, zero value, the docs' example, errors)."""
    rng = random.Random(SEEDS["settlement"])
    cases: list[dict[str, Any]] = []
    for index in range(24):
        n = rng.randint(1, 8)
        works = {f"p{k}": rng.randint(0, 5000) for k in range(n)}
        prices = {p: rng.choice([0, 1, 2, 3, 5, 8, rng.randint(0, 1000)]) for p in works}
        if sum(prices[p] * works[p] for p in works) == 0:
            works["p0"], prices["p0"] = max(works["p0"], 1), max(prices["p0"], 1)
        quote = sum(prices[p] * works[p] for p in works)
        fee = rng.choice([0, 1, 7, 1000, 999_983, quote, quote, quote + rng.randint(1, 99), rng.randint(0, 10**12)])
        failed = sorted(p for p in works if rng.random() < 0.25)
        cases.append(_settlement_case(f"random-{index}", fee, works, prices, failed))
    cases += [
        _settlement_case("single-provider", 10, {"a": 3}, {"a": 2}, []),
        _settlement_case("all-failed", 100, {"a": 1, "b": 2}, {"a": 1, "b": 1}, ["a", "b"]),
        _settlement_case("max-residual", 2, {"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 1}, []),
        _settlement_case("zero-work-provider", 9, {"a": 0, "b": 4}, {"a": 5, "b": 1}, []),
        _settlement_case("zero-price-provider", 9, {"a": 6, "b": 4}, {"a": 0, "b": 1}, []),
        _settlement_case("fee-equals-quote", 96, {"a": 32, "b": 32}, {"a": 2, "b": 1}, []),
        _settlement_case("fee-equals-quote-failed", 96, {"a": 32, "b": 32}, {"a": 2, "b": 1}, ["a"]),
        _settlement_case("fee-above-quote", 100, {"a": 32, "b": 32}, {"a": 2, "b": 1}, []),
        _settlement_case("zero-total-value", 5, {"a": 0, "b": 3}, {"a": 4, "b": 0}, []),
        _settlement_case("error-negative-fee", -1, {"a": 1}, {"a": 1}, []),
        _settlement_case("error-no-providers", 5, {}, {}, []),
        _settlement_case("error-negative-work", 5, {"a": -2}, {"a": 1}, []),
        _settlement_case("error-missing-price", 5, {"a": 1, "b": 1}, {"a": 1}, []),
        _settlement_case("error-negative-price", 5, {"a": 1}, {"a": -1}, []),
        _settlement_case("error-bool-price", 5, {"a": 1}, {"a": True}, []),
        _settlement_case("error-price-without-work", 5, {"a": 1}, {"a": 1, "z": 1}, []),
        _settlement_case("error-unknown-failed", 5, {"a": 1}, {"a": 1}, ["z"]),
    ]
    return _document("settlement", cases)


# --- cohort formation ------------------------------------------------------------------------------

def _offer_dict(o: cohort.Offer) -> dict[str, Any]:
    return {"provider_id": o.provider_id, "public_key_hex": o.public_key.hex(), "first_layer": o.first_layer,
            "end_layer": o.end_layer, "price_per_work_unit": o.price_per_work_unit, "endpoint": o.endpoint}


def offer_from_dict(data: dict[str, Any]) -> cohort.Offer:
    """Inverse of the vectors' offer form."""
    return cohort.Offer(str(data["provider_id"]), bytes.fromhex(data["public_key_hex"]), int(data["first_layer"]),
                        int(data["end_layer"]), int(data["price_per_work_unit"]), str(data["endpoint"]))


def _offer(name: str, first: int, end: int, price: int) -> cohort.Offer:
    return cohort.Offer(name, bytes(deterministic_key(name).verify_key), first, end, price, f"127.0.0.1:{7000 + sum(name.encode()) % 1000}")


def _cohort_case(name: str, offers: list[cohort.Offer], model: cohort.ModelSpec) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "model": {"model_id": model.model_id, "num_layers": model.num_layers,
                                                    "layer_work": list(model.layer_work)},
                            "offers": [_offer_dict(o) for o in offers]}
    try:
        chosen = cohort.form_cohort(offers, model)
    except cohort.NoCoverage as exc:
        case["expected"] = {"error": "no_coverage", "layer": exc.layer}
        return case
    except cohort.InvalidOffer as exc:
        case["expected"] = {"error": "invalid_offer", "message": str(exc)}
        return case
    case["expected"] = {"cohort": _cohort_dict(chosen), "cost": cohort.cohort_cost(chosen, model, offers),
                        "violations": []}
    return case


def _violation_case(name: str, c: cohort.Cohort, offers: list[cohort.Offer], model: cohort.ModelSpec) -> dict[str, Any]:
    found = cohort.cohort_violations(c, model, offers)
    return {"name": name, "model": {"model_id": model.model_id, "num_layers": model.num_layers,
                                    "layer_work": list(model.layer_work)},
            "offers": [_offer_dict(o) for o in offers], "cohort": _cohort_dict(c),
            "expected": {"violations": [{"kind": v.kind, "segment_index": v.segment_index} for v in found]}}


def cohort_formation_vectors() -> dict[str, Any]:
    """``form_cohort`` on seeded random offer sets (incl. NoCoverage), tie-break cases, invalid offers,
    and ``cohort_violations`` on hand-broken cohorts."""
    rng = random.Random(SEEDS["cohort_formation"])
    cases: list[dict[str, Any]] = []
    for index in range(20):
        num_layers = rng.randint(1, 10)
        work = tuple(rng.randint(1, 4) for _ in range(num_layers)) if rng.random() < 0.5 else ()
        model = cohort.ModelSpec("vec-model", num_layers, work)
        offers = []
        for k in range(rng.randint(1, 6)):
            first = rng.randint(0, num_layers - 1)
            end = rng.randint(first + 1, num_layers)
            offers.append(_offer(f"p{index}-{k}", first, end, rng.randint(0, 9)))
        cases.append(_cohort_case(f"random-{index}", offers, model))
    model = cohort.ModelSpec("vec-model", 4)
    cases.append(_cohort_case("tie-fewer-hops", [_offer("a", 0, 4, 1), _offer("b", 0, 2, 1), _offer("c", 2, 4, 1)], model))
    cases.append(_cohort_case("tie-provider-id", [_offer("z", 0, 4, 1), _offer("y", 0, 4, 1)], model))
    cases.append(_cohort_case("tie-boundary", [_offer("a", 0, 3, 1), _offer("b", 1, 4, 1)], model))
    cases.append(_cohort_case("cheaper-split", [_offer("a", 0, 4, 5), _offer("b", 0, 2, 1), _offer("c", 2, 4, 1)], model))
    cases.append(_cohort_case("no-coverage-middle", [_offer("a", 0, 2, 1), _offer("b", 3, 4, 1)], model))
    cases.append(_cohort_case("no-coverage-end", [_offer("a", 0, 3, 1)], model))
    cases.append(_cohort_case("no-offers", [], model))
    cases.append(_cohort_case("offer-beyond-model", [_offer("a", 0, 9, 1)], model))
    cases.append(_cohort_case("invalid-empty-range", [_offer("a", 2, 2, 1)], model))
    cases.append(_cohort_case("invalid-negative-price", [_offer("a", 0, 4, -1)], model))
    cases.append(_cohort_case("invalid-duplicate-id", [_offer("a", 0, 4, 1), _offer("a", 0, 2, 1)], model))
    offers = [_offer("a", 0, 2, 1), _offer("b", 2, 4, 1), _offer("c", 1, 4, 1)]
    key = {o.provider_id: o.public_key for o in offers}

    def assign(pid: str, first: int, end: int, public_key: bytes | None = None) -> cohort.Assignment:
        return cohort.Assignment(pid, key.get(pid, public_key or b"\x00" * 32) if public_key is None else public_key, first, end)

    broken = [
        ("valid", (assign("a", 0, 2), assign("b", 2, 4))),
        ("gap", (assign("a", 0, 2), assign("c", 3, 4))),
        ("overlap", (assign("a", 0, 2), assign("c", 1, 4))),
        ("empty-range", (assign("a", 0, 2), assign("b", 2, 2), assign("c", 2, 4))),
        ("outside-offer", (assign("a", 0, 3), assign("b", 3, 4))),
        ("out-of-bounds", (assign("a", 0, 2), assign("b", 2, 5))),
        ("unknown-provider", (assign("x", 0, 2, b"\x01" * 32), assign("b", 2, 4))),
        ("wrong-key", (assign("a", 0, 2, b"\x02" * 32), assign("b", 2, 4))),
        ("duplicate-provider", (assign("c", 1, 2), assign("c", 2, 4))),
        ("empty-cohort", ()),
    ]
    for name, assignments in broken:
        cases.append(_violation_case(f"violations-{name}", cohort.Cohort("vec-model", assignments), offers, model))
    return _document("cohort_formation", cases)


# --- audit selection ------------------------------------------------------------------------------

def audit_selection_vectors() -> dict[str, Any]:
    """Seed commitments, 64-bit draws and ``is_audited`` for several p (exact fractions)."""
    rng = random.Random(SEEDS["audit_selection"])
    probabilities = [Fraction(0), Fraction(1, 10), Fraction(1, 2), Fraction(2, 3), Fraction(1)]
    cases: list[dict[str, Any]] = []
    for index in range(6):
        seed = rng.randbytes(rng.choice([0, 16, 32]))
        request_id = rng.choice(["req-0", "req-é", "", "r" * 100]) + str(index)
        draws = []
        for segment_index in range(4):
            draw = audit.audit_draw(seed, request_id, segment_index)
            draws.append({"segment_index": segment_index, "draw": str(draw),
                          "audited": {f"{p.numerator}/{p.denominator}": audit.is_audited(seed, request_id, segment_index, p)
                                      for p in probabilities}})
        cases.append({"name": f"selection-{index}", "seed_hex": seed.hex(),
                      "seed_commitment_hex": audit.seed_commitment(seed).hex(),
                      "reveal_valid": audit.reveal_valid(audit.seed_commitment(seed), seed),
                      "request_id": request_id, "draws": draws})
    # Boundary of the exact comparison draw * den < num * 2**64.
    boundary = []
    for draw in (0, 2**63 - 1, 2**63, 2**64 - 1):
        boundary.append({"draw": str(draw), "p": "1/2", "selected": audit.draw_selects(draw, Fraction(1, 2))})
    return _document("audit_selection", cases, boundary=boundary,
                     seed_domain_hex=audit.SEED_DOMAIN.hex(), draw_domain_hex=audit.DRAW_DOMAIN.hex())


# --- files ------------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "tensor_digest": tensor_digest_vectors,
    "encoding_reject": encoding_reject_vectors,
    "commitment_signature": commitment_signature_vectors,
    "chain_verdict": chain_verdict_vectors,
    "settlement": settlement_vectors,
    "cohort_formation": cohort_formation_vectors,
    "audit_selection": audit_selection_vectors,
}


def render(document: dict[str, Any]) -> str:
    """The exact text written to disk: sorted keys, one-space indent, trailing newline, ASCII only."""
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def generate_all() -> dict[str, str]:
    """File name -> text of every vector file."""
    return {f"{kind}.json": render(make()) for kind, make in GENERATORS.items()}


def check(directory: Path = VECTORS_DIR) -> list[str]:
    """Names of vector files that are missing, differ from a fresh generation, or are unexpected."""
    fresh = generate_all()
    problems: list[str] = []
    for name, text in fresh.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from a fresh generation")
        doc_path = directory / name.replace(".json", ".md")
        if not doc_path.exists():
            problems.append(f"{doc_path.name}: format document missing")
    for path in sorted(directory.glob("*.json")):
        if path.name not in fresh:
            problems.append(f"{path.name}: not produced by the generator")
    return problems


def diff(directory: Path = VECTORS_DIR) -> str:
    """A unified diff between the committed files and a fresh generation (empty when in sync)."""
    import difflib

    out: list[str] = []
    for name, text in generate_all().items():
        path = directory / name
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old != text:
            out.extend(difflib.unified_diff(old.splitlines(True), text.splitlines(True), f"committed/{name}", f"generated/{name}", n=1))
    return "".join(out)


def write(directory: Path = VECTORS_DIR) -> list[str]:
    """Write every vector file; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate_all().items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(name)
    return written
