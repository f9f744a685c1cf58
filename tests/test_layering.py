"""Architecture rules from STYLE.md, checked on the source: layering, no pickles, no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APP_CODE = [REPO / "app.py", *sorted((REPO / "ui").glob("*.py")),
            *sorted((REPO / "pages").glob("*.py"))]
LIB_CODE = sorted((REPO / "ms_core").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", LIB_CODE, ids=lambda p: p.name)
def test_ms_core_never_imports_streamlit_or_torch(path: Path) -> None:
    assert not _imports(path) & {"streamlit", "torch"}, f"{path} imports the UI or torch"


@pytest.mark.parametrize("path", [p for p in APP_CODE if p.exists()], ids=lambda p: p.name)
def test_app_runtime_never_imports_torch(path: Path) -> None:
    assert "torch" not in _imports(path)


def test_no_pickle_loading_anywhere() -> None:
    banned = ("pickle", "joblib", "cloudpickle", "dill")
    code = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "data" not in p.parts
            and p.name != "test_layering.py"]
    offenders = [str(p) for p in code if _imports(p) & set(banned)
                 or "allow_pickle=True" in p.read_text(encoding="utf-8")
                 or "torch.load(" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_runtime_requirements_have_no_torch() -> None:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    pkgs = {line.split("==")[0].strip().lower() for line in lines
            if line.strip() and not line.startswith("#")}
    assert "torch" not in pkgs
    assert "onnxruntime-gpu" in pkgs and "onnxruntime" not in pkgs  # exactly one runtime


def test_importing_the_library_does_not_load_streamlit() -> None:
    code = ("import sys, ms_core.study.layout, ms_core.foundation.io, ms_core.synthetic.demo, "
            "ms_core.services.cli; "
            "bad = [m for m in ('streamlit', 'torch') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_cli_help_lists_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "ms_core", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "demo" in result.stdout and "validate" in result.stdout


def test_cli_reports_bad_study_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ms_core", "validate", str(tmp_path / "x")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "study folder not found" in result.stderr and "Traceback" not in result.stderr


def test_only_the_inference_module_opens_onnxruntime() -> None:
    opens = sorted(p.name for p in LIB_CODE if "onnxruntime" in _imports(p)
                   or "import onnxruntime" in p.read_text(encoding="utf-8"))
    assert opens == ["inference.py"]


@pytest.mark.parametrize(("literal", "home"), [("365.25", "domain.py"),
                                               ('("periventricular", "juxtacortical", '
                                                '"infratentorial", "deep_white_matter")',
                                                "domain.py")])
def test_shared_constants_are_defined_once(literal: str, home: str) -> None:
    where = sorted(p.name for p in LIB_CODE
                   if literal in "".join(line for line in p.read_text(encoding="utf-8")
                                         .splitlines(keepends=True)
                                         if not line.lstrip().startswith(("#", "*", '"""'))))
    assert where == [home]


def test_ms_core_has_no_import_cycle() -> None:
    from bench.architecture import import_edges

    edges = import_edges()
    known = set(edges)
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, set()) & known):
            if nxt in path:
                cycles.append([*path[path.index(nxt):], nxt])
            elif len(path) < len(known):
                visit(nxt, [*path, nxt])

    for start in sorted(known):
        visit(start, [start])
        if cycles:
            break
    assert cycles == [], f"import cycle: {' -> '.join(cycles[0])}"


def test_app_glue_never_imports_the_router_back() -> None:
    # app.py imports ui_helpers; ui_helpers.ensure_routed runs app.py as a script instead.
    glue = [p for p in APP_CODE if p.exists() and p.name != "app.py"]
    assert [p.name for p in glue if "app" in _imports(p)] == []


def test_every_module_lives_in_a_stage_and_stages_import_only_downwards() -> None:
    from bench.architecture import STAGES, import_edges, layers, stage_of, upward_imports

    edges = import_edges()
    loose = sorted(p.name for p in (REPO / "ms_core").glob("*.py")
                   if p.stem not in ("__init__", "__main__"))
    assert loose == [], "put the module in the subpackage of its stage"
    assert sorted({stage_of(m) for m in edges} - set(STAGES)) == [], "add the stage to STAGES"
    assert upward_imports(edges) == []
    assert min(layers(edges).values()) == 0


def test_the_stage_check_sees_an_upward_import() -> None:
    from bench.architecture import upward_imports

    assert upward_imports({"imaging.anatomy": {"services.cli"}}) == [
        "imaging.anatomy -> services.cli"]
    assert upward_imports({"services.cli": {"imaging.anatomy"}}) == []


def _doc_imports() -> list[tuple[str, str, list[str]]]:
    """(doc, module, names) of every ``from ms_core... import`` line in the docs' examples."""
    import re

    docs = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md",
            *sorted((REPO / "training").rglob("*.md"))]
    found = []
    for doc in docs:
        for line in doc.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\s*from (ms_core[\w.]*) import (.+)$", line)
            if m:
                names = [n.strip().split(" as ")[0] for n in m.group(2).strip("()").split(",")]
                found.append((doc.name, m.group(1), [n for n in names if n]))
    return found


def test_the_docs_examples_import_what_exists() -> None:
    import importlib

    examples = _doc_imports()
    assert examples, "the docs show no ms_core import: the pattern no longer matches"
    missing = [(doc, module, name) for doc, module, names in examples
               for name in names if not hasattr(importlib.import_module(module), name)]
    assert missing == []
