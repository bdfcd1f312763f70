#!/usr/bin/env python3
"""One entry point for a fresh machine with nothing but Python: set up, then run the demo or all checks.

    python3 dev.py demo [ARGS...]   # create .venv, install torch + verisplit[all], run `verisplit demo`
    python3 dev.py test             # same setup, then every proof and test (what .ci/run runs)
    python3 dev.py setup            # only create/refresh .venv

Setup runs once per (pyproject.toml, VERISPLIT_TORCH) and is skipped while .venv matches both.
Environment: VERISPLIT_TORCH (default ``torch==2.13.0``) is installed before the project so that the
``torch>=`` floor is already met by the build you chose. Which build that is depends on pip's
configured index: plain PyPI serves a CUDA build on Linux; for a CPU-only build point pip at
PyTorch's CPU index (e.g. ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def run(cmd: list[str], **kw: object) -> int:
    print(f"+ {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=ROOT, **kw)  # type: ignore[arg-type]


def setup() -> None:
    """Create .venv and install the project with every extra, once per pyproject.toml content."""
    if sys.version_info < (3, 11):
        sys.exit(f"verisplit needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as exc:  # e.g. Debian without python3-venv
            sys.exit(f"could not create {VENV}: {exc} (install your distribution's python3-venv package)")
    stamp = VENV / ".verisplit-installed"
    torch_spec = os.environ.get("VERISPLIT_TORCH", "torch==2.13.0")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + b"\0" + torch_spec.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    steps = [
        [str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(PY), "-m", "pip", "install", "-q", torch_spec],
        [str(PY), "-m", "pip", "install", "-q", "-e", ".[all]"],
    ]
    for cmd in steps:
        if run(cmd) != 0:
            sys.exit(f"setup failed at: {' '.join(cmd)}")
    stamp.write_text(want)


def lean_build() -> int:
    """Build the Lean proofs when `lake` exists; otherwise say loudly that they were NOT checked."""
    lake = shutil.which("lake")
    if lake is None:
        print("Lean: NOT CHECKED on this machine: `lake` is not on PATH "
              "(the Lean proofs are built by .github/workflows/proofs.yml). This is not a pass.", flush=True)
        return 0
    print(f"+ (cd proofs/lean && {lake} build --wfail)", flush=True)
    return subprocess.call([lake, "build", "--wfail"], cwd=ROOT / "proofs" / "lean")


def test() -> int:
    """Every proof and test; returns non-zero if any step failed (all steps run regardless)."""
    verisplit = str(BIN / "verisplit")
    steps: list[tuple[str, list[str] | None]] = [
        ("z3 proofs", [verisplit, "prove"]),
        ("pytest (default)", [str(PY), "-m", "pytest"]),
        ("pytest (slow)", [str(PY), "-m", "pytest", "-m", "slow"]),
        ("conformance vectors", [verisplit, "conform", "vectors", "--check"]),
        ("conformance (impl vs spec)", [verisplit, "conform"]),
        ("lean", None),
    ]
    results: list[tuple[str, int, float]] = []
    for name, cmd in steps:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        if cmd is None:
            code = lean_build()
        else:
            code = run(cmd)
            if code == 5 and "pytest" in name:  # pytest: no tests collected for this marker
                print(f"{name}: no tests selected", flush=True)
                code = 0
        results.append((name, code, time.monotonic() - started))
    print("\n=== summary ===")
    lean_checked = shutil.which("lake") is not None
    for name, code, seconds in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        if name == "lean" and not lean_checked:
            status = "NOT CHECKED (no lake on PATH)"
        print(f"  {name:<28} {status:<32} {seconds:7.1f}s")
    return 1 if any(code != 0 for _, code, _ in results) else 0


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in ("demo", "test", "setup"):
        if argv:
            print(f"dev.py: unknown command {argv[0]!r} (demo, test, setup)", file=sys.stderr)
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] != "demo" and len(argv) > 1:
        print(f"dev.py: {argv[0]} takes no arguments, got {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    try:
        setup()
        if argv[0] == "setup":
            return 0
        if argv[0] == "demo":
            return run([str(BIN / "verisplit"), "demo", *argv[1:]])
        return test()
    except KeyboardInterrupt:
        print("\ndev.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
