"""Checkpoint chat templates: rendered in jinja2's immutable sandbox exactly as transformers'
``apply_chat_template(tokenize=False)`` renders them; stop ids include the end-of-turn token."""

from __future__ import annotations

import json

import pytest
import transformers  # test-only dependency (the [test] extra); a missing one must fail, not skip

from verisplit.impl.runtime.chat_template import ChatTemplate, ChatTemplateError, load_chat_template, render_chat
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.tokenizer import END, EOS, format_chat, load_tokenizer, stop_token_ids

SMOL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}\n"
          "    {% if message['role'] not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}\n"
          "    {{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}\n"
          "{% endfor %}\n{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
FANCY = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
         "{% generation %}[{{ m | tojson }}]{% endgeneration %}{% endfor %}{{ eos_token }}")
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße, ünïcode!"},
        {"role": "assistant", "content": "Hallo."}, {"role": "user", "content": "  And now?  "}]


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("rnd") / "m", layers=1, hidden=32, heads=2, kv_heads=1,
                                  vocab=320)


def with_template(path, template, **extra):
    """The checkpoint at ``path`` with ``chat_template`` (and extra fields) in tokenizer_config.json."""
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update({"chat_template": template, **extra})
    config_path.write_text(json.dumps(config))
    return path


@pytest.fixture
def templated(random_checkpoint, tmp_path):
    import shutil

    def make(template, **extra):
        target = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        shutil.copytree(random_checkpoint, target)
        return with_template(target, template, **extra)

    return make


@pytest.mark.parametrize("template", [SMOL, LLAMA3, FANCY], ids=["smollm2", "llama3", "loopcontrols-generation-tojson"])
@pytest.mark.parametrize("messages", [MESSAGES, CHAT], ids=["one", "chat"])
def test_matches_transformers_apply_chat_template(templated, template, messages):
    path = templated(template, bos_token="<|bos|>", eos_token={"content": "<|eos|>", "special": True})
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"),
                                                     bos_token="<|bos|>", eos_token="<|eos|>")
    reference.chat_template = template
    for generation_prompt in (True, False):
        ours = render_chat(path, messages, add_generation_prompt=generation_prompt)
        theirs = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert ours == theirs


def test_smollm2_template_text():
    text = ChatTemplate(SMOL).render(MESSAGES)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert not ChatTemplate(SMOL).render(MESSAGES, add_generation_prompt=False).endswith("assistant\n")


def test_raise_exception_and_sandbox_are_errors():
    with pytest.raises(ChatTemplateError, match="Unknown role: tool"):
        ChatTemplate(LLAMA3, {"bos_token": "<s>"}).render([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="chat template: .*unsafe|chat template: .*access"):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(MESSAGES)
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% set _ = messages.append({'role': 'user'}) %}").render(MESSAGES)  # immutable sandbox
    with pytest.raises(ChatTemplateError, match="chat template: "):
        ChatTemplate("{% for m in messages %}").render(MESSAGES)  # syntax error
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].role"):
        ChatTemplate(SMOL).render([{"content": "no role"}])


def test_format_chat_uses_checkpoint_template(templated, random_checkpoint):
    path = templated(LLAMA3, bos_token="<|bos|>")
    assert format_chat(MESSAGES, checkpoint_dir=path) == ChatTemplate(LLAMA3, {"bos_token": "<|bos|>"}).render(MESSAGES)
    with pytest.raises(ValueError, match="Unknown role"):
        format_chat([{"role": "robot", "content": "x"}], checkpoint_dir=path)
    # the embedded random model has no template: unchanged behaviour, with or without the folder
    assert load_chat_template(random_checkpoint) is None
    assert format_chat(CHAT, checkpoint_dir=random_checkpoint) == format_chat(CHAT)
    tok = load_tokenizer(random_checkpoint)
    assert stop_token_ids(tok, checkpoint_dir=random_checkpoint) == stop_token_ids(tok) == [
        tok.token_to_id(EOS), tok.token_to_id(END)]


def test_list_form_and_stop_tokens(templated):
    path = templated([{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": SMOL}])
    assert render_chat(path, MESSAGES).startswith("<|im_start|>system")
    tok = load_tokenizer(path)
    eos, end = tok.token_to_id("<|eos|>"), tok.token_to_id("<|end|>")
    for writes_end in (True, False):
        body = "<|user|>{{ m['content'] }}" + ("<|end|>" if writes_end else "")
        path = templated("{% for m in messages %}" + body + "{% endfor %}", eos_token="<|eos|>")
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
        # <|end|> counts only because the template writes it (and it is one token of the vocabulary)
        from verisplit.impl.runtime.chat_template import checkpoint_stop_token_ids

        assert checkpoint_stop_token_ids(path, tok) == sorted({eos, end} if writes_end else {eos})
