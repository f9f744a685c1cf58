"""Benchmark: lesion location classes against the demo study's ground truth.

Usage: ``python bench/location_eval.py [--demo data/demo] [--visits N] [--out FILE]``.

For every visit (the first ``N`` in participant / date order, all by default) the MNI template is
registered to the FLAIR (:func:`ms_core.imaging.preprocess.template_to_subject`, as the app does),
the ground-truth lesion labels are classified with
:func:`ms_core.lesions.location.classify_lesions`' rule, and each lesion's class is compared with
``location`` in ``truth.json``. Lesions without voxels on the label map (disappeared, or below the
grid's resolution) are skipped. Prints JSON: accuracy, per-class confusion matrix (rows = truth,
columns = predicted), per-class recall, the accuracy at other ``min_share`` values of the rule
(sensitivity), timings and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import print_result, repo_relative  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume, read_json  # noqa: E402
from ms_core.imaging.preprocess import template_to_subject  # noqa: E402
from ms_core.lesions.location import LOCATIONS, MIN_ZONE_SHARE, classify_shares, zone_shares  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402

#: Rule thresholds reported besides the default (0 < share: any voxel in the zone).
SENSITIVITY = (1e-9, 0.02, 0.05, 0.10, 0.20)


def _share_name(min_share: float) -> str:
    return "any_voxel" if min_share < 1e-6 else f"{min_share:.2f}"


def _confusion(pairs: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    table = {t: dict.fromkeys(LOCATIONS, 0) for t in LOCATIONS}
    for truth, pred in pairs:
        table[truth][pred] += 1
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--visits", type=int, default=0, help="first N visits (0: all)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.visits < 0:
        ap.error(f"--visits must be >= 0, got {args.visits}")

    t_start = time.perf_counter()
    study = load_study(args.demo, check_images=False)
    visits = [(pid, v.session_id) for pid, vs in study.visits.items() for v in vs]
    if args.visits:
        visits = visits[: args.visits]
    records: list[tuple[str, dict[str, float]]] = []
    reg_seconds: list[float] = []
    for pid, sid in visits:
        flair = load_volume(image_path(args.demo, pid, sid, "FLAIR"), "FLAIR")
        t0 = time.perf_counter()
        subject_to_mni = template_to_subject(flair)
        reg_seconds.append(time.perf_counter() - t0)
        tdir = truth_dir(args.demo, pid, sid)
        labels = load_lesion_mask(tdir / "lesion_labels.nii.gz")
        truth = read_json(tdir / "truth.json")
        shares = zone_shares(labels.labels, labels.affine, subject_to_mni)
        for lesion in truth["lesions"]:
            lid = int(lesion["lesion_id"])
            if lid in shares:
                records.append((str(lesion["location"]), shares[lid]))

    def evaluate(min_share: float) -> tuple[float, list[tuple[str, str]]]:
        pairs = [(t, classify_shares(s, min_share=min_share)) for t, s in records]
        correct = sum(t == p for t, p in pairs)
        return (correct / len(pairs) if pairs else float("nan")), pairs

    accuracy, pairs = evaluate(MIN_ZONE_SHARE)
    confusion = _confusion(pairs)
    recall = {t: (row[t] / sum(row.values()) if sum(row.values()) else None)
              for t, row in confusion.items()}
    result = {
        "benchmark": "location_eval", "demo": repo_relative(args.demo), "n_visits": len(visits),
        "n_lesions": len(pairs), "min_share": MIN_ZONE_SHARE,
        "accuracy": round(accuracy, 4), "target_accuracy": 0.85,
        "confusion_rows_truth_cols_pred": confusion,
        "recall": {k: (round(v, 4) if v is not None else None) for k, v in recall.items()},
        "accuracy_by_min_share": {_share_name(s): round(evaluate(s)[0], 4) for s in SENSITIVITY},
        "seconds": {"total": round(time.perf_counter() - t_start, 1),
                    "registration_mean": round(sum(reg_seconds) / max(len(reg_seconds), 1), 2)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    print_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
