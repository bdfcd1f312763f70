"""Tokenizers for checkpoints: build the embedded byte-level BPE, load ``tokenizer.json``, chat format.

The embedded tokenizer is byte-level BPE trained (deterministically) on ``CORPUS`` with the
``tokenizers`` library, then padded with reserved special tokens so its size equals the model's
``vocab_size`` exactly: every id the model can emit decodes.

Chat template (``format_chat``), one block per message, then the assistant header::

    <|bos|><|system|>\\n{content}<|end|>\\n<|user|>\\n{content}<|end|>\\n<|assistant|>\\n
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from verisplit.impl.runtime.errors import CheckpointError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS.values(), END]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)

CORPUS = """\
Verified split inference runs one large language model across several independent providers.
Each provider holds a contiguous range of transformer layers, receives the residual stream from
the provider before it, runs its layers, and passes the result on. The lead engineer routes every
request, records signed commitments to the tensors that cross each boundary, and pays each
provider for the work it did. A verifier re-executes a sampled segment on the committed inputs and
compares the outputs within a measured tolerance. Honest providers are paid; cheaters forfeit.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Hello, how are you today? I am fine, thank you. What is the weather like in the city?
It is sunny and warm, with a light breeze from the west. The meeting starts at nine o'clock.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024 3.14159 42. Lists: apples, pears, plums.
def forward(x): return layer(x) + x  # residual connection
The model predicts the next token from the tokens before it. Attention lets every position look
at earlier positions; the key and value cache keeps what earlier positions computed so that each
new token costs one small step instead of a full pass over the whole sequence.
Once upon a time there was a small model that wanted to be very large. It split itself into four
pieces and asked four friends to hold them. Together they answered every question in turn.
"""


def build_tokenizer(vocab_size: int, corpus: str = CORPUS) -> Tokenizer:
    """Byte-level BPE of exactly ``vocab_size`` ids: specials first, bytes, merges, reserved padding."""
    if vocab_size < MIN_VOCAB:
        raise CheckpointError(f"vocab_size: {vocab_size} is below the minimum {MIN_VOCAB} of the byte-level tokenizer")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    reserved = [f"<|reserved_{i}|>" for i in range(vocab_size - tokenizer.get_vocab_size())]
    if reserved:
        tokenizer.add_special_tokens(reserved)
    if tokenizer.get_vocab_size() != vocab_size:  # pragma: no cover - guards the padding logic
        raise CheckpointError(f"tokenizer: built {tokenizer.get_vocab_size()} ids, wanted {vocab_size}")
    return tokenizer


def load_tokenizer(checkpoint_dir: str | Path) -> Tokenizer:
    """Read ``<checkpoint_dir>/tokenizer.json``; a missing or invalid file raises ``CheckpointError``."""
    path = Path(checkpoint_dir) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: tokenizer.json not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on parse errors
        raise CheckpointError(f"{path}: tokenizer.json could not be parsed ({exc})") from None


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (special-token strings in the text map to their ids)."""
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def decode(tokenizer: Tokenizer, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Text of ``ids``; special and reserved tokens are dropped unless asked for."""
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def format_chat(messages: Sequence[Mapping[str, str]], checkpoint_dir: str | Path | None = None) -> str:
    """Render chat messages; ends with the assistant header.

    With ``checkpoint_dir`` whose ``tokenizer_config.json`` has a ``chat_template``, that template is
    rendered (``verisplit.impl.runtime.chat_template``, HF semantics; errors are ``ValueError``s). Otherwise
    (the embedded random model) the template in the module docstring is used.
    """
    if checkpoint_dir is not None:  # checkpoint chat template (issue 15)
        from verisplit.impl.runtime.chat_template import load_chat_template

        template = load_chat_template(checkpoint_dir)
        if template is not None:
            return template.render(messages, add_generation_prompt=True)
    parts = [BOS]
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLE_TOKENS:
            raise ValueError(f"messages[{index}].role: {role!r} is not one of {sorted(ROLE_TOKENS)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content: expected a string, got {type(content).__name__}")
        parts.append(f"{ROLE_TOKENS[role]}\n{content}{END}\n")
    parts.append(f"{ROLE_TOKENS['assistant']}\n")
    return "".join(parts)


def stop_token_ids(tokenizer: Tokenizer, checkpoint_dir: str | Path | None = None) -> list[int]:
    """Ids that end a generation: ``<|eos|>`` and ``<|end|>`` (when present); with ``checkpoint_dir``
    also the checkpoint's eos ids and the end-of-turn tokens its chat template writes."""
    ids = [tokenizer.token_to_id(EOS), tokenizer.token_to_id(END)]
    out = [i for i in ids if i is not None]
    if checkpoint_dir is not None:  # checkpoint chat template (issue 15)
        from verisplit.impl.runtime.chat_template import checkpoint_stop_token_ids

        out += [i for i in checkpoint_stop_token_ids(checkpoint_dir, tokenizer) if i not in out]
    return out
