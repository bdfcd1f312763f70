"""Request bodies of the OpenAI-compatible API and the rules that turn them into one generation.

Invariants:
- ``null`` is accepted for every optional field and means "not set" (the OpenAI default applies).
- A parameter this lead cannot honour (tools, response formats, penalties, logit bias, echo, suffix,
  n > 1, best_of > 1, non-text content parts, ...) is refused with a 400 whose ``param`` names it,
  unless its value is the no-op one (``null``, ``[]``, ``{}``, ``0``, ``false``, ``n = 1``,
  ``response_format {"type": "text"}``, ``tool_choice "none"``). A field the API does not know is
  refused the same way (as OpenAI does); it is never silently ignored.
- Messages: ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts (joined with
  newlines, as vLLM does); the ``developer`` role is a ``system`` message.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETIONS = 5


class APIError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code", **extra}}`` with ``status``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}}


def invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    """A 400 about ``param``; the message starts with the parameter's name."""
    return APIError(400, f"{param}: {message}", param=param, code=code)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # accepted: this lead never adds obfuscation padding


class SamplingBody(BaseModel):
    """Fields shared by both completion endpoints (OpenAI names, defaults and bounds)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Accepted and without effect on the generation (identifiers and storage hints).
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # Typed loosely so that a refusal names the parameter instead of a type error (see UNSUPPORTED).
    logit_bias: Any = None

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(SamplingBody):
    prompt: str | list[int] | list[list[int]] | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS_COMPLETIONS)
    echo: Any = None
    best_of: Any = None
    suffix: Any = None


class ChatBody(SamplingBody):
    messages: list[Any] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS_CHAT)
    parallel_tool_calls: bool | None = None  # meaningless without tools; accepted
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == [] or value == {}


# parameter -> (is its value the no-op one?, why it is refused otherwise)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v in (None, 1), "only n = 1 (one choice per request) is supported"),
    "best_of": (lambda v: v in (None, 1), "only best_of = 1 is supported"),
    "echo": (_empty, "echo is not supported"),
    "suffix": (_empty, "suffix (insertion) is not supported"),
    "logit_bias": (_empty, "logit_bias is not supported (the sampled distribution is the model's own)"),
    "presence_penalty": (_empty, "a non-zero presence_penalty is not supported"),
    "frequency_penalty": (_empty, "a non-zero frequency_penalty is not supported"),
    "tools": (_empty, "tools (function calling) are not supported"),
    "tool_choice": (lambda v: v in (None, "none"), "tool_choice is not supported (no tools)"),
    "functions": (_empty, "functions (function calling) are not supported"),
    "function_call": (lambda v: v in (None, "none"), "function_call is not supported (no functions)"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "only response_format {\"type\": \"text\"} is supported"),
    "modalities": (lambda v: v is None or v == ["text"], "only the text modality is supported"),
    "audio": (_empty, "audio output is not supported"),
    "prediction": (_empty, "predicted outputs are not supported"),
    "reasoning_effort": (_empty, "reasoning_effort is not supported by this model"),
    "web_search_options": (_empty, "web search is not supported"),
}


def refuse_unsupported(body: SamplingBody) -> None:
    """Raise the 400 for the first parameter that is set to something this lead cannot honour."""
    for name, (no_op, why) in UNSUPPORTED.items():
        if name in type(body).model_fields and not no_op(getattr(body, name)):
            raise invalid(name, why, "unsupported_parameter")
    for name, value in (body.model_extra or {}).items():
        if value is not None:
            raise invalid(name, f"unrecognized request argument (not part of this endpoint's API)",
                          "unknown_parameter")
    if body.stream_options is not None and not body.streaming:
        raise invalid("stream_options", "only allowed when stream is true")


# --- chat messages ---------------------------------------------------------------------------------

MESSAGE_FIELDS = {"role", "content", "name"}


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise invalid(f"{where}.content", "must be a string or a non-empty list of text parts")
    texts = []
    for j, part in enumerate(content):
        here = f"{where}.content.{j}"
        if not isinstance(part, dict):
            raise invalid(here, "a content part must be an object like {\"type\": \"text\", \"text\": ...}")
        if part.get("type") != "text":
            raise invalid(f"{here}.type", f"content parts of type {part.get('type')!r} are not supported "
                                          "(this model reads text only)", "unsupported_value")
        if not isinstance(part.get("text"), str):
            raise invalid(f"{here}.text", "must be a string")
        extra = sorted(k for k, v in part.items() if k not in ("type", "text") and v is not None)
        if extra:
            raise invalid(f"{here}.{extra[0]}", "is not supported in a text part", "unsupported_parameter")
        texts.append(part["text"])
    return "\n".join(texts)


def normalize_messages(messages: list[Any]) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` messages (``developer`` -> ``system``, text parts joined); every
    problem is a 400 naming ``messages.<i>...``."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise invalid(where, "must be an object with role and content")
        role = message.get("role")
        if role in ("tool", "function"):
            raise invalid(f"{where}.role", f"{role} messages are not supported (no tools)", "unsupported_value")
        if role not in CHAT_ROLES:
            raise invalid(f"{where}.role", f"{role!r} is not one of {sorted(CHAT_ROLES)}")
        for key, value in message.items():
            if key not in MESSAGE_FIELDS and not _empty(value):
                raise invalid(f"{where}.{key}", "is not supported (no tools, no audio)", "unsupported_parameter")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(f"{where}.name", "must be a string")
        out.append({"role": CHAT_ROLES[role], "content": _content_text(message.get("content"), where)})
    return out


# --- token budget ------------------------------------------------------------------------------------

def completion_budget(prompt_tokens: int, context: int, requested: int | None, requested_param: str,
                      prompt_param: str, default: int | None) -> int:
    """How many tokens to generate: ``requested`` if it fits, else a 400 naming ``requested_param``;
    unset: ``default`` capped to what fits, or (``default`` None) all that fits. A prompt that leaves
    no room for one token is a 400 naming ``prompt_param``."""
    room = context - prompt_tokens
    if room < 1:
        raise APIError(400, f"{prompt_param}: the prompt is {prompt_tokens} tokens; this model's context length is "
                            f"{context} tokens, which leaves no room for a completion", param=prompt_param,
                       code="context_length_exceeded")
    if requested is None:
        return room if default is None else min(default, room)
    if requested > room:
        raise APIError(400, f"{requested_param}: {requested} completion tokens do not fit: the prompt is "
                            f"{prompt_tokens} tokens and this model's context length is {context} tokens "
                            f"(at most {room} remain)", param=requested_param, code="context_length_exceeded")
    return requested


# --- text checks (before any tokenizing) ---------------------------------------------------------------

MAX_CHARS_PER_TOKEN = 4  # a prompt over this many characters per context token is refused untokenized


def check_text(value: Any, where: str = "body") -> None:
    """Refuse (400 naming the field) any string in ``value`` that is not valid Unicode text: a lone
    surrogate (JSON ``"\ud800"``) cannot be encoded as UTF-8, so no tokenizer or response may see it.
    Iterative (an explicit stack), so any nesting depth the JSON parser accepted is walked."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, here = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise invalid(here, f"not valid Unicode text (lone surrogate U+{ord(item[exc.start]):04X} at "
                                    f"character {exc.start})", "invalid_text") from None
        elif isinstance(item, dict):
            for key, inner in item.items():
                name = str(key) if here == "body" else f"{here}.{key}"
                stack.append((key, here))
                stack.append((inner, name))
        elif isinstance(item, (list, tuple)):
            stack.extend((inner, f"{here}.{i}") for i, inner in enumerate(item) if not isinstance(inner, (int, float)))


def check_prompt_size(chars: int, tokens: int, context: int, param: str) -> None:
    """Refuse a prompt too long for the context before tokenizing it: more than ``context`` token ids,
    or more than ``MAX_CHARS_PER_TOKEN * context`` characters."""
    if tokens > context or chars > MAX_CHARS_PER_TOKEN * context:
        size = f"{tokens} token ids" if tokens > context else f"{chars} characters"
        raise APIError(400, f"{param}: the prompt is {size}; this model's context length is {context} tokens "
                            f"(at most {MAX_CHARS_PER_TOKEN * context} characters are accepted)", param=param,
                       code="context_length_exceeded")
