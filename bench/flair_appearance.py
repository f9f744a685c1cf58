"""Benchmark: how lesions look on FLAIR, real (patient26) against the demo study.

Usage: ``python bench/flair_appearance.py [--demo data/demo] [--visits N] [--out FILE]``.

The demo study is only useful for choosing a segmentation model if its lesions look like real
ones. This prints, for patient26 of open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63,
CC-BY; FLAIR in MNI space with its consensus mask) and for the first visit of the first ``N``
demo patients (FLAIR with the true lesion labels), intensities relative to normal-appearing white
matter (the figures of :mod:`ms_core.imaging.appearance`).

patient26 is skipped with a note when ``../shared`` is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, now_utc, print_result  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume  # noqa: E402
from ms_core.imaging.appearance import appearance  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402
from training.seg.report import P26, P26_FLAIR, P26_MASK  # noqa: E402


def patient26() -> dict[str, Any] | str:
    if not ((P26 / P26_FLAIR).exists() and (P26 / P26_MASK).exists()):
        return f"skipped: {P26 / P26_FLAIR} not found (../shared absent)"
    flair = load_volume(P26 / P26_FLAIR, "FLAIR").data
    mask = load_lesion_mask(P26 / P26_MASK).labels > 0
    return appearance(flair, mask, flair > 0)


def demo_visits(root: Path, count: int) -> dict[str, Any]:
    study = load_study(root)
    out: dict[str, Any] = {}
    for pid in sorted(study.visits)[:count]:
        visit = study.visits[pid][0]
        sid = visit.session_id
        flair = load_volume(image_path(root, pid, sid, "FLAIR"), "FLAIR").data
        truth = truth_dir(root, pid, sid)
        labels = load_lesion_mask(truth / "lesion_labels.nii.gz").labels > 0
        brain = load_lesion_mask(truth / "brain_mask.nii.gz").labels > 0
        out[f"{pid}/{sid}"] = {"scanner": visit.scanner, **appearance(flair, labels, brain)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--visits", type=int, default=12, help="first visits of this many patients")
    ap.add_argument("--out", type=Path, default=None, help="also save the JSON here")
    args = ap.parse_args(argv)
    result = {"date": now_utc(), "patient26": patient26(),
              "demo": demo_visits(args.demo, args.visits), "machine": machine()}
    print_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
