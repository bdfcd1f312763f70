"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2) that can hold a contiguous slice of layers.

One readable file in the style of gpt-fast's ``model.py``. Layers live in an ``nn.ModuleDict``
keyed by their *global* index (torchtitan), so a slice keeps the checkpoint's tensor names; the
token embedding exists only on the first slice, the final norm and LM head only on the last.

Numerics (kept identical to Hugging Face's eager path so fp32 logits agree):
- RMSNorm computes in fp32 and casts back before the weight multiply.
- RoPE uses HF's rotate-half layout (q/k weights load unpermuted), ``inv_freq`` in fp32 with
  Llama-3 or linear scaling, and is applied in fp32, then cast back to the compute dtype.
- Attention is explicit math: ``softmax(q k^T * d^-0.5 + mask)`` with the softmax in fp32, GQA by
  repeating each kv head for its group of query heads, optional sliding window (Mistral/Qwen2).
Shapes carry no batch dimension: activations are ``[T, hidden]``, per-layer K/V are
``[kv_heads, T, head_dim]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from verisplit.impl.runtime.config import ModelConfig


class RMSNorm(nn.Module):
    """y = weight * (x / sqrt(mean(x^2) + eps)), normalised in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_inv_freq(config: ModelConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rotary inverse frequencies ``[head_dim // 2]`` in fp32, with the config's scaling applied."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float32) / dim
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # Llama 3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[T, head_dim]`` (fp32) for the given absolute positions."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[heads, T, head_dim]`` by position, computing in fp32."""
    x32 = x.to(torch.float32)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean ``[T_q, T_k]``: key j is visible to query i iff k_j <= q_i (and q_i - k_j < window)."""
    visible = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        visible = visible & (q_pos[:, None] - k_pos[None, :] < window)
    return visible


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim ** -0.5
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, q_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(h, kv_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(h, kv_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_dim, h, bias=config.o_proj_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> torch.Tensor:
        """Attend ``x`` [T, hidden]; with a cache, write K/V at [start, start+T) and attend to [0, start+T)."""
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.n_heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(t, self.n_kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(t, self.n_kv_heads, self.head_dim).transpose(0, 1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k_cache, v_cache = cache
            k_cache[:, start:start + t] = k
            v_cache[:, start:start + t] = v
            k, v = k_cache[:, :start + t], v_cache[:, :start + t]
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=0)
            v = v.repeat_interleave(groups, dim=0)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(0, 1).reshape(t, self.n_heads * self.head_dim)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, start):  # type: ignore[no-untyped-def]
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start)
        return h + self.mlp(self.post_attention_layernorm(h))


class SegmentModel(nn.Module):
    """Layers ``[first_layer, end_layer)`` plus the embedding (first slice) and norm/head (last slice)."""

    def __init__(self, config: ModelConfig, first_layer: int, end_layer: int) -> None:
        super().__init__()
        self.config = config
        self.first_layer, self.end_layer = first_layer, end_layer
        is_first, is_last = first_layer == 0, end_layer == config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if is_first else None
        self.layers = nn.ModuleDict({str(i): DecoderLayer(config) for i in range(first_layer, end_layer)})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if is_last else None
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if is_last else None

    def run(
        self,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        inv_freq: torch.Tensor,
        layer_indices: list[int],
        caches: dict[int, tuple[torch.Tensor, torch.Tensor]] | None,
        start: int,
    ) -> torch.Tensor:
        """Token ids or residual ``[T, hidden]`` in; residual ``[T, hidden]`` or fp32 logits out.

        With ``caches`` the keys are the cached positions ``[0, start+T)``; without, only ``positions``.
        """
        x = self.embed_tokens(inputs) if self.embed_tokens is not None else inputs
        cos, sin = rope_cos_sin(inv_freq, positions)
        if caches is None:
            k_pos = positions
        else:
            k_pos = torch.arange(start + positions.shape[0], device=positions.device)
        masks: dict[int | None, torch.Tensor] = {}
        for index in layer_indices:
            window = self.config.window_for(index)
            if window not in masks:
                masks[window] = attention_mask(positions, k_pos, window)
            cache = None if caches is None else caches[index]
            x = self.layers[str(index)](x, cos, sin, masks[window], cache, start)
        if self.norm is not None and self.lm_head is not None:
            return self.lm_head(self.norm(x)).to(torch.float32)
        return x


def checkpoint_name(module_name: str) -> str:
    """HF tensor name of a ``SegmentModel`` state-dict key (``layers.3.mlp...`` -> ``model.layers.3.mlp...``)."""
    if module_name.startswith("lm_head."):
        return module_name
    return "model." + module_name


def checkpoint_tensor_names(module: SegmentModel, config: ModelConfig) -> dict[str, str]:
    """Module state-dict key -> checkpoint tensor name (a tied head reads ``model.embed_tokens.weight``).

    Invariant: the names a segment's weights digest covers depend only on (config, layer range), so a
    provider's view of a sub-range and a verifier's fresh load of that range name the same tensors.
    """
    wanted = {}
    for key in module.state_dict(keep_vars=True):
        if key == "lm_head.weight" and config.tie_word_embeddings:
            wanted[key] = "model.embed_tokens.weight"
        else:
            wanted[key] = checkpoint_name(key)
    return wanted
