"""Benchmark: brain atrophy (PBVC, BPF, GM, WM) on the demo study against its ground truth.

Usage::

    python bench/atrophy_eval.py --demo data/demo --patients 12 [--methods bsi,jacobian]
                                 [--tissue longitudinal|cross|none] [--out results.json]

Per patient, the T1w of every pair of consecutive visits goes through
:func:`ms_core.longitudinal.pbvc.pbvc_by_method`; the PBVC is annualised over the interval
between the acquisition dates and compared with the simulated rate (``atrophy_pct_per_year`` in
``truth.json``; a loss of r %/year is a PBVC of -r %/year). Per visit,
:func:`ms_core.segmentation.tissue.tissue_volumes` runs on the T1w with the true lesion labels
(FLAIR grid, resampled to the T1w grid and dilated by one voxel) filled, and brain, GM, WM, ICV and
BPF are compared with the truth. ``--tissue longitudinal`` (default) registers the baseline to MNI
once (:func:`ms_core.segmentation.tissue.register_to_mni`) and carries the matrix to each follow-up
through the rigid visit registration, so the ICV is the same at every visit; ``--tissue cross``
registers every visit on its own. Prints JSON (per pair, per visit and a summary with mean absolute
errors and seconds); ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import print_result, repo_relative  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume, read_json  # noqa: E402
from ms_core.imaging.preprocess import Grid, resample_to_grid  # noqa: E402
from ms_core.longitudinal.pbvc import PBVC_METHODS, annualised_pct_per_year, pbvc_by_method  # noqa: E402
from ms_core.segmentation.tissue import register_to_mni, tissue_volumes  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402

log = logging.getLogger("atrophy_eval")


def _mae(values: list[float]) -> float | None:
    return round(float(np.mean(np.abs(values))), 4) if values else None


def _lesions_on(volume_shape: tuple[int, int, int], volume_affine: np.ndarray,
                labels_path: Path) -> np.ndarray:
    """True lesion labels (FLAIR grid) as a mask on the T1w grid, dilated by one voxel."""
    les = load_lesion_mask(labels_path)
    mask = resample_to_grid(les.labels > 0, les.affine, Grid(volume_shape, volume_affine),
                            order=0)
    return np.asarray(ndi.binary_dilation(mask))


def _summary_pairs(pairs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        err = [p[m]["error_pct_per_year"] for p in pairs]
        same = [p[m]["error_pct_per_year"] for p in pairs if not p["scanner_change"]]
        change = [p[m]["error_pct_per_year"] for p in pairs if p["scanner_change"]]
        sub06 = [p[m]["error_pct_per_year"] for p in pairs if p["participant_id"] == "sub-06"]
        out[m] = {
            "n_pairs": len(err),
            "mae_pct_per_year": _mae(err),
            "bias_pct_per_year": round(float(np.mean(err)), 4) if err else None,
            "max_abs_error_pct_per_year": round(float(np.max(np.abs(err))), 4) if err else None,
            "share_within_0.2": round(float(np.mean(np.abs(err) <= 0.2)), 3) if err else None,
            "mae_same_scanner_pct_per_year": _mae(same),
            "mae_scanner_change_pct_per_year": _mae(change),
            "mae_sub06_pct_per_year": _mae(sub06),
            "seconds_per_pair_mean": round(float(np.mean([p["seconds"] for p in pairs])), 1),
        }
    return out


def _summary_visits(visits: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_visits": len(visits)}
    for key in ("brain_ml", "gm_ml", "wm_ml", "icv_ml"):
        err = [v["estimate"][key] - v["truth"][key] for v in visits]
        rel = [100 * (v["estimate"][key] / v["truth"][key] - 1) for v in visits]
        out[key] = {"mae_ml": _mae(err), "mae_pct": _mae(rel),
                    "bias_pct": round(float(np.mean(rel)), 3)}
    err_bpf = [v["estimate"]["bpf"] - v["truth"]["bpf"] for v in visits]
    out["bpf"] = {"mae": _mae(err_bpf), "bias": round(float(np.mean(err_bpf)), 4)}
    # Brain change from the first to the last visit of each patient, from the per-visit volumes.
    change_err = []
    for pid in sorted({v["participant_id"] for v in visits}):
        rows = [v for v in visits if v["participant_id"] == pid]
        if len(rows) > 1:
            est = 100 * (rows[-1]["estimate"]["brain_ml"] / rows[0]["estimate"]["brain_ml"] - 1)
            true = 100 * (rows[-1]["truth"]["brain_ml"] / rows[0]["truth"]["brain_ml"] - 1)
            change_err.append({"participant_id": pid, "estimate_pct": round(est, 3),
                               "truth_pct": round(true, 3)})
    out["first_to_last_brain_change"] = {
        "mae_pct": _mae([c["estimate_pct"] - c["truth_pct"] for c in change_err]),
        "captured_share": round(float(np.sum([c["estimate_pct"] for c in change_err])
                                      / np.sum([c["truth_pct"] for c in change_err])), 3)
        if change_err else None,
        "per_patient": change_err}
    out["seconds_per_visit_mean"] = round(float(np.mean([v["seconds"] for v in visits])), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--patients", type=int, default=12, help="first N patients")
    ap.add_argument("--methods", default="bsi", help=f"comma list of {PBVC_METHODS}")
    ap.add_argument("--modality", default="T1w")
    ap.add_argument("--tissue", choices=("longitudinal", "cross", "none"), default="longitudinal",
                    help="per-visit volumes: ICV registered at baseline only (longitudinal), "
                         "at every visit (cross) or not at all")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    study = load_study(args.demo)
    pids = sorted(study.visits)[: args.patients]
    pairs: list[dict[str, Any]] = []
    visits: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for pid in pids:
        sessions = study.visits[pid]
        truths = [read_json(truth_dir(args.demo, pid, v.session_id) / "truth.json")
                  for v in sessions]
        images = [load_volume(image_path(args.demo, pid, v.session_id, args.modality),
                              args.modality) for v in sessions]
        to_mni: np.ndarray | None = None
        for j, (v, t, img) in enumerate(zip(sessions, truths, images, strict=True)):
            f2b: np.ndarray | None = None
            if j > 0:
                vb = sessions[j - 1]
                years = (v.acq_date - vb.acq_date).days / 365.25
                true_rate = -float(t["atrophy_pct_per_year"])
                true_pbvc = 100 * (t["brain_volume_ml"] / truths[j - 1]["brain_volume_ml"] - 1)
                t0 = time.perf_counter()
                res = pbvc_by_method(images[j - 1], img, methods=methods)
                sec = time.perf_counter() - t0
                row: dict[str, Any] = {
                    "participant_id": pid, "baseline": vb.session_id, "followup": v.session_id,
                    "interval_years": round(years, 4), "scanner_change": vb.scanner != v.scanner,
                    "truth_pbvc_pct": round(true_pbvc, 4), "truth_pct_per_year": true_rate,
                    "seconds": round(sec, 1)}
                for m, r in res.items():
                    rate = annualised_pct_per_year(r.pbvc_pct, years)
                    row[m] = {"pbvc_pct": round(r.pbvc_pct, 4), "pct_per_year": round(rate, 4),
                              "error_pct_per_year": round(rate - true_rate, 4),
                              "qc_ncc": round(r.qc_ncc, 4), "warnings": list(r.warnings)}
                    f2b = r.followup_to_baseline
                pairs.append(row)
                log.info("%s %s->%s %s truth %.3f %%/y, %.0f s", pid, vb.session_id,
                         v.session_id, {m: row[m]["pct_per_year"] for m in methods}, true_rate,
                         sec)
            if args.tissue == "none":
                continue
            lesions = _lesions_on(img.shape, img.affine,
                                  truth_dir(args.demo, pid, v.session_id) / "lesion_labels.nii.gz")
            t0 = time.perf_counter()
            if args.tissue == "cross" or to_mni is None or f2b is None:
                to_mni = register_to_mni(img)
            else:  # longitudinal: the previous visit's matrix through the rigid registration
                to_mni = to_mni @ f2b
            tv = tissue_volumes(img, subject_to_mni=to_mni, refine=False, lesion_mask=lesions)
            sec = time.perf_counter() - t0
            visits.append({
                "participant_id": pid, "session_id": v.session_id, "scanner": v.scanner,
                "estimate": {k: round(float(x), 4) for k, x in vars(tv).items()},
                "truth": {"brain_ml": t["brain_volume_ml"], "gm_ml": t["gm_volume_ml"],
                          "wm_ml": t["wm_volume_ml"], "icv_ml": t["icv_ml"], "bpf": t["bpf"]},
                "seconds": round(sec, 1)})
            log.info("%s %s BPF %.4f (truth %.4f) %.0f s", pid, v.session_id, tv.bpf, t["bpf"],
                     sec)
    result = {
        "benchmark": "atrophy_eval", "demo": repo_relative(args.demo), "modality": args.modality,
        "methods": methods, "tissue_mode": args.tissue, "patients": pids,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "gpu": "none used"},
        "summary": {"pbvc": _summary_pairs(pairs, methods),
                    "tissue": _summary_visits(visits) if visits else None,
                    "wall_seconds": round(time.perf_counter() - t_start, 1)},
        "pairs": pairs, "visits": visits,
    }
    print_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
