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

#: The pipeline stages of the architecture doc, lowest first: the subpackages of ``ms_core``. A
#: module's stage is its folder; a stage imports only from stages listed before it.
STAGES = ("foundation", "study", "imaging", "lesions", "segmentation", "longitudinal",
          "synthetic", "clinical", "services")


def _imported(node: ast.AST) -> set[str]:
    """``stage.module`` names an import statement takes from ``ms_core`` (empty for others)."""
    names: set[str] = set()
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        parts = node.module.split(".")
        if parts[0] == "ms_core" and len(parts) >= 3:
            names.add(f"{parts[1]}.{parts[2]}")
        elif parts[0] == "ms_core" and len(parts) == 2:
            names |= {f"{parts[1]}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
        names |= {".".join(a.name.split(".")[1:3]) for a in node.names
                  if a.name.startswith("ms_core.") and a.name.count(".") >= 2}
    return names


def import_edges(root: Path = REPO / "ms_core") -> dict[str, set[str]]:
    """``stage.module`` -> the ``ms_core`` modules it imports anywhere in its code (also inside
    functions, where an import cycle would otherwise hide)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(root.glob("*/*.py")):
        if path.stem == "__init__":
            continue
        name = f"{path.parent.name}.{path.stem}"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets |= _imported(node)
        edges[name] = {t for t in targets if not t.endswith(".__init__")} - {name}
    return edges


def stage_of(module: str) -> str:
    """The stage of a ``stage.module`` name."""
    return module.split(".")[0]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a module in a later stage (the layering forbids them)."""
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs
                  if order.get(stage_of(b), -1) > order.get(stage_of(a), len(order)))


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
    links = sorted({(stage_of(a), stage_of(b)) for a, bs in edges.items() for b in bs
                    if stage_of(a) != stage_of(b)})
    lines = ["flowchart BT"]
    for stage in STAGES:
        mods = sorted(m.split(".")[1] for m in edges if stage_of(m) == stage)
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
    print(json.dumps({"benchmark": "architecture", "upward_imports": upward_imports(edges),
                      "layers": {k: sorted(v) for k, v in sorted(by_layer.items())},
                      "unstaged": sorted(m for m in edges if stage_of(m) not in STAGES),
                      "edges": {k: sorted(v) for k, v in edges.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
