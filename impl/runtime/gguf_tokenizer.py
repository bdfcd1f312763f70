"""The tokenizer half of a GGUF import: ``tokenizer.json`` and ``tokenizer_config.json`` from the GGUF's
``tokenizer.ggml.*`` metadata (byte-level BPE, built with the ``tokenizers`` library).

Invariant: token ids are the GGUF's (0..vocab_size-1); control tokens become special added tokens;
a tokenizer kind or pre-tokenizer this module does not reproduce exactly is refused with
``UnsupportedGGUFError`` naming it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from verisplit.impl.runtime.gguf_meta import GGUFImportError, UnsupportedGGUFError

# ``tokenizer.ggml.token_type`` values (llama.cpp's llama_token_type)
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4

# Pre-tokenizer splits, by ``tokenizer.ggml.pre`` (the regexes llama.cpp and the models' tokenizer.json use).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str, str] = {
    "default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2",
    "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2",
    "llama3": "llama3", "llama-bpe": "llama3", "llama-v3": "llama3", "smaug-bpe": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}


# --- tokenizer ---------------------------------------------------------------------------------------

def build_tokenizer(meta: Mapping[str, Any], vocab_size: int) -> Any:
    """A ``tokenizers.Tokenizer`` equal to the GGUF's byte-level BPE, with ids 0..vocab_size-1.

    Control tokens become special added tokens (whole in text, dropped by ``skip_special_tokens``),
    user-defined ones plain added tokens. Ids past the file's token list (padding rows of the
    embedding) become ``<|gguf_reserved_i|>`` special tokens, so every id the model can emit decodes.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedGGUFError(f"GGUF tokenizer.ggml.model {kind!r} is not supported (gpt2: byte-level BPE)")
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedGGUFError(
            f"GGUF tokenizer.ggml.pre {pre!r} is not supported ({', '.join(sorted(PRE_TOKENIZERS))})")
    tokens = [str(t) for t in meta.get("tokenizer.ggml.tokens") or []]
    if not tokens or len(tokens) > vocab_size:
        raise GGUFImportError(f"GGUF: {len(tokens)} tokens for an embedding of {vocab_size} rows")
    vocab = _byte_level_vocab(tokens)
    merges = _merges(meta.get("tokenizer.ggml.merges") or [])
    style = PRE_TOKENIZERS[pre]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=style == "llama3"))
    tokenizer.pre_tokenizer = _pre_tokenizer(style, pre_tokenizers)
    if style == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i, t in enumerate(types) if t == TOKEN_CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, t in enumerate(types) if t == TOKEN_USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)
    reserved = [f"<|gguf_reserved_{i}|>" for i in range(len(tokens), vocab_size)]
    if reserved:
        tokenizer.add_special_tokens(reserved)
    if meta.get("tokenizer.ggml.add_bos_token") and meta.get("tokenizer.ggml.bos_token_id") is not None:
        bos_id = int(meta["tokenizer.ggml.bos_token_id"])
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    if tokenizer.get_vocab_size() != vocab_size:
        raise GGUFImportError(f"GGUF tokenizer: built {tokenizer.get_vocab_size()} ids, the model has {vocab_size}")
    return tokenizer


def _byte_level_vocab(tokens: Sequence[str]) -> dict[str, int]:
    """token -> id; tokens written in raw text rather than the byte alphabet are respelled into it."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    spelling = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        if token in vocab:
            raise GGUFImportError(f"GGUF tokenizer: token {token!r} appears twice (ids {vocab[token]} and {index})")
        vocab[token] = index
    return vocab


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges(raw: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for merge in raw:
        parts = str(merge).split(" ")
        if len(parts) != 2:
            raise GGUFImportError(f"GGUF tokenizer: merge {merge!r} is not two tokens separated by one space")
        out.append((parts[0], parts[1]))
    return out


def _pre_tokenizer(style: str, pre_tokenizers: Any) -> Any:
    from tokenizers import Regex

    if style == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "digits+gpt2":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    split = _LLAMA3_SPLIT if style == "llama3" else _QWEN2_SPLIT
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def special_token_ids(meta: Mapping[str, Any]) -> dict[str, int]:
    """bos/eos/pad/unk/eot/eom ids the file names (only those present)."""
    out = {}
    for key in ("bos", "eos", "padding", "unknown", "eot", "eom"):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            out[key] = int(value)
    return out


def chat_template(meta: Mapping[str, Any]) -> str | list[dict[str, str]] | None:
    """The default ``tokenizer.chat_template`` or, with named ones, HF's list form."""
    default = meta.get("tokenizer.chat_template")
    names = [str(n) for n in meta.get("tokenizer.chat_templates") or []]
    if not names:
        return str(default) if default is not None else None
    out = [{"name": "default", "template": str(default)}] if default is not None else []
    out += [{"name": n, "template": str(meta[f"tokenizer.chat_template.{n}"])}
            for n in names if f"tokenizer.chat_template.{n}" in meta]
    return out


# --- output files ------------------------------------------------------------------------------------

def tokenizer_config_dict(meta: Mapping[str, Any], tokens: Sequence[str], ids: Mapping[str, int],
                          context_length: int) -> dict[str, Any]:
    """``tokenizer_config.json``: special token strings, bos/eos flags and the chat template."""
    def token(key: str) -> str | None:
        return tokens[ids[key]] if key in ids and ids[key] < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    template = chat_template(meta)
    if template is not None:
        config["chat_template"] = template
    return config
