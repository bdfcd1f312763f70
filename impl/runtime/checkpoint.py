"""Seeded random checkpoints in real Hugging Face format (the embedded default model and test models).

A checkpoint folder holds ``config.json``, ``generation_config.json``, ``tokenizer.json`` (+
``tokenizer_config.json``) and weights as ``model.safetensors`` or ``model-0000i-of-0000S.safetensors``
shards with ``model.safetensors.index.json``. Invariant: the same arguments always write the same
tensor bytes (weights come from one ``torch.Generator`` seeded with ``seed``, drawn in a fixed order).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from verisplit.impl.runtime.config import ModelConfig, UnsupportedModelError
from verisplit.impl.runtime.errors import CheckpointError
from verisplit.impl.runtime.tensors import TORCH_DTYPES
from verisplit.impl.runtime.tokenizer import BOS, END, EOS, PAD, build_tokenizer

ARCHS = ("llama", "qwen2", "mistral")

DEFAULT_MODEL: dict[str, Any] = {
    "arch": "llama",
    "layers": 8,
    "hidden": 512,
    "intermediate": 1408,
    "heads": 8,
    "kv_heads": 4,
    "vocab": 4096,
    "max_position": 2048,
    "shards": 2,
    "seed": 0,
    "tie_embeddings": False,
    "dtype": "float32",
}
DEFAULT_MODEL_DIR = "verisplit-tiny-llama"
_COMPLETE = ".verisplit-complete.json"


def model_config_dict(
    *, arch: str, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
    max_position: int, tie_embeddings: bool, dtype: str, sliding_window: int | None, name: str,
) -> dict[str, Any]:
    """The ``config.json`` contents for one of the supported architectures."""
    base: dict[str, Any] = {
        "_name_or_path": name,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position,
        "initializer_range": 0.02,
        "tie_word_embeddings": tie_embeddings,
        "torch_dtype": dtype,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    if arch == "llama":
        base.update({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": max(16, max_position // 8)},
        })
    elif arch == "qwen2":
        base.update({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": layers, "rope_scaling": None,
        })
    elif arch == "mistral":
        base.update({
            "architectures": ["MistralForCausalLM"], "model_type": "mistral", "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "sliding_window": sliding_window, "rope_scaling": None,
        })
    else:
        raise UnsupportedModelError(f"arch: {arch!r} is not supported ({', '.join(ARCHS)})")
    return base


def random_state_dict(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """HF-named fp32 tensors drawn from one generator in a fixed order.

    Scales keep activations O(1): linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm weights
    ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), so numeric bugs show up as O(1) differences.
    """
    gen = torch.Generator().manual_seed(seed)

    def linear(out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)

    def vec(n: int, center: float = 0.0) -> torch.Tensor:
        return center + 0.1 * torch.randn(n, generator=gen)

    h, i, d = config.hidden_size, config.intermediate_size, config.head_dim
    q_dim, kv_dim = config.num_attention_heads * d, config.num_key_value_heads * d
    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(config.vocab_size, h, generator=gen)}
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        for proj, out_f in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            tensors[p + f"self_attn.{proj}.weight"] = linear(out_f, h)
            if config.attention_bias:
                tensors[p + f"self_attn.{proj}.bias"] = vec(out_f)
        tensors[p + "self_attn.o_proj.weight"] = linear(h, q_dim)
        if config.o_proj_bias:
            tensors[p + "self_attn.o_proj.bias"] = vec(h)
        tensors[p + "mlp.gate_proj.weight"] = linear(i, h)
        tensors[p + "mlp.up_proj.weight"] = linear(i, h)
        tensors[p + "mlp.down_proj.weight"] = linear(h, i)
        if config.mlp_bias:
            for proj, n in (("gate_proj", i), ("up_proj", i), ("down_proj", h)):
                tensors[p + f"mlp.{proj}.bias"] = vec(n)
        tensors[p + "input_layernorm.weight"] = vec(h, 1.0)
        tensors[p + "post_attention_layernorm.weight"] = vec(h, 1.0)
    tensors["model.norm.weight"] = vec(h, 1.0)
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = linear(config.vocab_size, h)
    return tensors


def _shard_of(name: str, layers: int, shards: int) -> int:
    """Shard index: embeddings in the first, norm/head in the last, layers spread evenly."""
    if name.startswith("model.layers."):
        layer = int(name.split(".")[2])
        return layer * shards // layers
    return 0 if name.startswith("model.embed_tokens") else shards - 1


def write_weights(out_dir: Path, tensors: dict[str, torch.Tensor], layers: int, shards: int) -> list[str]:
    """Write safetensors (one file, or ``shards`` files + index); returns the file names written."""
    if shards == 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{k + 1:05d}-of-{shards:05d}.safetensors" for k in range(shards)]
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    weight_map: dict[str, str] = {}
    for name, tensor in tensors.items():
        k = _shard_of(name, layers, shards)
        groups[k][name] = tensor
        weight_map[name] = names[k]
    for k, group in enumerate(groups):
        save_file(group, str(out_dir / names[k]), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names


def make_random_checkpoint(
    out_dir: str | Path,
    *,
    arch: str = "llama",
    layers: int = 8,
    hidden: int = 256,
    intermediate: int | None = None,
    heads: int = 8,
    kv_heads: int = 4,
    vocab: int | None = None,
    max_position: int = 2048,
    shards: int = 1,
    seed: int = 0,
    tie_embeddings: bool = False,
    dtype: str = "float32",
    sliding_window: int | None = None,
) -> Path:
    """Write a seeded random HF checkpoint into ``out_dir`` (created; existing files are overwritten)."""
    if arch not in ARCHS:
        raise UnsupportedModelError(f"arch: {arch!r} is not supported ({', '.join(ARCHS)})")
    if hidden % heads != 0 or heads % kv_heads != 0 or (hidden // heads) % 2 != 0:
        raise CheckpointError(f"shape: hidden {hidden}, heads {heads}, kv_heads {kv_heads} need hidden % heads == 0, "
                              "heads % kv_heads == 0 and an even head_dim")
    if not 1 <= shards <= layers:
        raise CheckpointError(f"shards: {shards} must be in [1, layers={layers}]")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise CheckpointError(f"dtype: {dtype!r} is not supported (float32, float16, bfloat16)")
    if sliding_window is not None and arch != "mistral":
        raise CheckpointError("sliding_window: only the mistral arch takes a sliding window here")
    intermediate = intermediate or _default_intermediate(hidden)
    vocab = vocab or 512
    name = f"verisplit-random-{arch}-l{layers}-h{hidden}-s{seed}"
    config_dict = model_config_dict(
        arch=arch, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
        vocab=vocab, max_position=max_position, tie_embeddings=tie_embeddings, dtype=dtype,
        sliding_window=sliding_window, name=name)
    config = ModelConfig.from_dict(config_dict)
    tokenizer = build_tokenizer(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.safetensors")) + [out / "model.safetensors.index.json"]:
        if stale.exists():
            stale.unlink()
    target = TORCH_DTYPES[dtype]
    tensors = {k: v.to(target).contiguous() for k, v in random_state_dict(config, seed).items()}
    write_weights(out, tensors, layers, shards)
    _write_json(out / "config.json", config_dict)
    _write_json(out / "generation_config.json", {
        "bos_token_id": tokenizer.token_to_id(BOS),
        "eos_token_id": [tokenizer.token_to_id(EOS), tokenizer.token_to_id(END)],
        "pad_token_id": tokenizer.token_to_id(PAD),
        "do_sample": False,
    })
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "model_max_length": max_position, "clean_up_tokenization_spaces": False,
    })
    return out


def ensure_default_checkpoint(root: str | Path) -> Path:
    """``root/verisplit-tiny-llama`` built from ``DEFAULT_MODEL`` once; later calls return it unchanged.

    Built in a temporary sibling folder and renamed into place, so a concurrent or interrupted
    build never leaves a half-written checkpoint at the final path.
    """
    root = Path(root)
    final = root / DEFAULT_MODEL_DIR
    marker = final / _COMPLETE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == DEFAULT_MODEL:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-default-", dir=root))
    try:
        make_random_checkpoint(tmp, **DEFAULT_MODEL)
        _write_json(tmp / _COMPLETE, DEFAULT_MODEL)
        if final.exists():
            if (final / _COMPLETE).is_file() and json.loads((final / _COMPLETE).read_text(encoding="utf-8")) == DEFAULT_MODEL:
                return final  # another process finished first
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _default_intermediate(hidden: int) -> int:
    """About 8/3 * hidden rounded up to a multiple of 32 (the Llama sizing rule)."""
    return ((8 * hidden // 3) + 31) // 32 * 32


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
