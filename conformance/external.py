"""External mode: protocol-level checks against any provider or lead, one PASS/FAIL line per check.

Provider checks speak the wire protocol (``impl/verisplit.proto``) directly: handshake and version,
signed offer, canonical tensor encoding of outputs, commitment signatures and chaining (the spec's
``check_link`` and ``check_receipt`` on the exact bytes exchanged), outputs equal to a reference
re-execution of the same layers from the given checkpoint within the calibrated tolerance
(``verisplit calibrate``'s tolerance and ``judge_tensors``, i.e. the spec's ``judge``), and clean
errors for malformed frames (bad tensor bytes, unknown session, wrong step) with the server still up.

Lead checks speak HTTP: the OpenAI-compatible endpoints, error shape, SSE termination, and the relay
rules re-checked from ``GET /v1/requests/{id}``: every step's chain verifies under the published
cohort keys, the first input of each step is exactly the prompt / previous token, positions continue,
the cohort is valid for the listed offers and is the spec's choice, and the fee is the spec's quote.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from verisplit.spec.settlement import billable_positions
from verisplit.spec.cohort import Assignment, Cohort, ModelSpec, NoCoverage, Offer, cohort_violations, form_cohort, quote_fee
from verisplit.spec.commitment import (BAD_SIGNATURE, PROTOCOL_VERSION, WRONG_SIGNER, StepContext, check_chain, check_link,
                                       step_follows,
                                       check_receipt, commitment_from_dict)
from verisplit.spec.encoding import EncodingError, decode_tensor, digest_encoded, encode_tensor

CLEAN_ERROR_CODES = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED",
                     "PERMISSION_DENIED", "UNAUTHENTICATED")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


def print_report(title: str, results: list[CheckResult]) -> int:
    """Print one line per check and a summary; return the exit code (1 if anything failed)."""
    click.echo(f"conformance report: {title}")
    for r in results:
        click.echo(f"  {'PASS' if r.passed else 'FAIL'}  {r.name}" + (f": {r.detail}" if r.detail else ""))
    failed = sum(not r.passed for r in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


class _Checks:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def add(self, name: str, passed: bool, detail: str = "") -> bool:
        self.results.append(CheckResult(name, bool(passed), detail))
        return bool(passed)

    def run(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        try:
            ok, detail = fn()
        except Exception as exc:  # noqa: BLE001 - a crash of the check is a failed check, reported
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        return self.add(name, ok, detail)


# --- provider --------------------------------------------------------------------------------------

def _tolerance(checkpoint: Path, tolerance_path: Path | None, device: str | None) -> Any:
    from verisplit.impl.audit.calibrate import load_tolerance

    if tolerance_path is not None:
        return load_tolerance(tolerance_path)
    from verisplit.conformance.impl_adapter import ensure_tolerance

    cache = Path(tempfile.gettempdir()) / "verisplit-conform" / hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    return ensure_tolerance(checkpoint, cache, device)


def check_provider(endpoint: str, checkpoint: Path, first_layer: int, end_layer: int, *,
                   tolerance_path: Path | None = None, device: str | None = None, prompt_len: int = 5,
                   decode_steps: int = 2, timeout: float = 60.0, lead_key: Any = None) -> list[CheckResult]:
    """Run every provider check; never raises for a misbehaving provider (each failure is a result).

    ``lead_key`` is the ``SigningKey`` of the lead the provider registered with: a provider serves only
    session openings its lead signed (rule A1), so without it only the refusal checks can run."""
    import grpc
    import torch

    from verisplit.impl.node import verisplit_pb2 as pb
    from verisplit.impl.node import verisplit_pb2_grpc as pb_grpc
    from verisplit.impl.node.framing import chunk_tensor, commitment_from_pb, grpc_options
    from verisplit.impl.records.keys import offer_signature_valid
    from verisplit.impl.runtime.loader import load_segment
    from verisplit.impl.node.framing import offer_fields_from_pb
    from verisplit.impl.runtime.tensors import from_canonical, to_canonical
    from verisplit.impl.audit.verifier import judge_tensors

    checks = _Checks()
    channel = grpc.insecure_channel(endpoint, options=grpc_options())
    stub = pb_grpc.ProviderStub(channel)
    try:
        info = stub.Info(pb.InfoRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        checks.add("handshake: Info answers", False, f"{exc.code().name}: {exc.details()}")
        return checks.results
    checks.add("handshake: Info answers", True)
    fields = offer_fields_from_pb(info.offer.offer)
    checks.add("handshake: protocol version", fields.protocol_version == PROTOCOL_VERSION,
               f"provider speaks {fields.protocol_version}, spec is {PROTOCOL_VERSION}")
    checks.add("handshake: offer signature verifies under its key", offer_signature_valid(fields, bytes(info.offer.signature)))
    checks.add("handshake: offer covers --layers", (fields.first_layer, fields.end_layer) == (first_layer, end_layer),
               f"offer [{fields.first_layer}, {fields.end_layer}), expected [{first_layer}, {end_layer})")
    reference = load_segment(checkpoint, first_layer, end_layer, device=device, dtype="float32")
    checks.add("handshake: model id matches the checkpoint", fields.model_id == reference.model_id,
               f"provider {fields.model_id!r}, checkpoint {reference.model_id!r}")
    checks.add("handshake: weights digest equals the reference range's", fields.weights_digest == reference.weights_digest)
    tolerance = _tolerance(checkpoint, tolerance_path, device)

    # Inputs: token ids for a first segment, seeded hidden states otherwise.
    gen = torch.Generator().manual_seed(1234)
    sizes = [prompt_len] + [1] * decode_steps
    if first_layer == 0:
        inputs = [torch.randint(0, reference.config.vocab_size, (n,), generator=gen, dtype=torch.int64) for n in sizes]
    else:
        inputs = [torch.randn((n, reference.config.hidden_size), generator=gen, dtype=torch.float32) for n in sizes]
    session, request_id = "conform-session-1", "conform-request-1"

    def opening(**fields_: Any) -> Any:
        from verisplit.impl.node.framing import open_session_request

        values = dict(model_id=fields.model_id, segment_index=0, first_layer=first_layer, end_layer=end_layer,
                      audit_seed_commitment=bytes(32), dtype=fields.dtype) | fields_
        if lead_key is None:
            return pb.OpenSessionRequest(**values)
        return open_session_request(lead_key, **values)

    try:
        stub.OpenSession(pb.OpenSessionRequest(session_id="conform-anonymous", request_id="conform-anonymous",
                                               model_id=fields.model_id, segment_index=0, first_layer=first_layer,
                                               end_layer=end_layer, max_length=4, audit_seed_commitment=bytes(32),
                                               dtype=fields.dtype), timeout=timeout)
        checks.add("session: an opening the lead did not sign is refused", False, "an unsigned opening was served")
    except grpc.RpcError as exc:
        checks.add("session: an opening the lead did not sign is refused", exc.code() == grpc.StatusCode.PERMISSION_DENIED,
                   f"{exc.code().name}: {exc.details()}")
    if lead_key is None:
        checks.add("session: OpenSession", False, "not run: pass the key of the lead this provider registered with "
                   "(`--lead-key FILE`); a provider serves only openings its lead signed")
        return checks.results
    try:
        stub.OpenSession(opening(session_id=session, request_id=request_id, max_length=sum(sizes) + 1), timeout=timeout)
        checks.add("session: OpenSession", True)
    except grpc.RpcError as exc:
        checks.add("session: OpenSession", False, f"{exc.code().name}: {exc.details()}")
        return checks.results
    frames, position, blobs = [], 0, []
    for step, x in enumerate(inputs):
        blob = to_canonical(x)
        blobs.append(blob)
        for chunk in chunk_tensor(blob):
            frames.append(pb.StepFrame(session_id=session, step=step, first_position=position, num_positions=x.shape[0], input=chunk))
        position += x.shape[0]
    outputs: list[bytes] = []
    commitments: list[Any] = []
    try:
        buffer = b""
        for result in stub.Steps(iter(frames), timeout=timeout):
            buffer += bytes(result.output.data)
            if result.output.index == result.output.count - 1:
                outputs.append(buffer)
                commitments.append(commitment_from_pb(result.commitment) if result.HasField("commitment") else None)
                buffer = b""
        checks.add("steps: one output per step", len(outputs) == len(inputs), f"{len(outputs)} outputs for {len(inputs)} steps")
    except grpc.RpcError as exc:
        checks.add("steps: stream completes", False, f"{exc.code().name}: {exc.details()}")
        return checks.results
    assignment = Assignment("provider-under-test", fields.public_key, first_layer, end_layer)
    enc_ok, sig_ok, chain_ok, receipt_ok = True, True, True, True
    enc_detail = sig_detail = chain_detail = receipt_detail = ""
    position = 0
    decoded: list[Any] = []
    for step, (blob, out, c) in enumerate(zip(blobs, outputs, commitments)):
        n = inputs[step].shape[0]
        try:
            frame = decode_tensor(out)
            width = reference.config.vocab_size if reference.is_last else reference.config.hidden_size
            if frame.shape != (n, width):
                enc_ok, enc_detail = False, f"step {step}: shape {list(frame.shape)}, expected [{n}, {width}]"
            decoded.append(from_canonical(out))
        except EncodingError as exc:
            enc_ok, enc_detail = False, f"step {step}: {exc}"
            decoded.append(None)
        if c is None:
            sig_ok, sig_detail = False, f"step {step}: no commitment on the last chunk"
            continue
        context = StepContext(fields.model_id, request_id, step, position, n, dtype=fields.dtype)
        failure = check_link(assignment, 0, c, digest_encoded(blob), context)
        if failure is not None:
            if failure[0] in (BAD_SIGNATURE, WRONG_SIGNER):
                sig_ok, sig_detail = False, f"step {step}: {failure[0]}: {failure[1]}"
            else:
                chain_ok, chain_detail = False, f"step {step}: {failure[0]}: {failure[1]}"
        receipt = check_receipt(c, digest_encoded(blob), digest_encoded(out))
        if receipt is not None:
            receipt_ok, receipt_detail = False, f"step {step}: {receipt[0]}: {receipt[1]}"
        position += n
    checks.add("encoding: outputs are canonical tensors of the boundary shape", enc_ok, enc_detail)
    checks.add("signatures: every commitment verifies and is signed by the offer's key", sig_ok, sig_detail)
    checks.add("chaining: commitment fields (request, step, segment, layers, positions, input digest)", chain_ok, chain_detail)
    checks.add("receipt: commitment digests are of the exact bytes exchanged", receipt_ok, receipt_detail)

    def reexecute() -> tuple[bool, str]:
        reference.open_session("reference", sum(sizes) + 1)
        pos, worst = 0, None
        try:
            for step, x in enumerate(inputs):
                positions = torch.arange(pos, pos + x.shape[0], dtype=torch.int64)
                expected = reference.step("reference", x.to(reference.device), positions.to(reference.device))
                pos += x.shape[0]
                if decoded[step] is None:
                    return False, f"step {step}: output undecodable"
                j = judge_tensors(expected, decoded[step].to(torch.float32), tolerance)
                if not j.passed:
                    return False, f"step {step}: {j.reason} (max |diff| {j.max_abs:.3g}; tolerance {tolerance})"
                worst = max(worst or 0.0, j.ratio)
        finally:
            reference.close_session("reference")
        return True, f"worst distance ratio {worst:.3g} of tolerance (dtype {tolerance.dtype}, atol {tolerance.atol:.3g}, rtol {tolerance.rtol:.3g})"

    checks.run("re-execution: outputs match the reference within the calibrated tolerance", reexecute)

    def malformed(name: str, frame_list: list[Any], open_first: bool) -> None:
        sid = f"conform-bad-{len(checks.results)}"

        def attempt() -> tuple[bool, str]:
            if open_first:
                stub.OpenSession(opening(session_id=sid, request_id="conform-bad", max_length=8), timeout=timeout)
            frames_now = [pb.StepFrame(session_id=sid if f.session_id == "$" else f.session_id, step=f.step,
                                       first_position=f.first_position, num_positions=f.num_positions, input=f.input)
                          for f in frame_list]
            try:
                list(stub.Steps(iter(frames_now), timeout=timeout))
            except grpc.RpcError as exc:
                alive = stub.Info(pb.InfoRequest(), timeout=timeout) is not None
                clean = exc.code().name in CLEAN_ERROR_CODES
                return clean and alive, f"{exc.code().name}: {exc.details()}" + ("" if alive else "; server down afterwards")
            return False, "the provider accepted the malformed frame"

        checks.run(f"errors: {name}", attempt)

    good = to_canonical(inputs[0])
    bad_magic = b"XXXX" + good[4:]
    malformed("bad tensor magic is rejected", [pb.StepFrame(session_id="$", step=0, first_position=0, num_positions=prompt_len,
                                                           input=chunk_tensor(bad_magic)[0])], True)
    truncated = good[:-3]
    malformed("truncated tensor is rejected", [pb.StepFrame(session_id="$", step=0, first_position=0, num_positions=prompt_len,
                                                           input=chunk_tensor(truncated)[0])], True)
    malformed("step out of order is rejected", [pb.StepFrame(session_id="$", step=3, first_position=0, num_positions=prompt_len,
                                                            input=chunk_tensor(good)[0])], True)
    malformed("unknown session is rejected", [pb.StepFrame(session_id="no-such-session", step=0, first_position=0,
                                                          num_positions=prompt_len, input=chunk_tensor(good)[0])], False)
    channel.close()
    return checks.results


# --- lead ------------------------------------------------------------------------------------------

def check_lead(url: str, *, max_tokens: int = 3, timeout: float = 120.0) -> list[CheckResult]:
    """Run every lead check over HTTP; each failure is a result, never an exception."""
    import httpx

    checks = _Checks()
    base = url.rstrip("/")
    client = httpx.Client(base_url=base, timeout=timeout)
    state: dict[str, Any] = {}

    def models() -> tuple[bool, str]:
        r = client.get("/v1/models")
        body = r.json()
        ok = r.status_code == 200 and body.get("object") == "list" and body.get("data")
        if ok:
            state["model"] = body["data"][0]
        return bool(ok), f"HTTP {r.status_code}"

    if not checks.run("api: GET /v1/models lists the model", models):
        client.close()
        return checks.results

    def providers() -> tuple[bool, str]:
        r = client.get("/v1/providers")
        if r.status_code != 200:
            return False, f"HTTP {r.status_code}"
        state["offers"] = [Offer(p["provider_id"], bytes.fromhex(p["public_key"]), int(p["first_layer"]), int(p["end_layer"]),
                                 int(p["price_per_work_unit"]), str(p["endpoint"])) for p in r.json()["data"]]
        return True, f"{len(state['offers'])} offer(s)"

    checks.run("api: GET /v1/providers lists offers", providers)

    def completion() -> tuple[bool, str]:
        r = client.post("/v1/completions", json={"prompt": "conformance", "max_tokens": max_tokens, "temperature": 0})
        body = r.json()
        if r.status_code != 200:
            return False, f"HTTP {r.status_code}: {json.dumps(body)[:300]}"
        state["id"] = body.get("id")
        usage = body.get("usage", {})
        ok = bool(state["id"]) and body.get("choices") and usage.get("total_tokens") == usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        return bool(ok), f"request {state['id']}"

    if checks.run("api: POST /v1/completions (greedy) answers with id, choices, usage", completion):
        def relay() -> tuple[bool, str]:
            r = client.get(f"/v1/requests/{state['id']}")
            if r.status_code != 200:
                return False, f"HTTP {r.status_code}"
            info = r.json()
            state["info"] = info
            assignments = tuple(Assignment(a["provider_id"], bytes.fromhex(a["public_key"]), int(a["first_layer"]), int(a["end_layer"]))
                                for a in info["cohort"]["assignments"])
            cohort = Cohort(info["cohort"].get("model_id", info["model"]), assignments)
            state["cohort"] = cohort
            prompt = info.get("prompt_token_ids") or []
            completion_ids = info.get("completion_token_ids") or []
            position = 0
            # A speculative lead's steps roll back (rule K1) and feed drafts the record does not list: then
            # each step's positions must follow K1 and its chain verify; the fed tokens are checked for plain decoding only.
            steps = info["steps"]
            speculative = bool(steps) and (steps[0]["num_positions"] != len(prompt) or any(
                s["num_positions"] != 1 or s["first_position"] != p["first_position"] + p["num_positions"]
                for p, s in zip(steps, steps[1:])))
            previous: tuple[int, int] | None = None
            for index, step in enumerate(info["steps"]):
                feed = prompt if index == 0 else [completion_ids[index - 1]]
                first = bytes.fromhex(step["first_input_digest"])
                if speculative:
                    start, count = int(step["first_position"]), int(step["num_positions"])
                    if step["step"] != index or (start != 0 if previous is None else not step_follows(*previous, start)):
                        return False, f"step {index}: step/positions {step['step'], start, count} break rule K1"
                    position, feed, previous = start, [0] * count, (start, count)
                else:
                    expected_first = digest_encoded(encode_tensor("int64", (len(feed),), b"".join(int(t).to_bytes(8, "little", signed=True) for t in feed)))
                    if first != expected_first:
                        return False, f"step {index}: first input is not the canonical encoding of the tokens fed"
                    if (step["step"], step["first_position"], step["num_positions"]) != (index, position, len(feed)):
                        return False, f"step {index}: step/positions {step['step'], step['first_position'], step['num_positions']} do not continue"
                context = StepContext(info["model"], info["id"], index, position, len(feed),
                                      dtype=str(info.get("dtype") or "float32"),
                                      audit_seed_commitment=bytes.fromhex(info.get("audit_seed_commitment") or "00" * 32))
                verdict = check_chain(cohort, [commitment_from_dict(c) for c in step["commitments"]], first, context)
                if not verdict.valid:
                    return False, f"step {index}: chain broken at link {verdict.link} ({verdict.culprit}): {verdict.reason}"
                position += len(feed)
            return True, f"{len(info['steps'])} steps x {len(assignments)} links verified"

        checks.run("relay: every step's chain verifies and inputs are exactly the tokens fed", relay)

        def cohort_rule() -> tuple[bool, str]:
            cohort, offers = state.get("cohort"), state.get("offers")
            if cohort is None or offers is None:
                return False, "no cohort or offers to compare"
            model = ModelSpec(cohort.model_id, int(state["model"].get("num_layers", max(a.end_layer for a in cohort.assignments))))
            bad = cohort_violations(cohort, model, offers)
            if bad:
                return False, "; ".join(f"{v.kind}: {v.detail}" for v in bad)
            try:
                chosen = form_cohort(offers, model)
            except NoCoverage as exc:
                return False, str(exc)
            if chosen != cohort:
                return False, f"cohort {cohort.provider_ids} is not the spec's choice {chosen.provider_ids}"
            info = state["info"]
            # F1 over the signed steps (for plain decoding the same as prompt + completion - 1)
            steps = [int(s["num_positions"]) for s in info.get("steps") or []] or None
            positions = billable_positions(int(info["usage"]["prompt_tokens"]), int(info["usage"]["completion_tokens"]), steps)
            if info.get("status") == "completed" and info.get("fee") is not None:
                quote = quote_fee(cohort, model, offers, positions)
                if int(info["fee"]) != quote:
                    return False, f"fee {info['fee']} != spec quote {quote} for {positions} positions"
            return True, f"cohort {list(cohort.provider_ids)}"

        checks.run("router: the cohort is valid and the spec's cheapest choice; the fee is the spec's quote", cohort_rule)

    def stream() -> tuple[bool, str]:
        lines = []
        with client.stream("POST", "/v1/completions", json={"prompt": "stream", "max_tokens": max_tokens, "temperature": 0,
                                                            "stream": True}) as r:
            if r.status_code != 200:
                return False, f"HTTP {r.status_code}"
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
        return bool(lines) and lines[-1] == "[DONE]", f"{len(lines)} events, last {lines[-1] if lines else None!r}"

    checks.run("api: streaming completion ends with data: [DONE]", stream)

    def error_shape(method: str, path: str, payload: Any, expect: int) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            r = client.request(method, path, content=payload if isinstance(payload, bytes) else None,
                               json=None if isinstance(payload, bytes) else payload,
                               headers={"content-type": "application/json"})
            try:
                err = r.json().get("error", {})
            except ValueError:
                return False, f"HTTP {r.status_code}, body is not JSON"
            ok = r.status_code == expect and isinstance(err, dict) and "message" in err and "type" in err
            return ok, f"HTTP {r.status_code}: {err.get('message', '')[:120]}"
        return check

    checks.run("errors: malformed JSON body gets a 400 OpenAI-shaped error", error_shape("POST", "/v1/completions", b"{not json", 400))
    checks.run("errors: missing prompt gets a 400 naming the field", error_shape("POST", "/v1/completions", {"max_tokens": 2}, 400))
    checks.run("errors: unknown model gets a 404", error_shape("POST", "/v1/completions", {"model": "no-such-model", "prompt": "x"}, 404))
    checks.run("errors: unknown request id gets a 404", error_shape("GET", "/v1/requests/req-does-not-exist", None, 404))
    client.close()
    return checks.results
