"""A checkpoint's own chat template (``chat_template`` in ``tokenizer_config.json``), rendered as
Hugging Face's ``apply_chat_template(..., tokenize=False)`` does, and the ids that end a turn.

Invariants:
- Templates are untrusted code: they run only in ``jinja2.sandbox.ImmutableSandboxedEnvironment``
  (jinja2 >= 3.1.6), with HF's settings (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, a
  ``{% generation %}`` tag that renders its body) and globals (``raise_exception``, ``strftime_now``,
  a ``tojson`` that keeps non-ASCII), and the variables ``messages``, ``add_generation_prompt`` and
  the special-token strings (``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``).
- Any template failure (syntax, ``raise_exception``, sandbox violation) is a ``ChatTemplateError``
  naming the cause; nothing else escapes ``render``.
- The rendered text is tokenized without adding special tokens: the template writes every marker
  itself, and the tokenizer maps those markers to their special ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

# Markers that end an assistant turn in common templates; one counts as a stop token only when the
# checkpoint's template writes it and the tokenizer has it as a single token.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>",
                       "<|endoftext|>", "<|end_of_text|>", "</s>")
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatTemplateError(ValueError):
    """The chat template could not be read or rendered (the message says why)."""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template and the special-token strings it may refer to."""

    source: str
    special_tokens: Mapping[str, str] = field(default_factory=dict)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """The prompt text for ``messages``; with ``add_generation_prompt`` it ends with the assistant header."""
        import jinja2

        plain = [_message(m, i) for i, m in enumerate(messages)]
        try:
            return _compile(self.source).render(
                messages=plain, add_generation_prompt=add_generation_prompt,
                **{**dict(self.special_tokens), **extra})
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template: {exc}") from None


def _message(message: Mapping[str, Any], index: int) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"messages[{index}]: expected an object, got {type(message).__name__}")
    if not isinstance(message.get("role"), str):
        raise ChatTemplateError(f"messages[{index}].role: expected a string, got {message.get('role')!r}")
    return dict(message)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    """The sandboxed template object for ``source`` (cached: templates are compiled once)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for HF's masks; renders the body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template: {exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChatTemplateError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _pick_template(value: Any, path: Path) -> str | None:
    """The default template from HF's string or ``[{"name", "template"}, ...]`` forms."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    raise ChatTemplateError(f"{path}: chat_template must be a string or a list of named templates")


def load_chat_template(checkpoint_dir: str | Path) -> ChatTemplate | None:
    """The checkpoint's chat template, or None when ``tokenizer_config.json`` has none."""
    path = Path(checkpoint_dir) / "tokenizer_config.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _load_cached(str(path.resolve()), stamp)


@lru_cache(maxsize=16)
def _load_cached(path_text: str, stamp: int) -> ChatTemplate | None:
    path = Path(path_text)
    config = _read_json(path)
    source = _pick_template(config.get("chat_template"), path)
    if source is None:
        jinja_file = path.with_name("chat_template.jinja")  # transformers >= 4.43 may save it beside
        if not jinja_file.is_file():
            return None
        source = jinja_file.read_text(encoding="utf-8")
    specials = {key: text for key in SPECIAL_TOKEN_KEYS if (text := _token_text(config.get(key))) is not None}
    return ChatTemplate(source=source, special_tokens=specials)


def render_chat(checkpoint_dir: str | Path, messages: Sequence[Mapping[str, Any]], *,
                add_generation_prompt: bool = True) -> str:
    """Render the checkpoint's template; a checkpoint without one raises ``ChatTemplateError``."""
    template = load_chat_template(checkpoint_dir)
    if template is None:
        raise ChatTemplateError(f"{checkpoint_dir}: tokenizer_config.json has no chat_template")
    return template.render(messages, add_generation_prompt=add_generation_prompt)


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def checkpoint_stop_token_ids(checkpoint_dir: str | Path, tokenizer: Any) -> list[int]:
    """Ids that end a chat turn: the eos ids of ``generation_config.json`` and ``config.json``, the
    ``eos_token`` of ``tokenizer_config.json``, and each ``END_OF_TURN_MARKERS`` entry that the chat
    template writes and the tokenizer holds as one token. Sorted, without duplicates."""
    root = Path(checkpoint_dir)
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        ids.update(_ids(_read_json(root / name).get("eos_token_id")))
    tokens: list[str] = []
    eos = _token_text(_read_json(root / "tokenizer_config.json").get("eos_token"))
    if eos is not None:
        tokens.append(eos)
    template = load_chat_template(root)
    if template is not None:
        tokens += [m for m in END_OF_TURN_MARKERS if m in template.source]
    for token in tokens:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            ids.add(int(token_id))
    return sorted(ids)

