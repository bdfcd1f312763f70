"""Log probabilities for the OpenAI API, from the logits the lead sampled each token from.

The lead's request record keeps, per step, the bytes of every hop's output; the last hop's output of
step ``i`` is the canonical fp32 logits tensor ``[positions, vocab]`` the lead decoded and sampled
token ``i`` from (rule H5 checked its dtype and shape on receipt, ``Lead._check_boundary``). Its last row gives
``log_softmax(logits)``: the model's own distribution (before temperature / top_p, as vLLM's default
``raw_logprobs``), in float64, with ``-inf`` reported as ``-9999.0`` (JSON has no infinities).

Shapes (OpenAI):
- chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
  "refusal": None}``; ``top_logprobs`` holds the ``k`` most likely tokens.
- completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``; each
  ``top_logprobs`` entry maps token text to logprob for the ``k`` most likely tokens plus the
  sampled one (so up to ``k + 1`` entries); ``text_offset`` counts characters from the start of the
  prompt text (the first completion token's offset is the prompt's length).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer

LOGPROB_FLOOR = -9999.0
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (the ``tokenizers`` ByteLevel mapping)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def _uses_byte_level(tokenizer: Tokenizer) -> bool:
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        if isinstance(node, list):
            return any(has(v) for v in node)
        return False

    return has(json.loads(tokenizer.to_str()).get("decoder"))


class TokenBytes:
    """The raw bytes and display text of single token ids of one tokenizer (cached)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.byte_level = _uses_byte_level(tokenizer)
        self._unbyte = {c: b for b, c in _bytes_to_unicode().items()}
        self._cache: dict[int, bytes] = {}

    def bytes_of(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        piece = self.tokenizer.id_to_token(token_id) or ""
        if self.byte_level and all(c in self._unbyte for c in piece):
            raw = bytes(self._unbyte[c] for c in piece)
        elif (m := _BYTE_TOKEN.match(piece)) is not None:  # sentencepiece byte fallback
            raw = bytes([int(m.group(1), 16)])
        else:
            raw = piece.replace("\u2581", " ").encode("utf-8")  # sentencepiece word marker
        self._cache[token_id] = raw
        return raw

    def text_of(self, token_id: int) -> str:
        return self.bytes_of(token_id).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: id, logprob, the ``k`` most likely (id, logprob), and the character
    offset where its text starts in the completion text."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    start: int


def last_row_logits(logits_blob: bytes, vocab: int, back: int = 0) -> torch.Tensor:
    """Row ``positions - 1 - back`` of a canonical fp32 ``[positions, vocab]`` frame (its data is the
    frame's tail; ``back`` = 0 is the last row, a speculative step's earlier rows have ``back`` > 0)."""
    n = 4 * vocab
    end = len(logits_blob) - back * n
    if back < 0 or end < n:
        raise ValueError(f"logits: frame of {len(logits_blob)} bytes holds no row {back} from the end of {vocab} fp32 values")
    return torch.frombuffer(bytearray(logits_blob[end - n:end]), dtype=torch.float32)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else LOGPROB_FLOOR


def token_logprob(logits_row: torch.Tensor, token: int, k: int, start: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits_row.to(torch.float64), dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        values, ids = torch.topk(logprobs, min(k, int(logprobs.numel())))
        top = tuple((int(i), _finite(float(v))) for i, v in zip(ids, values))
    return TokenLogprob(token, _finite(float(logprobs[token])), top, start)


def chat_logprobs(entries: Sequence[TokenLogprob], tb: TokenBytes) -> dict[str, Any]:
    def item(token: int, logprob: float) -> dict[str, Any]:
        return {"token": tb.text_of(token), "logprob": logprob, "bytes": list(tb.bytes_of(token))}

    return {"content": [item(e.token, e.logprob) | {"top_logprobs": [item(i, lp) for i, lp in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob], tb: TokenBytes, prompt_chars: int) -> dict[str, Any]:
    tops = []
    for e in entries:
        top = {tb.text_of(i): lp for i, lp in e.top}
        top.setdefault(tb.text_of(e.token), e.logprob)  # the sampled token is always listed
        tops.append(top)
    return {"tokens": [tb.text_of(e.token) for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": [prompt_chars + e.start for e in entries]}
