#!/usr/bin/env python3
"""Axiom audit for the Lean proofs: every `#print axioms` in Audit.lean must report only Lean's
standard axioms (propext, Classical.choice, Quot.sound). Run from proofs/lean after `lake build`.

Exit status 0 only when every audited theorem was reported and none uses another axiom
(sorryAx, a custom `axiom`, or `Lean.ofReduceBool` from kernel-bypassing decision procedures all fail the audit).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ALLOWED = {"propext", "Classical.choice", "Quot.sound"}
HERE = Path(__file__).resolve().parent.parent


def audited_names(audit_file: Path) -> list[str]:
    """The theorem names listed with `#print axioms` in ``audit_file``."""
    return re.findall(r"^#print axioms\s+(\S+)", audit_file.read_text(encoding="utf-8"), flags=re.M)


def parse_report(output: str) -> dict[str, set[str]]:
    """Map each reported theorem to its axioms (empty set for 'does not depend on any axioms')."""
    report: dict[str, set[str]] = {}
    for match in re.finditer(r"'([^']+)' depends on axioms: \[([^\]]*)\]", output):
        report[match.group(1)] = {a.strip() for a in match.group(2).split(",") if a.strip()}
    for match in re.finditer(r"'([^']+)' does not depend on any axioms", output):
        report[match.group(1)] = set()
    return report


def main() -> int:
    names = audited_names(HERE / "Audit.lean")
    if not names:
        print("audit: Audit.lean lists no theorems")
        return 1
    proc = subprocess.run(["lake", "env", "lean", "Audit.lean"], cwd=HERE, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    print(output)
    if proc.returncode != 0:
        print(f"audit: lean exited with status {proc.returncode}")
        return 1
    report = parse_report(output)
    failed = False
    for name in names:
        if name not in report:
            print(f"audit: no axiom report for {name}")
            failed = True
            continue
        extra = report[name] - ALLOWED
        if extra:
            print(f"audit: {name} uses non-standard axioms {sorted(extra)}")
            failed = True
    print(f"audit: {len(names)} theorems checked, {'FAILED' if failed else 'all use only standard axioms'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
