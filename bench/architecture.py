"""The import graph of ``ms_core``, read from the code: layers and a Mermaid diagram.

Usage: ``python bench/architecture.py [--mermaid]``.

Each module's layer is one more than the highest layer it imports from (``ms_core`` imports
anywhere in the module, also inside functions); layer 0 imports no other ``ms_core`` module.
Prints JSON (layers, edges, whether the graph has a cycle), or with ``--mermaid`` the
``flowchart`` of the stages (the grouping of :data:`STAGES`) that ``docs/architecture.md`` shows.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The pipeline stages of the architecture doc, lowest first, and the modules of each (the
#: subpackages issue 36 moves them into). A stage imports only from stages listed before it.
STAGES = {
    "foundation": ("domain", "errors", "settings", "state_keys", "io", "jobs"),
    "study": ("study", "locks", "provenance_text", "audit", "access"),
    "imaging": ("anatomy", "dicom", "preprocess", "registration", "appearance"),
    "lesions": ("lesions", "location", "mcdonald", "features", "visits"),
    "segmentation": ("models", "inference", "segment", "evaluate"),
    "longitudinal": ("longitudinal", "atrophy", "timeline", "outcomes", "measurements"),
    "synthetic": ("synth", "demo", "cohort"),
    "clinical": ("patient_features", "prognosis", "prognosis_fit", "clinical_models",
                 "diagnosis", "differential", "trial"),
    "services": ("batch", "report", "viewer", "workflow", "importer", "register", "cli"),
}


def import_edges(root: Path = REPO / "ms_core") -> dict[str, set[str]]:
    """Module -> the ``ms_core`` modules it imports (anywhere in its code)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        if path.stem in ("__init__", "__main__"):
            continue
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "ms_core" and len(parts) > 1:
                    targets.add(parts[1])
        edges[path.stem] = targets - {path.stem, "__init__"}
    return edges


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer (raises ``ValueError`` on an import cycle)."""
    out: dict[str, int] = {}
    active: set[str] = set()

    def depth(m: str) -> int:
        if m in out:
            return out[m]
        if m in active:
            raise ValueError(f"import cycle through {m}")
        active.add(m)
        out[m] = 1 + max((depth(x) for x in edges.get(m, ()) if x in edges), default=-1)
        active.discard(m)
        return out[m]

    for module in edges:
        depth(module)
    return out


def mermaid(edges: dict[str, set[str]]) -> str:
    """A ``flowchart BT`` of the stages: an arrow where a stage's module imports another's."""
    stage_of = {m: s for s, mods in STAGES.items() for m in mods}
    links = sorted({(stage_of[a], stage_of[b]) for a, bs in edges.items() for b in bs
                    if a in stage_of and b in stage_of and stage_of[a] != stage_of[b]})
    lines = ["flowchart BT"]
    for stage, mods in STAGES.items():
        lines.append(f'    {stage}["{stage}<br/>{", ".join(mods)}"]')
    lines += [f"    {a} --> {b}" for a, b in links]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mermaid", action="store_true")
    args = ap.parse_args(argv)
    edges = import_edges()
    if args.mermaid:
        print(mermaid(edges))
        return 0
    by_layer: dict[int, list[str]] = defaultdict(list)
    for module, layer in layers(edges).items():
        by_layer[layer].append(module)
    stage_of = {m: s for s, mods in STAGES.items() for m in mods}
    order = list(STAGES)
    upward = sorted(f"{a} ({stage_of[a]}) -> {b} ({stage_of[b]})" for a, bs in edges.items()
                    for b in bs if a in stage_of and b in stage_of
                    and order.index(stage_of[b]) > order.index(stage_of[a]))
    print(json.dumps({"benchmark": "architecture", "upward_imports": upward,
                      "layers": {k: sorted(v) for k, v in sorted(by_layer.items())},
                      "unstaged": sorted(set(edges) - {m for v in STAGES.values() for m in v}),
                      "edges": {k: sorted(v) for k, v in edges.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
