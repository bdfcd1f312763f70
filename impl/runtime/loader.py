"""Load one layer range of a Hugging Face checkpoint, reading only the tensors the range needs.

Invariant: only shard files holding at least one of the range's tensors are opened (the index's
``weight_map`` says which); modules are built on the meta device and receive real storage only for
those tensors, so memory is proportional to the slice. The first range owns ``embed_tokens``; the
last owns ``model.norm`` and ``lm_head`` (or, when embeddings are tied, ``model.embed_tokens``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from verisplit.impl.runtime.config import ModelConfig
from verisplit.impl.runtime.device import pick_device
from verisplit.impl.runtime.errors import CheckpointError, SegmentInputError
from verisplit.impl.runtime.model import SegmentModel, checkpoint_tensor_names
from verisplit.impl.runtime.segment import Segment
from verisplit.impl.runtime.tensors import TORCH_DTYPES, digest_named_tensors

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Stored dtypes a tensor may be cast from without changing its meaning (quantized int/fp8 weights need
# scales this runtime does not apply, so they are refused rather than silently cast).
SOURCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def resolve_dtype(dtype: torch.dtype | str | None, config: ModelConfig, device: torch.device) -> torch.dtype:
    """Explicit dtype as given; otherwise fp32 on CPU and the checkpoint's ``torch_dtype`` on CUDA."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else TORCH_DTYPES[config.torch_dtype]
    if isinstance(dtype, str):
        name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}.get(dtype, dtype)
        if name not in ("float32", "float16", "bfloat16"):
            raise SegmentInputError(f"dtype: {dtype!r} is not supported (float32, float16, bfloat16)")
        return TORCH_DTYPES[name]
    if dtype not in COMPUTE_DTYPES:
        raise SegmentInputError(f"dtype: {dtype} is not supported (float32, float16, bfloat16)")
    return dtype


def weight_map(checkpoint_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index or from the single ``model.safetensors``."""
    index_path = checkpoint_dir / INDEX_FILE
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            mapping = index["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({exc!r})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise CheckpointError(f"{index_path}: weight_map must map tensor names to file names")
        return dict(mapping)
    single = checkpoint_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt", device="cpu") as handle:
            return {name: SINGLE_FILE for name in handle.keys()}
    raise CheckpointError(f"{checkpoint_dir}: neither {INDEX_FILE} nor {SINGLE_FILE} found")


def load_segment(
    checkpoint_dir: str | Path,
    first_layer: int,
    end_layer: int,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = False,
) -> Segment:
    """Materialise layers ``[first_layer, end_layer)`` (plus embed/norm/head at the ends) as a ``Segment``."""
    root = Path(checkpoint_dir)
    config = ModelConfig.from_dir(root)
    layers = config.num_hidden_layers
    if not (isinstance(first_layer, int) and isinstance(end_layer, int) and 0 <= first_layer < end_layer <= layers):
        raise SegmentInputError(f"layer range: [{first_layer}, {end_layer}) is not a non-empty range inside [0, {layers})")
    dev = pick_device(device)
    dt = resolve_dtype(dtype, config, dev)
    with torch.device("meta"):
        module = SegmentModel(config, first_layer, end_layer)
    wanted = checkpoint_tensor_names(module, config)
    mapping = weight_map(root)
    missing = sorted({name for name in wanted.values() if name not in mapping})
    if missing:
        raise CheckpointError(f"{root}: checkpoint lacks tensor(s) {missing[:5]} needed by layers [{first_layer}, {end_layer})")
    expected_shapes = {wanted[key]: tuple(value.shape) for key, value in module.state_dict(keep_vars=True).items()}
    loaded = _read_tensors(root, mapping, expected_shapes, dt, dev, progress)
    state = {key: loaded[name] for key, name in wanted.items()}
    module.load_state_dict(state, strict=True, assign=True)
    _check_materialised(module)
    return Segment(
        config, first_layer, end_layer, module,
        model_id=config.name_or_path or root.resolve().name,
        device=dev, dtype=dt,
        weights_digest=digest_named_tensors(loaded),
        loaded_files=sorted({mapping[name] for name in loaded}),
    )


def load_full(checkpoint_dir: str | Path, **kw: object) -> Segment:
    """The whole model as one segment (layers ``[0, num_hidden_layers)``)."""
    config = ModelConfig.from_dir(Path(checkpoint_dir))
    return load_segment(checkpoint_dir, 0, config.num_hidden_layers, **kw)  # type: ignore[arg-type]


def _read_tensors(
    root: Path,
    mapping: dict[str, str],
    expected_shapes: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
    device: torch.device,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Read each needed tensor once, opening each needed shard once, checking shapes."""
    by_file: dict[str, list[str]] = {}
    for name in sorted(expected_shapes):
        by_file.setdefault(mapping[name], []).append(name)
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"loading {root.name}", total=len(expected_shapes))
    loaded: dict[str, torch.Tensor] = {}
    try:
        for file_name in sorted(by_file):
            path = root / file_name
            if not path.is_file():
                raise CheckpointError(f"{path}: shard file named by the index is missing")
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                available = set(handle.keys())
                for name in by_file[file_name]:
                    if name not in available:
                        raise CheckpointError(f"{path}: tensor {name!r} listed in the index is not in the file")
                    tensor = handle.get_tensor(name)
                    if tensor.dtype not in SOURCE_DTYPES:
                        raise CheckpointError(f"{path}: tensor {name!r} is stored as {tensor.dtype}; only "
                                              "float32/float16/bfloat16 weights are supported (no quantized weights)")
                    if tuple(tensor.shape) != expected_shapes[name]:
                        raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                                              f"config.json implies {list(expected_shapes[name])}")
                    loaded[name] = tensor.to(device=device, dtype=dtype)
                    del tensor
                    if bar is not None:
                        bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    return loaded


def _check_materialised(module: SegmentModel) -> None:
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_meta:
            raise CheckpointError(f"internal: {name} was not materialised")  # pragma: no cover
