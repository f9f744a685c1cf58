"""Real-data sanity check: does lesion load go with disability in open_ms_data?

Uses the 30 patients of ``open_ms_data/cross_sectional`` (Lesjak et al. 2018, Neuroinformatics
16:51-63; CC-BY): EDSS and MS type from ``patient_info.csv`` and lesion loads from the consensus
lesion masks in MNI space (``MNI/patientXX/GOLD_STANDARD*.nii.gz``), which also give the lesion
locations directly (MNI space, identity transform to the atlas zones). Cross-sectional only: it
checks an association the prognosis model relies on, it does not validate the model.

``python -m training.prognosis.real_check [--data ../shared/data/open_ms_data]`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ms_core.clinical.prognosis_fit import bootstrap_auc
from ms_core.foundation.io import load_lesion_mask
from ms_core.lesions.components import label_components, lesion_table
from ms_core.lesions.features import LOCATION_FEATURES
from ms_core.lesions.location import classify_lesions

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "open_ms_data"


def lesion_loads(data: Path) -> pd.DataFrame:
    """Per patient: EDSS, MS type, lesion volume (ml, MNI space), count and per-location counts."""
    root = data / "cross_sectional"
    info = pd.read_csv(root / "patient_info.csv", na_values=["N/A"])
    rows = []
    for rec in info.itertuples():
        folder = root / "MNI" / f"patient{int(rec.patient_id):02d}"
        masks = sorted(folder.glob("GOLD_STANDARD*.nii.gz"))
        if not masks:
            continue
        mask = load_lesion_mask(masks[0])
        labels = label_components(mask.labels, affine=mask.affine, min_lesion_mm3=3.0)
        table = lesion_table(labels, affine=mask.affine)
        where = classify_lesions(labels, mask.affine, np.eye(4)) if len(table) else {}
        row: dict[str, Any] = {"patient_id": int(rec.patient_id), "age": rec.age, "sex": rec.sex,
                               "ms_type": rec.ms_type, "edss": rec.edss,
                               "lesion_volume_ml": float(table.volume_ml.sum()),
                               "lesion_count": len(table)}
        for loc in LOCATION_FEATURES:
            row[f"{loc}_count"] = sum(v == loc for v in where.values())
        rows.append(row)
    return pd.DataFrame(rows)


def spearman_ci(x: np.ndarray, y: np.ndarray, *, n_boot: int = 2000, seed: int = 0
                ) -> tuple[float, float, float, float]:
    """Spearman rho, its bootstrap 95 % CI and the two-sided p-value."""
    rho, p = stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        k = rng.integers(0, len(x), len(x))
        if np.unique(x[k]).size > 1 and np.unique(y[k]).size > 1:
            boots.append(stats.spearmanr(x[k], y[k])[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(rho), float(lo), float(hi), float(p)


def real_check(data: Path = DEFAULT_DATA) -> dict[str, Any]:
    """The association of lesion load with EDSS (Spearman) and AUC for EDSS >= 3."""
    loads = lesion_loads(data)
    known = loads.dropna(subset=["edss"])
    x = known.lesion_volume_ml.to_numpy(dtype=float)
    edss = known.edss.to_numpy(dtype=float)
    rho, lo, hi, p = spearman_ci(x, edss)
    high = (edss >= 3.0).astype(int)
    auc, a_lo, a_hi = bootstrap_auc(high, x, np.arange(len(x)), n=2000, seed=0)
    age = known.age.to_numpy(dtype=float)
    rho_age, lo_age, hi_age, p_age = spearman_ci(age, edss)
    return {
        "data": "open_ms_data cross_sectional (Lesjak et al. 2018), consensus masks in MNI space",
        "n_patients": len(loads), "n_with_edss": len(known),
        "n_edss_ge_3": int(high.sum()),
        "lesion_volume_ml_median_iqr": [float(np.median(x)), *np.percentile(x, [25, 75]).tolist()],
        "spearman_lesion_volume_vs_edss": {"rho": rho, "ci95": [lo, hi], "p": p},
        "auc_lesion_volume_for_edss_ge_3": {"auc": auc, "ci95": [a_lo, a_hi]},
        "spearman_age_vs_edss": {"rho": rho_age, "ci95": [lo_age, hi_age], "p": p_age},
        "per_patient": known.round(4).to_dict("records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    print(json.dumps(real_check(args.data), indent=2))


if __name__ == "__main__":
    main()
