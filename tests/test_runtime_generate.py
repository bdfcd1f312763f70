"""Sampling, reference generation, tokenizer, default checkpoint and the `verisplit model` CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from verisplit.impl.runtime.checkpoint import DEFAULT_MODEL, ensure_default_checkpoint, make_random_checkpoint
from verisplit.impl.cli.model import model_group
from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.runtime.device import pick_device, set_determinism
from verisplit.impl.runtime.errors import DeviceUnavailableError, SegmentInputError
from verisplit.impl.runtime.generate import generate_reference, sample_next
from verisplit.impl.runtime.loader import load_full, load_segment
from verisplit.impl.runtime.tokenizer import decode, encode, format_chat, load_tokenizer, stop_token_ids


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("gen") / "m", layers=2, hidden=64, heads=4,
                                  kv_heads=2, vocab=400, seed=8)


def test_greedy_and_seeded_sampling():
    row = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample_next(row, temperature=0.0, top_p=1.0, generator=None) == 1
    draws = lambda seed: [sample_next(row, temperature=1.0, top_p=1.0, generator=g)  # noqa: E731
                          for g in [torch.Generator().manual_seed(seed)] for _ in range(50)]
    assert draws(3) == draws(3)
    assert set(draws(3)) >= {1, 2}  # both likely tokens occur in 50 draws (p ~ 0.47 each)
    g = torch.Generator().manual_seed(0)
    assert {sample_next(row, temperature=1.0, top_p=0.3, generator=g) for _ in range(30)} == {1}
    with pytest.raises(SegmentInputError, match="top_p"):
        sample_next(row, temperature=1.0, top_p=0.0, generator=None)


def test_generate_reference_stops_at_eos_and_is_reproducible(ckpt):
    seg = load_full(ckpt)
    prompt = [5, 6, 7, 8]
    greedy = generate_reference(seg, prompt, 10)
    assert len(greedy) == 10 and seg.session_count() == 0
    stop = greedy[3]
    cut = generate_reference(seg, prompt, 10, eos_token_id=[stop])
    assert cut == greedy[:greedy.index(stop) + 1]
    sampled = generate_reference(seg, prompt, 10, temperature=0.8, top_p=0.9, seed=4)
    assert sampled == generate_reference(seg, prompt, 10, temperature=0.8, top_p=0.9, seed=4)
    with pytest.raises(SegmentInputError, match="chain must start"):
        generate_reference([load_segment(ckpt, 1, 2)], prompt, 2)


def test_tokenizer_matches_config_and_round_trips(ckpt):
    tok = load_tokenizer(ckpt)
    assert tok.get_vocab_size() == ModelConfig.from_dir(ckpt).vocab_size == 400
    text = format_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there, ünïcode!"}])
    ids = encode(tok, text)
    assert decode(tok, ids, skip_special_tokens=False) == text
    assert "Hi there, ünïcode!" in decode(tok, ids)
    assert ids[0] == tok.token_to_id("<|bos|>") and len(stop_token_ids(tok)) == 2
    with pytest.raises(ValueError, match=r"messages\[0\].role"):
        format_chat([{"role": "robot", "content": "x"}])


def test_default_checkpoint_is_idempotent(tmp_path):
    a = ensure_default_checkpoint(tmp_path)
    stamp = (a / "model-00001-of-00002.safetensors").stat().st_mtime_ns
    assert ensure_default_checkpoint(tmp_path) == a
    assert (a / "model-00001-of-00002.safetensors").stat().st_mtime_ns == stamp
    cfg = ModelConfig.from_dir(a)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.model_type) == (8, DEFAULT_MODEL["hidden"], "llama")
    assert sum(p.stat().st_size for p in a.glob("*.safetensors")) < 200 * 2**20


def test_same_seed_same_bytes(tmp_path):
    kw = dict(layers=2, hidden=64, heads=4, kv_heads=2, seed=5)
    one = load_full(make_random_checkpoint(tmp_path / "a", **kw))
    two = load_full(make_random_checkpoint(tmp_path / "b", **kw))
    three = load_full(make_random_checkpoint(tmp_path / "c", **{**kw, "seed": 6}))
    assert one.weights_digest == two.weights_digest != three.weights_digest


def test_cli_make_random_and_info(tmp_path):
    runner = CliRunner()
    out = tmp_path / "q"
    result = runner.invoke(model_group, ["make-random", "--arch", "qwen2", "--layers", "4", "--hidden", "64",
                                         "--heads", "4", "--kv-heads", "2", "--shards", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    info = runner.invoke(model_group, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["model_type"] == "qwen2" and data["layers"] == 4 and len(data["files"]) == 2
    bad = runner.invoke(model_group, ["make-random", "--hidden", "64", "--heads", "4", "--kv-heads", "3",
                                      "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "kv_heads 3" in bad.output
    missing = runner.invoke(model_group, ["info", str(tmp_path)])
    assert missing.exit_code != 0 and "config.json not found" in missing.output


def test_device_selection():
    assert pick_device("cpu").type == "cpu"
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="not supported"):
        pick_device("meta")


def test_set_determinism_seeds_torch():
    try:
        set_determinism(123)
        a = torch.rand(3)
        set_determinism(123)
        assert torch.equal(a, torch.rand(3))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
