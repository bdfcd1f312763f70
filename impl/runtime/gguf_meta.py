"""Errors of the GGUF import (each names what was refused) and typed readers of GGUF metadata fields."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from verisplit.impl.runtime.errors import CheckpointError


class GGUFImportError(CheckpointError):
    """The GGUF file cannot be read or converted; the message names the file, field or tensor."""


class UnsupportedGGUFError(GGUFImportError):
    """The GGUF file asks for an architecture, tensor type or option this converter does not handle."""


def _int(meta: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise GGUFImportError(f"GGUF metadata: missing required field '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise UnsupportedGGUFError(f"GGUF metadata: field '{key}' must be one positive integer, got {value!r}")
    return int(value)


def _float(meta: Mapping[str, Any], key: str, default: float) -> float:
    """A positive float field; GGUF stores float32, so it is written as float32's shortest decimal
    (``1e-05``, not ``9.99999974e-06``): the same float32 value, as Hugging Face configs spell it."""
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0:
        raise GGUFImportError(f"GGUF metadata: field '{key}' must be a positive number, got {value!r}")
    return float(str(np.float32(value)))
