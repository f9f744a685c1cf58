"""Train, check and register the differential model (MS vs healthy ageing vs NMOSD-like).

Usage::

    python -m training.differential.train --out models_onnx/differential --seed 0 \\
        [--n-train 6000] [--n-test 3000] [--n-boot 500]

Steps

1. Simulate a training and a test cohort with
   :func:`ms_core.clinical.differential.simulate_differential` (seeds ``1000 * seed + 11`` and
   ``1000 * seed + 12``) and compute :data:`~ms_core.clinical.differential.MODEL_FEATURES`.
2. Fit ``StandardScaler`` + multinomial ``LogisticRegression`` (L2, C = 1) on the *recorded*
   (noisy) labels.
3. Temperature scaling: one scalar ``T`` minimising the log loss of ``softmax(z / T)`` on
   5-fold out-of-fold logits of the training cohort. A single scalar keeps each class's logit
   linear in the features, so SHAP stays exact and additive.
4. Evaluate on the test cohort: one-vs-rest AUC per class with a bootstrap 95 % CI, macro AUC,
   the oracle macro AUC of the true generative posterior, ECE (top-label and per class, 10
   equal-width bins), log loss, Brier, the confusion matrix at argmax; against the recorded
   labels (headline) and the true classes.
5. Export with skl2onnx (raw scores, no zipmap) and append ``Div(T)`` and ``Softmax`` nodes, so
   the ONNX output ``probabilities`` (N, 3) is calibrated. Refuse to write anything unless
   ``max |p_onnx - p_sklearn| <= 1e-5`` on the test cohort (exit 1).
6. Write ``OUT/model.onnx``, ``OUT/explainer.json`` (coefficients in raw feature units,
   intercepts, training feature means, T), ``OUT/model.json`` (card) and ``OUT/MODEL_CARD.md``,
   and register the sha256 under ``"differential"`` in ``OUT/../manifest.json`` (other entries
   kept, atomic write).

Nothing is pickled: the model exists only as ONNX plus a JSON explainer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ms_core.clinical.differential import (
    CLASSES,
    DIFFERENTIAL_FEATURE_DESCRIPTIONS,
    LIMITS,
    MODEL_FEATURES,
    MODEL_NAME,
    cohort_differential_features,
    simulate_differential,
)
from ms_core.clinical.prognosis_fit import PARITY_TOL, bootstrap_auc, expected_calibration_error
from ms_core.foundation.io import atomic_write_bytes, atomic_write_text, sha256_file, write_json
from ms_core.segmentation.model_store import MODELS_DIR, code_commit, register_model
from training.onnx_checks import ParityError, check_parity

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
VERSION = "1.0.0"
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
N_BINS = 10
INTENDED_USE = (
    "Research decision support shown under the lesion-pattern score of the Patient page: how "
    "the brain-MRI white-matter lesion pattern (locations, sizes, count, McDonald DIS) and age "
    "compare with synthetic MS, healthy-ageing and NMOSD-like patterns. For research and "
    "teaching; not a medical device, not for diagnosis or treatment decisions."
)
MODEL_LIMITS = [
    "Trained and tested on synthetic patients only "
    "(ms_core.clinical.differential.simulate_differential);"
    " the generative model's numbers are rounded from qualitative published descriptions, not "
    "fitted to data: the metrics say how well the model learned the simulation, not how it "
    "performs on patients. Not validated on real patients.",
    "Probabilities assume the simulation's class mix (MS 50 %, healthy ageing 30 %, NMOSD-like "
    "20 %); NMOSD is far rarer than MS in most clinics, which would lower its probability.",
    "NMOSD is diagnosed with the AQP4-IgG antibody and core clinical characteristics "
    "(Wingerchuk et al. 2015). Its hallmark, longitudinally extensive transverse myelitis, is a "
    "spinal cord lesion and optic neuritis is not assessed on brain FLAIR: neither is visible to "
    "this model. A normal brain MRI (common in NMOSD) cannot be scored.",
    "The location classes have no area-postrema, periependymal or diencephalic class: area-"
    "postrema lesions count as infratentorial (like pontine MS lesions), diencephalic ones as "
    "deep white matter, periependymal ones as periventricular (like ovoid MS lesions). Dawson's "
    "fingers and the inferior temporal lobe part of the Matthews et al. 2013 criteria are not "
    "represented (no lesion shape, no lobe).",
    "Other diagnoses (MOGAD, vasculitis, small-vessel disease with risk factors, migraine, "
    "infections, leukodystrophies, ...) are not modelled and would be forced into one of the "
    "three classes. Spinal MRI, the central vein sign, contrast enhancement, CSF and the "
    "clinical picture are not used.",
]


@dataclass(frozen=True)
class Dataset:
    """Features (N, F) float64, recorded and true class indices, oracle posteriors (N, 3)."""

    x: np.ndarray
    label: np.ndarray
    true: np.ndarray
    oracle: np.ndarray
    seed: int


def simulate_dataset(n: int, seed: int) -> Dataset:
    """A simulated cohort as arrays, columns in :data:`MODEL_FEATURES` order."""
    cohort = simulate_differential(n, seed)
    x = cohort_differential_features(cohort)[list(MODEL_FEATURES)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise RuntimeError("simulated features contain NaN; every patient needs a lesion")
    pat = cohort.patients
    index = {c: i for i, c in enumerate(CLASSES)}
    return Dataset(x, pat.label.map(index).to_numpy(int), pat.source.map(index).to_numpy(int),
                   pat[[f"oracle_{c}" for c in CLASSES]].to_numpy(np.float64), seed)


def fit(x: np.ndarray, y: np.ndarray) -> Pipeline:
    """StandardScaler + multinomial L2 logistic regression (C = 1)."""
    pipe = Pipeline([("scale", StandardScaler()),
                     ("classifier", LogisticRegression(C=1.0, max_iter=5000))])
    return pipe.fit(x, y)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The scalar ``T`` in [0.05, 20] minimising the log loss of ``softmax(logits / T)``."""
    def nll(log_t: float) -> float:
        lp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-lp[np.arange(y.size), y].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-8})
    return float(np.exp(res.x))


def calibrated_proba(pipe: Pipeline, x: np.ndarray, temperature: float) -> np.ndarray:
    """(N, 3) ``softmax(decision_function(x) / T)``."""
    return np.asarray(softmax(pipe.decision_function(x) / temperature, axis=1))


def multiclass_metrics(y: np.ndarray, p: np.ndarray, *, n_boot: int, seed: int
                       ) -> dict[str, Any]:
    """Per-class one-vs-rest AUC (bootstrap 95 % CI), macro AUC, ECEs, log loss, Brier,
    confusion matrix at argmax (rows: reference, columns: predicted; :data:`CLASSES` order)."""
    groups = np.arange(y.size)
    per: dict[str, Any] = {}
    for k, c in enumerate(CLASSES):
        auc, lo, hi = bootstrap_auc(y == k, p[:, k], groups, n=n_boot, seed=seed)
        per[c] = {"n": int((y == k).sum()), "auc": auc, "auc_ci95": [lo, hi],
                  "ece": expected_calibration_error(y == k, p[:, k], N_BINS)}
    pred = p.argmax(axis=1)
    onehot = np.eye(len(CLASSES))[y]
    return {
        "n": int(y.size), "per_class": per,
        "macro_auc": float(np.mean([per[c]["auc"] for c in CLASSES])),
        "ece_top_label": expected_calibration_error(pred == y, p.max(axis=1), N_BINS),
        "log_loss": float(log_loss(y, p, labels=list(range(len(CLASSES))))),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "accuracy": float((pred == y).mean()),
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(CLASSES)))).tolist(),
    }


def _macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean([roc_auc_score(y == k, p[:, k]) for k in range(len(CLASSES))]))


def export_onnx(pipe: Pipeline, temperature: float) -> bytes:
    """ONNX bytes: float32 ``features`` (N, F) -> calibrated ``probabilities`` (N, 3).

    skl2onnx writes the scaler and the raw class scores ``z`` (no zipmap); ``Div(T)`` and
    ``Softmax`` are appended.
    """
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    n_features = len(MODEL_FEATURES)
    model = to_onnx(pipe, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                    options={LogisticRegression: {"zipmap": False, "raw_scores": True}},
                    target_opset={"": 17, "ai.onnx.ml": 3})
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if OUTPUT_NAME not in outputs:
        raise RuntimeError(f"skl2onnx gave outputs {outputs}, expected {OUTPUT_NAME!r}")
    for node in graph.node:
        node.output[:] = ["raw_scores" if o == OUTPUT_NAME else o for o in node.output]
    graph.initializer.append(helper.make_tensor("temperature", TensorProto.FLOAT, [],
                                                [temperature]))
    graph.node.extend([
        helper.make_node("Div", ["raw_scores", "temperature"], ["calibrated_logits"]),
        helper.make_node("Softmax", ["calibrated_logits"], [OUTPUT_NAME], axis=1),
    ])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                                       [None, len(CLASSES)])])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def explainer(pipe: Pipeline, x_train: np.ndarray, temperature: float) -> dict[str, Any]:
    """JSON explainer: coefficients in raw feature units, so ``z = coef @ x + intercept``."""
    scaler, clf = pipe.named_steps["scale"], pipe.named_steps["classifier"]
    coef = clf.coef_ / scaler.scale_
    intercept = clf.intercept_ - coef @ scaler.mean_
    return {"kind": "linear_multinomial", "features": list(MODEL_FEATURES),
            "classes": list(CLASSES), "coef": coef.tolist(), "intercept": intercept.tolist(),
            "background_mean": x_train.mean(axis=0).tolist(), "temperature": temperature,
            "output": "centred calibrated logits (z_k - mean_j z_j) / T"}


def _card_markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    rec, tru = m["test"]["recorded_labels"], m["test"]["true_class"]
    lines = [
        f"# Model card: {card['name']} {card['version']}", "",
        f"**Task.** {card['task']}", "",
        f"**Intended use.** {card['intended_use']}", "",
        "**Not for diagnosis.**", "",
        "## Model", "",
        f"StandardScaler + multinomial logistic regression (L2, C = 1), temperature-scaled "
        f"(T = {card['calibration']['temperature']:.4f}, fitted on 5-fold out-of-fold logits), "
        f"scikit-learn {card['training']['sklearn']}, skl2onnx {card['training']['skl2onnx']} "
        f"with `Div(T)` + `Softmax` appended. Input `{card['input']['name']}` float32 "
        f"(N, {len(card['features'])}); output `{card['output']['name']}` (N, 3) = "
        f"{card['classes']}. sha256 `{card['sha256']}`. Explainer `explainer.json` (sha256 "
        f"`{card['explainer']['sha256']}`).", "",
        "| feature | meaning |", "|---|---|",
        *(f"| `{f}` | {DIFFERENTIAL_FEATURE_DESCRIPTIONS[f]} |" for f in card["features"]), "",
        "## Training data", "",
        f"{card['training']['data']}. {card['training']['n_train']} training and "
        f"{card['training']['n_test']} test patients (seeds {card['training']['train_seed']} "
        f"and {card['training']['test_seed']}). Command: `{card['training']['command']}`; "
        f"commit `{card['training']['commit']}`; {card['training']['date']}.", "",
        "## Metrics (synthetic test cohort)", "",
        "| reference | macro AUC | oracle macro AUC | ECE top-label | log loss | accuracy |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {r['macro_auc']:.3f} | {r['oracle_macro_auc']:.3f} | "
          f"{r['ece_top_label']:.3f} | {r['log_loss']:.3f} | {r['accuracy']:.3f} |"
          for name, r in (("recorded labels (3 % moved)", rec), ("true class", tru))), "",
        "| class (recorded labels) | n | one-vs-rest AUC (95 % CI) | oracle AUC | ECE |",
        "|---|---|---|---|---|",
        *(f"| {c} | {rec['per_class'][c]['n']} | {rec['per_class'][c]['auc']:.3f} "
          f"({rec['per_class'][c]['auc_ci95'][0]:.3f}-{rec['per_class'][c]['auc_ci95'][1]:.3f})"
          f" | {rec['per_class'][c]['oracle_auc']:.3f} | {rec['per_class'][c]['ece']:.3f} |"
          for c in CLASSES), "",
        f"Confusion matrix at argmax (recorded labels; rows reference, columns predicted, order "
        f"{list(CLASSES)}): {rec['confusion_matrix']}. Parity "
        f"{card['export']['parity']['max_abs_prob_diff']:.1e}.", "",
        "## Limits", "", *(f"- {x}" for x in card["limits"]), "",
        "Details: `docs/differential.md`.", "",
    ]
    return "\n".join(lines)


def train(out_dir: Path, *, seed: int = 0, n_train: int = 6000, n_test: int = 3000,
          n_boot: int = 500, command: str | None = None) -> dict[str, Any]:
    """Fit, calibrate, evaluate, export, check parity and write the model files.

    Raises :class:`ParityError` (nothing written) when ONNX and scikit-learn disagree.
    """
    start = time.perf_counter()
    train_seed, test_seed, boot_seed = 1000 * seed + 11, 1000 * seed + 12, 1000 * seed + 13
    tr = simulate_dataset(n_train, train_seed)
    te = simulate_dataset(n_test, test_seed)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    oof = cross_val_predict(fit(tr.x, tr.label), tr.x, tr.label, cv=folds,
                            method="decision_function")
    temperature = fit_temperature(np.asarray(oof), tr.label)
    pipe = fit(tr.x, tr.label)
    p_test = calibrated_proba(pipe, te.x, temperature)
    p_raw = calibrated_proba(pipe, te.x, 1.0)
    metrics: dict[str, Any] = {"test": {}}
    for name, y in (("recorded_labels", te.label), ("true_class", te.true)):
        m = multiclass_metrics(y, p_test, n_boot=n_boot, seed=boot_seed)
        # Oracle posterior of the recorded label; for the true class the noise-free posterior
        # ranks the same way (an affine map per class), so its AUCs are the same.
        m["oracle_macro_auc"] = _macro_auc(y, te.oracle)
        for k, c in enumerate(CLASSES):
            m["per_class"][c]["oracle_auc"] = float(roc_auc_score(y == k, te.oracle[:, k]))
        m["auc_gap_to_oracle"] = m["oracle_macro_auc"] - m["macro_auc"]
        m["oracle_ece_top_label"] = expected_calibration_error(
            te.oracle.argmax(axis=1) == y, te.oracle.max(axis=1), N_BINS)
        metrics["test"][name] = m
    metrics["test"]["uncalibrated_ece_top_label"] = expected_calibration_error(
        p_raw.argmax(axis=1) == te.label, p_raw.max(axis=1), N_BINS)
    metrics["train_macro_auc"] = _macro_auc(tr.label, calibrated_proba(pipe, tr.x, temperature))

    onnx_bytes = export_onnx(pipe, temperature)
    parity = check_parity(onnx_bytes, p_test, te.x, PARITY_TOL)  # raises before anything is written

    import onnxruntime
    import skl2onnx
    import sklearn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "model.onnx", onnx_bytes)
    write_json(out_dir / "explainer.json", explainer(pipe, tr.x, temperature))
    digest = sha256_file(out_dir / "model.onnx")
    card: dict[str, Any] = {
        "name": MODEL_NAME, "version": VERSION, "sha256": digest,
        "family": "multinomial logistic regression, temperature-scaled",
        "task": "MS vs healthy ageing (non-specific white-matter hyperintensities) vs "
                "NMOSD-like brain-MRI lesion pattern, from lesion pattern features, McDonald "
                "DIS and age; research decision support only",
        "features": list(MODEL_FEATURES),
        "feature_descriptions": {f: DIFFERENTIAL_FEATURE_DESCRIPTIONS[f]
                                 for f in MODEL_FEATURES},
        "classes": list(CLASSES),
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "(N, F), F in 'features' "
                  "order; compute with ms_core.clinical.differential.differential_features"},
        "output": {"name": OUTPUT_NAME, "layout": "(N, 3), columns in 'classes' order",
                   "calibration": "softmax(z / T) inside the ONNX graph"},
        "calibration": {"method": "temperature scaling on 5-fold out-of-fold logits",
                        "temperature": temperature},
        "explainer": {"path": "explainer.json", "kind": "linear_multinomial",
                      "sha256": sha256_file(out_dir / "explainer.json"),
                      "output": "centred calibrated logits (z_k - mean_j z_j) / T"},
        "training": {
            "command": command or (f"python -m training.differential.train --out {out_dir} "
                                   f"--seed {seed}"),
            "seed": seed, "train_seed": train_seed, "test_seed": test_seed,
            "bootstrap_seed": boot_seed, "n_train": n_train, "n_test": n_test,
            "n_bootstrap": n_boot,
            **code_commit(("ms_core/clinical/differential.py", "training/differential")),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - start, 1),
            "machine": f"{platform.machine()}, {platform.system()}, Python "
                       f"{platform.python_version()}",
            "data": ("synthetic patients of "
                     "ms_core.clinical.differential.simulate_differential "
                     "(MS 50 %, healthy ageing 30 %, NMOSD-like 20 %; 3 % of labels moved to "
                     "another class)"),
            "labels": "recorded (noisy) class",
            "sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
        },
        "export": {"opset": {"": 17, "ai.onnx.ml": 3}, "onnxruntime": onnxruntime.__version__,
                   "parity": {"max_abs_prob_diff": parity, "tolerance": PARITY_TOL,
                              "n": int(te.x.shape[0])}},
        "metrics": metrics,
        "intended_use": INTENDED_USE,
        "limits": MODEL_LIMITS,
        "limits_short": LIMITS,
    }
    write_json(out_dir / "model.json", card)
    atomic_write_text(out_dir / "MODEL_CARD.md", _card_markdown(card))
    register_model(out_dir.parent, MODEL_NAME, {"onnx": f"{out_dir.name}/model.onnx",
                                                 "card": f"{out_dir.name}/model.json",
                                                 "sha256": digest})
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MODELS_DIR / MODEL_NAME,
                    help="model folder; its parent holds manifest.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-test", type=int, default=3000)
    ap.add_argument("--n-boot", type=int, default=500)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python -m training.differential.train " + " ".join(
        sys.argv[1:] if argv is None else argv)
    try:
        card = train(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                     n_boot=args.n_boot, command=command.strip())
    except ParityError as e:
        log.error("%s", e)
        return 1
    rec = card["metrics"]["test"]["recorded_labels"]
    log.info("test macro AUC %.3f (oracle %.3f), ECE top-label %.3f, per class %s; "
             "T %.3f; parity %.2g; sha256 %s", rec["macro_auc"], rec["oracle_macro_auc"],
             rec["ece_top_label"],
             {c: round(rec["per_class"][c]["auc"], 3) for c in CLASSES},
             card["calibration"]["temperature"], card["export"]["parity"]["max_abs_prob_diff"],
             card["sha256"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
