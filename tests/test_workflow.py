"""Tests of ms_core/services/workflow.py (the two workflow graphs, their DOT text, the research
notice)
and of the How it works page and the notice on the Prognosis page."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from ms_core.services.workflow import (
    NOT_MEASURED,
    PLANNED,
    RESEARCH_NOTICE,
    Edge,
    Graph,
    Node,
    model_card_ref,
    research_notice,
    task_graph,
    to_dot,
    workflow_graph,
)

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
DEMO = REPO / "data" / "demo"
GRAPHS = (workflow_graph, task_graph)


# ----------------------------------------------------------------------------- a DOT checker
_TOKEN = re.compile(r'\s+|//[^\n]*|(?P<q>"(?:[^"\\]|\\.)*")|(?P<h><)|(?P<arrow>->|--)'
                    r"|(?P<p>[{}\[\]=;,:])|(?P<id>[A-Za-z_0-9.\-]+)", re.S)


def _tokens(dot: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of DOT: q(uoted), h(tml), arrow, p(unctuation), id."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(dot):
        m = _TOKEN.match(dot, i)
        assert m, f"cannot tokenise DOT at {dot[i:i + 40]!r}"
        if m.group("h"):  # an HTML string: up to the matching '>'
            depth, j = 0, i
            while True:
                depth += {"<": 1, ">": -1}.get(dot[j], 0)
                j += 1
                if depth == 0:
                    break
                assert j < len(dot), "unbalanced < > in an HTML label"
            out.append(("h", dot[i:j]))
            i = j
            continue
        kind = m.lastgroup
        if kind:
            out.append((kind, m.group(kind)))
        i = m.end()
    return out


class _Dot:
    """Recursive-descent parser of the DOT subset to_dot writes; collects nodes and edges."""

    def __init__(self, dot: str) -> None:
        self.toks, self.i = _tokens(dot), 0
        self.nodes: set[str] = set()
        self.edges: list[tuple[str, str]] = []
        self.html: list[str] = []
        assert self.take("id") in ("digraph", "graph")
        self.take_id()
        self.block()
        assert self.i == len(self.toks), f"text after the graph: {self.toks[self.i:]}"

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, text: str | None = None) -> str:
        tok = self.peek()
        assert tok and tok[0] == kind and (text is None or tok[1] == text), \
            f"expected {text or kind}, got {tok} at token {self.i}"
        self.i += 1
        return tok[1]

    def take_id(self) -> str:
        tok = self.peek()
        assert tok and tok[0] in ("id", "q", "h"), f"expected an ID, got {tok}"
        self.i += 1
        if tok[0] == "h":
            self.html.append(tok[1][1:-1])
        return tok[1].strip('"') if tok[0] == "q" else tok[1]

    def block(self) -> None:
        self.take("p", "{")
        while self.peek() != ("p", "}"):
            self.stmt()
            if self.peek() == ("p", ";"):
                self.i += 1
        self.take("p", "}")

    def attrs(self) -> None:
        self.take("p", "[")
        while self.peek() != ("p", "]"):
            self.take_id()
            self.take("p", "=")
            self.take_id()
            if self.peek() in (("p", ","), ("p", ";")):
                self.i += 1
        self.take("p", "]")

    def stmt(self) -> None:
        tok = self.peek()
        if tok in (("id", "graph"), ("id", "node"), ("id", "edge")):
            self.i += 1
            self.attrs()
        elif tok == ("id", "subgraph"):
            self.i += 1
            if self.peek() != ("p", "{"):
                self.take_id()
            self.block()
        else:
            first = self.take_id()
            if self.peek() == ("p", "="):  # graph attribute inside a subgraph
                self.i += 1
                self.take_id()
                return
            chain = [first]
            while self.peek() and self.peek()[0] == "arrow":  # type: ignore[index]
                self.i += 1
                chain.append(self.take_id())
            if len(chain) == 1:
                self.nodes.add(first)
            self.edges.extend(itertools.pairwise(chain))
            if self.peek() == ("p", "["):
                self.attrs()


def check_dot(dot: str) -> _Dot:
    """Parse ``dot`` (and lay it out with Graphviz when the package and ``dot`` are present)."""
    parsed = _Dot(dot)
    undeclared = {n for e in parsed.edges for n in e} - parsed.nodes
    assert not undeclared, f"edges to undeclared nodes {undeclared}"
    for label in parsed.html:  # Graphviz HTML-like labels must be well-formed XML
        ET.fromstring(f"<root>{label}</root>")
    if shutil.which("dot"):
        try:
            import graphviz
        except ImportError:
            return parsed
        graphviz.Source(dot).pipe(format="svg")  # raises on a syntax error
    return parsed


# ----------------------------------------------------------------------------- helpers
def _copy_inputs(dst: Path) -> Path:
    """A repository-like folder with copies of the model cards, manifest and bench results."""
    for src in [*(REPO / "models_onnx").glob("*/model.json"),
                REPO / "models_onnx" / "manifest.json",
                *(REPO / "bench" / "results").glob("*.json")]:
        target = dst / src.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dst


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# ----------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("build", GRAPHS, ids=lambda f: f.__name__)
def test_every_module_path_exists_in_the_repo(build: Any) -> None:
    graph = build(REPO)
    for node in graph.nodes:
        assert node.modules or node.status == PLANNED, node.id
        for module in node.modules:
            assert (REPO / module).exists(), f"{node.id}: {module} does not exist"
        if node.doc:
            assert (REPO / node.doc).is_file(), f"{node.id}: {node.doc} does not exist"
        if node.figure_source:
            assert (REPO / node.figure_source).exists(), node.figure_source


@pytest.mark.parametrize("build", GRAPHS, ids=lambda f: f.__name__)
def test_dot_parses_and_every_node_is_drawn(build: Any) -> None:
    graph = build(REPO)
    parsed = check_dot(to_dot(graph))
    assert parsed.nodes == {n.id for n in graph.nodes}
    assert parsed.edges == [(e.tail, e.head) for e in graph.edges]


def test_shipped_figures_are_read_from_the_cards_and_bench_results() -> None:
    graph = workflow_graph(REPO)
    seg, prog, diag = (graph.node(i) for i in ("segmentation", "prognosis", "diagnosis"))
    card = json.loads((REPO / "models_onnx/prognosis/model.json").read_text())
    assert f"AUC {card['metrics']['test']['auc']:.3f}" in prog.figure
    assert f"ECE {card['metrics']['test']['ece']:.3f}" in prog.figure
    assert prog.figure_source == "models_onnx/prognosis/model.json"
    assert f"v{card['version']}" in prog.model
    assert "AUC" in diag.figure and diag.figure_source == "models_onnx/diagnosis/model.json"
    assert "real set (3 scans" in seg.figure and "mean Dice" in seg.figure
    if (REPO / "bench/results/atrophy_eval_bsi.json").exists():
        atrophy = graph.node("atrophy")
        assert atrophy.figure_source == "bench/results/atrophy_eval_bsi.json"
        assert "PBVC MAE" in atrophy.figure
    if (REPO / "bench/results/track_eval.json").exists():
        assert "F1" in graph.node("tracking").figure


def test_figures_follow_an_edited_card_and_bench_file(tmp_path: Path) -> None:
    root = _copy_inputs(tmp_path)
    before = workflow_graph(root)
    assert before.node("prognosis").figure == workflow_graph(REPO).node("prognosis").figure

    def worse(card: dict[str, Any]) -> None:
        card["version"] = "9.9.9"
        card["metrics"]["test"].update(auc=0.5, auc_ci95=[0.45, 0.55], ece=0.2)

    _edit_json(root / "models_onnx/prognosis/model.json", worse)
    after = workflow_graph(root)
    prog = after.node("prognosis")
    assert "AUC 0.500 (95 % CI 0.450–0.550), ECE 0.200" in prog.figure
    assert "prognosis v9.9.9" in prog.model
    assert "AUC 0.500" in to_dot(after) and "AUC 0.500" not in to_dot(before)

    # A location benchmark result appears in the graph as soon as it is written.
    (root / "bench/results/location_eval.json").unlink(missing_ok=True)
    assert workflow_graph(root).node("location").figure == NOT_MEASURED
    (root / "bench/results/location_eval.json").write_text(
        json.dumps({"accuracy": 0.9631, "n_lesions": 837}), encoding="utf-8")
    location = workflow_graph(root).node("location")
    assert location.figure == "demo: location 96.3 % correct (837 lesions)"
    assert location.figure_source == "bench/results/location_eval.json"


def test_segmentation_figure_skips_a_benchmark_of_another_model(tmp_path: Path) -> None:
    root = _copy_inputs(tmp_path)
    for bench in (root / "bench/results").glob("segmentation_eval*.json"):
        _edit_json(bench, lambda d: d.update(model_sha256="0" * 64))

    def dice(card: dict[str, Any]) -> None:
        card["evaluation"] = {"real_validation_mean": {"network_flair": {
            "n": 3, "dice": 0.123, "f1_any": 0.456}}}

    _edit_json(root / "models_onnx/lesion_seg/model.json", dice)
    seg = workflow_graph(root).node("segmentation")
    assert seg.figure_source == "models_onnx/lesion_seg/model.json"
    assert "Dice 0.123" in seg.figure


def test_missing_or_broken_files_say_not_measured(tmp_path: Path) -> None:
    graph = workflow_graph(tmp_path)  # no cards, no bench results
    measured = [n for n in graph.nodes if n.figure]
    assert measured and all(n.figure == NOT_MEASURED and n.figure_source == ""
                            for n in measured)
    assert "model card missing" in graph.node("prognosis").model
    check_dot(to_dot(graph))

    root = _copy_inputs(tmp_path / "repo")
    (root / "models_onnx/prognosis/model.json").write_text("{not json", encoding="utf-8")
    _edit_json(root / "bench/results/atrophy_eval_bsi.json", lambda d: d.pop("summary"))
    for extra in (root / "bench/results").glob("atrophy_eval_*jacobian*.json"):
        extra.unlink()
    graph = workflow_graph(root)
    assert graph.node("prognosis").figure == NOT_MEASURED
    assert graph.node("atrophy").figure == NOT_MEASURED


def test_planned_tasks_until_a_model_ships(tmp_path: Path) -> None:
    root = _copy_inputs(tmp_path)
    planned = ("cis_conversion", "treatment_response")

    def unship(manifest: dict[str, Any]) -> None:
        for name in planned:
            manifest["models"].pop(name, None)

    _edit_json(root / "models_onnx/manifest.json", unship)
    graph = task_graph(root)
    for name in planned:
        node = graph.node(name)
        assert node.status == PLANNED and node.modules == () and node.figure == ""
        assert all(e.dashed for e in graph.edges if name in (e.tail, e.head))
        assert name not in {n.id for n in workflow_graph(root).nodes}
    assert ("cis_conversion", "page_prognosis") in {(e.tail, e.head) for e in graph.edges}
    assert "<I>planned</I>" in to_dot(graph)

    # Shipping a model (card + manifest entry) turns the task into a measured, solid node ...
    card = {"name": "cis_conversion", "version": "0.1.0", "family": "logistic",
            "metrics": {"test": {"auc": 0.71}}}
    (root / "models_onnx/cis_conversion").mkdir(exist_ok=True)
    (root / "models_onnx/cis_conversion/model.json").write_text(json.dumps(card))
    _edit_json(root / "models_onnx/manifest.json",
               lambda m: m["models"].update(cis_conversion={"card": "cis_conversion/model.json"}))
    graph = task_graph(root)
    cis = graph.node("cis_conversion")
    assert cis.status == "done" and cis.figure == "held-out AUC 0.710"
    assert cis.model == "cis_conversion v0.1.0 (logistic, ONNX)"
    assert cis.modules == ("models_onnx/cis_conversion",)  # the only one present in tmp_path
    assert not any(e.dashed for e in graph.edges if "cis_conversion" in (e.tail, e.head))
    assert workflow_graph(root).node("cis_conversion").stage == "5 Models"
    assert {(e.tail, e.head) for e in graph.edges if e.tail == "cis_conversion"} == {
        ("cis_conversion", "page_prognosis")}


def test_a_shipped_model_links_to_the_pages_that_name_it(tmp_path: Path) -> None:
    root = _copy_inputs(tmp_path)
    card = {"name": "differential", "version": "1.2.3",
            "metrics": {"test": {"recorded_labels": {"macro_auc": 0.9, "ece_top_label": 0.02}}}}
    (root / "models_onnx/differential").mkdir(exist_ok=True)
    (root / "models_onnx/differential/model.json").write_text(json.dumps(card))
    _edit_json(root / "models_onnx/manifest.json",
               lambda m: m["models"].update(differential={"card": "differential/model.json"}))
    node = task_graph(root).node("differential")
    assert node.figure == "synthetic held-out macro AUC 0.900, top-label ECE 0.020"
    assert node.model == "differential v1.2.3 (ONNX)" and node.stage == "Diagnosis support"
    assert not [e for e in task_graph(root).edges if e.tail == "differential"]
    (root / "pages").mkdir()
    (root / "pages/patient.py").write_text("st.caption(research_notice('differential'))\n")
    edges = {(e.tail, e.head) for e in task_graph(root).edges if e.tail == "differential"}
    assert edges == {("differential", "page_patient")}
    check_dot(to_dot(task_graph(root)))
    check_dot(to_dot(workflow_graph(root)))


@pytest.mark.parametrize("broken", [
    'digraph "g" {\n  "a";\n',                      # unbalanced brace
    'digraph "g" {\n  "a";\n  "a" -> "b";\n}',      # edge to an undeclared node
    'digraph "g" {\n  "a" [label=<<B>x</I>>];\n}',   # malformed HTML label
    'digraph "g" {\n  "a" [label="x];\n}',           # unterminated string
])
def test_the_dot_checker_catches_broken_dot(broken: str) -> None:
    with pytest.raises((AssertionError, ET.ParseError)):
        check_dot(broken)


def test_dot_escapes_quotes_and_markup() -> None:
    nasty = 'a "quoted" <b>&amp; label\\'
    graph = Graph("g", nasty, (
        Node("a", nasty, ("x.py",), nasty, nasty, "r.json", nasty),
        Node("b", "B", (), "—", "", "", "other", status=PLANNED)),
        (Edge("a", "b", label=nasty, dashed=True),))
    dot = to_dot(graph)
    parsed = check_dot(dot)
    assert parsed.nodes == {"a", "b"} and parsed.edges == [("a", "b")]
    assert "&lt;b&gt;&amp;amp;" in dot


def test_bad_graphs_and_roots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='not "a b"'):
        Node("a b", "A", (), "—", "", "", "S")
    with pytest.raises(ValueError, match="unknown nodes"):
        Graph("g", "G", (Node("a", "A", (), "—", "", "", "S"),), (Edge("a", "zz"),))
    with pytest.raises(ValueError, match="duplicate"):
        Graph("g", "G", (Node("a", "A", (), "—", "", "", "S"),) * 2)
    with pytest.raises(ValueError, match="not a folder"):
        workflow_graph(tmp_path / "missing")


# ----------------------------------------------------------------------------- research notice
def test_research_notice_reads_the_card(tmp_path: Path) -> None:
    card = json.loads((REPO / "models_onnx/prognosis/model.json").read_text())
    notice = research_notice("prognosis")
    assert notice.startswith(RESEARCH_NOTICE)
    assert "`models_onnx/prognosis/MODEL_CARD.md`" in notice
    assert f"version {card['version']}, sha256 {card['sha256'][:12]}…" in notice

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps({"version": "3.1", "sha256": "ab" * 32}))
    assert model_card_ref("m", models_dir=tmp_path) == (
        f"`{tmp_path / 'm' / 'model.json'}` (version 3.1, sha256 abababababab…)")
    assert "model card not found" in research_notice("absent", models_dir=tmp_path)
    with pytest.raises(ValueError, match="folder name"):
        research_notice("../prognosis")


# ----------------------------------------------------------------------------- pages
@pytest.fixture
def app_study(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo study when it is built (read-only: nothing is written), else the small one."""
    study = DEMO if (DEMO / "participants.tsv").is_file() else request.getfixturevalue(
        "small_study")
    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    monkeypatch.setenv("MS_DASH_READ_ONLY", "1")
    return study


def _page(path: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def test_how_it_works_page_draws_both_graphs(app_study: Path) -> None:
    at = _page("pages/how_it_works.py")
    charts = at.get("graphviz_chart")
    assert len(charts) == 2
    specs = [c.proto.spec for c in charts]
    assert specs == [to_dot(workflow_graph(REPO)), to_dot(task_graph(REPO))]
    for spec in specs:
        check_dot(spec)
    assert len(at.dataframe) == 2
    assert any("docs/segmentation.md" in m.value for m in at.markdown)


@pytest.mark.skipif(not (REPO / "models_onnx/prognosis/model.onnx").exists(),
                    reason="no shipped prognosis model")
def test_prognosis_page_shows_the_research_notice(app_study: Path) -> None:
    at = _page("pages/prognosis.py")
    notices = [c.value for c in at.caption if RESEARCH_NOTICE in c.value]
    assert notices.count(research_notice("prognosis")) == 1
