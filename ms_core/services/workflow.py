"""The app's workflow as data: what runs where, which model does it, how well it was measured.

Two directed graphs, both built from the repository at run time:

``workflow_graph``
    The end-to-end pipeline: acquisition, preprocessing, segmentation, feature extraction,
    models and evaluation, one Graphviz cluster per stage.
``task_graph``
    How the clinical tasks build on each other: segmentation, lesion and atrophy features,
    diagnosis support and the McDonald DIS/DIT checklist, prognosis (planned tasks dashed), and
    the app pages where a clinician sees each result.

Every node names the code that implements it (paths relative to the repository root), the
model it runs and its *last validation figure*, read from the model cards
(``models_onnx/<name>/model.json``) and the benchmark results (``bench/results/*.json``) when the
graph is built, so a retrained model or a re-run benchmark shows up without editing this file. A
node whose source file is missing or lacks the expected keys says ``"not measured"``. Models
beyond segmentation, diagnosis and prognosis (the differential, CIS conversion, treatment
response) join both graphs once ``models_onnx/manifest.json`` lists them; until then the last two
are drawn as planned tasks.

:func:`to_dot` renders a graph as Graphviz DOT text with HTML-like labels (for
``st.graphviz_chart``, which lays it out in the browser). :func:`research_notice` is the
research-use line shown beside every model output, pointing at the model's card.

>>> graph = workflow_graph(REPO_ROOT)
>>> [n.id for n in graph.nodes][:3]
['acquisition', 'preprocessing', 'coregistration']
>>> to_dot(graph).startswith('digraph "workflow" {')
True
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ms_core.segmentation.model_store import MODELS_DIR, SEGMENTATION_MODEL, models_dir_for

__all__ = [
    "NOT_MEASURED",
    "PLANNED",
    "REPO_ROOT",
    "RESEARCH_NOTICE",
    "Edge",
    "Graph",
    "Node",
    "model_card_ref",
    "research_notice",
    "steps_by_doc",
    "task_graph",
    "to_dot",
    "workflow_graph",
]

log = logging.getLogger(__name__)

REPO_ROOT = MODELS_DIR.parent
#: Figure of a node whose validation file is missing or unreadable.
NOT_MEASURED = "not measured"
#: Status of a task that has no model yet.
PLANNED = "planned"
RESEARCH_NOTICE = "Research use only — not a medical device."

_BENCH = "bench/results"
#: Characters per line in the node boxes.
_WRAP = 46


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Node:
    """One step of a graph.

    Attributes
    ----------
    id
        DOT identifier (letters, digits, underscore).
    label
        What the step does, for people.
    modules
        Paths (files or folders) relative to the repository root that implement it; empty for a
        planned step.
    model
        The model or rule it runs, with the version read from the card.
    figure
        Last validation figure, ``"not measured"`` when no result was found, ``""`` when there
        is nothing to validate (an app page, a planned task).
    figure_source
        The file the figure was read from, relative to the repository root, or ``""``.
    stage
        Cluster title the node is drawn in.
    status
        ``"done"`` or ``"planned"``.
    doc
        The documentation page of this step (relative path) or ``""``.
    """

    id: str
    label: str
    modules: tuple[str, ...]
    model: str
    figure: str
    figure_source: str
    stage: str
    status: str = "done"
    doc: str = ""

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("_", "").isalnum():
            raise ValueError(f'Node id must be letters, digits and "_", not "{self.id}"')
        if self.status not in ("done", PLANNED):
            raise ValueError(f'Node status must be "done" or "{PLANNED}", not "{self.status}"')

    @property
    def module(self) -> str:
        """The implementing paths as one comma-separated string (``"—"`` when none)."""
        return ", ".join(self.modules) or "—"


@dataclass(frozen=True)
class Edge:
    """``tail -> head``; ``dashed`` for a planned link or a measurement relation."""

    tail: str
    head: str
    label: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class Graph:
    """A directed graph of :class:`Node` joined by :class:`Edge`, in drawing order."""

    name: str
    title: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = field(default=())
    #: Graphviz layout direction: ``"LR"`` (left to right) or ``"TB"`` (top to bottom).
    rankdir: str = "LR"

    def __post_init__(self) -> None:
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Graph {self.name!r} has duplicate node ids: {sorted(ids)}")
        unknown = {e.tail for e in self.edges} | {e.head for e in self.edges}
        unknown -= set(ids)
        if unknown:
            raise ValueError(f"Graph {self.name!r} has edges to unknown nodes {sorted(unknown)}")
        if self.rankdir not in ("LR", "TB"):
            raise ValueError(f'Graph rankdir must be "LR" or "TB", not "{self.rankdir}"')

    def node(self, node_id: str) -> Node:
        """The node with this id; ``KeyError`` naming it when absent."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} in graph {self.name!r}")

    def rows(self) -> list[dict[str, str]]:
        """One dict per node (stage, step, module, model, validation figure, source): a table.

        >>> Graph("g", "G", (Node("a", "A", ("x.py",), "m", "0.5", "r.json", "S"),)).rows()[0]
        ... # doctest: +NORMALIZE_WHITESPACE
        {'stage': 'S', 'step': 'A', 'status': 'done', 'module': 'x.py', 'model': 'm',
         'validation figure': '0.5', 'source': 'r.json'}
        """
        return [{"stage": n.stage, "step": n.label, "status": n.status, "module": n.module,
                 "model": n.model, "validation figure": n.figure or "—",
                 "source": n.figure_source or "—"} for n in self.nodes]


# ----------------------------------------------------------------------------- reading figures
def _get(data: Any, dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; ``KeyError``/``TypeError`` when a level is missing."""
    for key in dotted.split("."):
        data = data[key]
    return data


def _num(data: Any, dotted: str) -> float:
    value = _get(data, dotted)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{dotted} is {value!r}, not a number")
    return float(value)


def _load(path: Path) -> Any:
    """Parsed JSON of ``path``, or ``None`` (logged) when it is missing or malformed.

    Not cached: the files are small (under 50 kB) and must be re-read after every benchmark run.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.debug("no validation figure from %s: %s", path, e)
        return None


#: Renders a figure from one parsed file; raises KeyError/TypeError/ValueError when it cannot.
Render = Callable[[Any], str]


def _candidates(repo_root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` (a glob relative to the root), newest first."""
    files = [p for p in repo_root.glob(pattern) if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def _measure(repo_root: Path, probes: Sequence[tuple[str, Render]]) -> tuple[str, str]:
    """(figure, source) from the first probe that renders; (``"not measured"``, ``""``) if none.

    Each probe is (glob relative to ``repo_root``, render); files of one glob are tried newest
    first.
    """
    for pattern, render in probes:
        for path in _candidates(repo_root, pattern):
            data = _load(path)
            if data is None:
                continue
            try:
                return render(data), path.relative_to(repo_root).as_posix()
            except (KeyError, IndexError, TypeError, ValueError) as e:
                log.debug("no validation figure from %s: %s", path, e)
    return NOT_MEASURED, ""


def _card(repo_root: Path, name: str) -> dict[str, Any] | None:
    data = _load(repo_root / "models_onnx" / name / "model.json")
    return data if isinstance(data, dict) else None


def _model_label(repo_root: Path, name: str, what: str) -> str:
    """``"lesion_seg v2.0.0 (3D U-Net)"`` from the card, or a note that the card is missing."""
    card = _card(repo_root, name)
    if card is None:
        return f"{name} ({what}; model card missing)"
    return f"{name} v{card.get('version', '?')} ({what})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


# ----------------------------------------------------------------------------- figures per step
def _fuzz(d: Any) -> str:
    return (f"{int(_num(d, 'examples')):,} corrupted inputs: "
            f"{int(_num(d, 'other_exceptions'))} unhandled exceptions")


def _ablation(d: Any) -> str:
    plain = _num(d, "patient26.plain.dice")
    denoise = _num(d, "patient26.denoise.dice")
    return f"patient26 Dice {plain:.3f} plain, {denoise:.3f} denoised"


def _registration(d: Any) -> str:
    return f"real pair patient12: rigid NCC {_num(d, 'patient12.joint.registration_ncc'):.3f}"


def _real_set(d: Any, mean: str) -> str:
    """The real validation set's mean figures (``mean``: the dotted path of its summary)."""
    return (f"real set ({int(_num(d, mean + '.n'))} scans, 2 centres) mean Dice "
            f"{_num(d, mean + '.dice'):.3f}, lesion F1 {_num(d, mean + '.f1_any'):.3f}")


def _segmentation_probes(repo_root: Path) -> list[tuple[str, Render]]:
    card = _card(repo_root, SEGMENTATION_MODEL)
    card_sha = card.get("sha256") if card else None

    def bench(d: Any) -> str:
        if card_sha is not None and _get(d, "model_sha256") != card_sha:
            raise ValueError("benchmark of another lesion_seg model")
        return _real_set(d, "real.mean.network_flair")

    def from_card(d: Any) -> str:
        return _real_set(d, "evaluation.real_validation_mean.network_flair")

    return [(f"{_BENCH}/segmentation_eval*.json", bench),
            ("models_onnx/lesion_seg/model.json", from_card)]


def _tracking(d: Any) -> str:
    f1 = _num(d, "patient12.joint.any_change.f1")
    return (f"real pair patient12: change lesion F1 {f1:.2f}; "
            f"demo: new-lesion detection {_pct(_num(d, 'demo.joint.detection_rate'))}, "
            f"{_num(d, 'demo.joint.false_new_per_interval'):.1f} false new / interval")


def _location(d: Any) -> str:
    return (f"demo: location {_pct(_num(d, 'accuracy'))} correct "
            f"({int(_num(d, 'n_lesions'))} lesions)")


def _atrophy(d: Any) -> str:
    s = _get(d, "summary.pbvc.bsi")
    return (f"demo: PBVC MAE {_num(s, 'mae_pct_per_year'):.3f} %/year "
            f"({int(_num(s, 'n_pairs'))} pairs, BSI)")


def _prognosis(d: Any) -> str:
    lo, hi = _get(d, "metrics.test.auc_ci95")
    return (f"synthetic held-out AUC {_num(d, 'metrics.test.auc'):.3f} "
            f"(95 % CI {float(lo):.3f}–{float(hi):.3f}), ECE {_num(d, 'metrics.test.ece'):.3f}")


def _diagnosis(d: Any) -> str:
    auc = _num(d, "metrics.test.recorded_labels.auc")
    real = _get(d, "metrics.real_data")
    return (f"synthetic held-out AUC {auc:.3f}; real MS/CIS called MS-typical "
            f"{int(_num(real, 'n_ms_typical'))}/{int(_num(real, 'n_scored'))}")


def _card_auc(d: Any) -> str:
    return f"held-out AUC {_num(d, 'metrics.test.auc'):.3f}"


def _evaluation(repo_root: Path) -> tuple[str, str]:
    results = _candidates(repo_root, f"{_BENCH}/*.json")
    if not results:
        return NOT_MEASURED, ""
    return f"{len(results)} benchmark result files", _BENCH


# ----------------------------------------------------------------------------- nodes
_ACQ, _PRE, _SEG, _FEAT, _MOD, _EVAL = (
    "1 Acquisition", "2 Preprocessing", "3 Segmentation", "4 Feature extraction", "5 Models",
    "6 Evaluation")
_TASK_SEG, _TASK_FEAT, _TASK_DX, _TASK_PX, _VIEW = (
    "Segmentation", "Lesion and atrophy features", "Diagnosis support", "Prognosis",
    "Clinician's view (app pages)")


def _step(repo_root: Path, node_id: str, label: str, modules: tuple[str, ...], model: str,
          probes: Sequence[tuple[str, Render]], stage: str, doc: str = "") -> Node:
    figure, source = _measure(repo_root, probes)
    return Node(node_id, label, modules, model, figure, source, stage, doc=doc)


def _pipeline_nodes(root: Path) -> dict[str, Node]:
    seg_model = _model_label(root, SEGMENTATION_MODEL, "3D U-Net, ONNX")
    nodes = [
        _step(root, "acquisition", "Study layout and import (NIfTI, DICOM)",
              ("ms_core/study/layout.py", "ms_core/foundation/io.py",
               "ms_core/services/importer.py", "ms_core/imaging/dicom.py"),
              "no model (validating loader, dcm2niix)", [(f"{_BENCH}/fuzz*.json", _fuzz)], _ACQ,
              "docs/import.md"),
        _step(root, "preprocessing",
              "Denoising, intensity normalisation, skull stripping (1 mm RAS grid)",
              ("ms_core/imaging/preprocess.py",), "MNI152 template registration (brain mask)",
              [(f"{_BENCH}/preprocess_ablation*.json", _ablation)], _PRE,
              "docs/preprocessing.md"),
        _step(root, "coregistration", "Co-registration of visits (rigid, QC)",
              ("ms_core/imaging/registration.py", "ms_core/longitudinal/tracking.py"),
              "SimpleITK rigid / affine (no trained model)",
              [(f"{_BENCH}/track_eval*.json", _registration)], _PRE, "docs/longitudinal.md"),
        _step(root, "segmentation", "Lesion segmentation (sliding window, optional TTA)",
              ("ms_core/segmentation/segment.py", "ms_core/segmentation/inference.py",
               "models_onnx/lesion_seg"),
              seg_model, _segmentation_probes(root), _SEG, "docs/segmentation.md"),
        _step(root, "tracking", "Lesion changes: new, enlarging, shrinking (persistent ids)",
              ("ms_core/longitudinal/tracking.py", "ms_core/longitudinal/measurements.py"),
              f"{seg_model} + joint change rule", [(f"{_BENCH}/track_eval*.json", _tracking)],
              _FEAT, "docs/longitudinal.md"),
        _step(root, "location", "Lesion location (periventricular, juxtacortical, ...)",
              ("ms_core/lesions/location.py",), "MNI152 zones warped to the subject (rule)",
              [(f"{_BENCH}/location_eval*.json", _location)], _FEAT, "docs/lesion_location.md"),
        _step(root, "atrophy", "Brain atrophy: volumes, BPF, PBVC",
              ("ms_core/segmentation/tissue.py", "ms_core/longitudinal/pbvc.py",
               "ms_core/longitudinal/atrophy.py"),
              "partial-volume classification, MNI priors (no training)",
              [(f"{_BENCH}/atrophy_eval_bsi.json", _atrophy),
               (f"{_BENCH}/atrophy_eval*.json", _atrophy)], _FEAT, "docs/atrophy.md"),
        _step(root, "radiomics", "Per-lesion radiomics (shape, first order, GLCM)",
              ("ms_core/lesions/features.py",), "documented pyradiomics-like subset (no model)",
              [], _FEAT, "docs/lesion_location.md"),
        _step(root, "diagnosis", "Diagnosis support: lesion pattern MS-typical vs other",
              ("ms_core/clinical/diagnosis.py", "training/diagnosis"),
              _model_label(root, "diagnosis", "logistic, ONNX"),
              [("models_onnx/diagnosis/model.json", _diagnosis)], _MOD, "docs/diagnosis.md"),
        _step(root, "prognosis", "Prognosis: confirmed EDSS worsening within 2 years",
              ("ms_core/clinical/prognosis.py", "ms_core/clinical/patient_features.py",
               "training/prognosis"),
              _prognosis_model_label(root),
              [("models_onnx/prognosis/model.json", _prognosis)], _MOD, "docs/prognosis.md"),
    ]
    figure, source = _evaluation(root)
    nodes.append(Node("evaluation", "Metrics, benchmarks and reports",
                      ("ms_core/segmentation/evaluate.py", "bench", "docs"),
                      "none (metrics: Dice, lesion F1, AUC, ECE, MAE)",
                      figure, source, _EVAL, doc="README.md"))
    return {n.id: n for n in nodes}


def _prognosis_model_label(root: Path) -> str:
    card = _card(root, "prognosis")
    family = card.get("family", "?") if card else "?"
    return _model_label(root, "prognosis", f"{family}, Platt-calibrated, ONNX")


# ----------------------------------------------------------------------------- graphs
def _check_root(repo_root: Path | str) -> Path:
    root = Path(repo_root)
    if not root.is_dir():
        raise ValueError(f'Repository root "{root}" is not a folder; pass the checkout\'s root')
    return root


def workflow_graph(repo_root: Path | str = REPO_ROOT) -> Graph:
    """The end-to-end pipeline, with every figure read from ``repo_root`` now.

    Parameters
    ----------
    repo_root
        The repository checkout (``models_onnx/`` and ``bench/results/`` are read).

    Raises
    ------
    ValueError
        when ``repo_root`` is not a folder.
    """
    root = _check_root(repo_root)
    n = _pipeline_nodes(root)
    shipped = _shipped_models(root)
    extras = [name for name in _EXTRAS if name in shipped]
    evaluation = n.pop("evaluation")  # drawn last
    n.update((name, _extra_node(root, name, _EXTRAS[name], _MOD, shipped)) for name in extras)
    n["evaluation"] = evaluation
    edges = (
        Edge("acquisition", "preprocessing"),
        Edge("preprocessing", "segmentation"),
        Edge("preprocessing", "coregistration"),
        Edge("segmentation", "tracking"),
        Edge("coregistration", "tracking"),
        Edge("segmentation", "location"),
        Edge("segmentation", "atrophy", "lesion filling"),
        Edge("coregistration", "atrophy"),
        Edge("segmentation", "radiomics"),
        Edge("location", "diagnosis"),
        Edge("location", "prognosis"),
        Edge("tracking", "prognosis"),
        Edge("atrophy", "prognosis"),
        *(Edge(source, name) for name in extras for source in _EXTRAS[name].pipeline_inputs),
        *(Edge(node_id, "evaluation", dashed=True) for node_id in (
            "segmentation", "tracking", "atrophy", "diagnosis", "prognosis", *extras)),
    )
    return Graph("workflow", "End-to-end workflow", tuple(n.values()), edges, rankdir="TB")


@dataclass(frozen=True)
class _Extra:
    """A model that joins the graphs once ``models_onnx/manifest.json`` lists it."""

    label: str
    code: tuple[str, ...]  # implementing paths, listed when they exist
    render: Render
    task_stage: str
    task_inputs: tuple[str, ...]  # task-graph nodes feeding it
    pipeline_inputs: tuple[str, ...]  # workflow-graph nodes feeding it
    planned_page: str = ""  # page meant to show it; non-empty: drawn as planned until shipped
    doc: str = ""  # documentation page, shown when it exists


def _differential(d: Any) -> str:
    test = _get(d, "metrics.test.recorded_labels")
    return (f"synthetic held-out macro AUC {_num(test, 'macro_auc'):.3f}, "
            f"top-label ECE {_num(test, 'ece_top_label'):.3f}")


def _binary(d: Any) -> str:
    try:
        return _prognosis(d)
    except (KeyError, IndexError, TypeError, ValueError):
        return _card_auc(d)


#: Models beyond segmentation, diagnosis and prognosis, by their models_onnx name. The two with
#: a ``planned_page`` are tasks the app is meant to have: drawn dashed until their model ships.
_EXTRAS = {
    "differential": _Extra(
        "Differential support: MS vs healthy ageing vs NMOSD-like pattern",
        ("ms_core/clinical/differential.py", "training/differential"), _differential, _TASK_DX,
        ("location", "mcdonald"), ("location",), doc="docs/differential.md"),
    "cis_conversion": _Extra(
        "CIS conversion to clinically definite MS", ("ms_core/clinical/clinical_models.py",
                                                     "training/clinical"),
        _binary, _TASK_PX, ("location", "tracking", "mcdonald"), ("location",),
        planned_page="page_prognosis", doc="docs/clinical_models.md"),
    "treatment_response": _Extra(
        "Treatment response (disease activity on a DMT)", ("ms_core/clinical/clinical_models.py",
                                                           "training/clinical"),
        _binary, _TASK_PX, ("tracking", "atrophy"), ("tracking", "atrophy"),
        planned_page="page_prognosis", doc="docs/clinical_models.md"),
}
#: Page nodes of the task graph: id -> (label, file under pages/).
_PAGES = {
    "page_patient": ("Patient: viewer, lesions, McDonald, pattern", "patient.py"),
    "page_timeline": ("Timeline: EDSS, lesion and brain volume", "timeline.py"),
    "page_prognosis": ("Prognosis: risk, SHAP, what-if", "prognosis.py"),
    "page_cohort": ("Cohort / trial: per-arm end points", "cohort.py"),
    "page_report": ("Report: HTML and PDF", "report.py"),
}


def _shipped_models(root: Path) -> set[str]:
    """Model names listed in ``models_onnx/manifest.json`` whose card can be read."""
    manifest = _load(root / "models_onnx" / "manifest.json")
    models = manifest.get("models") if isinstance(manifest, dict) else None
    names = set(models) if isinstance(models, dict) else set()
    return {name for name in names if _card(root, name) is not None}


def _extra_node(root: Path, name: str, extra: _Extra, stage: str, shipped: set[str]) -> Node:
    """The node of an extra model: from its card when shipped, else a planned task."""
    if name not in shipped:
        return Node(name, extra.label, (), "none yet", "", "", stage, PLANNED)
    code = tuple(p for p in (*extra.code, f"models_onnx/{name}") if (root / p).exists())
    family = (_card(root, name) or {}).get("family")
    figure, source = _measure(root, [(f"models_onnx/{name}/model.json", extra.render)])
    return Node(name, extra.label, code,
                _model_label(root, name, f"{family}, ONNX" if family else "ONNX"),
                figure, source, stage, doc=extra.doc if (root / extra.doc).is_file() else "")


def _pages_showing(root: Path, name: str) -> list[str]:
    """Page nodes whose source names the model in quotes (e.g. ``research_notice("x")``)."""
    out = []
    for node_id, (_, page) in _PAGES.items():
        try:
            text = (root / "pages" / page).read_text(encoding="utf-8")
        except OSError:
            continue
        if f'"{name}"' in text or f"'{name}'" in text:
            out.append(node_id)
    return out


def task_graph(repo_root: Path | str = REPO_ROOT) -> Graph:
    """How the tasks build on each other, ending at the app pages that show them.

    CIS conversion and treatment response are ``"planned"`` (dashed) until
    ``models_onnx/manifest.json`` lists a readable model of that name. A shipped extra model
    (those two, the differential) is linked to the page meant to show it and to every page whose
    source names it in quotes, as ``research_notice("differential")`` does. Raises
    ``ValueError`` when ``repo_root`` is not a folder.
    """
    root = _check_root(repo_root)
    p = _pipeline_nodes(root)
    shipped = _shipped_models(root)

    def moved(node_id: str, stage: str, label: str | None = None) -> Node:
        return replace(p[node_id], stage=stage, label=label or p[node_id].label)

    extras = {name: _extra_node(root, name, extra, extra.task_stage, shipped)
              for name, extra in _EXTRAS.items() if name in shipped or extra.planned_page}
    nodes = [
        moved("segmentation", _TASK_SEG),
        moved("location", _TASK_FEAT, label="Lesion load and location (DIS areas)"),
        moved("tracking", _TASK_FEAT, label="New and enlarging lesions (DIT, activity)"),
        moved("atrophy", _TASK_FEAT),
        Node("mcdonald", "McDonald 2017 MRI criteria: DIS and DIT",
             ("ms_core/lesions/mcdonald.py",), "rules (Thompson et al. 2018)", NOT_MEASURED, "",
             _TASK_DX, doc="docs/lesion_location.md"),
        moved("diagnosis", _TASK_DX),
        moved("prognosis", _TASK_PX, label="Confirmed EDSS worsening within 2 years"),
        *extras.values(),
        *(Node(node_id, label, (f"pages/{page}",), "—", "", "", _VIEW)
          for node_id, (label, page) in _PAGES.items()),
    ]
    links = [
        ("segmentation", "location"), ("segmentation", "tracking"), ("segmentation", "atrophy"),
        ("location", "mcdonald"), ("tracking", "mcdonald"), ("location", "diagnosis"),
        ("location", "prognosis"), ("tracking", "prognosis"), ("atrophy", "prognosis"),
        ("segmentation", "page_patient"), ("mcdonald", "page_patient"),
        ("diagnosis", "page_patient"), ("tracking", "page_timeline"),
        ("atrophy", "page_timeline"), ("prognosis", "page_prognosis"),
        ("prognosis", "page_cohort"), ("tracking", "page_cohort"), ("atrophy", "page_cohort"),
        ("mcdonald", "page_report"), ("prognosis", "page_report"),
    ]
    for name, node in extras.items():
        extra = _EXTRAS[name]
        links += [(source, name) for source in extra.task_inputs]
        pages = [extra.planned_page] if extra.planned_page else []
        if node.status != PLANNED:
            pages += _pages_showing(root, name)
        links += [(name, page) for page in dict.fromkeys(pages)]
    planned = {n.id for n in nodes if n.status == PLANNED}
    edges = tuple(Edge(a, b, dashed=bool({a, b} & planned)) for a, b in links)
    return Graph("tasks", "How the tasks build on each other", tuple(nodes), edges)


def steps_by_doc(*graphs: Graph) -> dict[str, list[str]]:
    """Documentation page -> labels of the steps it covers (each node once, first label wins).

    >>> g = Graph("g", "G", (Node("a", "A", (), "—", "", "", "S", doc="docs/a.md"),))
    >>> steps_by_doc(g, g)
    {'docs/a.md': ['A']}
    """
    first: dict[str, Node] = {}
    for node in (n for g in graphs for n in g.nodes if n.doc):
        first.setdefault(node.id, node)
    out: dict[str, list[str]] = {}
    for node in first.values():
        out.setdefault(node.doc, []).append(node.label)
    return out


# ----------------------------------------------------------------------------- DOT
def _html(text: str) -> str:
    """Escape text for a Graphviz HTML-like label."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _quote(text: str) -> str:
    """A double-quoted DOT string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _wrapped(text: str, width: int = _WRAP) -> str:
    """Escaped text broken into lines of at most ``width`` characters (``<BR/>`` between)."""
    return "<BR/>".join(_html(line) for line in textwrap.wrap(text, width) or [""])


def _node_label(n: Node) -> str:
    lines = [f"<B>{_wrapped(n.label)}</B>"]
    if n.status == PLANNED:
        lines.append("<I>planned</I>")
    if n.modules:
        lines.append('<FONT POINT-SIZE="9" FACE="monospace">'
                     + "<BR/>".join(_html(m) for m in n.modules) + "</FONT>")
    if n.model != "—":
        lines.append(f'<FONT POINT-SIZE="9">{_wrapped(f"model: {n.model}")}</FONT>')
    if n.figure:
        colour = "gray40" if n.figure == NOT_MEASURED else "darkgreen"
        lines.append(f'<FONT POINT-SIZE="9" COLOR="{colour}">{_wrapped(n.figure)}</FONT>')
    return "<" + "<BR/>".join(lines) + ">"


def _node_stmt(n: Node) -> str:
    style = ('style="rounded,dashed", fontcolor="gray35", color="gray55"'
             if n.status == PLANNED else 'style="rounded,filled", fillcolor="white"')
    return f"    {_quote(n.id)} [label={_node_label(n)}, {style}];"


def _edge_stmt(e: Edge) -> str:
    attrs = []
    if e.label:
        attrs.append(f"label={_quote(e.label)}")
    if e.dashed:
        attrs.append('style="dashed", color="gray50"')
    tail = f"  {_quote(e.tail)} -> {_quote(e.head)}"
    return f"{tail} [{', '.join(attrs)}];" if attrs else f"{tail};"


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text of ``graph``: one cluster per stage, HTML-like labels.

    Text is escaped (``&``, ``<``, ``>`` and quotes), so any label or figure is safe.

    >>> g = Graph("g", 'A "quoted" title', (Node("a", "x < y", (), "—", "", "", "S"),))
    >>> print(to_dot(g))  # doctest: +NORMALIZE_WHITESPACE
    digraph "g" {
      graph [rankdir="LR", label="A \\"quoted\\" title", labelloc="t", fontname="Helvetica",
             fontsize="14", nodesep="0.25", ranksep="0.45"];
      node [shape="box", fontname="Helvetica", fontsize="10", margin="0.12,0.06"];
      edge [color="gray30", arrowsize="0.7", fontname="Helvetica", fontsize="8"];
      subgraph "cluster_0" {
        label="S"; style="rounded,filled"; color="gray80"; fillcolor="gray97";
        "a" [label=<<B>x &lt; y</B>>, style="rounded,filled", fillcolor="white"];
      }
    }
    """
    out = [
        f"digraph {_quote(graph.name)} {{",
        f'  graph [rankdir="{graph.rankdir}", label={_quote(graph.title)}, labelloc="t", '
        'fontname="Helvetica", fontsize="14", nodesep="0.25", ranksep="0.45"];',
        '  node [shape="box", fontname="Helvetica", fontsize="10", margin="0.12,0.06"];',
        '  edge [color="gray30", arrowsize="0.7", fontname="Helvetica", fontsize="8"];',
    ]
    stages = list(dict.fromkeys(n.stage for n in graph.nodes))
    for i, stage in enumerate(stages):
        out.append(f"  subgraph {_quote(f'cluster_{i}')} {{")
        out.append(f'    label={_quote(stage)}; style="rounded,filled"; color="gray80"; '
                   'fillcolor="gray97";')
        out.extend(_node_stmt(n) for n in graph.nodes if n.stage == stage)
        out.append("  }")
    out.extend(_edge_stmt(e) for e in graph.edges)
    out.append("}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- research notice
def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def model_card_ref(model_name: str, *, models_dir: Path | str | None = None) -> str:
    """Markdown pointing at a model's card: path, version and sha256 (first 12 hex digits),
    in ``models_dir`` (default: the folder that serves the model,
    :func:`ms_core.segmentation.model_store.models_dir_for`).

    ``MODEL_CARD.md`` is named when it exists, else ``model.json``. Raises ``ValueError`` for a
    name that is empty or contains a path separator.

    >>> model_card_ref("prognosis").startswith("`models_onnx/prognosis/MODEL_CARD.md` (version ")
    True
    """
    if not model_name or "/" in model_name or "\\" in model_name or model_name in (".", ".."):
        raise ValueError(f'Model name must be a folder name under models_onnx, not "{model_name}"')
    folder = Path(models_dir_for(model_name) if models_dir is None else models_dir) / model_name
    card_md = folder / "MODEL_CARD.md"
    shown = _display_path(card_md if card_md.is_file() else folder / "model.json")
    data = _load(folder / "model.json")
    if not isinstance(data, dict):
        return f"`{shown}` (model card not found)"
    version = data.get("version", "?")
    sha = str(data.get("sha256") or "?")
    return f"`{shown}` (version {version}, sha256 {sha[:12]}…)"


def research_notice(model_name: str, *, models_dir: Path | str | None = None) -> str:
    """The research-use line shown beside a model's output, with a pointer to its card.

    >>> research_notice("lesion_seg")  # doctest: +ELLIPSIS
    'Research use only — not a medical device. Model card: `models_onnx/lesion_seg/MODEL_CARD.md` (version ..., sha256 ...…)'
    """  # noqa: E501
    return f"{RESEARCH_NOTICE} Model card: {model_card_ref(model_name, models_dir=models_dir)}"
