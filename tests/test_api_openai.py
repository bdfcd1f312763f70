"""OpenAI compatibility of the lead's HTTP API, checked with the official ``openai`` client against a
real lead and providers on loopback (issue 15).

One module-scoped cohort (lead + 2 providers, a 4-layer hidden-64 random fp32 model with a 96-token
context) serves every test but the last, which runs the real default model (marked slow). Checked:
explicit ``null`` for every optional field; text content parts and the ``developer`` role;
``logprobs`` in both OpenAI shapes, equal to ``log_softmax`` of a single-process reference within
1e-4; ``stream_options.include_usage``; unsupported parameters refused with ``param`` naming them;
context-length errors naming the prompt; the default chat ``max_tokens`` filling the context.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
import torch

from verisplit.impl.node.procs import ProcessGroup, start_local_cohort
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.loader import load_full
from verisplit.impl.runtime.tokenizer import decode, load_tokenizer

pytestmark = pytest.mark.net

CONTEXT = 96
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("api")
    checkpoint = make_random_checkpoint(root / "ckpt", layers=4, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=CONTEXT, seed=11)
    with ProcessGroup(root / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 2), (2, 4)], keys_dir=root / "keys", data_dir=root / "lead")
        info["checkpoint"] = checkpoint
        info["http_client"] = httpx.Client(base_url=info["http"], timeout=60)
        info["client"] = openai.OpenAI(base_url=info["http"] + "/v1", api_key="unused", max_retries=0)
        info["model_id"] = info["client"].models.list().data[0].id
        tokenizer = load_tokenizer(checkpoint)
        info["special"] = {i for i in range(512) if decode(tokenizer, [i]) == ""}
        yield info
        info["http_client"].close()


def reference_logprobs(checkpoint: Path, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """log_softmax of the un-split model's logits at the positions that predicted ``generated``."""
    model = load_full(checkpoint, device="cpu", dtype=torch.float32)
    ids = torch.tensor(prompt + generated, dtype=torch.int64)
    logits = model.forward_full(ids, torch.arange(len(ids)))
    return torch.log_softmax(logits.to(torch.float64), dim=-1)[len(prompt) - 1:len(ids) - 1]


def bad_request(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    error = info.value
    assert set(error.body) >= {"message", "type", "param", "code"}
    return error


def test_models_list_the_model_with_its_context_length(cohort: dict[str, Any]) -> None:
    client = cohort["client"]
    (card,) = client.models.list().data
    assert card.id == cohort["model_id"] and card.object == "model"
    assert card.model_extra["context_length"] == CONTEXT
    assert client.models.retrieve(card.id).id == card.id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_explicit_null_for_every_optional_field(cohort: dict[str, Any]) -> None:
    client, model = cohort["client"], cohort["model_id"]
    chat = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=4, temperature=None, top_p=None, n=None, stream=None, stop=None,
        seed=None, user=None, presence_penalty=None, frequency_penalty=None, logit_bias=None, logprobs=None,
        top_logprobs=None, response_format=None, tools=None, tool_choice=None, stream_options=None,
        max_completion_tokens=None, metadata=None, store=None, service_tier=None, parallel_tool_calls=None)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    assert chat.choices[0].logprobs is None
    text = client.completions.create(
        model=model, prompt="The quick brown fox", max_tokens=None, temperature=None, top_p=None, n=None, stream=None,
        stop=None, seed=None, user=None, presence_penalty=None, frequency_penalty=None, logit_bias=None,
        logprobs=None, echo=None, best_of=None, suffix=None, stream_options=None)
    # The legacy default max_tokens is 16. temperature and seed are null too, so this is a randomly seeded
    # sample at temperature 1, which may draw the eos token before the budget (about 1 run in 20 on this
    # random model): then it stops early, with "stop", and never runs past 16.
    if text.choices[0].finish_reason == "length":
        assert text.usage.completion_tokens == 16
    else:
        assert text.choices[0].finish_reason == "stop" and 1 <= text.usage.completion_tokens < 16
    # Raw JSON with nulls everywhere, including the model and the fields the client might drop.
    raw = cohort["http_client"].post("/v1/chat/completions", json={
        "model": None, "messages": MESSAGES, "max_tokens": 3, "temperature": None, "top_p": None, "n": None,
        "stream": None, "stop": None, "seed": None, "user": None, "logprobs": None, "top_logprobs": None,
        "tools": None, "functions": None, "function_call": None, "stream_options": None, "modalities": None,
        "audio": None, "prediction": None, "reasoning_effort": None, "some_future_field": None})
    assert raw.status_code == 200, raw.text


def test_text_parts_and_developer_role_are_plain_messages(cohort: dict[str, Any]) -> None:
    http = cohort["http_client"]

    def ids(messages: list[dict[str, Any]]) -> tuple[list[int], int]:
        body = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0}).json()
        return body["verisplit"]["completion_token_ids"], body["usage"]["prompt_tokens"]

    plain = ids([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello\nthere"}])
    parts = ids([{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                 {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}])
    assert parts == plain
    client = cohort["client"]
    error = bad_request(lambda: client.chat.completions.create(model=cohort["model_id"], max_tokens=2, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]))
    assert error.param == "messages.0.content.0.type" and error.code == "unsupported_value"
    error = bad_request(lambda: client.chat.completions.create(model=cohort["model_id"], max_tokens=2, messages=[
        {"role": "tool", "content": "42", "tool_call_id": "call-1"}]))
    assert error.param == "messages.0.role"


def test_chat_logprobs_are_the_models_distribution(cohort: dict[str, Any]) -> None:
    client, model = cohort["client"], cohort["model_id"]
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=3)
    info = cohort["http_client"].get(f"/v1/requests/{answer.id}").json()
    prompt, generated = info["prompt_token_ids"], info["completion_token_ids"]
    content = answer.choices[0].logprobs.content
    assert len(content) == len(generated) == 8 and answer.choices[0].finish_reason == "length"
    reference = reference_logprobs(cohort["checkpoint"], prompt, generated)
    for entry, token, row in zip(content, generated, reference):
        assert abs(entry.logprob - float(row[token])) < 1e-4
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy: the argmax
        assert abs(entry.top_logprobs[0].logprob - float(row.max())) < 1e-4
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    # (random weights emit stray bytes and special tokens: compare as the decoder does)
    joined = b"".join(bytes(e.bytes) for e, t in zip(content, generated) if t not in cohort["special"])
    joined = joined.decode("utf-8", errors="replace")
    assert joined == answer.choices[0].message.content
    # The same numbers arrive chunk by chunk when streamed.
    streamed = []
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True)
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)
    error = bad_request(lambda: client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2,
                                                               top_logprobs=2))
    assert error.param == "top_logprobs"


def test_completion_logprobs_use_the_legacy_shape(cohort: dict[str, Any]) -> None:
    client, model = cohort["client"], cohort["model_id"]
    prompt = "The quick brown fox"
    out = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    info = cohort["http_client"].get(f"/v1/requests/{out.id}").json()
    generated = info["completion_token_ids"]
    assert len(lp.tokens) == len(generated) == 6
    joined = "".join(s for s, t in zip(lp.tokens, generated) if t not in cohort["special"])
    # random weights emit stray UTF-8 bytes: one replacement character per token vs per invalid run
    assert joined.replace("\ufffd", "") == out.choices[0].text.replace("\ufffd", "")
    assert lp.text_offset[0] == len(prompt) and lp.text_offset == sorted(lp.text_offset)
    reference = reference_logprobs(cohort["checkpoint"], info["prompt_token_ids"], generated)
    for k, (token, row) in enumerate(zip(generated, reference)):
        assert abs(lp.token_logprobs[k] - float(row[token])) < 1e-4
        assert 2 <= len(lp.top_logprobs[k]) <= 3 and lp.top_logprobs[k][lp.tokens[k]] == lp.token_logprobs[k]
    zero = client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0, logprobs=0)
    assert all(len(top) == 1 for top in zero.choices[0].logprobs.top_logprobs)
    error = bad_request(lambda: client.completions.create(model=model, prompt=prompt, max_tokens=2, logprobs=6))
    assert error.param == "logprobs"


def sse(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "Hi"}),
])
def test_include_usage_adds_one_last_chunk_with_the_usage(cohort: dict[str, Any], path: str, body: dict[str, Any]) -> None:
    http = cohort["http_client"]
    base = body | {"max_tokens": 4, "temperature": 0, "stream": True}
    plain = sse(http, path, base)
    assert all("usage" not in event for event in plain)
    with_usage = sse(http, path, base | {"stream_options": {"include_usage": True}})
    *chunks, last = with_usage
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 4
    assert chunks and all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # the official client sees the same
    client = cohort["client"]
    kw = {"model": cohort["model_id"], "max_tokens": 4, "temperature": 0, "stream": True,
          "stream_options": {"include_usage": True}}
    stream = (client.chat.completions.create(messages=MESSAGES, **kw) if "chat" in path
              else client.completions.create(prompt="Hi", **kw))
    events = list(stream)
    assert events[-1].choices == [] and events[-1].usage.completion_tokens == 4
    assert all(e.usage is None for e in events[:-1])


CHAT_REFUSED = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1.0}, "frequency_penalty"),
    ({"n": 2}, "n"),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"extra_body": {"top_k": 5}}, "top_k"),
]
COMPLETION_REFUSED = [
    ({"echo": True}, "echo"), ({"best_of": 2}, "best_of"), ({"suffix": "end"}, "suffix"), ({"n": 3}, "n"),
    ({"logit_bias": {"5": -100}}, "logit_bias"), ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"extra_body": {"min_p": 0.1}}, "min_p"),
]


@pytest.mark.parametrize("kwargs, param", CHAT_REFUSED)
def test_unsupported_chat_parameters_are_refused_by_name(cohort: dict[str, Any], kwargs: dict[str, Any], param: str) -> None:
    client = cohort["client"]
    error = bad_request(lambda: client.chat.completions.create(model=cohort["model_id"], messages=MESSAGES,
                                                               max_tokens=2, **kwargs))
    assert error.param == param and error.status_code == 400 and param in error.message


@pytest.mark.parametrize("kwargs, param", COMPLETION_REFUSED)
def test_unsupported_completion_parameters_are_refused_by_name(cohort: dict[str, Any], kwargs: dict[str, Any],
                                                               param: str) -> None:
    client = cohort["client"]
    error = bad_request(lambda: client.completions.create(model=cohort["model_id"], prompt="Hi", max_tokens=2, **kwargs))
    assert error.param == param and param in error.message


def test_no_op_values_of_unsupported_parameters_are_accepted(cohort: dict[str, Any]) -> None:
    client, model = cohort["client"], cohort["model_id"]
    # temperature 0: a randomly seeded sample could draw the eos token inside the 2-token budget
    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, n=1, presence_penalty=0,
                                          frequency_penalty=0, logit_bias={}, response_format={"type": "text"},
                                          tools=[], tool_choice="none", temperature=0)
    assert chat.usage.completion_tokens == 2
    text = client.completions.create(model=model, prompt="Hi", max_tokens=2, echo=False, best_of=1, suffix="",
                                     temperature=0)
    assert text.usage.completion_tokens == 2


def test_context_length_errors_name_the_prompt(cohort: dict[str, Any]) -> None:
    client, model = cohort["client"], cohort["model_id"]
    error = bad_request(lambda: client.completions.create(model=model, prompt=[7] * CONTEXT, max_tokens=1))
    assert error.param == "prompt" and error.code == "context_length_exceeded" and str(CONTEXT) in error.message
    error = bad_request(lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello " * CONTEXT}]))
    assert error.param == "messages" and error.code == "context_length_exceeded"
    error = bad_request(lambda: client.completions.create(model=model, prompt=[7] * 10, max_tokens=CONTEXT))
    assert error.param == "max_tokens" and error.code == "context_length_exceeded"
    error = bad_request(lambda: client.chat.completions.create(model=model, messages=MESSAGES,
                                                               max_completion_tokens=CONTEXT))
    assert error.param == "max_completion_tokens"
    fits = client.completions.create(model=model, prompt=[7] * (CONTEXT - 1), max_tokens=None, temperature=0)
    assert fits.usage.completion_tokens == 1  # the default 16, capped to what fits


def test_default_chat_max_tokens_is_what_fits_the_context(cohort: dict[str, Any]) -> None:
    answer = cohort["client"].chat.completions.create(model=cohort["model_id"], messages=MESSAGES, temperature=0)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.total_tokens == CONTEXT
    assert answer.usage.completion_tokens == CONTEXT - answer.usage.prompt_tokens


def test_default_chat_max_tokens_stays_within_the_providers_kv_capacity(tmp_path: Path, cohort: dict[str, Any]) -> None:
    # one provider for all 4 layers: 4 layers x 2 kv heads x 16 dims x fp32 x (K, V) = 1 KiB per token
    with ProcessGroup(tmp_path / "logs") as group:
        info = start_local_cohort(group, cohort["checkpoint"], [(0, 4)], keys_dir=tmp_path / "keys",
                                  data_dir=tmp_path / "lead", extra_provider_args=["--kv-budget-mb", "0.06"])
        capacity = httpx.get(info["http"] + "/v1/providers").json()["data"][0]["kv_capacity_tokens"]
        assert capacity < CONTEXT
        client = openai.OpenAI(base_url=info["http"] + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model=cohort["model_id"], messages=MESSAGES, temperature=0)
        assert answer.choices[0].finish_reason == "length" and answer.usage.total_tokens == capacity


def test_stop_strings_cut_the_text_and_its_logprobs(cohort: dict[str, Any]) -> None:
    client, model = cohort["client"], cohort["model_id"]
    prompt = "The quick brown fox"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    k = next(i for i in range(3, len(whole)) if whole[i] not in "\ufffd" and whole.find(whole[i]) == i)
    cut = client.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0, stop=whole[k],
                                    logprobs=1).choices[0]
    assert cut.text == whole[:k] and cut.finish_reason == "stop"
    assert all(offset < len(prompt) + k for offset in cut.logprobs.text_offset)
    streamed = client.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0, stop=whole[k],
                                         logprobs=1, stream=True)
    chunks = [c.choices[0] for c in streamed if c.choices]
    assert "".join(c.text for c in chunks) == whole[:k]
    assert sum((c.logprobs.tokens for c in chunks if c.logprobs), []) == cut.logprobs.tokens


def test_every_error_is_openai_shaped(cohort: dict[str, Any]) -> None:
    http = cohort["http_client"]
    for path, body in [("/v1/chat/completions", {"messages": []}),
                       ("/v1/chat/completions", {"messages": MESSAGES, "temperature": "hot"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}),
                       ("/v1/completions", {"prompt": ["a", "b"]}),
                       ("/v1/completions", {"prompt": "x", "stop": ["a"] * 5})]:
        response = http.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["param"], error
        assert error["message"].startswith(error["param"]), error


@pytest.mark.slow
def test_real_model_answers_through_three_providers(tmp_path: Path) -> None:
    from verisplit.impl.runtime.default_model import default_cache_dir, ensure_default_checkpoint

    checkpoint = ensure_default_checkpoint(default_cache_dir())
    with ProcessGroup(tmp_path / "logs") as group:
        info = start_local_cohort(group, checkpoint, [(0, 10), (10, 20), (20, 30)], keys_dir=tmp_path / "keys",
                                  data_dir=tmp_path / "lead")
        client = openai.OpenAI(base_url=info["http"] + "/v1", api_key="unused", max_retries=0)
        (card,) = client.models.list().data
        assert card.model_extra["context_length"] == 8192
        answer = client.chat.completions.create(
            model=card.id, temperature=0, max_tokens=24, logprobs=True, top_logprobs=2,
            messages=[{"role": "developer", "content": "Answer in one short sentence."},
                      {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}])
        assert "Paris" in answer.choices[0].message.content
        for entry in answer.choices[0].logprobs.content:
            assert entry.logprob <= 0 and sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-6
