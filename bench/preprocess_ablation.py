"""Ablation: does N4 bias-field correction or denoising help the lesion network?

Usage: ``python bench/preprocess_ablation.py [--demo data/demo] [--demo-visits 4]``.

Runs the network (FLAIR only, CPU) four ways: plain, +N4 (``bias_correction``), +denoise
(curvature flow) and +both, on

- **patient26** of open_ms_data (real 3 T FLAIR in MNI space, skull-stripped, consensus mask;
  Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY). Its authors already N4-corrected it, so
  this case measures whether a second correction or denoising *hurts* clean real data;
- the **first visit of the first N demo patients** (``data/demo``: synthetic smooth bias field
  and Rician noise, skull on), against the stored ground-truth lesion labels.

Metrics come from :func:`ms_core.segmentation.evaluate.evaluate_masks` (voxel Dice, lesion F1 with a
one-voxel overlap rule and with the 10 % rule); seconds are the pipeline's own stage timings
(``preprocess_n4``, ``preprocess_denoise``) and the wall time of the whole ``segment_volumes``
call. Prints JSON and saves ``bench/results/preprocess_ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms_core.foundation.domain import LesionMask, Volume  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume, write_json  # noqa: E402
from ms_core.segmentation.evaluate import evaluate_masks  # noqa: E402
from ms_core.segmentation.inference import OnnxModel, load_onnx_model  # noqa: E402
from ms_core.segmentation.model_store import load_segmentation_card  # noqa: E402
from ms_core.segmentation.segment import SegmentParams, segment_volumes  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402

P26 = REPO.parent / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI" / "patient26"
P26_FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_MASK = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
CONFIGS: dict[str, dict[str, bool]] = {
    "plain": {"bias_correction": False, "denoise": False},
    "n4": {"bias_correction": True, "denoise": False},
    "denoise": {"bias_correction": False, "denoise": True},
    "n4_denoise": {"bias_correction": True, "denoise": True},
}
METRICS = ("dice", "f1_any", "f1_10pct", "abs_volume_diff_ml", "n4_s", "denoise_s", "wall_s")


def _run(flair: Volume, truth: LesionMask, params: SegmentParams,
         model: OnnxModel) -> dict[str, Any]:
    """Segment ``flair`` with ``params`` and score it against ``truth``."""
    t0 = time.perf_counter()
    res = segment_volumes(flair, None, params, model)
    wall = time.perf_counter() - t0
    pred = LesionMask((res.labels > 0).astype(np.int32), res.affine)
    m: dict[str, Any] = evaluate_masks(pred, LesionMask(truth.labels, res.affine))
    any_, pct = m["lesion_any_voxel"], m["lesion_10pct"]
    return {"dice": round(float(m["dice"]), 4), "f1_any": any_["f1"], "f1_10pct": pct["f1"],
            "n_pred": any_["n_pred"], "n_true": any_["n_true"],
            "abs_volume_diff_ml": round(float(m["abs_volume_diff_ml"]), 4),
            "n4_s": res.seconds.get("preprocess_n4", 0.0),
            "denoise_s": res.seconds.get("preprocess_denoise", 0.0),
            "wall_s": round(wall, 2), "stage_seconds": res.seconds}


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4)
            for k in METRICS}


def _cases(demo_root: Path, n_visits: int) -> list[tuple[str, Path, Path, bool]]:
    """(name, FLAIR, truth labels, skull_stripped) for patient26 and the demo first visits."""
    cases = [("patient26", P26 / P26_FLAIR, P26 / P26_MASK, True)]
    study = load_study(demo_root)
    for pid in list(study.visits)[:n_visits]:
        sid = study.visits[pid][0].session_id
        cases.append((f"{pid}_{sid}", image_path(demo_root, pid, sid, "FLAIR"),
                      truth_dir(demo_root, pid, sid) / "lesion_labels.nii.gz", False))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--demo-visits", type=int, default=4,
                    help="demo patients (first visit each) to evaluate (default 4)")
    ap.add_argument("--out", type=Path,
                    default=REPO / "bench" / "results" / "preprocess_ablation.json")
    args = ap.parse_args(argv)
    card = load_segmentation_card()
    model = load_onnx_model(card, "cpu")
    t_start = time.perf_counter()
    per_case: dict[str, dict[str, dict[str, Any]]] = {}
    for name, flair_path, truth_path, stripped in _cases(args.demo, args.demo_visits):
        flair = load_volume(flair_path, "FLAIR")
        truth = load_lesion_mask(truth_path)
        per_case[name] = {}
        for cfg, flags in CONFIGS.items():
            params = SegmentParams(method="network", skull_stripped=stripped, device="cpu",
                                   **flags)
            per_case[name][cfg] = _run(flair, truth, params, model)
            print(name, cfg, {k: per_case[name][cfg][k] for k in METRICS}, file=sys.stderr,
                  flush=True)
    demo_names = [n for n in per_case if n != "patient26"]
    demo_mean = {cfg: _mean([per_case[n][cfg] for n in demo_names]) for cfg in CONFIGS}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "preprocess_ablation", "model": card.name, "model_version": card.version,
        "model_sha256": card.sha256, "provider": model.provider, "input": "FLAIR only",
        "command": "python bench/preprocess_ablation.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "configs": CONFIGS,
        "patient26": {cfg: {k: per_case["patient26"][cfg][k] for k in METRICS}
                      for cfg in CONFIGS},
        "demo_first_visits": {"n": len(demo_names), "cases": demo_names, "mean": demo_mean},
        "per_case": per_case,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "commit": commit,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("patient26", "demo_first_visits", "total_seconds",
                                             "machine")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
