"""Benchmark: how soon the demo autorun has measured the first patient (issue 34).

Usage: ``python bench/demo_autorun.py [--demo data/demo] [--patients 1] [--out FILE]`` (default
``bench/results/demo_autorun.json``).

Copies the demo study without its ``derivatives/`` (as a fresh ``make run`` has it) to a
temporary folder, then runs what the app starts when it opens on the demo
(:func:`ms_core.services.batch.analyse_study`, the first patient first) for the first ``--patients``
patients, and prints the seconds until each patient's segmentations, comparisons and brain
volumes are stored. The target: the first patient within 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import RESULTS, machine, now_utc, print_result  # noqa: E402
from ms_core.services.batch import analyse_study  # noqa: E402
from ms_core.study.layout import load_study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--patients", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        shutil.copytree(args.demo, root, ignore=shutil.ignore_patterns("derivatives"))
        study = load_study(root)
        visits = {pid: list(vs) for pid, vs in list(study.visits.items())[:args.patients]}
        done: dict[str, float] = {}
        t0 = time.perf_counter()

        def progress(fraction: float, text: str) -> None:
            finished = int(fraction * len(visits) + 1e-9)
            for pid in list(visits)[:finished]:
                done.setdefault(pid, round(time.perf_counter() - t0, 1))

        failed = analyse_study(root, visits, progress, label="analysing the demo")
        result: dict[str, Any] = {
            "benchmark": "demo_autorun", "when_utc": now_utc(), "machine": machine(),
            "seconds_until_measured": done, "failed": failed,
            "visits": {pid: len(vs) for pid, vs in visits.items()},
            "target_first_patient_s": 300}
    print_result(result, args.out or RESULTS / "demo_autorun.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
