"""Two-way traceability between spec docstrings, the Z3 registry and docs/proofs.md."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from verisplit.proofs_z3.core import Kind
from verisplit.proofs_z3.runner import load_checks

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = ROOT / "spec"
# "Z3:" then text up to ';', 'Lean', a sentence end or the docstring end; names are in ``double backticks``.
CITATION = re.compile(r"Z3:(.*?)(?:;|Lean|\.\s|\"\"\")", re.S)
NAME = re.compile(r"``([A-Za-z_][A-Za-z0-9_]*)``")


def cited_checks() -> dict[str, set[str]]:
    """Check name -> spec files citing it."""
    cited: dict[str, set[str]] = {}
    for path in sorted(SPEC_DIR.glob("*.py")):
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for name in NAME.findall(match.group(1)):
                cited.setdefault(name, set()).add(path.name)
    return cited


def resolve(dotted: str) -> object:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_spec_citations_found() -> None:
    cited = cited_checks()
    assert {"fee_conservation", "residual_bound", "forfeit_isolation", "deterrence_corollary",
            "smaller_shard_more_deterred", "chain_substitution", "chain_unmodified", "tiling_iff",
            "router_valid", "audit_functional"} <= set(cited)


def test_every_cited_check_exists() -> None:
    checks = load_checks()
    missing = {name: files for name, files in cited_checks().items() if name not in checks}
    assert missing == {}


def test_every_check_names_existing_spec_functions() -> None:
    for check in load_checks().values():
        assert check.spec_functions, check.name
        for dotted in check.spec_functions:
            assert dotted.startswith("verisplit.spec."), (check.name, dotted)
            assert callable(resolve(dotted)), (check.name, dotted)


def test_every_property_check_is_cited_by_one_of_its_spec_functions() -> None:
    for check in load_checks().values():
        if check.kind is not Kind.CHECK:
            continue
        docs = [resolve(d).__doc__ or "" for d in check.spec_functions]
        assert any(f"``{check.name}``" in doc for doc in docs), check.name


def test_docs_table_lists_every_check_and_lean_theorem() -> None:
    text = (ROOT / "docs" / "proofs.md").read_text(encoding="utf-8")
    checks = load_checks()
    for check in checks.values():
        assert f"`{check.name}`" in text, check.name
    header = [line for line in text.splitlines() if line.startswith("| Property")]
    assert header and all("Lean theorem" in h for h in header)
    lean_in_docs = set(re.findall(r"`(Verisplit\.[A-Za-z0-9_.]+)`", text))
    lean_in_spec: set[str] = set()
    for path in SPEC_DIR.glob("*.py"):
        lean_in_spec |= set(re.findall(r"``(Verisplit\.[A-Za-z0-9_.]+)``", path.read_text(encoding="utf-8")))
    assert lean_in_spec and lean_in_spec <= lean_in_docs


def function_citations() -> dict[str, set[str]]:
    """Dotted spec function -> the Z3 check names its own docstring cites."""
    import ast

    out: dict[str, set[str]] = {}
    for path in sorted(SPEC_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                doc = ast.get_docstring(node) or ""
                names = set()
                for match in CITATION.finditer(doc + '"""'):
                    names |= set(NAME.findall(match.group(1)))
                if names:
                    out[f"verisplit.spec.{path.stem}.{node.name}"] = names
    return out


def test_every_function_citing_a_check_is_one_of_its_spec_functions() -> None:
    """Per function, both ways: a docstring citing check X means X exists and lists that function."""
    checks = load_checks()
    cited = function_citations()
    assert cited, "no per-function citations found: the parser is broken"
    wrong = {}
    for function, names in cited.items():
        for name in names:
            if name not in checks:
                wrong[(function, name)] = "no such check"
            elif function not in checks[name].spec_functions:
                wrong[(function, name)] = f"check lists {checks[name].spec_functions}"
    assert wrong == {}
    # every file-level citation is inside some function's docstring (none hides in comments/module text
    # the per-function check would miss) -- module docstrings may cite nothing
    per_file = {name for names in cited.values() for name in names}
    assert set(cited_checks()) == per_file


def test_citation_parser_catches_bad_and_missing_names(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The traceability tests can fail: a docstring citing a non-existent check is reported, and a
    check whose spec function does not exist is reported."""
    fake = tmp_path / "spec"
    fake.mkdir()
    (fake / "fake.py").write_text('def f():\n    """Rule. Z3: ``fee_conservation``, ``no_such_check`` (x.py); Lean: ``Verisplit.y``."""\n')
    monkeypatch.setattr(__import__(__name__), "SPEC_DIR", fake)
    cited = cited_checks()
    assert set(cited) == {"fee_conservation", "no_such_check"}
    assert "no_such_check" not in load_checks()
    import pytest

    with pytest.raises(AssertionError):
        test_every_cited_check_exists()
    with pytest.raises((ModuleNotFoundError, AttributeError)):
        resolve("verisplit.spec.settlement.no_such_function")
