"""Training, validation, calibration and ONNX export of the EDSS-worsening prognosis model.

Used by ``python -m ms_core train-prognosis --cohort table.csv --out DIR`` (bring your own cohort)
and by ``python -m training.prognosis.train`` (the shipped model, trained on the synthetic cohort
of :mod:`ms_core.synthetic.cohort`). Entry points: :func:`fit_prognosis` (patient-level split,
nested patient-grouped cross-validation of logistic regression, gradient boosting and random
forest, Platt calibration on out-of-fold margins, held-out metrics) and :func:`write_model`
(ONNX with the Platt step as graph nodes, refused beyond :data:`PARITY_TOL` of scikit-learn; the
SHAP explainer as JSON, never pickled). Design and figures: ``docs/prognosis.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ms_core import __version__
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import atomic_write_bytes, atomic_write_text, sha256_file, write_json
from ms_core.lesions.features import PROGNOSIS_FEATURES
from ms_core.segmentation.inference import predict_onnx_bytes
from ms_core.segmentation.model_store import code_commit, register_model

__all__ = [
    "EXPLAINABLE",
    "FAMILIES",
    "OUTCOME_COLUMN",
    "PARITY_TOL",
    "FitConfig",
    "FitResult",
    "bootstrap_auc",
    "expected_calibration_error",
    "fit_prognosis",
    "read_cohort_table",
    "reliability_table",
    "sensitivity_specificity",
    "write_model",
]

log = logging.getLogger(__name__)

#: Outcome column of a cohort table: confirmed disability worsening within 2 years, 0/1.
OUTCOME_COLUMN = "cdw_2y"
#: Model families fitted, and those that can be shipped (exact additive SHAP in log-odds).
FAMILIES = ("logistic", "gbm", "random_forest")
EXPLAINABLE = ("logistic", "gbm")
#: Largest accepted |p_onnx - p_sklearn| on the test set.
PARITY_TOL = 1e-5
_EPS = 1e-7


@dataclass(frozen=True)
class FitConfig:
    """Settings of one training run (all recorded in the model card)."""

    seed: int = 0
    test_fraction: float = 0.25
    outer_folds: int = 5
    inner_folds: int = 3
    calibration_folds: int = 5
    n_bootstrap: int = 1000
    n_bins: int = 10
    families: tuple[str, ...] = FAMILIES
    fast: bool = False  # smaller grids and forests, for tests and quick checks

    def __post_init__(self) -> None:
        if not 0.05 <= self.test_fraction <= 0.5:
            raise ValueError(f"test_fraction must be in [0.05, 0.5], got {self.test_fraction}")
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not set(self.families) & set(EXPLAINABLE):
            raise ValueError(f"families must be among {FAMILIES} and include one of "
                             f"{EXPLAINABLE}; got {self.families}")
        if min(self.outer_folds, self.inner_folds, self.calibration_folds) < 2:
            raise ValueError("fold counts must be >= 2")


@dataclass(frozen=True)
class FitResult:
    """Everything a training run produced (the pipeline itself is not kept on disk)."""

    family: str
    pipeline: Any
    calibration: tuple[float, float]
    threshold: float
    cv: dict[str, dict[str, Any]]
    test: dict[str, Any]
    test_prob: np.ndarray
    x_test: np.ndarray
    medians: np.ndarray
    background_mean: np.ndarray
    config: FitConfig
    n_train_patients: int
    n_test_patients: int
    seconds: float
    features: tuple[str, ...] = PROGNOSIS_FEATURES
    outcome_column: str = OUTCOME_COLUMN
    extra: dict[str, Any] = field(default_factory=dict)


# --- input --------------------------------------------------------------------------------------

def read_cohort_table(path: Path | str, *, features: tuple[str, ...] = PROGNOSIS_FEATURES,
                      outcome_column: str = OUTCOME_COLUMN) -> pd.DataFrame:
    """Read and check a cohort CSV: ``patient_id``, every feature of
    :data:`~ms_core.lesions.features.PROGNOSIS_FEATURES`, and :data:`OUTCOME_COLUMN` (0/1).

    Feature cells may be empty (missing); ``true_risk`` (0-1) is optional. Several rows per
    patient (landmark visits) are allowed: they are kept together in every split.

    Raises
    ------
    InputError
        naming the file and the problem: unreadable, missing columns, non-numeric values, an
        outcome other than 0/1, or a single outcome class.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "cohort table not found")
    try:
        table = pd.read_csv(p)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise InputError(p, f"cannot read the cohort CSV: {e}") from e
    needed = ["patient_id", *features, outcome_column]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(p, f"missing columns {missing}; see docs/prognosis.md for the format")
    if table["patient_id"].isna().any():
        raise InputError(p, "empty patient_id in rows "
                            f"{(table.index[table['patient_id'].isna()] + 2).tolist()[:5]}")
    for col in [*features, outcome_column, *(["true_risk"] if "true_risk" in table
                                                        else [])]:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any():
            row = int(table.index[bad][0]) + 2
            raise InputError(p, f"column {col!r} has a non-numeric value "
                                f"{table[col][bad].iloc[0]!r} (line {row})")
        table[col] = values.astype("float64")
    outcome = table[outcome_column]
    if outcome.isna().any() or not outcome.isin([0.0, 1.0]).all():
        raise InputError(p, f"{outcome_column} must be 0 or 1 in every row")
    if outcome.nunique() < 2:
        raise InputError(p, f"{outcome_column} has a single class; both outcomes are needed")
    table["patient_id"] = table["patient_id"].astype(str)
    return table


# --- metrics ------------------------------------------------------------------------------------

def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def bootstrap_auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray, *, n: int = 1000,
                  seed: int = 0) -> tuple[float, float, float]:
    """AUC and its 95 % percentile CI from a bootstrap over patients (``groups``).

    >>> y = np.array([0, 0, 1, 1]); p = np.array([.1, .4, .35, .8])
    >>> round(bootstrap_auc(y, p, np.arange(4), n=50)[0], 2)
    0.75
    """
    y, p, groups = np.asarray(y), np.asarray(p), np.asarray(groups)
    auc = _auc(y, p)
    uniq, inv = np.unique(groups, return_inverse=True)
    rows = [np.flatnonzero(inv == k) for k in range(uniq.size)]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        pick = np.concatenate([rows[k] for k in rng.integers(0, uniq.size, uniq.size)])
        if np.unique(y[pick]).size == 2:
            stats.append(_auc(y[pick], p[pick]))
    lo, hi = np.percentile(stats, [2.5, 97.5]) if stats else (math.nan, math.nan)
    return auc, float(lo), float(hi)


def sensitivity_specificity(y: np.ndarray, p: np.ndarray, threshold: float
                            ) -> tuple[float, float]:
    """Sensitivity and specificity of ``p >= threshold``.

    >>> sensitivity_specificity(np.array([0, 1, 1, 0]), np.array([.2, .7, .4, .6]), .5)
    (0.5, 0.5)
    """
    y = np.asarray(y).astype(bool)
    pos = np.asarray(p) >= threshold
    sens = float((pos & y).sum() / max(int(y.sum()), 1))
    spec = float((~pos & ~y).sum() / max(int((~y).sum()), 1))
    return sens, spec


def _wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    phat = k / n
    den = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / den
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability curve on equal-width probability bins (empty bins dropped).

    Columns ``bin_lo, bin_hi, n, mean_pred, observed, ci_lo, ci_hi`` (Wilson 95 % interval of
    the observed rate).
    """
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = idx == b
        if not m.any():
            continue
        lo, hi = _wilson(float(y[m].sum()), int(m.sum()))
        rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "n": int(m.sum()),
                     "mean_pred": float(p[m].mean()), "observed": float(y[m].mean()),
                     "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows, columns=["bin_lo", "bin_hi", "n", "mean_pred", "observed",
                                       "ci_lo", "ci_hi"])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: bin-size-weighted mean |mean predicted - observed| over equal-width bins.

    >>> expected_calibration_error(np.array([0, 1, 0, 1]), np.array([.5, .5, .5, .5]))
    0.0
    """
    table = reliability_table(y, p, n_bins)
    return float((table.n * (table.mean_pred - table.observed).abs()).sum() / table.n.sum())


# --- models ------------------------------------------------------------------------------------

def _family(name: str, seed: int, fast: bool) -> tuple[Any, dict[str, list[Any]]]:
    """The scikit-learn pipeline of a family and its hyper-parameter grid."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    impute = ("impute", SimpleImputer(strategy="median"))
    if name == "logistic":
        pipe = Pipeline([impute, ("scale", StandardScaler()),
                         ("clf", LogisticRegression(max_iter=2000))])
        return pipe, {"clf__C": [0.1, 1.0] if fast else [0.01, 0.1, 1.0, 10.0]}
    if name == "gbm":
        pipe = Pipeline([impute, ("clf", GradientBoostingClassifier(
            learning_rate=0.05, subsample=0.8, random_state=seed))])
        grid: dict[str, list[Any]] = (
            {"clf__n_estimators": [60], "clf__max_depth": [2]} if fast else
            {"clf__n_estimators": [150, 300], "clf__max_depth": [2, 3]})
        return pipe, grid
    if name == "random_forest":
        pipe = Pipeline([impute, ("clf", RandomForestClassifier(
            n_estimators=60 if fast else 300, max_features="sqrt", random_state=seed,
            n_jobs=1))])
        return pipe, {"clf__min_samples_leaf": [10] if fast else [5, 20]}
    raise ValueError(f"unknown model family {name!r}; known: {FAMILIES}")


def _margin(pipe: Any, x: np.ndarray) -> np.ndarray:
    """Uncalibrated log-odds of the positive class."""
    clf = pipe.named_steps["clf"]
    if hasattr(clf, "decision_function"):
        return np.asarray(pipe.decision_function(x), dtype=np.float64)
    p = np.clip(np.asarray(pipe.predict_proba(x), dtype=np.float64)[:, 1], _EPS, 1 - _EPS)
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def _grouped_folds(n_splits: int, seed: int) -> Any:
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _search(family: str, config: FitConfig, x: np.ndarray, y: np.ndarray, groups: np.ndarray
            ) -> Any:
    from sklearn.model_selection import GridSearchCV

    pipe, grid = _family(family, config.seed, config.fast)
    search = GridSearchCV(pipe, grid, scoring="roc_auc",
                          cv=_grouped_folds(config.inner_folds, config.seed + 1), n_jobs=1)
    search.fit(x, y, groups=groups)
    return search


def _nested_cv(family: str, config: FitConfig, x: np.ndarray, y: np.ndarray, groups: np.ndarray
               ) -> dict[str, Any]:
    """Outer-fold AUCs, and the parameters each inner search chose."""
    aucs, chosen = [], []
    oof = np.full(y.shape, np.nan)
    for train, test in _grouped_folds(config.outer_folds, config.seed).split(x, y, groups):
        search = _search(family, config, x[train], y[train], groups[train])
        oof[test] = _margin(search.best_estimator_, x[test])
        aucs.append(_auc(y[test], oof[test]))
        chosen.append({k.removeprefix("clf__"): v for k, v in search.best_params_.items()})
    return {"outer_auc_mean": float(np.mean(aucs)), "outer_auc_sd": float(np.std(aucs)),
            "outer_aucs": [float(a) for a in aucs], "pooled_oof_auc": _auc(y, oof),
            "chosen_params": chosen}


def _platt(margin: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling ``sigmoid(a * margin + b)``, fitted by (almost) unpenalised logistic fit."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e6, max_iter=1000).fit(margin.reshape(-1, 1), y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    k = int(np.argmax(tpr - fpr))
    return float(min(max(thr[k], 0.0), 1.0))


def _split(table: pd.DataFrame, config: FitConfig, outcome_column: str = OUTCOME_COLUMN
           ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and test parts (patients kept whole, outcome-stratified)."""
    per_patient = table.groupby("patient_id")[outcome_column].max()
    rng = np.random.default_rng(config.seed)
    test_ids: list[str] = []
    for _, ids in per_patient.groupby(per_patient):
        ids_list = sorted(ids.index)
        k = round(len(ids_list) * config.test_fraction)
        test_ids += [ids_list[i] for i in rng.permutation(len(ids_list))[:k]]
    is_test = table["patient_id"].isin(set(test_ids)).to_numpy()
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def fit_prognosis(table: pd.DataFrame, config: FitConfig = FitConfig(), *,
                  features: tuple[str, ...] = PROGNOSIS_FEATURES,
                  outcome_column: str = OUTCOME_COLUMN) -> FitResult:
    """Run the whole training protocol of the module docstring on a checked cohort table.

    Parameters
    ----------
    table
        As returned by :func:`read_cohort_table` (or :func:`ms_core.synthetic.cohort.cohort_table`).
    config
        Split, folds, bootstrap and grid settings.
    features, outcome_column
        The model's inputs (in order) and its 0/1 outcome: the EDSS-worsening model by default;
        the other binary clinical models (``ms_core.clinical.clinical_models``) pass their own.
    """
    from sklearn.base import clone
    from sklearn.metrics import brier_score_loss
    from sklearn.model_selection import cross_val_predict

    start = time.perf_counter()
    x_all = table[list(features)].to_numpy(dtype=np.float64)
    y_all = table[outcome_column].to_numpy(dtype=np.int64)
    g_all = table["patient_id"].astype(str).to_numpy()
    train, test = _split(table, config, outcome_column)
    if np.unique(y_all[test]).size < 2 or np.unique(y_all[train]).size < 2:
        raise ValueError("too few patients with each outcome for a train/test split; "
                         f"{int(y_all.sum())} events in {len(y_all)} rows")
    x, y, g = x_all[train], y_all[train], g_all[train]

    cv: dict[str, dict[str, Any]] = {}
    for family in config.families:
        log.info("nested CV: %s", family)
        t0 = time.perf_counter()
        cv[family] = _nested_cv(family, config, x, y, g)
        cv[family]["seconds"] = round(time.perf_counter() - t0, 1)
    shippable = [f for f in config.families if f in EXPLAINABLE]
    family = max(shippable, key=lambda f: cv[f]["outer_auc_mean"])

    search = _search(family, config, x, y, g)
    best = search.best_estimator_
    oof_margin = cross_val_predict(clone(best), x, y, groups=g, method="decision_function",
                                   cv=_grouped_folds(config.calibration_folds, config.seed + 2))
    a, b = _platt(np.asarray(oof_margin, dtype=np.float64), y)
    threshold = _youden(y, _sigmoid(a * oof_margin + b))
    pipe = clone(best).fit(x, y)

    x_test, y_test, g_test = x_all[test], y_all[test], g_all[test]
    p_test = _sigmoid(a * _margin(pipe, x_test) + b)
    auc, lo, hi = bootstrap_auc(y_test, p_test, g_test, n=config.n_bootstrap, seed=config.seed)
    sens, spec = sensitivity_specificity(y_test, p_test, threshold)
    test_metrics: dict[str, Any] = {
        "n_rows": len(test), "n_events": int(y_test.sum()),
        "auc": auc, "auc_ci95": [lo, hi], "threshold": threshold,
        "sensitivity": sens, "specificity": spec,
        "brier": float(brier_score_loss(y_test, p_test)),
        "ece": expected_calibration_error(y_test, p_test, config.n_bins),
        "reliability": reliability_table(y_test, p_test, config.n_bins).to_dict("records"),
        "event_rate": float(y_test.mean()),
    }
    if "true_risk" in table.columns and table["true_risk"].notna().all():
        true_test = table["true_risk"].to_numpy(dtype=np.float64)[test]
        o_auc, o_lo, o_hi = bootstrap_auc(y_test, true_test, g_test, n=config.n_bootstrap,
                                          seed=config.seed)
        test_metrics.update({
            "oracle_auc": o_auc, "oracle_auc_ci95": [o_lo, o_hi],
            "auc_gap_to_oracle": o_auc - auc,
            "oracle_brier": float(brier_score_loss(y_test, true_test)),
            "oracle_ece": expected_calibration_error(y_test, true_test, config.n_bins),
        })
    imputer = pipe.named_steps["impute"]
    imputed = imputer.transform(x)
    return FitResult(
        family=family, pipeline=pipe, calibration=(a, b), threshold=threshold, cv=cv,
        test=test_metrics, test_prob=p_test, x_test=x_test,
        medians=np.asarray(imputer.statistics_, dtype=np.float64),
        background_mean=imputed.mean(axis=0), config=config,
        n_train_patients=int(np.unique(g).size), n_test_patients=int(np.unique(g_test).size),
        seconds=round(time.perf_counter() - start, 1), features=tuple(features),
        outcome_column=outcome_column, extra={"chosen_params": {k.removeprefix("clf__"): v
                                 for k, v in search.best_params_.items()}},
    )


# --- export --------------------------------------------------------------------------------------

def _onnx_bytes(result: FitResult) -> bytes:
    """The pipeline as ONNX with the Platt step appended: output ``probabilities`` (N, 2)."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx

    clf = result.pipeline.named_steps["clf"]
    sample = np.zeros((1, len(result.features)), dtype=np.float32)
    model = to_onnx(result.pipeline, sample, options={id(clf): {"zipmap": False}},
                    target_opset={"": 17, "ai.onnx.ml": 3})
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_probabilities" if o == "probabilities" else o
                          for o in node.output]
    a, b = result.calibration
    init = [
        helper.make_tensor("col1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [_EPS]),
        helper.make_tensor("one_m_eps", TensorProto.FLOAT, [], [1 - _EPS]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("platt_a", TensorProto.FLOAT, [], [a]),
        helper.make_tensor("platt_b", TensorProto.FLOAT, [], [b]),
    ]
    nodes = [
        helper.make_node("Gather", ["raw_probabilities", "col1"], ["p_raw"], axis=1),
        helper.make_node("Clip", ["p_raw", "eps", "one_m_eps"], ["p_clip"]),
        helper.make_node("Sub", ["one", "p_clip"], ["q_clip"]),
        helper.make_node("Div", ["p_clip", "q_clip"], ["odds"]),
        helper.make_node("Log", ["odds"], ["logit"]),
        helper.make_node("Mul", ["logit", "platt_a"], ["scaled"]),
        helper.make_node("Add", ["scaled", "platt_b"], ["cal_logit"]),
        helper.make_node("Sigmoid", ["cal_logit"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
    ]
    graph.initializer.extend(init)
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                       [None, 2])])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _explainer(result: FitResult) -> dict[str, Any]:
    """JSON-safe description of the shipped model for SHAP (see
    :mod:`ms_core.clinical.prognosis`)."""
    clf = result.pipeline.named_steps["clf"]
    base = {"features": list(result.features), "medians": result.medians.tolist(),
            "calibration": {"a": result.calibration[0], "b": result.calibration[1]}}
    if result.family == "logistic":
        scaler = result.pipeline.named_steps["scale"]
        coef = clf.coef_[0] / scaler.scale_
        intercept = float(clf.intercept_[0] - np.sum(clf.coef_[0] * scaler.mean_ / scaler.scale_))
        return {**base, "kind": "linear", "coef": coef.tolist(), "intercept": intercept,
                "background_mean": result.background_mean.tolist()}
    if result.family == "gbm":
        trees = []
        for est in clf.estimators_[:, 0]:
            t = est.tree_
            trees.append({
                "children_left": t.children_left.tolist(),
                "children_right": t.children_right.tolist(),
                "features": t.feature.tolist(),
                "thresholds": t.threshold.tolist(),
                "values": (t.value[:, 0, 0] * clf.learning_rate).tolist(),
                "node_sample_weight": t.weighted_n_node_samples.tolist(),
            })
        x0 = result.medians.reshape(1, -1)
        tree_sum = sum(tr.predict(x0.astype(np.float32))[0] for tr in clf.estimators_[:, 0])
        base_offset = float(clf.decision_function(x0)[0] - clf.learning_rate * tree_sum)
        return {**base, "kind": "tree", "base_offset": base_offset, "trees": trees}
    raise ValueError(f"family {result.family!r} is not shippable; use one of {EXPLAINABLE}")


def _card_markdown(card: Mapping[str, Any]) -> str:
    t = card["metrics"]["test"]
    cv = card["metrics"]["nested_cv"]
    lines = [
        f"# Model card: {card['name']} {card['version']}", "",
        f"**Family**: {card['family']} (Platt-calibrated). **Trained on**: "
        f"{card['data']['description']}.", "",
        "**Intended use**: " + card["intended_use"], "",
        "**Limits**: " + card["limits"], "",
        "## Held-out test", "",
        "| metric | value |", "|---|---|",
        f"| patients (rows) | {card['data']['n_test_patients']} ({t['n_rows']}) |",
        f"| events | {t['n_events']} ({t['event_rate']:.1%}) |",
        f"| AUC (95 % CI) | {t['auc']:.3f} ({t['auc_ci95'][0]:.3f}-{t['auc_ci95'][1]:.3f}) |",
    ]
    if "oracle_auc" in t:
        lines.append(f"| oracle AUC (true risk) | {t['oracle_auc']:.3f} "
                     f"(gap {t['auc_gap_to_oracle']:+.3f}) |")
    lines += [
        f"| threshold (Youden, training OOF) | {t['threshold']:.3f} |",
        f"| sensitivity / specificity | {t['sensitivity']:.3f} / {t['specificity']:.3f} |",
        f"| Brier | {t['brier']:.4f} |",
        f"| ECE (10 bins) | {t['ece']:.4f} |", "",
        "## Nested, patient-grouped cross-validation (training part)", "",
        "| family | outer AUC mean ± SD | chosen parameters per outer fold |", "|---|---|---|",
    ]
    lines += [f"| {f} | {m['outer_auc_mean']:.3f} ± {m['outer_auc_sd']:.3f} | "
              f"{m['chosen_params']} |" for f, m in cv.items()]
    lines += ["", f"Command: `{card['training']['command']}` (commit "
                  f"{card['training']['commit'][:10]}, {card['training']['date']}).", ""]
    return "\n".join(lines)


def write_model(result: FitResult, out: Path | str, *, name: str = "prognosis",
                version: str = "1.0.0", command: str = "", data_description: str = "",
                intended_use: str = "", limits: str = "",
                task: str = "probability of confirmed disability worsening within 2 years",
                output_columns: tuple[str, str] = ("no worsening", "worsening")) -> Path:
    """Export and register the model under ``out/name`` with ``out/manifest.json``.

    Writes ``model.onnx``, ``explainer.json``, ``model.json`` (card), ``MODEL_CARD.md``. The
    parity check runs first; nothing is written when it fails.

    Raises
    ------
    ValueError
        when ONNX and scikit-learn probabilities differ by more than :data:`PARITY_TOL`.
    """
    root = Path(out)
    payload = _onnx_bytes(result)
    probabilities, input_name = predict_onnx_bytes(payload, result.x_test.astype(np.float32),
                                                   "probabilities")
    p_onnx = probabilities[:, 1]
    parity = float(np.max(np.abs(p_onnx - result.test_prob)))
    if not parity <= PARITY_TOL:
        raise ValueError(f"ONNX/scikit-learn parity {parity:.2e} > {PARITY_TOL:.0e}; "
                         "model not written")
    explainer = _explainer(result)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "model.onnx", payload)
    write_json(folder / "explainer.json", explainer)
    sha = sha256_file(folder / "model.onnx")
    card: dict[str, Any] = {
        "name": name, "version": version, "sha256": sha, "family": result.family,
        "task": task, "outcome_column": result.outcome_column,
        "input": {"name": input_name, "features": list(result.features),
                  "dtype": "float32", "missing": "NaN, imputed with the training medians"},
        "output": {"name": "probabilities", "columns": list(output_columns),
                   "calibration": "Platt (sigmoid of a * margin + b) inside the ONNX graph"},
        "calibration": {"a": result.calibration[0], "b": result.calibration[1]},
        "threshold": result.threshold,
        "explainer": {"path": "explainer.json", "kind": explainer["kind"],
                      "sha256": sha256_file(folder / "explainer.json"),
                      "output": "calibrated log-odds"},
        "medians": dict(zip(result.features, result.medians.tolist(), strict=True)),
        "metrics": {"test": result.test, "nested_cv": result.cv, "parity_max_abs": parity},
        "data": {"description": data_description, "n_train_patients": result.n_train_patients,
                 "n_test_patients": result.n_test_patients},
        "training": {"command": command, "commit": code_commit()["commit"],
                     "date": dt.date.today().isoformat(), "seconds": result.seconds,
                     "config": result.config.__dict__, "app_version": __version__,
                     "chosen_params": result.extra.get("chosen_params", {})},
        "intended_use": intended_use or (
            "research decision support: a cohort-level risk estimate to discuss with the "
            "patient, never a decision on its own"),
        "limits": limits or "validated only on the data described here",
    }
    write_json(folder / "model.json", card)
    atomic_write_text(folder / "MODEL_CARD.md", _card_markdown(card))
    register_model(root, name, {"onnx": f"{name}/model.onnx", "card": f"{name}/model.json",
                                "sha256": sha})
    log.info("wrote %s (%s, parity %.1e)", folder, result.family, parity)
    return folder

