"""Rotary layout of a GGUF model: llama.cpp's q/k row permutation and its inverse, and rope scaling as
config.json's ``rope_scaling`` (none, linear, or llama3 factors).

Invariant: llama3 scaling is accepted only when the GGUF's ``rope_freqs`` tensor equals the factors
the runtime computes from the recovered parameters (so the runtime rotates exactly as the GGUF does).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from verisplit.impl.runtime.gguf_meta import UnsupportedGGUFError, _float

def _rope_scaling(meta: Mapping[str, Any], arch: str, tensors: Mapping[str, Any], head_dim: int,
                  theta: float) -> dict[str, Any] | None:
    """HF ``rope_scaling`` from ``{arch}.rope.scaling.*`` or a llama3 ``rope_freqs`` tensor; else refused."""
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if "rope_freqs.weight" in tensors:
        if kind not in ("none", "llama3"):
            raise UnsupportedGGUFError(f"GGUF: rope_freqs tensor together with rope scaling {kind!r}")
        from gguf.quants import dequantize

        info = tensors["rope_freqs.weight"]
        return llama3_scaling_from_factors(dequantize(info.data, info.tensor_type).reshape(-1), head_dim, theta)
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _float(meta, f"{arch}.rope.scaling.factor", 1.0)}
    raise UnsupportedGGUFError(f"GGUF {arch}.rope.scaling.type {kind!r} is not supported (none, linear, llama3)")


def llama3_rope_factors(head_dim: int, theta: float, factor: float, low: float, high: float,
                        original: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as ``rope_freqs`` for Llama-3 rope scaling."""
    out = []
    for k in range(0, head_dim, 2):
        freq = 1.0 / (theta ** (k / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def llama3_scaling_from_factors(factors: np.ndarray, head_dim: int, theta: float) -> dict[str, Any]:
    """The Llama-3 ``rope_scaling`` whose factors equal ``factors``; refused when none of the known
    settings (factor = the largest divisor, low 1, high 4, original context 8192) reproduces them."""
    factor = float(np.max(factors)) if factors.size else 0.0
    for low, high, original in ((1.0, 4.0, 8192),):
        want = llama3_rope_factors(head_dim, theta, round(factor, 4), low, high, original)
        if want.shape == factors.shape and np.allclose(want, factors, rtol=1e-5, atol=0):
            return {"rope_type": "llama3", "factor": round(factor, 4), "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": original}
    raise UnsupportedGGUFError("GGUF: tensor 'rope_freqs.weight' matches no supported llama3 rope scaling")


# --- tensors -----------------------------------------------------------------------------------------


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order from HF's: within each head, interleave the two rotary halves
    (HF row ``j`` of the first half goes to ``2j``, of the second half to ``2j + 1``)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's q/k row order from llama.cpp's; ``unpermute_rows(permute_rows(w, n), n) == w``."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
