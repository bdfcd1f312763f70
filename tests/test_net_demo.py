"""`verisplit demo` end to end on a tiny checkpoint: exit 0, the report, and no child left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from verisplit.impl.runtime.checkpoint import make_random_checkpoint
from verisplit.impl.node.procs import verisplit_command

pytestmark = pytest.mark.net


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def test_demo_streams_through_the_cohort_and_cleans_up(tmp_path: Path) -> None:
    checkpoint = make_random_checkpoint(tmp_path / "ckpt", layers=8, hidden=64, heads=4, kv_heads=2, vocab=512,
                                        max_position=256, seed=5)
    workdir = tmp_path / "work"
    result = subprocess.run(verisplit_command("demo", "--checkpoint", str(checkpoint), "--workdir", str(workdir),
                                              "--max-tokens", "5", "--providers", "4"),
                            capture_output=True, text=True, timeout=180, env=dict(os.environ, COLUMNS="200"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 signed boundary commitments checked" in result.stdout  # 5 steps x 4 links
    for index in range(4):
        assert f"provider-{index}" in result.stdout
    assert (workdir / "lead" / "requests").is_dir()
    assert _processes_mentioning(str(checkpoint)) == []
