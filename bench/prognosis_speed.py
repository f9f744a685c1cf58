"""Benchmark: scoring one patient-visit with the prognosis model including SHAP (target <= 50 ms).

Usage: ``python bench/prognosis_speed.py [--n 1000] [--models models_onnx]``. Scores ``n``
synthetic patients (``ms_core.synthetic.cohort.generate_cohort(n, seed=123)``) one at a time with
the model loaded once, as the app does, and also times model loading (sha256 checks, onnxruntime
session, explainer) and the lesion-pattern (diagnosis) model's scoring. Prints JSON and saves
``bench/results/prognosis_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms_core.clinical.prognosis import load_prognosis_model, score  # noqa: E402
from ms_core.foundation.io import atomic_write_text  # noqa: E402
from ms_core.lesions.features import PROGNOSIS_FEATURES  # noqa: E402
from ms_core.segmentation.model_store import MODELS_DIR  # noqa: E402
from ms_core.synthetic.cohort import generate_cohort  # noqa: E402


def _stats(ms: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(np.max(ms))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--models", type=Path, default=MODELS_DIR)
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = load_prognosis_model(args.models)
    load_ms = (time.perf_counter() - t0) * 1000
    rows = generate_cohort(args.n, seed=123).features[list(PROGNOSIS_FEATURES)].to_dict("records")
    score(model, rows[0])
    times = []
    for row in rows:
        t = time.perf_counter()
        score(model, row)
        times.append((time.perf_counter() - t) * 1000)
    result = {
        "benchmark": "prognosis_speed", "model": f"{model.card['name']} {model.version}",
        "family": model.card["family"], "explainer": model.kind, "provider": model.provider,
        "n": args.n, "score_with_shap": _stats(times), "load_ms": load_ms,
        "target_ms": 50.0, "target_met": bool(np.percentile(times, 95) <= 50.0),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
    }
    out = REPO / "bench" / "results" / "prognosis_speed.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
