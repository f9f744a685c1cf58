"""Architecture rules from STYLE.md, checked on the source: layering, no pickles, no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APP_CODE = [REPO / "app.py", *sorted(REPO.glob("ui_*.py")),
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
    code = ("import sys, ms_core.study, ms_core.io, ms_core.demo, ms_core.cli; "
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


def _ms_core_edges() -> dict[str, set[str]]:
    """ms_core module -> the ms_core modules it imports anywhere in its code (also inside
    functions, where an import cycle would otherwise hide)."""
    edges: dict[str, set[str]] = {}
    for path in LIB_CODE:
        name = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "ms_core" and len(parts) > 1:
                    targets.add(parts[1])
                elif parts == ["ms_core"]:
                    targets |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name.split(".")[1] for a in node.names
                            if a.name.startswith("ms_core.")}
        edges[name] = targets - {name}
    return edges


def test_ms_core_has_no_import_cycle() -> None:
    edges = _ms_core_edges()
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


def test_every_module_has_a_stage_and_stages_import_only_downwards() -> None:
    from bench.architecture import STAGES, import_edges, layers

    edges = import_edges()
    stage_of = {m: s for s, mods in STAGES.items() for m in mods}
    assert sorted(set(edges) - set(stage_of)) == [], "add the new module to a stage"
    order = list(STAGES)
    upward = [(a, b) for a, bs in edges.items() for b in bs
              if order.index(stage_of[b]) > order.index(stage_of[a])]
    assert upward == []
    assert min(layers(edges).values()) == 0
