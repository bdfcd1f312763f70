"""Device choice and deterministic settings.

``pick_device`` prefers CUDA when present and falls back to CPU; an explicit CUDA request on a
machine without CUDA is an error, never a silent fallback. ``set_determinism`` turns on every
deterministic switch PyTorch offers (see docs/determinism.md for what stays non-bitwise).
"""

from __future__ import annotations

import os
import random

import torch

from verisplit.impl.runtime.errors import DeviceUnavailableError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> cuda if available else cpu; "cpu"/"cuda[:N]" as asked (error if unavailable)."""
    if requested is None or (isinstance(requested, str) and requested.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(f"device: {requested!r} is not a valid device ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device: {requested!r} was requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device: {requested!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"device: {requested!r} is not supported (cpu, cuda)")
    return device


def set_determinism(seed: int) -> None:
    """Seed Python/torch RNGs and switch PyTorch to deterministic kernels without TF32.

    ``use_deterministic_algorithms(True, warn_only=True)``: ops lacking a deterministic version warn
    rather than fail. On CUDA this also needs ``CUBLAS_WORKSPACE_CONFIG``, set here if unset
    (it must be set before the first cuBLAS call to take effect).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
