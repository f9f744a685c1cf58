"""Benchmark: build time of the demo study (target: <= 120 s on 2 cores).

Usage: ``python bench/demo_build.py [--patients 12] [--workers 2]``. Prints JSON and saves it to
``bench/results/demo_build.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ms_core.foundation.io import atomic_write_text
from ms_core.synthetic.demo import DemoConfig, build_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = build_demo(Path(tmp) / "demo", DemoConfig(n_patients=args.patients,
                                                        workers=args.workers))
        seconds = time.perf_counter() - t0
        n_visits = sum(1 for _ in out.glob("sub-*/ses-*"))
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "benchmark": "demo_build", "patients": args.patients, "workers": args.workers,
        "visits": n_visits, "seconds": round(seconds, 1), "target_seconds": 120,
        "study_size_mb": round(size_mb, 1),
        "peak_rss_mb": round(max(peak_children, peak_self), 0),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    atomic_write_text(Path(__file__).parent / "results" / "demo_build.json", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
