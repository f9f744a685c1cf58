"""Train, check and register the diagnosis-support model (MS-typical vs other lesion pattern).

Usage::

    python -m training.diagnosis.train --out models_onnx/diagnosis --seed 0 \\
        [--n-train 4000] [--n-test 2000] [--eval-out bench/results/diagnosis_eval.json] \\
        [--real-data ../shared/data/open_ms_data | --no-real-data]

Steps

1. Simulate a training and a test cohort with :func:`ms_core.clinical.diagnosis.simulate_patterns`
   (seeds ``1000 * seed + 1`` and ``1000 * seed + 2``) and compute their pattern features.
2. Fit ``StandardScaler`` + ``LogisticRegression`` (L2, C = 1) on :data:`MODEL_FEATURES`
   against the *recorded* (noisy) labels.
3. Evaluate on the test cohort: AUC with a bootstrap 95 % CI (patients resampled, seed
   ``1000 * seed + 3``), sensitivity and specificity at the 0.5 threshold, Brier score; against
   the recorded labels (headline) and the true sources; per mimic; and, as an ablation, a
   refit without age.
4. Export to ONNX with skl2onnx (float32 input ``features`` (N, F), output ``probabilities``
   (N, 2), no zipmap) and check parity with scikit-learn on the test cohort:
   ``max |p_onnx - p_sklearn| <= 1e-5`` or nothing is written (exit 1).
5. Write ``OUT/model.onnx``, ``OUT/model.json`` (card) and ``OUT/MODEL_CARD.md``, register the
   sha256 under ``"diagnosis"`` in ``OUT/../manifest.json`` (other entries kept), and write the
   evaluation JSON.
6. Optionally, a light real-data check: the open_ms_data consensus lesion masks in MNI space
   (all patients have MS or CIS), lesions located with
   :func:`ms_core.lesions.location.classify_lesions` (identity MNI transform); the fraction scored
   MS-typical is a sensitivity on real MS.

Nothing is pickled: the model exists only as ONNX.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ms_core.clinical.diagnosis import (
    FEATURE_DESCRIPTIONS,
    LIMITS,
    MODEL_FEATURES,
    MODEL_NAME,
    SOURCES,
    cohort_features,
    pattern_features,
    simulate_patterns,
)
from ms_core.foundation.io import atomic_write_bytes, atomic_write_text, sha256_file, write_json
from ms_core.segmentation.model_store import MODELS_DIR, code_commit, register_model
from training.onnx_checks import ParityError, check_parity, onnx_probabilities

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
VERSION = "1.0.0"
THRESHOLD = 0.5
PARITY_TOL = 1e-5
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
DEFAULT_EVAL = REPO / "bench" / "results" / "diagnosis_eval.json"
DEFAULT_REAL = REPO.parent / "shared" / "data" / "open_ms_data"
#: Consensus lesion mask of open_ms_data registered to MNI (cross_sectional/MNI/patientXX/).
MNI_MASK_NAME = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
#: Same default as the segmentation (``--min-lesion-mm3 10``).
REAL_MIN_LESION_MM3 = 10.0
INTENDED_USE = (
    "Research decision support shown beside the McDonald 2017 DIS/DIT checklist: how typical a "
    "brain-MRI white-matter lesion pattern (lesion locations, sizes, count) and age are of MS "
    "rather than of small-vessel disease or migraine-like punctate lesions. For research and "
    "teaching; not a medical device, not for diagnosis or treatment decisions."
)
MODEL_LIMITS = [
    "Trained and tested on synthetic patients only "
    "(ms_core.clinical.diagnosis.simulate_patterns); the "
    "generative model's numbers are rounded from qualitative published descriptions, not fitted "
    "to data, so synthetic metrics say how well the model learned the simulation, not how it "
    "performs on patients.",
    "Not validated on real patients. The only real-data check is the sensitivity on 28 MS/CIS "
    "patients of open_ms_data (no non-MS patients there, so no specificity).",
    "Never a diagnosis: the McDonald 2017 criteria remain the diagnostic standard, and they "
    "apply only to a typical clinical syndrome with no better explanation.",
    "Brain MRI only: spinal cord lesions, the central vein sign, contrast enhancement, "
    "cortical lesions on dedicated sequences, CSF and the clinical picture are not used.",
    "Only two mimics are modelled (small-vessel disease, migraine); NMOSD, MOGAD, vasculitis, "
    "infections, leukodystrophies and others are not, and would be scored arbitrarily.",
    "Age carries much of the signal (SVD patients are older); patterns of young patients with "
    "SVD or of older patients with MS are harder (see the per-source metrics and the no-age "
    "ablation).",
    "Features depend on the lesion segmentation and location classes: merged confluent "
    "lesions lower the count, missed small lesions lower the punctate fraction, and the "
    "location classes do not separate central (SVD) from peripheral (MS) pontine lesions.",
]


@dataclass(frozen=True)
class Dataset:
    """Features (N, F) float64, recorded labels, true labels and sources of a cohort."""

    x: np.ndarray
    label: np.ndarray
    true: np.ndarray
    source: np.ndarray
    seed: int


def simulate_dataset(n: int, seed: int, features: Sequence[str] = MODEL_FEATURES) -> Dataset:
    """A simulated cohort as arrays, columns in ``features`` order."""
    cohort = simulate_patterns(n, seed)
    x = cohort_features(cohort)[list(features)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise RuntimeError("simulated features contain NaN; every patient needs a lesion")
    pat = cohort.patients
    return Dataset(x, pat.label_ms.to_numpy(int), pat.true_ms.to_numpy(int),
                   pat.source.to_numpy(str), seed)


def fit(x: np.ndarray, y: np.ndarray) -> Pipeline:
    """StandardScaler + L2 logistic regression (C = 1)."""
    pipe = Pipeline([("scale", StandardScaler()),
                     ("classifier", LogisticRegression(C=1.0, max_iter=2000))])
    return pipe.fit(x, y)


def binary_metrics(y: np.ndarray, p: np.ndarray, *, threshold: float = THRESHOLD,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC with a percentile bootstrap 95 % CI, sensitivity/specificity at ``threshold``, Brier."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, size=y.size)
        if y[idx].min() != y[idx].max():
            aucs.append(roc_auc_score(y[idx], p[idx]))
    pred = p >= threshold
    return {
        "n": int(y.size), "n_positive": int(y.sum()),
        "auc": float(roc_auc_score(y, p)),
        "auc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        "n_bootstrap": n_boot, "threshold": threshold,
        "sensitivity": float(pred[y == 1].mean()), "specificity": float((~pred[y == 0]).mean()),
        "brier": float(brier_score_loss(y, p)),
    }


def evaluate(pipe: Pipeline, test: Dataset, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Test-cohort metrics against recorded labels, true sources and per mimic."""
    p = pipe.predict_proba(test.x)[:, 1]
    out: dict[str, Any] = {
        "recorded_labels": binary_metrics(test.label, p, n_boot=n_boot, seed=seed),
        "true_source": binary_metrics(test.true, p, n_boot=n_boot, seed=seed),
    }
    per: dict[str, Any] = {}
    for other in SOURCES[1:]:
        keep = (test.source == "ms") | (test.source == other)
        per[f"ms_vs_{other}"] = binary_metrics(test.true[keep], p[keep], n_boot=n_boot,
                                               seed=seed)
    per["fraction_called_ms"] = {s: float((p[test.source == s] >= THRESHOLD).mean())
                                 for s in SOURCES}
    out["per_source_true"] = per
    return out


def export_onnx(pipe: Pipeline, n_features: int) -> bytes:
    """The fitted pipeline as ONNX bytes: float32 ``features`` (N, F) -> ``probabilities``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(pipe, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                  options={LogisticRegression: {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    outputs = [o.name for o in onx.graph.output]
    if OUTPUT_NAME not in outputs:
        raise RuntimeError(f"skl2onnx gave outputs {outputs}, expected {OUTPUT_NAME!r}")
    return bytes(onx.SerializeToString())


# ----------------------------------------------------------------------------- real data
def real_data_features(data_dir: Path, patients: Sequence[str] | None = None) -> pd.DataFrame:
    """Pattern features of the open_ms_data consensus masks in MNI space (all MS/CIS).

    One row per patient folder (``patient01``, ...; ``patients`` limits the list) with
    ``patient``, ``ms_type`` and :data:`ms_core.clinical.diagnosis.DIAGNOSIS_FEATURES`. Lesions are
    26-connected components of at least :data:`REAL_MIN_LESION_MM3`; locations come from
    :func:`ms_core.lesions.location.classify_lesions` with an identity subject-to-MNI matrix (the
    masks are in FSL's MNI152 space; our zones are on the ICBM 2009a template, a few mm apart).
    """
    from ms_core.foundation.io import load_lesion_mask
    from ms_core.lesions.components import label_components, lesion_table
    from ms_core.lesions.location import classify_lesions

    root = Path(data_dir) / "cross_sectional"
    info = pd.read_csv(root / "patient_info.csv").set_index("patient_id")
    folders = sorted(p for p in (root / "MNI").glob("patient*") if (p / MNI_MASK_NAME).is_file())
    if patients is not None:
        folders = [p for p in folders if p.name in set(patients)]
    rows = []
    for folder in folders:
        pid = int(folder.name.removeprefix("patient"))
        mask = load_lesion_mask(folder / MNI_MASK_NAME)
        labels = label_components(mask.labels > 0, affine=mask.affine,
                                  min_lesion_mm3=REAL_MIN_LESION_MM3)
        table = lesion_table(labels, affine=mask.affine)
        where = classify_lesions(labels, mask.affine, np.eye(4))
        table["location"] = [where[int(i)] for i in table.lesion_id]
        age = info.loc[pid, "age"] if pid in info.index else np.nan
        ms_type = info.loc[pid, "ms_type"] if pid in info.index else np.nan
        f = pattern_features(table, age_years=None if pd.isna(age) else float(age))
        rows.append({"patient": folder.name, "ms_type": None if pd.isna(ms_type) else ms_type,
                     **f})
    return pd.DataFrame(rows)


def _sensitivity(probs: np.ndarray) -> dict[str, Any]:
    scored = probs[np.isfinite(probs)]
    return {"n_scored": int(scored.size),
            "n_ms_typical": int((scored >= THRESHOLD).sum()),
            "sensitivity_at_threshold": float((scored >= THRESHOLD).mean()) if scored.size
            else None,
            "median_prob": float(np.median(scored)) if scored.size else None}


def real_data_check(table: pd.DataFrame, predict: Callable[[np.ndarray], np.ndarray],
                    predict_without_age: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> dict[str, Any]:
    """Sensitivity on real MS: the fraction of :func:`real_data_features` rows scored MS-typical.

    ``predict`` maps (N, F) :data:`MODEL_FEATURES` to (N, 2) probabilities;
    ``predict_without_age`` the same features without ``age_years`` (the ablation model).
    Patients with a non-finite feature are not scored. Also reports the sensitivity by age
    (<= 50 and > 50 years).
    """
    x = table[list(MODEL_FEATURES)].to_numpy(dtype=np.float64)
    ok = np.all(np.isfinite(x), axis=1)
    probs = np.full(len(table), np.nan)
    if ok.any():
        probs[ok] = predict(x[ok])[:, 1]
    out_table = table[["patient", "ms_type", *MODEL_FEATURES, "lesion_count",
                       "total_volume_ml", "deep_white_matter_fraction"]].copy()
    out_table["prob_ms_pattern"] = probs
    age = table["age_years"].to_numpy(dtype=np.float64)
    result: dict[str, Any] = {
        "data": "open_ms_data cross_sectional/MNI consensus masks (Lesjak et al. 2018, CC-BY); "
                "all patients MS or CIS (one with ms_type N/A)",
        "lesions": f"26-connected components >= {REAL_MIN_LESION_MM3:g} mm^3, locations by "
                   "ms_core.lesions.location.classify_lesions with an identity MNI transform",
        "n_patients": len(table), "threshold": THRESHOLD,
        **_sensitivity(probs),
        "by_age": {"age_le_50": _sensitivity(probs[age <= 50]),
                   "age_gt_50": _sensitivity(probs[age > 50])},
        "median_features": {f: float(np.nanmedian(table[f])) for f in (
            "lesion_count", "periventricular_fraction", "juxtacortical_fraction",
            "infratentorial_fraction", "deep_white_matter_fraction", "punctate_fraction")},
    }
    if predict_without_age is not None:
        no_age = [i for i, f in enumerate(MODEL_FEATURES) if f != "age_years"]
        p2 = np.full(len(table), np.nan)
        ok2 = np.all(np.isfinite(x[:, no_age]), axis=1)
        if ok2.any():
            p2[ok2] = predict_without_age(x[ok2][:, no_age])[:, 1]
        out_table["prob_ms_pattern_without_age"] = p2
        result["ablation_without_age"] = _sensitivity(p2)
    result["patients"] = out_table.to_dict(orient="records")
    return result


# ----------------------------------------------------------------------------- card
def _card_markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    rec, tru = m["test"]["recorded_labels"], m["test"]["true_source"]
    per = m["test"]["per_source_true"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        f"**Task.** {card['task']}",
        "",
        f"**Intended use.** {card['intended_use']}",
        "",
        "**Not for diagnosis.** The McDonald 2017 criteria remain the diagnostic standard.",
        "",
        "## Model",
        "",
        f"StandardScaler + logistic regression (L2, C = 1), scikit-learn "
        f"{card['training']['sklearn']}, exported with skl2onnx {card['training']['skl2onnx']}"
        f" (input `{card['input']['name']}` float32 (N, {len(card['features'])}), output "
        f"`{card['output']['name']}` (N, 2) = [P(other), P(MS-typical)]). "
        f"sha256 `{card['sha256']}`. Threshold {card['threshold']}.",
        "",
        "| feature | meaning | standardised coefficient |",
        "|---|---|---|",
        *(f"| `{f}` | {FEATURE_DESCRIPTIONS[f]} | {card['coefficients'][f]:+.2f} |"
          for f in card["features"]),
        "",
        "## Training data",
        "",
        f"{card['training']['data']}. {card['training']['n_train']} training and "
        f"{card['training']['n_test']} test patients (seeds {card['training']['train_seed']} "
        f"and {card['training']['test_seed']}). Command: `{card['training']['command']}`; "
        f"commit `{card['training']['commit']}`; {card['training']['date']}.",
        "",
        "## Metrics (synthetic test cohort)",
        "",
        "| reference | AUC (95 % CI) | sensitivity | specificity | Brier |",
        "|---|---|---|---|---|",
        *(f"| {name} | {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f}) | "
          f"{r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['brier']:.3f} |"
          for name, r in (("recorded labels (5 % flipped)", rec), ("true source", tru),
                          ("MS vs SVD (true)", per["ms_vs_svd"]),
                          ("MS vs migraine (true)", per["ms_vs_migraine"]))),
        "",
        f"Sensitivity and specificity at threshold {card['threshold']}. Without age (ablation, "
        f"refit): AUC {m['ablation_without_age']['recorded_labels']['auc']:.3f} (recorded), "
        f"{m['ablation_without_age']['true_source']['auc']:.3f} (true source).",
        "",
    ]
    real = m.get("real_data")
    if real and real.get("n_scored"):
        young, old = real["by_age"]["age_le_50"], real["by_age"]["age_gt_50"]
        lines += [
            "## Real-data check (sensitivity only)",
            "",
            f"{real['n_scored']} MS/CIS patients of open_ms_data (consensus masks in MNI "
            f"space): {real['n_ms_typical']}/{real['n_scored']} scored MS-typical at "
            f"{real['threshold']} (median probability {real['median_prob']:.2f}); "
            f"{young['n_ms_typical']}/{young['n_scored']} aged 50 or less, "
            f"{old['n_ms_typical']}/{old['n_scored']} over 50.",
        ]
        if "ablation_without_age" in real:
            ab = real["ablation_without_age"]
            lines.append(f"The no-age ablation model (not shipped) scores {ab['n_ms_typical']}/"
                         f"{ab['n_scored']} MS-typical.")
        lines += ["No non-MS patients were available, so no specificity.", ""]
    lines += ["## Limits", "", *(f"- {x}" for x in card["limits"]), "",
              "Details: `docs/diagnosis.md`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def train(out_dir: Path, *, seed: int = 0, n_train: int = 4000, n_test: int = 2000,
          n_boot: int = 1000, eval_out: Path | None = DEFAULT_EVAL,
          real_data: Path | None = None, command: str | None = None) -> dict[str, Any]:
    """Fit, evaluate, export, check parity and write the model files; returns the card.

    Writes ``out_dir/{model.onnx, model.json, MODEL_CARD.md}`` and registers the model in
    ``out_dir.parent/manifest.json``. Raises :class:`ParityError` (nothing written) when ONNX and
    scikit-learn disagree.
    """
    train_seed, test_seed, boot_seed = 1000 * seed + 1, 1000 * seed + 2, 1000 * seed + 3
    tr = simulate_dataset(n_train, train_seed)
    te = simulate_dataset(n_test, test_seed)
    pipe = fit(tr.x, tr.label)
    metrics: dict[str, Any] = {"test": evaluate(pipe, te, n_boot=n_boot, seed=boot_seed)}
    no_age = [i for i, f in enumerate(MODEL_FEATURES) if f != "age_years"]
    ablation = fit(tr.x[:, no_age], tr.label)
    p_ablation = ablation.predict_proba(te.x[:, no_age])[:, 1]
    metrics["ablation_without_age"] = {
        "features": [MODEL_FEATURES[i] for i in no_age],
        "recorded_labels": binary_metrics(te.label, p_ablation, n_boot=n_boot, seed=boot_seed),
        "true_source": binary_metrics(te.true, p_ablation, n_boot=n_boot, seed=boot_seed),
    }
    metrics["train_auc_recorded"] = float(roc_auc_score(tr.label, pipe.predict_proba(tr.x)[:, 1]))

    onnx_bytes = export_onnx(pipe, len(MODEL_FEATURES))
    parity = check_parity(onnx_bytes, pipe.predict_proba(te.x), te.x,
                          PARITY_TOL)  # raises before anything is written
    real: dict[str, Any] | None = None
    if real_data is not None:
        real = real_data_check(real_data_features(real_data),
                               lambda x: onnx_probabilities(onnx_bytes, x),
                               ablation.predict_proba)

    import onnxruntime
    import skl2onnx
    import sklearn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    atomic_write_bytes(onnx_path, onnx_bytes)
    digest = sha256_file(onnx_path)
    scaler, clf = pipe.named_steps["scale"], pipe.named_steps["classifier"]
    card: dict[str, Any] = {
        "name": MODEL_NAME, "version": VERSION, "sha256": digest,
        "task": "MS-typical vs other (small-vessel disease, migraine-like) white-matter lesion "
                "pattern on brain MRI, from per-patient lesion pattern features and age; "
                "research decision support only",
        "features": list(MODEL_FEATURES),
        "feature_descriptions": {f: FEATURE_DESCRIPTIONS[f] for f in MODEL_FEATURES},
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "(N, F), F in 'features' "
                  "order; compute with ms_core.clinical.diagnosis.pattern_features"},
        "output": {"name": OUTPUT_NAME, "layout": "(N, 2)",
                   "meaning": "[P(other pattern), P(MS-typical pattern)]"},
        "classes": {"0": "other (SVD / migraine-like)", "1": "MS-typical"},
        "threshold": THRESHOLD,
        "coefficients": dict(zip(MODEL_FEATURES, map(float, clf.coef_[0]), strict=True)),
        "intercept": float(clf.intercept_[0]),
        "scaler": {"mean": list(map(float, scaler.mean_)),
                   "scale": list(map(float, scaler.scale_))},
        "training": {
            "command": command or (f"python -m training.diagnosis.train --out {out_dir} "
                                   f"--seed {seed}"),
            "seed": seed, "train_seed": train_seed, "test_seed": test_seed,
            "bootstrap_seed": boot_seed, "n_train": n_train, "n_test": n_test,
            **code_commit(("ms_core/clinical/diagnosis.py", "training/diagnosis")),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "data": "synthetic patients of ms_core.clinical.diagnosis.simulate_patterns (MS 50 %, "
                    "small-vessel disease 35 %, migraine 15 %; 5 % of labels flipped)",
            "labels": "recorded (noisy) label: 1 = MS, 0 = SVD or migraine",
            "sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
        },
        "export": {"opset": {"": 17, "ai.onnx.ml": 3}, "onnxruntime": onnxruntime.__version__,
                   "parity": {"max_abs_prob_diff": parity, "tolerance": PARITY_TOL,
                              "n": int(te.x.shape[0])}},
        "metrics": {**metrics, **({"real_data": {k: v for k, v in real.items()
                                                  if k != "patients"}} if real else {})},
        "intended_use": INTENDED_USE,
        "limits": MODEL_LIMITS,
        "limits_short": LIMITS,
    }
    write_json(out_dir / "model.json", card)
    atomic_write_text(out_dir / "MODEL_CARD.md", _card_markdown(card))
    register_model(out_dir.parent, MODEL_NAME, {"onnx": f"{out_dir.name}/model.onnx",
                                                 "card": f"{out_dir.name}/model.json",
                                                 "sha256": digest})
    if eval_out is not None:
        write_json(eval_out, {"command": card["training"]["command"], "model_sha256": digest,
                              "version": VERSION, "date": card["training"]["date"],
                              "commit": card["training"]["commit"],
                              "metrics": {**metrics, **({"real_data": real} if real else {})},
                              "parity": card["export"]["parity"]})
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MODELS_DIR / MODEL_NAME,
                    help="model folder; its parent holds manifest.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--eval-out", type=Path, default=DEFAULT_EVAL)
    ap.add_argument("--real-data", type=Path, default=DEFAULT_REAL,
                    help="open_ms_data folder (skipped when absent)")
    ap.add_argument("--no-real-data", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    real = None if args.no_real_data or not args.real_data.is_dir() else args.real_data
    if real is None and not args.no_real_data:
        log.info("real data not found at %s: real-data check skipped", args.real_data)
    command = "python -m training.diagnosis.train " + " ".join(
        sys.argv[1:] if argv is None else argv)
    try:
        card = train(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                     n_boot=args.n_boot, eval_out=args.eval_out, real_data=real,
                     command=command.strip())
    except ParityError as e:
        log.error("%s", e)
        return 1
    rec = card["metrics"]["test"]["recorded_labels"]
    log.info("test AUC %.3f (95 %% CI %.3f-%.3f), sensitivity %.3f, specificity %.3f at %.1f, "
             "Brier %.3f; parity %.2g; sha256 %s", rec["auc"], *rec["auc_ci95"],
             rec["sensitivity"], rec["specificity"], THRESHOLD, rec["brier"],
             card["export"]["parity"]["max_abs_prob_diff"], card["sha256"])
    real_m = card["metrics"].get("real_data")
    if real_m:
        log.info("real MS/CIS (open_ms_data): %d/%d scored MS-typical (without age: %d/%d)",
                 real_m["n_ms_typical"], real_m["n_scored"],
                 real_m["ablation_without_age"]["n_ms_typical"],
                 real_m["ablation_without_age"]["n_scored"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
