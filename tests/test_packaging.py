"""Packaging: the spec and the proofs import without torch; the wheel installs only ``verisplit/``."""

from __future__ import annotations

import ast

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked for this test")
sys.meta_path.insert(0, Block())
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)


def test_spec_imports_with_torch_blocked() -> None:
    code = BLOCK_TORCH + """
import verisplit.spec.arith, verisplit.spec.encoding, verisplit.spec.cohort, verisplit.spec.commitment
import verisplit.spec.audit, verisplit.spec.deterrence, verisplit.spec.settlement, verisplit.spec.protocol
import verisplit.spec.cli
try:
    import torch
except ImportError as exc:
    print("blocked:", exc)
assert "torch" not in sys.modules
print("spec ok")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "blocked: torch is blocked" in result.stdout and "spec ok" in result.stdout


def test_cli_spec_command_runs_without_torch() -> None:
    code = BLOCK_TORCH + """
import sys
from click.testing import CliRunner
from verisplit.cli import main
r = CliRunner().invoke(main, ["spec", "settle", "--fee", "10", "--work", "a=1", "--work", "b=2"])
print(r.output); assert r.exit_code == 0, r.output
assert "torch" not in sys.modules
"""
    result = run_python(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"residual": 1' in result.stdout


def test_no_bare_spec_or_impl_modules_are_importable() -> None:
    result = run_python("import importlib.util as u; print([n for n in ('spec','impl','conformance','proofs') if u.find_spec(n)])")
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the tracked files (so setuptools' build/ folder never lands in the
    checkout); returns its path."""
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                   check=True, timeout=300, capture_output=True)
    return next(tmp_path.glob("verisplit-*.whl"))


def test_wheel_contains_only_the_verisplit_namespace(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"verisplit", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for module in ("verisplit/spec/cohort.py", "verisplit/impl/__init__.py", "verisplit/conformance/__init__.py",
                   "verisplit/proofs_z3/__init__.py", "verisplit/cli.py", "verisplit/impl/node/verisplit.proto",
                   "verisplit/conformance/vectors/settlement.json", "verisplit/conformance/vectors/README.md"):
        assert module in names


def test_z3_proofs_run_without_torch() -> None:
    """Reviewers who install only the [proofs] extra can re-run every Z3 check."""
    code = BLOCK_TORCH + """
import sys
from verisplit.proofs_z3.runner import run_all, summary
passed, failed = summary(run_all())
print(passed, failed)
assert failed == 0 and passed > 0
assert "torch" not in sys.modules
"""
    result = run_python(code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_ships_no_cheat_code(tmp_path: Path) -> None:
    """The cheat catalogue and its launcher are test-only: no module of the wheel subclasses the provider's
    Behaviour, none is named after cheats, and no command offers a --cheat option."""
    wheel = _build_wheel(tmp_path)
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert not [n for n in names if "cheat" in n.lower()]
    for name in (n for n in names if n.endswith(".py")):
        source = archive.read(name).decode("utf-8")
        assert "--cheat" not in source, name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert "Behaviour" not in bases, f"{name}: class {node.name} subclasses Behaviour"
    assert "verisplit/impl/node/behaviour.py" in names  # the honest hook interface ships
