"""Speculative decoding across a real cohort (``lead serve --speculative 4``): greedy output equals
plain greedy decoding of one process, speculative steps (rollbacks included) are recorded, audited
(p = 1) and settled like any other step, and a cheat inside a speculative step is caught.

Model: 4-layer hidden-64 random checkpoint, fp32, CPU, providers [0,2) and [2,4). Token comparisons
are exact (greedy fp32); audits use the tolerance calibrated here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch

import cheatkit
from verisplit.impl.audit.calibrate import calibrate, write_calibration
from verisplit.impl.node.behaviour import Behaviour
from verisplit.impl.node.procs import ProcessGroup, start_local_cohort, verisplit_command
from verisplit.impl.records.keys import create_key_file
from verisplit.impl.records.requests import RequestStore
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.generate import generate_reference
from verisplit.impl.runtime.loader import load_full
from verisplit.impl.runtime.tokenizer import load_tokenizer, stop_token_ids
from verisplit.spec.commitment import check_chain, step_follows
from verisplit.spec.settlement import conserved, settle
from verify_helpers import wait_settled

pytestmark = pytest.mark.net

TESTS_DIR = Path(__file__).resolve().parent
HONEST_PRICE = 10
K = 4
# Repetitive prompts give the n-gram drafter something to copy; the random model's greedy output loops too.
PROMPTS = [[5, 17, 99, 260, 3, 41, 7], [8, 9, 10, 11, 12, 8, 9, 10, 11, 12, 8, 9], [3, 3, 3, 3, 7, 3, 3]]
MAX_TOKENS = 16


class NoisyVerification(Behaviour):
    """Test cheat: honest on single-position steps and the prompt, but perturbs every row after the
    first of a speculative verification step (the draft positions, mostly rejected ones)."""

    def output(self, step: int, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if step == 0 or output.shape[0] < 2:
            return output
        cheated = output.clone()
        cheated[1:] += 0.05 * cheated[1:].abs().mean()
        return cheated


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("spec-net")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=320,
                                        max_position=128, seed=21)
    calibration = write_calibration(calibrate(checkpoint, dtype="float32", device="cpu", split=[(0, 2), (2, 4)],
                                              prompt_len=8, new_tokens=8, seeds=(0, 1)), root / "calibration.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    lead_args = ["--audit-p", "1", "--calibration", str(calibration), "--speculative", str(K)]
    with ProcessGroup(root / "logs", env=env) as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4)], keys_dir=root / "keys", data_dir=root / "lead",
                                  prices=[HONEST_PRICE] * 2, lead_args=lead_args)
        info.update(group=group, checkpoint=checkpoint, root=root, client=httpx.Client(base_url=info["http"], timeout=120))
        yield info
        info["client"].close()


def run(client: httpx.Client, prompt: list[int]) -> tuple[httpx.Response, dict[str, Any]]:
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert response.status_code == 200, response.text
    return response, wait_settled(client, response.headers["x-verisplit-request-id"])


def check_paid_exactly(info: dict[str, Any], prices: dict[str, int], failed: set[str]) -> None:
    """Work = layers x positions of every step (drafts included), fee = the quote over them (F1 over
    steps), and the spec's settle pays each honest provider exactly price x work, conserved."""
    s = info["settlement"]
    positions = sum(step["num_positions"] for step in info["steps"])
    work = {a["provider_id"]: (a["end_layer"] - a["first_layer"]) * positions for a in info["cohort"]["assignments"]}
    assert s["work"] == work
    assert s["fee"] == sum(prices[p] * w for p, w in work.items())
    spec = settle(s["fee"], work, {p: prices[p] for p in work}, s["lead"], frozenset(failed))
    assert (s["payouts"], s["residual"], s["refund"]) == (dict(spec.payouts), spec.residual, spec.refund)
    assert conserved(spec) and spec.residual == 0
    for p, w in work.items():
        assert s["payouts"][p] == (0 if p in failed else prices[p] * w)


def test_speculative_greedy_equals_plain_greedy_and_is_audited(net: dict[str, Any]) -> None:
    client = net["client"]
    reference_model = load_full(net["checkpoint"], device="cpu", dtype=torch.float32)
    stops = stop_token_ids(load_tokenizer(net["checkpoint"]))
    multi, rollbacks = 0, 0
    for prompt in PROMPTS:
        response, info = run(client, prompt)
        tokens = response.json()["verisplit"]["completion_token_ids"]
        assert tokens == generate_reference(reference_model, prompt, MAX_TOKENS, eos_token_id=stops)  # exact
        assert info["status"] == "completed" and info["ejected"] == []
        assert sorted(a["segment_index"] for a in info["audits"]) == [0, 1]
        assert all(a["passed"] for a in info["audits"]), info["audits"]
        steps = info["steps"]
        assert steps[0]["first_position"] == 0
        for previous, step in zip(steps, steps[1:]):
            assert step_follows(previous["first_position"], previous["num_positions"], step["first_position"])
            rollbacks += step["first_position"] < previous["first_position"] + previous["num_positions"]
            multi += step["num_positions"] > 1
        assert len(steps) <= len(tokens)
        check_paid_exactly(info, {p: HONEST_PRICE for p in ("provider-0", "provider-1")}, set())
        # every recorded step's chain re-verifies with the spec under its own (K1) context
        record = RequestStore(net["root"] / "lead" / "requests").load(info["id"])
        assert record.extra["speculative"]["steps"] == len(record.steps)
        from verisplit.impl.audit.verifier import record_context

        for step in record.steps:
            assert check_chain(record.cohort, step.commitments, step.first_input_digest, record_context(record, step)).valid
    assert multi > 0 and rollbacks > 0  # the prompts exercised multi-position steps and KV rollbacks


def test_speculative_sampling_at_temperature_is_audited_and_settled(net: dict[str, Any]) -> None:
    """temperature > 0: speculative sampling (point-mass draft) runs through the same checked, audited
    steps; the distribution itself is tested in tests/test_speculative_draft.py."""
    client = net["client"]
    response = client.post("/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0.8,
                                                     "seed": 3})
    assert response.status_code == 200, response.text
    info = wait_settled(client, response.headers["x-verisplit-request-id"])
    assert len(response.json()["verisplit"]["completion_token_ids"]) == MAX_TOKENS
    assert all(a["passed"] for a in info["audits"]) and info["ejected"] == []
    check_paid_exactly(info, {p: HONEST_PRICE for p in ("provider-0", "provider-1")}, set())


def test_cheat_inside_a_speculative_step_is_caught(net: dict[str, Any]) -> None:
    client = net["client"]
    group: ProcessGroup = net["group"]
    key = net["root"] / "keys" / "sneaky.key"
    create_key_file(key)
    args = ("--checkpoint", str(net["checkpoint"]), "--layers", "0:2", "--key", str(key), "--listen", "127.0.0.1:0",
            "--lead", net["grpc"], "--price", "1", "--provider-id", "sneaky", "--dtype", "float32")
    child = group.spawn("sneaky", cheatkit.provider_command("test_speculative_net:NoisyVerification", *args),
                        extra_env=cheatkit.provider_env())
    group.wait_ready([child], timeout=150)
    try:
        assert client.get("/v1/cohort").json()["assignments"][0]["provider_id"] == "sneaky"
        response, info = run(client, PROMPTS[1])
        assert any(s["num_positions"] > 1 for s in info["steps"][1:])
        failing = [a for a in info["audits"] if not a["passed"]]
        assert [(a["provider_id"], a["segment_index"]) for a in failing] == [("sneaky", 0)], info["audits"]
        assert info["ejected"] == ["sneaky"]
        check_paid_exactly(info, {"sneaky": 1, "provider-1": HONEST_PRICE}, {"sneaky"})
    finally:
        group.stop(child, timeout=5)


def test_external_lead_checks_accept_speculative_steps(net: dict[str, Any]) -> None:
    """``verisplit conform lead`` (conformance/external.py) checks each step's chain under its own K1
    context and the fee as F1 over the signed steps, so a speculative lead passes it."""
    from verisplit.conformance.external import check_lead

    results = check_lead(net["http"], max_tokens=8)
    assert results and all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]


def test_logprobs_of_speculative_tokens_come_from_the_row_they_were_drawn_from(net: dict[str, Any]) -> None:
    """With drafts, one step yields several tokens: each token's logprob must be read from the logits
    row it was drawn from (not the step's last row, and never a step that does not exist). Checked
    against a stateless fp32 forward of prompt + completion (tolerance 1e-3 in log space: batched vs
    incremental fp32 drift on this model is ~1e-5), and greedy tokens are each row's top choice."""
    client = net["client"]
    reference_model = load_full(net["checkpoint"], device="cpu", dtype=torch.float32)
    prompt = PROMPTS[1]
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                                                    "logprobs": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    tokens = body["verisplit"]["completion_token_ids"]
    info = wait_settled(client, response.headers["x-verisplit-request-id"])
    assert any(step["num_positions"] > 1 for step in info["steps"][1:])  # drafts were verified in one step
    ids = prompt + tokens
    logits = reference_model.forward_full(torch.tensor(ids), torch.arange(len(ids)))
    expected = torch.log_softmax(logits.float(), dim=-1)
    reported = body["choices"][0]["logprobs"]["token_logprobs"]
    assert len(reported) == len(tokens)
    for i, (token, logprob) in enumerate(zip(tokens, reported)):
        row = expected[len(prompt) - 1 + i]
        assert abs(logprob - float(row[token])) < 1e-3, (i, logprob, float(row[token]))
        assert token == int(torch.argmax(row))


def test_billed_positions_are_the_lookup_drafters_rule_k2(net: dict[str, Any]) -> None:
    """From the public view alone (token ids, steps, the speculative parameters) a client recomputes
    every step's positions (rule K2): an honest speculative lead passes; the same view with one step
    padded by a junk draft position (what a lead billing extra positions would record) is refused."""
    from verisplit.spec.speculative import DRAFT_MISMATCH, check_draft_lengths

    for prompt in PROMPTS:
        _, info = run(net["client"], prompt)
        spec = info["speculative"]
        assert (spec["k"], spec["max_tokens"]) == (K, MAX_TOKENS)
        steps = [(s["first_position"], s["num_positions"]) for s in info["steps"]]
        args = (info["prompt_token_ids"], info["completion_token_ids"])
        assert check_draft_lengths(*args, steps, spec["k"], spec["max_tokens"], spec["max_ngram"]) is None
        padded = [(f, n + (j == len(steps) // 2)) for j, (f, n) in enumerate(steps)]
        failure = check_draft_lengths(*args, padded, spec["k"], spec["max_tokens"], spec["max_ngram"])
        assert failure is not None and failure[0] == DRAFT_MISMATCH
