"""Test-only cheating providers (not part of the ``verisplit`` distribution).

``cheats`` holds the catalogue of cheat behaviours; ``serve`` starts a provider process with one of
them. Tests, benchmarks and the conformance harness start cheaters with ``provider_command`` and
``provider_env`` below; nothing in ``verisplit`` itself can select a cheat.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The folder that must be on sys.path for ``import cheatkit`` (the repository's tests/ folder).
SEARCH_ROOT = Path(__file__).resolve().parent.parent


def provider_command(mode: str, *provider_serve_args: str) -> list[str]:
    """argv of a provider process running cheat ``mode`` (a catalogue name or ``module:Class``),
    taking the same options as ``verisplit provider serve``."""
    return [sys.executable, "-m", "cheatkit.serve", mode, *provider_serve_args]


def provider_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which ``provider_command`` can import ``cheatkit`` (and test helper modules)."""
    env = dict(os.environ if base is None else base)
    parts = [str(SEARCH_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env
