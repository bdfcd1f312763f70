"""Loading a slice: only needed shards are opened, memory follows the slice, weights digest, bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import verisplit.impl.runtime.loader as loader
from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.runtime.config import ModelConfig, UnsupportedModelError
from verisplit.impl.runtime.errors import CheckpointError, SegmentInputError
from verisplit.impl.runtime.loader import load_full, load_segment


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    # 8 layers in 4 shards: shard k holds layers 2k, 2k+1; embed in shard 1, norm/head in shard 4.
    return make_random_checkpoint(tmp_path_factory.mktemp("shard") / "m", layers=8, hidden=128, heads=4,
                                  kv_heads=2, vocab=384, shards=4, seed=1)


def _opened_files(monkeypatch):
    opened: list[str] = []
    real = loader.safe_open

    def spy(path, *args, **kwargs):
        opened.append(path.rsplit("/", 1)[-1])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loader, "safe_open", spy)
    return opened


@pytest.mark.parametrize("first,end,expected", [
    (2, 4, ["model-00002-of-00004.safetensors"]),
    (0, 2, ["model-00001-of-00004.safetensors"]),
    (6, 8, ["model-00004-of-00004.safetensors"]),
    (3, 6, ["model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors"]),
])
def test_only_needed_shards_are_opened(sharded, monkeypatch, first, end, expected):
    opened = _opened_files(monkeypatch)
    seg = load_segment(sharded, first, end, device="cpu")
    assert opened == expected
    assert seg.loaded_files == expected


def _allocated_bytes(seg) -> int:
    """Bytes of distinct real (non-meta) storages reachable from the segment's parameters and buffers."""
    seen, total = set(), 0
    for t in list(seg.module.parameters()) + list(seg.module.buffers()):
        assert not t.is_meta
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def test_quarter_slice_materialises_at_most_35_percent(sharded):
    full = load_full(sharded, device="cpu")
    middle = load_segment(sharded, 2, 4, device="cpu")
    full_bytes, slice_bytes = _allocated_bytes(full), _allocated_bytes(middle)
    assert full_bytes == sum(p.numel() * 4 for p in full.module.parameters())
    assert slice_bytes <= 0.35 * full_bytes
    assert middle.module.embed_tokens is None and middle.module.lm_head is None


RSS_SCRIPT = """
import resource, sys
import verisplit.impl.runtime.loader as L
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seg = L.load_segment(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), device="cpu")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


@pytest.mark.slow
def test_quarter_slice_peak_rss_is_proportional(tmp_path):
    """Peak resident-set growth (ru_maxrss, KiB on Linux) while loading, in fresh processes."""
    path = make_random_checkpoint(tmp_path / "big", layers=8, hidden=512, heads=8, kv_heads=4, vocab=1024,
                                  shards=4, seed=0)

    def peak(first, end):
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(first), str(end)],
                             check=True, capture_output=True, text=True)
        return int(out.stdout.strip().splitlines()[-1])

    full, quarter = peak(0, 8), peak(2, 4)
    assert quarter <= 0.35 * full, (quarter, full)


def test_weights_digest_is_stable_and_range_specific(sharded, tmp_path):
    a = load_segment(sharded, 2, 4, device="cpu")
    b = load_segment(sharded, 2, 4, device="cpu")
    c = load_segment(sharded, 2, 5, device="cpu")
    assert len(a.weights_digest) == 32 and a.weights_digest == b.weights_digest != c.weights_digest
    other_seed = make_random_checkpoint(tmp_path / "o", layers=8, hidden=128, heads=4, kv_heads=2, vocab=384,
                                        shards=4, seed=2)
    assert load_segment(other_seed, 2, 4, device="cpu").weights_digest != a.weights_digest
    assert load_segment(sharded, 2, 4, device="cpu", dtype="bfloat16").weights_digest != a.weights_digest


def test_single_file_and_sharded_give_same_digest_and_outputs(tmp_path):
    kw = dict(layers=4, hidden=64, heads=4, kv_heads=2, seed=9)
    one = load_segment(make_random_checkpoint(tmp_path / "one", shards=1, **kw), 1, 3)
    two = load_segment(make_random_checkpoint(tmp_path / "two", shards=4, **kw), 1, 3)
    assert one.weights_digest == two.weights_digest
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one.forward_full(x, torch.arange(5)), two.forward_full(x, torch.arange(5)))


def test_tied_last_segment_reads_embedding(tmp_path):
    path = make_random_checkpoint(tmp_path / "t", layers=4, hidden=64, heads=4, kv_heads=2, tie_embeddings=True)
    last = load_segment(path, 2, 4)
    full = load_full(path)
    assert torch.equal(last.module.lm_head.weight, full.module.embed_tokens.weight)
    assert full.module.lm_head.weight.untyped_storage().data_ptr() != 0


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_malformed_and_unsupported_configs(sharded, tmp_path):
    bad = _copy(sharded, tmp_path / "bad")
    (bad / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_segment(bad, 0, 2)
    cfg = json.loads((sharded / "config.json").read_text())
    for change, pattern, exc in [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported", UnsupportedModelError),
        ({"hidden_size": None}, "missing required field 'hidden_size'", CheckpointError),
        ({"num_hidden_layers": -3}, "'num_hidden_layers' must be a positive integer", CheckpointError),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'", UnsupportedModelError),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type 'yarn'", UnsupportedModelError),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads", CheckpointError),
    ]:
        broken = dict(cfg)
        broken.update(change)
        if change.get("hidden_size", 1) is None:
            del broken["hidden_size"]
        (bad / "config.json").write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(exc, match=pattern):
            load_segment(bad, 0, 2)
    assert issubclass(UnsupportedModelError, ValueError)


def test_missing_files_tensors_and_shape_mismatch(sharded, tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_segment(tmp_path, 0, 1)
    broken = _copy(sharded, tmp_path / "b")
    (broken / "model-00003-of-00004.safetensors").unlink()
    load_segment(broken, 0, 4)  # the missing shard is not needed for layers 0..3
    with pytest.raises(CheckpointError, match="shard file named by the index is missing"):
        load_segment(broken, 4, 6)
    cfg = json.loads((sharded / "config.json").read_text())
    cfg["intermediate_size"] += 2
    (broken / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(CheckpointError, match="has shape"):
        load_segment(broken, 0, 1)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    gone = _copy(sharded, tmp_path / "g")
    (gone / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        load_segment(gone, 0, 2)


@pytest.mark.parametrize("first,end", [(0, 0), (3, 2), (-1, 2), (0, 9)])
def test_bad_layer_ranges(sharded, first, end):
    with pytest.raises(SegmentInputError, match="layer range"):
        load_segment(sharded, first, end)


def test_config_reads_transformers5_rope_parameters():
    cfg = ModelConfig.from_dict({
        "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 1234.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    })
    assert cfg.rope_theta == 1234.0 and cfg.rope_scaling["rope_type"] == "llama3"
    assert cfg.num_key_value_heads == 4 and cfg.head_dim == 16
