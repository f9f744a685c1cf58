"""Benchmark: batch throughput with 1 and 2 workers, and a cluster-size estimate.

Usage: ``python bench/batch_scaling.py [--study data/demo] [--patients sub-01,sub-02]
[--full-patient sub-03]``. Each configuration runs on a fresh copy of the study (no stored
results), segmentation stage only (network), so every run does the same work:

* ``w1t1``: 1 worker x 1 thread, ``w2t1``: 2 workers x 1 thread (the scaling target: >= 1.8x),
  ``w1t2``: 1 worker x 2 threads (the other way to use a 2-core machine).

Then one patient goes through the whole pipeline (segment, track, atrophy, features) with the
best setting, giving the cost per visit, from which the core-hours and the cluster size of a
1,000-patient, 5-visit trial follow. Prints JSON and saves ``bench/results/batch_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms_core.foundation.io import atomic_write_text  # noqa: E402
from ms_core.services.batch import BatchConfig, run_batch  # noqa: E402
from ms_core.study.layout import load_study  # noqa: E402


def _fresh(study: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(study, dst, ignore=shutil.ignore_patterns("ms_dash"))
    return dst


def _run(study: Path, config: BatchConfig) -> dict[str, object]:
    t0 = time.perf_counter()
    result = run_batch(study, config)
    seconds = time.perf_counter() - t0
    visits = sum(o.done.get("segment", 0) for o in result.outcomes)
    return {"workers": config.workers, "threads": config.threads, "seconds": round(seconds, 1),
            "visits": visits, "visits_per_minute": round(60 * visits / seconds, 3),
            "failures": len(result.failures)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--patients", default="sub-01,sub-02")
    ap.add_argument("--full-patient", default="sub-03")
    args = ap.parse_args()
    pids = tuple(args.patients.split(","))
    runs: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name, workers, threads in (("w1t1", 1, 1), ("w2t1", 2, 1), ("w1t2", 1, 2)):
            study = _fresh(args.study, tmp, name)
            runs[name] = _run(study, BatchConfig(workers=workers, threads=threads,
                                                 stages=("segment",), participants=pids))
            print(name, runs[name], file=sys.stderr)
        speedup = float(runs["w2t1"]["visits_per_minute"]) / float(  # type: ignore[arg-type]
            runs["w1t1"]["visits_per_minute"])  # type: ignore[arg-type]
        best = max(("w2t1", "w1t2"), key=lambda k: float(runs[k]["visits_per_minute"]))  # type: ignore[arg-type]
        study = _fresh(args.study, tmp, "full")
        n_visits = len(load_study(study).visits[args.full_patient])
        cfg = BatchConfig(workers=1, threads=2, participants=(args.full_patient,))
        t0 = time.perf_counter()
        full = run_batch(study, cfg)
        full_s = time.perf_counter() - t0
    per_visit_core_s = full_s * 2 / n_visits  # 2 cores busy for the whole run
    trial_core_h = 1000 * 5 * per_visit_core_s / 3600
    result = {
        "benchmark": "batch_scaling", "patients": list(pids), "runs": runs,
        "speedup_2_workers": round(speedup, 3), "target_speedup": 1.8,
        "target_met": speedup >= 1.8, "best_2_core_setting": best,
        "full_pipeline": {"patient": args.full_patient, "visits": n_visits,
                          "seconds": round(full_s, 1), "failures": len(full.failures),
                          "core_seconds_per_visit": round(per_visit_core_s, 1)},
        "trial_estimate_1000x5": {
            "core_hours": round(trial_core_h, 1),
            "cores_for_24h": int(-(-trial_core_h // 24)),
            "cores_for_8h": int(-(-trial_core_h // 8)),
            "assumption": "CPU only, the per-visit cost measured here, perfect packing; "
                          "a GPU worker would cut the segmentation share (issue 7)"},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
    }
    out = REPO / "bench" / "results" / "batch_scaling.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
