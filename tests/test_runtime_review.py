"""Runtime review: config options the runtime must refuse, quantized tensors, sampling edge cases,
the reference generator's cache bound, and Hugging Face parity for options the main parity test
(test_runtime_hf.py) does not reach: a head_dim override, Llama attention/MLP biases, linear rope
scaling, Qwen2 sliding-window layers.

Parity is measured as max-abs difference of [T, vocab] fp32 logits against transformers' eager
path on CPU (bound 1e-4, as in test_runtime_hf.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import transformers  # test-only dependency (the [test] extra); a missing one must fail, not skip

from verisplit.impl.runtime.checkpoint import make_random_checkpoint, model_config_dict, random_state_dict, write_weights
from verisplit.impl.runtime.config import ModelConfig, UnsupportedModelError
from verisplit.impl.runtime.errors import CheckpointError, SegmentInputError
from verisplit.impl.runtime.generate import generate_reference, sample_next
from verisplit.impl.runtime.loader import load_full, load_segment

BASE = dict(layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2, vocab=512, max_position=64,
            tie_embeddings=False, dtype="float32", sliding_window=None, name="review")


def _config(arch: str = "llama", **changes: Any) -> dict[str, Any]:
    cfg = model_config_dict(arch=arch, **BASE)
    cfg.update(changes)
    return cfg


def _write(out: Path, cfg: dict[str, Any], seed: int = 3) -> Path:
    """A checkpoint for an arbitrary (valid) config dict: random weights named as HF names them."""
    out.mkdir(parents=True)
    tensors = random_state_dict(ModelConfig.from_dict(cfg), seed)
    write_weights(out, tensors, cfg["num_hidden_layers"], 1)
    (out / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return out


# --- options that change the math must be refused, naming the field ---------------------------

@pytest.mark.parametrize("changes,pattern", [
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}, "quantization_config.*'fp8'"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config.*'gptq'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 32}}, "high_freq_factor 4.0 must exceed"),
])
def test_config_options_that_change_the_math_are_refused(changes, pattern):
    with pytest.raises(CheckpointError, match=pattern):
        ModelConfig.from_dict(_config(**changes))


def test_quantization_config_is_an_unsupported_model_error():
    with pytest.raises(UnsupportedModelError):
        ModelConfig.from_dict(_config(quantization_config={"quant_method": "awq"}))
    assert ModelConfig.from_dict(_config(quantization_config=None)).model_type == "llama"


def test_quantized_tensor_is_refused_not_cast(tmp_path):
    """An int8 (or fp8) tensor with the expected shape used to be cast to float silently."""
    path = make_random_checkpoint(tmp_path / "q", layers=2, hidden=64, heads=4, kv_heads=2, seed=1)
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = torch.randint(-127, 127, tensors[name].shape, dtype=torch.int8)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    load_segment(path, 0, 1)  # layer 0 does not read the int8 tensor
    with pytest.raises(CheckpointError, match=rf"{name}.*torch.int8.*no quantized weights"):
        load_segment(path, 1, 2)


# --- sampling edge cases ----------------------------------------------------------------------

ROW = torch.tensor([0.5, 3.0, 2.9, -1.0, -50.0])


@pytest.mark.parametrize("temperature", [1e-30, 1e-45, 5e-324])
def test_tiny_temperature_is_argmax_not_a_crash(temperature):
    """logits / 1e-30 overflows fp32 to +inf; softmax then gave NaN and multinomial raised."""
    g = torch.Generator().manual_seed(0)
    assert {sample_next(ROW, temperature=temperature, top_p=1.0, generator=g) for _ in range(10)} == {1}
    negative = ROW - 100.0  # every logit negative: the scaled row is all -inf without the shift
    assert sample_next(negative, temperature=temperature, top_p=0.5, generator=g) == 1


@pytest.mark.parametrize("temperature,top_p", [(float("nan"), 1.0), (float("inf"), 1.0), (-0.1, 1.0),
                                               (1.0, 0.0), (1.0, float("nan")), (1.0, 1.5)])
def test_bad_sampling_settings_are_clear_errors(temperature, top_p):
    with pytest.raises(SegmentInputError, match="sampling: temperature must be a finite number"):
        sample_next(ROW, temperature=temperature, top_p=top_p, generator=None)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits_are_clear_errors(temperature, bad):
    row = ROW.clone()
    row[3] = bad
    with pytest.raises(SegmentInputError, match="logits_row: logits contain NaN"):
        sample_next(row, temperature=temperature, top_p=1.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SegmentInputError, match="no finite value"):
        sample_next(torch.full((4,), float("-inf")), temperature=temperature, top_p=1.0, generator=None)


def test_masked_logits_are_never_sampled():
    row = torch.tensor([float("-inf"), 0.0, float("-inf"), 0.1])
    g = torch.Generator().manual_seed(1)
    assert {sample_next(row, temperature=1.0, top_p=1.0, generator=g) for _ in range(40)} == {1, 3}


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    row = probs.log()
    g = torch.Generator().manual_seed(2)
    assert {sample_next(row, temperature=1.0, top_p=0.5, generator=g) for _ in range(40)} == {0}
    assert {sample_next(row, temperature=1.0, top_p=0.79, generator=g) for _ in range(200)} == {0, 1}
    assert {sample_next(row, temperature=1.0, top_p=0.81, generator=g) for _ in range(400)} == {0, 1, 2}


# --- reference generation fits the model's position limit ------------------------------------

def test_generate_reference_uses_every_position(tmp_path):
    """A prompt of max_position tokens still yields one token (its cache never holds that token)."""
    path = make_random_checkpoint(tmp_path / "m", layers=2, hidden=64, heads=4, kv_heads=2, max_position=16, seed=2)
    seg = load_full(path)
    prompt = list(range(3, 19))
    assert len(generate_reference(seg, prompt, 1)) == 1
    assert len(generate_reference(seg, prompt[:10], 7)) == 7  # 10 + 6 cached positions == 16
    assert seg.session_count() == 0
    with pytest.raises(SegmentInputError, match="max_length"):
        generate_reference(seg, prompt[:10], 8)


# --- HF parity for options the main parity test does not reach --------------------------------

PARITY = {
    "llama-head_dim-override": ("llama", {"head_dim": 32}),  # q/k/v width 128 != hidden 64
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama-linear-rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}, "rms_norm_eps": 1e-3}),
    "qwen2-sliding-layers": ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1,
                                       "num_hidden_layers": 3}),
}
HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
T = 20


@pytest.mark.parametrize("name", sorted(PARITY))
def test_logits_match_transformers_for_more_options(tmp_path, name):
    arch, changes = PARITY[name]
    cfg = _config(arch, **changes)
    path = _write(tmp_path / name, cfg)
    ours_cfg = ModelConfig.from_dir(path)
    if name == "qwen2-sliding-layers":
        assert ours_cfg.layer_types == ("full_attention", "sliding_attention", "sliding_attention")
    ids = torch.randint(0, 512, (T,), generator=torch.Generator().manual_seed(5))
    ours = load_full(path, device="cpu", dtype=torch.float32).forward_full(ids, torch.arange(T))
    model = getattr(transformers, HF_CLASSES[arch]).from_pretrained(
        str(path), local_files_only=True, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(ids[None]).logits[0].float()
    assert ref.abs().max().item() > 1.0
    assert (ours - ref).abs().max().item() <= 1e-4


def test_parity_options_change_the_output(tmp_path):
    """Each option above must matter (else matching HF with it proves nothing)."""
    ids, pos = torch.randint(0, 512, (T,), generator=torch.Generator().manual_seed(5)), torch.arange(T)
    plain = load_full(_write(tmp_path / "plain", _config("qwen2", num_hidden_layers=3))).forward_full(ids, pos)
    windowed = load_full(_write(tmp_path / "win", _config("qwen2", **PARITY["qwen2-sliding-layers"][1])))
    assert (windowed.forward_full(ids, pos)[5:] - plain[5:]).abs().max().item() > 1e-3
    base = load_full(_write(tmp_path / "base", _config("llama"))).forward_full(ids, pos)
    linear = load_full(_write(tmp_path / "lin", _config("llama", rope_scaling={"rope_type": "linear", "factor": 4.0})))
    assert (linear.forward_full(ids, pos)[1:] - base[1:]).abs().max().item() > 1e-3


def test_sliding_window_decode_with_cache_matches_prefill(tmp_path):
    """KV-cache decode past a Mistral window equals one full prefill (fp32 drift bound 1e-4)."""
    from verisplit.impl.runtime.generate import cache_vs_prefill_drift

    path = make_random_checkpoint(tmp_path / "w", arch="mistral", layers=2, hidden=64, heads=4, kv_heads=2,
                                  sliding_window=4, max_position=64, seed=3)
    ids = torch.randint(0, 512, (16,), generator=torch.Generator().manual_seed(0))
    assert cache_vs_prefill_drift(load_full(path), ids, 3) <= 1e-4
