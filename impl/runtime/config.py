"""Model configuration read from a Hugging Face ``config.json`` (Llama, Mistral, Qwen2).

Invariant: a ``ModelConfig`` only exists for a configuration this runtime computes exactly as the
reference (Hugging Face) does; anything else is rejected with an error that names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from verisplit.impl.runtime.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


class UnsupportedModelError(CheckpointError):
    """The checkpoint asks for an architecture or option this runtime does not implement."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model code needs, normalised across the three supported families."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Mapping[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # bias on q/k/v projections (always on for qwen2)
    o_proj_bias: bool = False  # bias on the output projection (llama attention_bias=true)
    mlp_bias: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # per layer: "full_attention" or "sliding_attention"
    torch_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    name_or_path: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        """Read ``<path>/config.json``; a missing or unparsable file raises ``CheckpointError``."""
        config_path = Path(path) / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: config.json not found")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_path}: config.json is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{config_path}: config.json must hold a JSON object")
        config = cls.from_dict(data)
        if not config.name_or_path:
            config = _replace_name(config, Path(path).resolve().name)
        return config

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Normalise a config dict; rejects unsupported types/options naming the field."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"config.json: model_type {model_type!r} is not supported ({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        quantization = d.get("quantization_config")
        if quantization is not None:
            method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
            raise UnsupportedModelError(
                f"config.json: quantization_config (quant_method {method!r}) is not supported; "
                "this runtime loads unquantized float32/float16/bfloat16 weights only")
        hidden_act = d.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise UnsupportedModelError(f"config.json: hidden_act {hidden_act!r} is not supported (silu)")
        hidden = _pos_int(d, "hidden_size")
        heads = _pos_int(d, "num_attention_heads")
        kv_heads = _pos_int(d, "num_key_value_heads", default=heads)
        if heads % kv_heads != 0:
            raise CheckpointError(
                f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        head_dim = d.get("head_dim")
        if head_dim is None:
            if hidden % heads != 0:
                raise CheckpointError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
            head_dim = hidden // heads
        head_dim = _pos_int({"head_dim": head_dim}, "head_dim")
        if head_dim % 2 != 0:
            raise UnsupportedModelError(f"config.json: head_dim {head_dim} must be even for rotary embeddings")
        layers = _pos_int(d, "num_hidden_layers")
        rope_theta, rope_scaling = _rope(d)
        attention_bias, o_proj_bias = _attention_biases(d, model_type)
        sliding_window, layer_types = _sliding(d, model_type, layers)
        dtype = d.get("torch_dtype", d.get("dtype")) or "float32"
        if dtype not in SUPPORTED_DTYPES:
            raise UnsupportedModelError(f"config.json: torch_dtype {dtype!r} is not supported ({', '.join(SUPPORTED_DTYPES)})")
        return cls(
            model_type=model_type,
            vocab_size=_pos_int(d, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_pos_int(d, "intermediate_size"),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=_pos_float(d, "rms_norm_eps", default=1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=_pos_int(d, "max_position_embeddings"),
            tie_word_embeddings=_bool(d, "tie_word_embeddings", default=False),
            attention_bias=attention_bias,
            o_proj_bias=o_proj_bias,
            mlp_bias=_bool(d, "mlp_bias", default=False) if model_type == "llama" else False,
            sliding_window=sliding_window,
            layer_types=layer_types,
            torch_dtype=dtype,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            name_or_path=str(d.get("_name_or_path") or ""),
            raw=dict(d),
        )

    def window_for(self, layer: int) -> int | None:
        """Sliding-window size of a global layer index, or None for full causal attention."""
        if self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def layer_param_count(self) -> int:
        """Parameter count of one decoder layer (used for size estimates and reports)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        if self.o_proj_bias:
            attn += h
        mlp = 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        return attn + mlp + 2 * h


def _replace_name(config: ModelConfig, name: str) -> ModelConfig:
    from dataclasses import replace

    return replace(config, name_or_path=name)


def _pos_int(d: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = d.get(key, default)
    if value is None:
        raise CheckpointError(f"config.json: missing required field '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"config.json: field '{key}' must be a positive integer, got {value!r}")
    return value


def _pos_float(d: Mapping[str, Any], key: str, default: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise CheckpointError(f"config.json: field '{key}' must be a positive number, got {value!r}")
    return float(value)


def _bool(d: Mapping[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: field '{key}' must be true or false, got {value!r}")
    return value


def _rope(d: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and scaling from either the classic fields or transformers-5 ``rope_parameters``."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    if isinstance(params, dict) and scaling is None:
        scaling = params
    theta = d.get("rope_theta")
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    theta = _pos_float({"rope_theta": 10000.0 if theta is None else theta}, "rope_theta", 10000.0)
    for source in (d, params if isinstance(params, dict) else {}, scaling if isinstance(scaling, dict) else {}):
        partial = source.get("partial_rotary_factor", 1.0)
        if partial != 1.0:
            raise UnsupportedModelError(
                f"config.json: partial_rotary_factor {partial!r} is not supported (rotary over the whole head_dim, 1.0)")
    if scaling is None:
        return theta, None
    if not isinstance(scaling, dict):
        raise CheckpointError(f"config.json: field 'rope_scaling' must be an object or null, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"config.json: rope_scaling.rope_type {rope_type!r} is not supported ({', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return theta, None
    required = ("factor",) if rope_type == "linear" else (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    out: dict[str, Any] = {"rope_type": rope_type}
    for key in required:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CheckpointError(f"config.json: rope_scaling.{key} must be a positive number, got {value!r}")
        out[key] = value
    if rope_type == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise CheckpointError(
            f"config.json: rope_scaling.high_freq_factor {out['high_freq_factor']!r} must exceed "
            f"low_freq_factor {out['low_freq_factor']!r} (llama3 interpolates between them)")
    return theta, out


def _attention_biases(d: Mapping[str, Any], model_type: str) -> tuple[bool, bool]:
    if model_type == "qwen2":
        return True, False
    if model_type == "llama":
        bias = _bool(d, "attention_bias", default=False)
        return bias, bias
    return False, False


def _sliding(d: Mapping[str, Any], model_type: str, layers: int) -> tuple[int | None, tuple[str, ...]]:
    """Per-layer attention kind. Mistral slides every layer when ``sliding_window`` is set; Qwen2
    slides only with ``use_sliding_window`` (layers from ``max_window_layers`` on, or ``layer_types``)."""
    if model_type == "llama":
        return None, ()
    window = d.get("sliding_window")
    if model_type == "qwen2" and not d.get("use_sliding_window", False):
        return None, ()
    if window is None:
        return None, ()
    window = _pos_int({"sliding_window": window}, "sliding_window")
    given = d.get("layer_types")
    if given is not None:
        if not isinstance(given, list) or len(given) != layers or any(
            t not in ("full_attention", "sliding_attention") for t in given
        ):
            raise CheckpointError(
                f"config.json: layer_types must list {layers} entries of full_attention/sliding_attention"
            )
        return window, tuple(given)
    if model_type == "mistral":
        return window, tuple("sliding_attention" for _ in range(layers))
    first = d.get("max_window_layers", layers)
    return window, tuple("sliding_attention" if i >= first else "full_attention" for i in range(layers))
