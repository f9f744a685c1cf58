"""Benchmark: seconds per pipeline stage of one visit, min / median / p95 over fresh processes.

Usage: ``python bench/stage_timings.py [--runs 5] [--cases demo,patient26] [--device cpu]
[--cache warm|cold]``.

Cases (FLAIR alone, as the app and ``batch`` segment a visit since model 3.2.0, even where it
has a T1w; ``docs/segmentation.md``):

* ``demo``: sub-01 ses-01 of data/demo (1.5 T 2D FLAIR 0.9 x 0.9 x 3 mm, skull on, so the
  template registration and brain extraction run), segmented into a temporary one-patient copy
  of the study so the feature table reads the stored result as the app does;
* ``patient26``: the real open_ms_data scan in MNI space (1 mm, skull-stripped, run with
  ``skull_stripped=True`` as in docs/segmentation.md). Its clinical inputs for the feature and
  prognosis stages come from ``patient_info.csv`` (age 40, F, RR, EDSS 2.0) with a placeholder
  date; only their timing matters here.

Each run is a fresh ``python`` process (this script with ``--child``), so the numbers include
imports, model loading and a cold onnxruntime session, and the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read in the child at the end) is per run.
Stages, in order:

``import`` (numpy, scipy, pandas, ms_core), ``load`` (NIfTI reads; study index for demo),
``model_load`` (onnxruntime import, sha256 check and session), ``preprocess_brain`` (1 mm working
grid, template registration / brain mask), ``preprocess_normalise`` (crop to the brain, intensity
normalisation, padding), ``inference`` (the default sliding window: 64^3, 25 % overlap, flip TTA
since 2026-12-03; 50 % overlap without TTA before), ``postprocess``
(back to the FLAIR grid, threshold, components, lesion table), ``location`` (McDonald/MAGNIMS zone
of each lesion; registers the template for skull-stripped input), ``write`` (NIfTI, CSV,
provenance), ``features`` (the prognosis feature row of the visit), ``features_radiomics``
(per-lesion shape / first-order / GLCM features, FLAIR), ``diagnosis`` (lesion-pattern model: load
and score), ``prognosis_load`` and ``prognosis_score`` (with SHAP).

Derived MNI152 maps (``MS_DASH_CACHE_DIR``, docs/reliability.md): ``--cache warm`` (default)
gives the children a temporary cache folder filled once before the timed runs, as on any
machine after its first run; ``--cache cold`` turns the cache off, so every run derives the maps
(about 10 s; every run before 2026-12-03 was measured this way).

Prints JSON and saves ``bench/results/stage_timings.json`` (``stage_timings_cold.json`` for
``--cache cold``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OPEN_MS = REPO.parent / "shared" / "data" / "open_ms_data" / "cross_sectional"
P26 = OPEN_MS / "MNI" / "patient26"
P26_FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
DEMO_PID, DEMO_SID = "sub-01", "ses-01"
#: The issue's seven stage groups, each the sum of the raw stages listed.
GROUPS = {
    "load": ("load", "model_load"),
    "preprocessing_brain_extraction": ("preprocess_brain", "preprocess_normalise"),
    "inference": ("inference",),
    "postprocessing": ("postprocess", "write"),
    "location_analytics": ("location", "diagnosis"),
    "features": ("features", "features_radiomics"),
    "prognosis_scoring": ("prognosis_load", "prognosis_score"),
}


class _Laps:
    """Seconds since the previous lap, per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def restart(self) -> None:
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._t, 4)
        self._t = now


def _child(case: str, study: Path | None, device: str) -> dict[str, Any]:
    """One whole-visit run in this (fresh) process; returns stage seconds and peak RSS."""
    laps = _Laps()
    sys.path.insert(0, str(REPO))
    import numpy as np

    from ms_core.clinical.diagnosis import load_diagnosis_model, score_lesion_table
    from ms_core.clinical.patient_features import patient_feature_table
    from ms_core.clinical.prognosis import load_prognosis_model, score
    from ms_core.foundation.domain import Participant, Visit
    from ms_core.foundation.io import load_volume
    from ms_core.lesions.features import (
        PROGNOSIS_FEATURES,
        age_years,
        lesion_features,
        visit_features,
    )
    from ms_core.segmentation.inference import load_onnx_model
    from ms_core.segmentation.model_store import load_segmentation_card
    from ms_core.segmentation.segment import SegmentParams, segment_volumes, write_outputs
    from ms_core.study.derivatives import derivatives_dir
    from ms_core.study.layout import load_study

    laps.lap("import")
    if study is not None:
        st = load_study(study)
        participant = st.participants[DEMO_PID]
        visits = st.visits[DEMO_PID]
        visit = st.visit(DEMO_PID, DEMO_SID)
        inputs = {"flair": visit.images["FLAIR"]}
        params = SegmentParams()
    else:
        participant = Participant("patient26", "F", 1970, "RR", None)
        visit = Visit("patient26", "ses-01", dt.date(2010, 7, 1), 2.0, None, None, None, 3.0,
                      {"FLAIR": P26 / P26_FLAIR, "T1w": P26 / P26_T1})
        visits = (visit,)
        inputs = {"flair": P26 / P26_FLAIR}
        params = SegmentParams(skull_stripped=True)
    flair = load_volume(inputs["flair"], "FLAIR")
    laps.lap("load")
    model = load_onnx_model(load_segmentation_card(), device)
    laps.lap("model_load")
    result = segment_volumes(flair, None, params, model)
    laps.restart()
    laps.seconds.update(result.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        out = derivatives_dir(study, DEMO_PID, DEMO_SID) if study is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(out, result, params, inputs)
        laps.lap("write")
        if study is not None:
            table = patient_feature_table(study, participant, visits)
            row = table.set_index("session_id").loc[DEMO_SID]
            features = {f: (None if row[f] != row[f] else float(row[f]))
                        for f in PROGNOSIS_FEATURES}
        else:
            raw = visit_features(participant, visits, visit, lesions=result.table)
            features = {f: (None if v != v else float(v)) for f, v in raw.items()}
    n_measured = sum(v is not None for v in features.values())
    laps.lap("features")
    radiomics = lesion_features(result.labels, result.affine, {"FLAIR": flair.data})
    laps.lap("features_radiomics")
    diag = score_lesion_table(load_diagnosis_model(), result.table,
                              age_years=age_years(participant, visit.acq_date))
    laps.lap("diagnosis")
    prognosis = load_prognosis_model()
    laps.lap("prognosis_load")
    risk = score(prognosis, features)
    laps.lap("prognosis_score")
    return {
        "seconds": laps.seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_lesions": len(result.table), "lesion_volume_ml": float(result.table.volume_ml.sum()),
        "radiomics_rows": len(radiomics), "features_known": n_measured,
        "prob_ms_pattern": diag.prob_ms_pattern, "worsening_risk_2y": risk.prob,
        "provider": result.provider, "flair_shape": list(flair.shape),
        "numpy": np.__version__,
    }


def _stats(values: list[float]) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {"min": round(float(arr.min()), 4), "median": round(float(np.median(arr)), 4),
            "p95": round(float(np.percentile(arr, 95)), 4)}


def _demo_study(tmp: Path, demo: Path) -> Path:
    """A one-patient copy of the demo study (sub-01 only, no stored results)."""
    root = tmp / "study"
    root.mkdir()
    lines = (demo / "participants.tsv").read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[0] == DEMO_PID]
    (root / "participants.tsv").write_text("\n".join(keep) + "\n")
    if (demo / "dataset_description.json").exists():
        shutil.copy(demo / "dataset_description.json", root)
    shutil.copytree(demo / DEMO_PID, root / DEMO_PID)
    return root


def _fill_cache(env: dict[str, str]) -> float:
    """Derive the cached template maps once in a child process; its wall seconds."""
    code = ("from ms_core.imaging.anatomy import load_template\n"
            "from ms_core.lesions.location import mni_zones\n"
            "load_template(); mni_zones()\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
    return time.perf_counter() - t0


def _run_case(case: str, runs: int, study: Path | None, device: str,
              env: dict[str, str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    walls: list[float] = []
    for i in range(runs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case,
               "--device", device]
        if study is not None:
            cmd += ["--study", str(study)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise RuntimeError(f"{case} run {i} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{case} run {i + 1}/{runs}: {walls[-1]:.1f} s, "
              f"inference {rows[-1]['seconds']['inference']:.1f} s", file=sys.stderr)
    stages = list(rows[0]["seconds"])
    per_stage = {s: _stats([r["seconds"].get(s, 0.0) for r in rows]) for s in stages}
    groups = {g: _stats([sum(r["seconds"].get(s, 0.0) for s in members) for r in rows])
              for g, members in GROUPS.items()}
    last = rows[-1]
    return {
        "runs": runs, "wall_seconds": _stats(walls), "stages": per_stage, "groups": groups,
        "peak_rss_mb": {"max": round(max(r["peak_rss_mb"] for r in rows)),
                        "median": round(_stats([r["peak_rss_mb"] for r in rows])["median"])},
        "result": {k: last[k] for k in ("n_lesions", "lesion_volume_ml", "radiomics_rows",
                                         "features_known", "prob_ms_pattern",
                                         "worsening_risk_2y", "provider", "flair_shape")},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases", default="demo,patient26")
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="onnxruntime device of the network (cuda: see docs/performance.md)")
    ap.add_argument("--cache", default="warm", choices=("warm", "cold"),
                    help="derived-map cache filled before the runs (warm) or off (cold)")
    ap.add_argument("--child", choices=("demo", "patient26"), help=argparse.SUPPRESS)
    ap.add_argument("--study", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.study, args.device)))
        return 0
    if args.runs < 1:
        ap.error(f"--runs must be >= 1, got {args.runs}")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in ("demo", "patient26")]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from demo, patient26")
    if "patient26" in cases and not (P26 / P26_FLAIR).exists():
        print(f"patient26 not found at {P26}: case skipped", file=sys.stderr)
        cases.remove("patient26")
    results: dict[str, Any] = {}
    fill_s = None
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MS_DASH_CACHE_DIR": "off" if args.cache == "cold"
               else str(Path(tmp) / "derived_map_cache")}
        if args.cache == "warm":
            fill_s = round(_fill_cache(env), 1)
        for case in cases:
            study = _demo_study(Path(tmp), args.demo) if case == "demo" else None
            results[case] = _run_case(case, args.runs, study, args.device, env)
    sys.path.insert(0, str(REPO))
    from bench._common import machine, now_utc, repo_relative, save_result
    from ms_core.segmentation.segment import SegmentParams

    result = {
        "benchmark": "stage_timings", "device": args.device, "cases": results,
        "inputs": {"demo": f"{repo_relative(args.demo)}/{DEMO_PID}/{DEMO_SID} FLAIR",
                   "patient26": f"{P26} FLAIR, skull_stripped"},
        "settings": {k: v for k, v in asdict(SegmentParams()).items()
                     if k in ("overlap", "tta", "threshold", "min_lesion_mm3")},
        "derived_map_cache": args.cache, "cache_fill_seconds": fill_s,
        "groups_definition": {g: list(m) for g, m in GROUPS.items()},
        "percentiles": "numpy.percentile, linear interpolation",
        "date_utc": now_utc(), "machine": {**machine(), "processor": platform.machine()},
    }
    sys.path.insert(0, str(REPO))

    suffix = ("" if args.device == "cpu" else f"_{args.device}") + (
        "_cold" if args.cache == "cold" else "")
    save_result(f"stage_timings{suffix}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
