"""Benchmark: choose the sliding-window overlap on demo visits only (never patient26).

Usage: ``python bench/overlap_choice.py [--demo data/demo] [--patients 12]
[--overlaps 0.5,0.25] [--t1]``.

The overlap benchmark (``bench/overlap_tta.py``) found 25 % overlap 2.2x faster than 50 % and
better on its two cases, one of which is patient26, our only real validation scan. A default
must not be chosen on the validation scan, so this runs the network on FLAIR alone (what the
app and ``batch`` segment a study visit from since model 3.2.0; ``--t1`` adds the T1w channel)
with each overlap on the first visit of ``--patients`` demo patients (synthetic, known
ground truth) and reports per-visit and mean Dice and lesion F1, the paired differences against
the first overlap given, and seconds. Prints JSON and saves ``bench/results/overlap_choice.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, now_utc, save_result  # noqa: E402
from ms_core.foundation.io import load_lesion_mask  # noqa: E402
from ms_core.segmentation.inference import load_onnx_model  # noqa: E402
from ms_core.segmentation.model_store import MODELS_DIR, load_segmentation_card  # noqa: E402
from ms_core.segmentation.segment import SegmentParams  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402
from training.seg.report import _run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--overlaps", default="0.5,0.25")
    ap.add_argument("--t1", action="store_true",
                    help="also give the network the visit's T1w (default: FLAIR alone)")
    args = ap.parse_args()
    overlaps = [float(v) for v in args.overlaps.split(",")]
    card = load_segmentation_card(MODELS_DIR)
    model = load_onnx_model(card, "cpu")
    study = load_study(args.demo)
    rows: list[dict[str, Any]] = []
    for pid in list(study.visits)[: args.patients]:
        sid = study.visits[pid][0].session_id
        truth = load_lesion_mask(truth_dir(args.demo, pid, sid) / "lesion_labels.nii.gz")
        flair = image_path(args.demo, pid, sid, "FLAIR")
        t1 = image_path(args.demo, pid, sid, "T1w") if args.t1 else None
        row: dict[str, Any] = {"visit": f"{pid}/{sid}"}
        for ov in overlaps:
            params = dataclasses.replace(SegmentParams(method="network"), overlap=ov)
            r = _run(flair, t1, truth, params, model)
            row[str(ov)] = {k: r[k] for k in ("dice", "f1_any", "pred_ml", "truth_ml",
                                              "seconds")}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    ref = str(overlaps[0])
    summary = {}
    for ov in map(str, overlaps):
        dice = np.array([r[ov]["dice"] for r in rows])
        f1 = np.array([r[ov]["f1_any"] or 0.0 for r in rows])
        d_dice = dice - np.array([r[ref]["dice"] for r in rows])
        d_f1 = f1 - np.array([r[ref]["f1_any"] or 0.0 for r in rows])
        summary[ov] = {"mean_dice": round(float(dice.mean()), 4),
                       "mean_f1": round(float(f1.mean()), 4),
                       "mean_seconds": round(float(np.mean([r[ov]["seconds"] for r in rows])), 1),
                       "dice_minus_ref": {"mean": round(float(d_dice.mean()), 4),
                                          "min": round(float(d_dice.min()), 4),
                                          "max": round(float(d_dice.max()), 4),
                                          "n_better": int((d_dice > 0).sum()),
                                          "n_worse": int((d_dice < 0).sum())},
                       "f1_minus_ref_mean": round(float(d_f1.mean()), 4)}
    result = {"benchmark": "overlap_choice", "reference_overlap": overlaps[0],
              "model": {"version": card.version, "sha256": card.sha256},
              "inputs": "FLAIR + T1w" if args.t1 else "FLAIR",
              "n_visits": len(rows), "summary": summary, "visits": rows,
              "date_utc": now_utc(), "machine": machine()}
    save_result("overlap_choice", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
