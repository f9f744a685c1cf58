"""Benchmark: whole-visit lesion segmentation on CPU (target <= 60 s, peak RSS <= 4 GB).

Usage: ``python bench/segment_speed.py [--runs 5] [--flair F.nii.gz] [--method network]``.
Default input: the first visit of sub-01 in data/demo (1.5 T 2D FLAIR, skull on, so brain
extraction runs). Each run is a fresh process (``python -m ms_core segment``) so peak RSS and
timings include model loading. Prints JSON and saves ``bench/results/segment_speed_METHOD.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms_core.foundation.io import atomic_write_text  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--flair", type=Path,
                    default=REPO / "data/demo/sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz")
    ap.add_argument("--method", default="network", choices=("network", "baseline"))
    ap.add_argument("--extra", nargs="*", default=[], help="more segment flags")
    args = ap.parse_args()
    walls: list[float] = []
    stages: list[dict[str, float]] = []
    peak_mb = 0.0
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "ms_core", "segment", "--flair", str(args.flair),
                   "--method", args.method, "--device", "cpu", "--out", tmp, *args.extra]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - t0)
            stages.append(json.loads(out.stdout)["seconds"])
            peak_mb = max(peak_mb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    walls.sort()
    p95 = walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))]
    result = {
        "benchmark": "segment_speed", "method": args.method, "input": str(args.flair),
        "runs": args.runs, "wall_seconds": {"min": round(walls[0], 2),
                                            "median": round(walls[len(walls) // 2], 2),
                                            "p95": round(p95, 2)},
        "stage_seconds_last_run": stages[-1], "peak_rss_mb": round(peak_mb),
        "targets": {"wall_seconds_p95": 60, "peak_rss_mb": 4096},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    atomic_write_text(REPO / "bench" / "results" / f"segment_speed_{args.method}.json",
                      text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
