"""Import a llama.cpp GGUF file as a Hugging Face checkpoint folder that the runtime loads.

Output: ``config.json``, ``generation_config.json``, ``tokenizer.json`` (built from the GGUF's
``tokenizer.ggml.*`` metadata with the ``tokenizers`` library), ``tokenizer_config.json`` (with the
``chat_template``), and ``model.safetensors`` or ``model-0000k-of-0000N.safetensors`` shards plus
``model.safetensors.index.json``.

Invariants:
- Every output tensor is the GGUF tensor dequantised to fp32 by ``gguf.quants.dequantize``, renamed
  to its Hugging Face name, with llama.cpp's rotary row permutation of ``attn_q``/``attn_k`` undone
  for the ``llama`` architecture (``qwen2`` is stored unpermuted), then cast once to the requested
  dtype. Nothing else changes a value.
- Anything this runtime would compute differently from the GGUF's model (architecture, tensor type,
  unknown tensor, rope scaling kind, partial rotary, tokenizer kind) is refused with a
  ``GGUFImportError`` naming it, before any output file is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from verisplit.impl.runtime.gguf_meta import GGUFImportError, UnsupportedGGUFError, _float, _int
from verisplit.impl.runtime.errors import CheckpointError
from verisplit.impl.runtime.gguf_rope import _rope_scaling, unpermute_rows
from verisplit.impl.runtime.gguf_tokenizer import build_tokenizer, special_token_ids, tokenizer_config_dict

# GGUF architecture -> (config.json model_type, architectures[0], llama.cpp permuted q/k rows)
ARCHITECTURES: dict[str, tuple[str, str, bool]] = {
    "llama": ("llama", "LlamaForCausalLM", True),  # Llama 1-3, Mistral 7B, SmolLM: llama.cpp writes these as "llama"
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),  # NEOX rotary: llama.cpp keeps HF's row order
}
OUTPUT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ProgressFn = Callable[[str, int, int], None]  # (tensor name, tensors done, tensors in all)


@dataclass(frozen=True)
class GGUFModel:
    """The model a GGUF file describes, in Hugging Face terms (what ``config.json`` will say)."""

    arch: str
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tied: bool
    qkv_bias: bool

    @property
    def model_type(self) -> str:
        return ARCHITECTURES[self.arch][0]

    @property
    def permuted(self) -> bool:
        return ARCHITECTURES[self.arch][2]


# --- reading -----------------------------------------------------------------------------------------

def open_gguf(path: str | Path) -> Any:
    """A ``gguf.GGUFReader`` on ``path``; an unreadable or non-GGUF file, or a missing ``gguf`` package,
    raises ``GGUFImportError``."""
    try:
        import gguf
    except ImportError:
        raise GGUFImportError("the 'gguf' package is not installed: pip install 'verisplit[runtime]'") from None

    file = Path(path)
    if not file.is_file():
        raise GGUFImportError(f"{file}: no such file")
    try:
        return gguf.GGUFReader(str(file))
    except (ValueError, OSError, IndexError) as exc:
        raise GGUFImportError(f"{file}: not a readable GGUF file ({exc})") from None


def read_metadata(reader: Any) -> dict[str, Any]:
    """Every metadata field as a Python value (strings, numbers, bools, lists)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def describe(meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> GGUFModel:
    """The model of a GGUF file; refuses architectures and options this runtime does not compute."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedGGUFError(
            f"GGUF general.architecture {arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})")
    for key in (f"{arch}.expert_count", f"{arch}.expert_used_count"):
        if meta.get(key):
            raise UnsupportedGGUFError(f"GGUF {key} = {meta[key]!r}: mixture-of-experts models are not supported")
    hidden = _int(meta, f"{arch}.embedding_length")
    heads = _int(meta, f"{arch}.attention.head_count")
    kv_heads = _int(meta, f"{arch}.attention.head_count_kv", heads)
    if heads % kv_heads:
        raise GGUFImportError(f"GGUF: head_count {heads} is not a multiple of head_count_kv {kv_heads}")
    head_dim = _int(meta, f"{arch}.attention.key_length", hidden // heads if hidden % heads == 0 else None)
    if _int(meta, f"{arch}.attention.value_length", head_dim) != head_dim:
        raise UnsupportedGGUFError(f"GGUF {arch}.attention.value_length differs from key_length {head_dim}")
    rotary = _int(meta, f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise UnsupportedGGUFError(
            f"GGUF {arch}.rope.dimension_count {rotary} != head_dim {head_dim}: partial rotary is not supported")
    theta = _float(meta, f"{arch}.rope.freq_base", 10000.0)
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise GGUFImportError("GGUF: tensor 'token_embd.weight' is missing")
    vocab = int(embed.shape[1])
    return GGUFModel(
        arch=arch,
        name=str(meta.get("general.name") or meta.get("general.basename") or "gguf-model"),
        layers=_int(meta, f"{arch}.block_count"),
        hidden=hidden,
        intermediate=_int(meta, f"{arch}.feed_forward_length"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        context_length=_int(meta, f"{arch}.context_length", 2048),
        rms_norm_eps=_float(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=theta,
        rope_scaling=_rope_scaling(meta, arch, tensors, head_dim, theta),
        tied="output.weight" not in tensors,
        qkv_bias=ARCHITECTURES[arch][0] == "qwen2",  # Qwen2 always has q/k/v biases; Llama has none
    )


_LAYER_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BIAS_TENSORS: dict[str, str] = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}
_GLOBAL_TENSORS: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


_SKIPPED = ("rope_freqs.weight",)  # folded into config.json's rope_scaling
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def hf_name(gguf_name: str, model: GGUFModel) -> str:
    """The Hugging Face tensor name of a GGUF tensor; an unknown name is refused."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _BLOCK.fullmatch(gguf_name)
    if match:
        layer, rest = int(match.group(1)), match.group(2)
        table = {**_LAYER_TENSORS, **(_BIAS_TENSORS if model.qkv_bias else {})}
        if layer < model.layers and rest in table:
            return f"model.layers.{layer}.{table[rest]}"
    raise UnsupportedGGUFError(f"GGUF tensor {gguf_name!r} has no counterpart in a {model.arch} Hugging Face model")


def expected_shapes(model: GGUFModel) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for every tensor the checkpoint must hold."""
    h, i, d = model.hidden, model.intermediate, model.head_dim
    q, kv = model.heads * d, model.kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (model.vocab, h), "model.norm.weight": (h,)}
    if not model.tied:
        shapes["lm_head.weight"] = (model.vocab, h)
    for layer in range(model.layers):
        p = f"model.layers.{layer}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i)})
        if model.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


def dequantizable(qtype: Any) -> bool:
    """Whether ``gguf.quants.dequantize`` turns tensors of ``qtype`` into floats (probed on one zero block)."""
    import gguf
    from gguf.quants import dequantize

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        out = dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return False
    return out.dtype in (np.float32, np.float16) and out.size == block


def check_tensor_types(tensors: Iterable[Any]) -> None:
    """Refuse the file when any tensor has a type the gguf library cannot dequantise (names them all)."""
    refused: dict[str, list[str]] = {}
    verdict: dict[Any, bool] = {}
    for info in tensors:
        qtype = info.tensor_type
        if qtype not in verdict:
            verdict[qtype] = dequantizable(qtype)
        if not verdict[qtype]:
            refused.setdefault(qtype.name, []).append(info.name)
    if refused:
        parts = [f"{kind} ({len(names)} tensor(s), e.g. {names[0]!r})" for kind, names in sorted(refused.items())]
        raise UnsupportedGGUFError(f"GGUF tensor type(s) not supported (the gguf library cannot dequantise them): "
                                   f"{', '.join(parts)}")


def tensor_to_hf(info: Any, model: GGUFModel, dtype: torch.dtype) -> tuple[str, torch.Tensor]:
    """One GGUF tensor as (HF name, dequantised tensor in HF layout and ``dtype``)."""
    from gguf.quants import dequantize

    name = hf_name(info.name, model)
    array = np.asarray(dequantize(info.data, info.tensor_type), dtype=np.float32)
    want = tuple(int(n) for n in reversed(info.shape))  # GGUF lists dimensions innermost first
    if tuple(array.shape) != want:
        array = array.reshape(want)
    if model.permuted and info.name.endswith(("attn_q.weight", "attn_q.bias")):
        array = unpermute_rows(array, model.heads)
    elif model.permuted and info.name.endswith(("attn_k.weight", "attn_k.bias")):
        array = unpermute_rows(array, model.kv_heads)
    tensor = torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))
    return name, tensor.to(dtype)


def check_tensor_set(tensors: Mapping[str, Any], model: GGUFModel) -> None:
    """Every GGUF tensor maps to an expected HF tensor of the right shape, and none is missing."""
    shapes = expected_shapes(model)
    seen: set[str] = set()
    for gguf_name, info in tensors.items():
        if gguf_name in _SKIPPED:
            continue
        name = hf_name(gguf_name, model)
        shape = tuple(int(n) for n in reversed(info.shape))
        if shape != shapes[name]:
            raise GGUFImportError(f"GGUF tensor {gguf_name!r} has shape {list(shape)}, the metadata implies "
                                  f"{list(shapes[name])} for {name}")
        seen.add(name)
    missing = sorted(set(shapes) - seen)
    if missing:
        raise GGUFImportError(f"GGUF: tensor(s) missing for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def config_dict(model: GGUFModel, ids: Mapping[str, int], dtype: str) -> dict[str, Any]:
    """``config.json`` for the imported model (fields ``ModelConfig.from_dict`` and transformers read)."""
    model_type, architecture, _ = ARCHITECTURES[model.arch]
    config: dict[str, Any] = {
        "_name_or_path": model.name,
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": model.vocab,
        "hidden_size": model.hidden,
        "intermediate_size": model.intermediate,
        "num_hidden_layers": model.layers,
        "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model.context_length,
        "rms_norm_eps": model.rms_norm_eps,
        "rope_theta": model.rope_theta,
        "rope_scaling": model.rope_scaling,
        "tie_word_embeddings": model.tied,
        "torch_dtype": dtype,
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": ids.get("bos"),
        "eos_token_id": ids.get("eos"),
        "pad_token_id": ids.get("padding"),
    }
    if model_type == "llama":
        config.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    else:
        config.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": model.layers})
    return config


def generation_config_dict(ids: Mapping[str, int]) -> dict[str, Any]:
    """``generation_config.json``: eos is the file's eos plus its end-of-turn/message ids."""
    stops: list[int] = []
    for key in ("eos", "eot", "eom"):
        if key in ids and ids[key] not in stops:
            stops.append(ids[key])
    out: dict[str, Any] = {"bos_token_id": ids.get("bos"), "eos_token_id": stops[0] if len(stops) == 1 else stops,
                           "pad_token_id": ids.get("padding")}
    return {k: v for k, v in out.items() if v not in (None, [])}


def shard_plan(names: Sequence[str], layers: int, shards: int) -> list[list[str]]:
    """Tensor names per shard: embeddings first, layers spread evenly, norm/head last."""
    plan: list[list[str]] = [[] for _ in range(shards)]
    for name in names:
        if name.startswith("model.layers."):
            plan[int(name.split(".")[2]) * shards // layers].append(name)
        elif name.startswith("model.embed_tokens"):
            plan[0].append(name)
        else:
            plan[-1].append(name)
    return plan


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "float32", shards: int = 1,
                name: str | None = None, progress: ProgressFn | None = None) -> Path:
    """Convert ``gguf_path`` into a Hugging Face checkpoint folder ``out_dir``; returns ``out_dir``.

    ``name`` becomes ``_name_or_path`` (the model id the runtime reports); default: ``general.name``.

    Every check (architecture, tensor types, tensor names and shapes, tokenizer, rope) runs before
    the first file is written; stale ``model*.safetensors`` and index files in ``out_dir`` are removed.
    Peak memory is about one shard of output tensors plus the memory-mapped GGUF.
    """
    from safetensors.torch import save_file

    if dtype not in OUTPUT_DTYPES:
        raise GGUFImportError(f"dtype: {dtype!r} is not supported ({', '.join(OUTPUT_DTYPES)})")
    reader = open_gguf(gguf_path)
    meta = read_metadata(reader)
    infos = {info.name: info for info in reader.tensors}
    model = describe(meta, infos)
    if name:
        model = replace(model, name=name)
    if not 1 <= shards <= model.layers:
        raise GGUFImportError(f"shards: {shards} must be in [1, layers={model.layers}]")
    check_tensor_types(infos.values())
    check_tensor_set(infos, model)
    tokenizer = build_tokenizer(meta, model.vocab)
    ids = special_token_ids(meta)
    config = config_dict(model, ids, dtype)
    _validate_config(config)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.safetensors")) + [out / "model.safetensors.index.json"]:
        if stale.exists():
            stale.unlink()
    by_hf = {hf_name(n, model): info for n, info in infos.items() if n not in _SKIPPED}
    plan = shard_plan(sorted(by_hf), model.layers, shards)
    files = ["model.safetensors"] if shards == 1 else [f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
                                                        for k in range(shards)]
    target, done, total_bytes = OUTPUT_DTYPES[dtype], 0, 0
    weight_map: dict[str, str] = {}
    for file_name, names in zip(files, plan):
        group: dict[str, torch.Tensor] = {}
        for name in names:
            _, group[name] = tensor_to_hf(by_hf[name], model, target)
            total_bytes += group[name].numel() * group[name].element_size()
            weight_map[name] = file_name
            done += 1
            if progress is not None:
                progress(name, done, len(by_hf))
        save_file(group, str(out / file_name), metadata={"format": "pt"})
        del group
    if shards > 1:
        _write_json(out / "model.safetensors.index.json",
                    {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))})
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation_config_dict(ids))
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config_dict(meta, tokens, ids, model.context_length))
    return out


def _validate_config(config: dict[str, Any]) -> None:
    """The runtime's own reader must accept the config (so a written checkpoint always loads)."""
    from verisplit.impl.runtime.config import ModelConfig

    try:
        ModelConfig.from_dict(config)
    except CheckpointError as exc:
        raise UnsupportedGGUFError(f"GGUF converts to a config this runtime refuses: {exc}") from None
