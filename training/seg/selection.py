"""Compare candidate lesion-segmentation models before one is shipped (model selection).

Usage (export each candidate to its own folder first)::

    python -m training.seg.export --run training/runs/seg_v6 --models-dir /tmp/m_v6 --version 0.0.0
    python -m training.seg.selection models_onnx /tmp/m_v6

For each models folder, the FLAIR-only network (the report's settings) is run on

- the **selection set**: the first visit of demo patients 7-12 by default (``--skip 6``), which
  the report (``python -m training.seg.report --visits 6``) never shows;
- **patient26** of open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY), printed
  alongside. It is the issue's real-data test, so a model is chosen on the selection set; where
  patient26 also moved the choice, the report says so.

Prints one JSON object per folder: per-visit and mean Dice and lesion F1, the selection lesions
found per location class (``truth.json``), and patient26's figures with the lesions it
missed (size, place, probability, brightness).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ms_core.foundation.errors import StudyError
from ms_core.foundation.io import load_lesion_mask, load_volume, read_json
from ms_core.lesions.components import label_components
from ms_core.segmentation.inference import load_onnx_model
from ms_core.segmentation.model_store import load_segmentation_card
from ms_core.segmentation.segment import SegmentParams
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import Study, image_path, load_study
from training.seg.report import P26, P26_FLAIR, P26_MASK, REPO, _run


def selection_patients(patients: list[str], skip: int, count: int) -> list[str]:
    """The demo patients of the selection set: ``count`` after the report's first ``skip``."""
    chosen = patients[skip: skip + count]
    if len(chosen) < count:
        raise ValueError(f"the demo study has {len(patients)} patients; the selection set needs "
                         f"{skip + count} (--skip {skip} --count {count})")
    return chosen


def selection_visits(study: Study, patients: list[str]) -> list[tuple[str, str]]:
    """(participant, session) of the selection set: the first visit of each of ``patients``."""
    return [(pid, study.visits[pid][0].session_id) for pid in patients]


def found_by_location(pred: np.ndarray, truth_labels: np.ndarray,
                      locations: dict[int, str]) -> dict[str, list[int]]:
    """Per location class, [lesions with at least one predicted voxel, lesions]: ``truth_labels``
    holds lesion ids (0 background), ``locations`` maps each id to its class."""
    out: dict[str, list[int]] = {}
    for lesion_id, location in locations.items():
        where = truth_labels == lesion_id
        if not where.any():  # listed in the truth table but absent from this grid
            continue
        row = out.setdefault(location, [0, 0])
        row[0] += int(pred[where].any())
        row[1] += 1
    return out


def missed_lesions(pred: np.ndarray, prob: np.ndarray, truth: np.ndarray, flair: np.ndarray,
                   affine: np.ndarray) -> list[dict[str, Any]]:
    """The ``truth`` lesions without a predicted voxel, largest first: size (voxels), centroid
    (mm), highest probability inside, and mean FLAIR inside and in a shell 2-4 voxels outside,
    each divided by the median of the non-zero (brain) FLAIR voxels of a skull-stripped scan."""
    labels = label_components(truth, affine=affine)
    hit = set(np.unique(labels[pred & (labels > 0)]).tolist())
    brain = flair > 0
    median = float(np.median(flair[brain]))
    out = []
    for i in range(1, int(labels.max()) + 1):
        where = labels == i
        if i in hit or not where.any():
            continue
        near = ndi.binary_dilation(where, iterations=4) & ~ndi.binary_dilation(where, iterations=1)
        near &= brain & ~truth
        centroid = affine[:3, :3] @ np.argwhere(where).mean(axis=0) + affine[:3, 3]
        out.append({"voxels": int(where.sum()),
                    "centroid_mm": [round(float(c), 1) for c in centroid],
                    "max_prob": round(float(prob[where].max()), 3),
                    "flair_ratio": round(float(flair[where].mean()) / median, 2),
                    "surroundings_ratio": (round(float(flair[near].mean()) / median, 2)
                                           if near.any() else None)})
    return sorted(out, key=lambda r: -r["voxels"])


def evaluate_candidate(models_dir: Path, demo_root: Path, study: Study,
                       patients: list[str]) -> dict[str, Any]:
    """FLAIR-only network of ``models_dir`` on the selection visits and on patient26."""
    card = load_segmentation_card(models_dir)
    model = load_onnx_model(card, "cpu")
    net = SegmentParams(method="network")
    rows = {}
    by_location: dict[str, list[int]] = {}
    for pid, sid in selection_visits(study, patients):
        truth = load_lesion_mask(truth_dir(demo_root, pid, sid) / "lesion_labels.nii.gz")
        r = _run(image_path(demo_root, pid, sid, "FLAIR"), None, truth, net, model,
                 keep_mask=True)
        rows[pid] = {k: r[k] for k in ("dice", "f1_any", "pred_ml", "truth_ml")}
        table = read_json(truth_dir(demo_root, pid, sid) / "truth.json")["lesions"]
        found = found_by_location(r["pred_mask"], truth.labels,
                                  {int(t["lesion_id"]): str(t["location"]) for t in table})
        for location, (n_found, n) in found.items():
            row = by_location.setdefault(location, [0, 0])
            row[0] += n_found
            row[1] += n
    out: dict[str, Any] = {
        "models_dir": str(models_dir), "version": card.version, "sha256": card.sha256,
        "selection": rows,
        "selection_mean": {m: float(np.mean([r[m] for r in rows.values() if r[m] is not None]))
                           for m in ("dice", "f1_any")},
        "selection_found_by_location": {k: f"{f}/{n}" for k, (f, n) in sorted(by_location.items())},
    }
    if (P26 / P26_FLAIR).exists():
        truth = load_lesion_mask(P26 / P26_MASK)
        r = _run(P26 / P26_FLAIR, None, truth,
                 SegmentParams(method="network", skull_stripped=True), model, keep_mask=True)
        out["patient26"] = {k: r[k] for k in ("dice", "f1_any", "tpr_any", "fpr_any", "pred_ml",
                                              "truth_ml", "f1_any_min_size", "lesion_by_size")}
        out["patient26"]["missed_lesions"] = missed_lesions(
            r["pred_mask"], r["prob"], truth.labels > 0,
            load_volume(P26 / P26_FLAIR, "FLAIR").data, truth.affine)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models_dirs", type=Path, nargs="+", help="folders holding lesion_seg")
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--skip", type=int, default=6, help="demo patients the report shows")
    ap.add_argument("--count", type=int, default=6, help="demo patients in the selection set")
    args = ap.parse_args(argv)
    try:
        study = load_study(args.demo)
    except (OSError, StudyError) as e:  # names the folder
        ap.error(str(e))
    try:
        patients = selection_patients(list(study.visits), args.skip, args.count)
    except ValueError as e:
        ap.error(f"{args.demo}: {e}")
    for models_dir in args.models_dirs:
        print(json.dumps(evaluate_candidate(models_dir, args.demo, study, patients)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
