"""The layout keeps the architecture visible: subpackages by role, imports in one direction, no copies
of the spec's rules, small modules, and no cheat code in the distribution."""

from __future__ import annotations

import ast
from pathlib import Path

from verisplit.spec.faults import ALL_REASONS, LINK_REASONS, OUTAGE_REASONS

ROOT = Path(__file__).resolve().parent.parent
IMPL = ROOT / "impl"
SUBPACKAGES = ("runtime", "records", "audit", "node", "cli")
# Which impl subpackages each one may import (impl/__init__.py states the same order).
ALLOWED = {
    "runtime": set(),
    "records": set(),
    "audit": {"runtime", "records"},
    "node": {"runtime", "records"},
    "cli": {"runtime", "records", "audit", "node"},
}
GENERATED = ("verisplit_pb2.py", "verisplit_pb2_grpc.py")
MAX_LINES = 400


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if p.name not in GENERATED)


def _imported(path: Path) -> set[str]:
    """Every module name imported anywhere in ``path`` (module level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def impl_graph() -> dict[str, set[str]]:
    """Edges between impl subpackages: ``graph[a]`` = subpackages that modules of ``a`` import."""
    graph: dict[str, set[str]] = {name: set() for name in SUBPACKAGES}
    for package in SUBPACKAGES:
        for path in _modules(IMPL / package):
            for name in _imported(path):
                parts = name.split(".")
                if parts[:2] == ["verisplit", "impl"] and len(parts) > 2 and parts[2] != package:
                    graph[package].add(parts[2])
    return graph


def _has_cycle(graph: dict[str, set[str]]) -> bool:
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1 or (state.get(nxt) is None and visit(nxt)):
                return True
        state[node] = 2
        return False

    return any(state.get(n) is None and visit(n) for n in graph)


def test_impl_is_split_into_documented_subpackages() -> None:
    loose = sorted(p.name for p in IMPL.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside the role subpackages: {loose}"
    for package in SUBPACKAGES:
        init = IMPL / package / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} must say what lives there and what it may import"


def test_import_graph_follows_the_layering_and_has_no_cycles() -> None:
    graph = impl_graph()
    for package, targets in graph.items():
        assert targets <= ALLOWED[package], f"impl.{package} imports {sorted(targets - ALLOWED[package])}"
    assert not _has_cycle(graph)


def test_cycle_detector_can_fail() -> None:
    assert _has_cycle({"a": {"b"}, "b": {"a"}}) and not _has_cycle({"a": {"b"}, "b": set()})


def test_spec_never_imports_the_implementation() -> None:
    for path in _modules(ROOT / "spec"):
        bad = sorted(n for n in _imported(path) if n.startswith("verisplit.impl") or n.startswith("verisplit.conformance"))
        assert bad == [], f"{path} imports {bad}"


def test_no_impl_module_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules(IMPL)}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def reason_literals(roots: list[Path]) -> list[tuple[str, int, str]]:
    """String literals equal to a spec reason code, outside the spec (each one is a copy of a rule)."""
    found = []
    for root in roots:
        for path in _modules(root):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ALL_REASONS:
                    found.append((str(path.relative_to(ROOT)), node.lineno, node.value))
    return found


def test_reason_codes_exist_only_in_the_spec() -> None:
    assert reason_literals([IMPL, ROOT / "conformance", ROOT / "src"]) == []


def test_reason_code_scan_can_fail(tmp_path: Path) -> None:
    (tmp_path / "copy.py").write_text('REASON = "missing_link"\n')
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert reason_literals([tmp_path]) == [("copy.py", 1, "missing_link")]
    finally:
        ROOT = saved


def test_reason_catalogue_is_partitioned() -> None:
    assert set(LINK_REASONS).isdisjoint(OUTAGE_REASONS)
    assert len(set(ALL_REASONS)) == len(ALL_REASONS)


def test_threat_catalogue_matches_the_test_only_cheats() -> None:
    from cheatkit.cheats import BEHAVIOURS, CATALOGUE

    from verisplit.spec.threats import CAUGHT_BY

    assert set(CAUGHT_BY) == set(BEHAVIOURS) - {"honest"} and CATALOGUE == tuple(CAUGHT_BY)
