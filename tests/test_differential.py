"""Tests for ms_core.clinical.differential (features, simulation, oracle, scoring, SHAP) and its
training."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ms_core.clinical.differential import (
    CLASSES,
    DIFFERENTIAL_FEATURES,
    LIMITS,
    MODEL_FEATURES,
    DifferentialModel,
    DifferentialResult,
    cached_differential_model,
    cohort_differential_features,
    differential_features,
    explain_logits,
    load_differential_model,
    oracle_posterior,
    score_differential,
    score_differential_table,
    simulate_differential,
)
from ms_core.foundation.io import read_json
from ms_core.lesions.location import LOCATIONS
from ms_core.segmentation.model_store import MODELS_DIR, ModelError

_MANIFEST = MODELS_DIR / "manifest.json"
SHIPPED = _MANIFEST.exists() and "differential" in read_json(_MANIFEST).get("models", {})
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="differential model not registered")


def _ms_like() -> pd.DataFrame:
    return pd.DataFrame({
        "volume_ml": [0.30, 0.12, 0.08, 0.05, 0.20, 0.06, 0.15, 0.09],
        "location": ["periventricular", "periventricular", "juxtacortical", "juxtacortical",
                     "infratentorial", "deep_white_matter", "periventricular", "juxtacortical"],
    })


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def model() -> DifferentialModel:
    if not SHIPPED:
        pytest.skip("differential model not registered")
    return load_differential_model()


@pytest.fixture(scope="module")
def fresh() -> tuple[np.ndarray, pd.DataFrame]:
    """A cohort no training run used (seed 4242): features (N, F) and patients."""
    cohort = simulate_differential(900, seed=4242)
    x = cohort_differential_features(cohort)[list(MODEL_FEATURES)].to_numpy(np.float64)
    return x, cohort.patients


# ----------------------------------------------------------------------------- features
def test_features_of_an_empty_table() -> None:
    empty = pd.DataFrame({"volume_ml": pd.Series(dtype=float),
                          "location": pd.Series(dtype=object)})
    f = differential_features(empty, age_years=50)
    assert tuple(f) == DIFFERENTIAL_FEATURES
    assert f["lesion_count"] == 0 and f["dis_n_areas"] == 0 and f["dis_met"] == 0
    assert math.isnan(f["mean_log10_volume_ml"]) and math.isnan(f["periventricular_fraction"])


def test_features_of_a_single_lesion_and_dis() -> None:
    f = differential_features(pd.DataFrame({"volume_ml": [0.01], "location": ["infratentorial"]}),
                              age_years=None)
    assert math.isnan(f["age_years"])
    assert f["dis_n_areas"] == 1 and f["dis_met"] == 0
    assert f["mean_log10_volume_ml"] == pytest.approx(-2.0)
    g = differential_features(_ms_like(), age_years=30)
    assert g["dis_n_areas"] == 3 and g["dis_met"] == 1
    deep = pd.DataFrame({"volume_ml": [0.02, 0.03], "location": ["deep_white_matter"] * 2})
    assert differential_features(deep, age_years=70)["dis_n_areas"] == 0


def test_missing_locations_make_dis_unknown_and_zero_volumes_are_skipped() -> None:
    f = differential_features(pd.DataFrame({"volume_ml": [0.1, 0.0]}), age_years=30)
    assert math.isnan(f["dis_met"]) and math.isnan(f["dis_n_areas"])
    assert f["mean_log10_volume_ml"] == pytest.approx(-1.0)
    unlocated = _ms_like()
    unlocated.loc[2, "location"] = None
    assert math.isnan(differential_features(unlocated, age_years=30)["dis_met"])


def test_bad_tables_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown lesion locations"):
        differential_features(pd.DataFrame({"volume_ml": [0.1], "location": ["area_postrema"]}),
                              age_years=30)
    with pytest.raises(ValueError, match="volume_ml"):
        differential_features(pd.DataFrame({"location": ["periventricular"]}), age_years=30)
    with pytest.raises(TypeError, match="DataFrame"):
        differential_features([0.1], age_years=30)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- simulation
def test_simulation_is_deterministic() -> None:
    a, b = simulate_differential(60, seed=5), simulate_differential(60, seed=5)
    pd.testing.assert_frame_equal(a.patients, b.patients)
    pd.testing.assert_frame_equal(a.lesions, b.lesions)
    c = simulate_differential(60, seed=6)
    assert not a.patients.age_years.equals(c.patients.age_years)
    assert set(a.lesions.location) <= set(LOCATIONS)
    assert (a.lesions.volume_ml >= 0.010).all()
    assert a.lesions.groupby("patient_id").size().min() >= 1


def test_simulation_rejects_bad_arguments() -> None:
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            simulate_differential(n, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_noise"):
        simulate_differential(10, seed=0, label_noise=0.5)


def test_simulated_patterns_follow_the_descriptions() -> None:
    c = simulate_differential(1500, seed=9)
    src = c.patients.set_index("patient_id").source.reindex(c.lesions.patient_id).to_numpy()
    frac = pd.crosstab(src, c.lesions.location, normalize="index")
    # NMOSD-like: fewer juxtacortical and periventricular, more infratentorial lesions than MS.
    assert frac.loc["nmosd_like", "juxtacortical"] < frac.loc["ms", "juxtacortical"] / 2
    assert frac.loc["nmosd_like", "periventricular"] < frac.loc["ms", "periventricular"]
    assert frac.loc["nmosd_like", "infratentorial"] > frac.loc["ms", "infratentorial"]
    counts = c.lesions.groupby("patient_id").size()
    by = counts.groupby(c.patients.set_index("patient_id").source).mean()
    assert by["nmosd_like"] < by["ms"]
    age = c.patients.groupby("source").age_years.mean()
    assert age["healthy_ageing"] > 60 > age["nmosd_like"] > age["ms"]


def test_oracle_posterior() -> None:
    vol = np.array([0.05, 0.2, 0.03])
    loc = np.array([0, 1, 2])
    p = oracle_posterior(30.0, vol, loc)
    assert p.shape == (3,) and p.sum() == pytest.approx(1.0)
    # Healthy ageing is simulated from age 45: impossible at 30 without label noise.
    q = oracle_posterior(30.0, vol, loc, label_noise=0.0)
    assert q[CLASSES.index("healthy_ageing")] == 0.0
    assert q[CLASSES.index("ms")] > 0.5


# ----------------------------------------------------------------------------- shipped model
@needs_shipped
def test_shipped_model_loads_verified(model: DifferentialModel) -> None:
    assert model.features == MODEL_FEATURES
    assert tuple(model.card["classes"]) == CLASSES
    assert model.temperature > 0 and model.coef.shape == (3, len(MODEL_FEATURES))
    assert cached_differential_model() is cached_differential_model()
    assert model.card["export"]["parity"]["max_abs_prob_diff"] <= 1e-5


@needs_shipped
def test_parity_and_shap_additivity_on_many_patients(
        model: DifferentialModel, fresh: tuple[np.ndarray, pd.DataFrame]) -> None:
    x, _ = fresh
    p_onnx = model.onnx.predict_proba(x.astype(np.float32))
    z = x @ model.coef.T + model.intercept
    centred = (z - z.mean(axis=1, keepdims=True)) / model.temperature
    np.testing.assert_allclose(p_onnx, _softmax(centred), atol=1e-5, rtol=0)
    for row in x[:300]:
        phi, base = explain_logits(model, row)
        zr = (row @ model.coef.T + model.intercept) / model.temperature
        np.testing.assert_allclose(base + phi.sum(axis=1), zr - zr.mean(), atol=1e-9)
        np.testing.assert_allclose(_softmax(base + phi.sum(axis=1)),
                                   model.onnx.predict_proba(row[None, :])[0], atol=1e-5)


@needs_shipped
def test_macro_auc_near_oracle_on_a_fresh_cohort(
        model: DifferentialModel, fresh: tuple[np.ndarray, pd.DataFrame]) -> None:
    from sklearn.metrics import roc_auc_score

    from ms_core.clinical.prognosis_fit import expected_calibration_error

    x, patients = fresh
    y = patients.label.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    p = model.onnx.predict_proba(x)
    oracle = patients[[f"oracle_{c}" for c in CLASSES]].to_numpy()
    macro = np.mean([roc_auc_score(y == k, p[:, k]) for k in range(3)])
    macro_oracle = np.mean([roc_auc_score(y == k, oracle[:, k]) for k in range(3)])
    # Training run (3000 test patients): gap 0.011; 900 patients add sampling noise.
    assert macro_oracle - macro < 0.03
    assert macro > 0.9
    assert expected_calibration_error(p.argmax(1) == y, p.max(1)) < 0.06


@needs_shipped
def test_scoring_a_table(model: DifferentialModel) -> None:
    r = score_differential_table(model, _ms_like(), age_years=29)
    assert isinstance(r, DifferentialResult) and r.limits == LIMITS
    assert r.most_likely == "ms" and r.probabilities.sum() == pytest.approx(1.0)
    assert list(r.by_class()) == ["MS", "Healthy ageing (non-specific WMH)", "NMOSD-like"]
    top = r.top_contributions(4)
    assert len(top) == 4 and list(top.columns) == ["feature", "meaning", "value", "shap"]
    assert top.shap.abs().is_monotonic_decreasing
    np.testing.assert_allclose(_softmax(r.base_values + r.shap_values.sum(axis=1)),
                               r.probabilities, atol=1e-5)
    old = pd.DataFrame({"volume_ml": [0.015, 0.02, 0.012, 0.3, 0.011, 0.018, 0.02, 0.013],
                        "location": ["deep_white_matter"] * 5 + ["periventricular",
                                                                 "deep_white_matter"] * 1
                        + ["deep_white_matter"]})
    assert score_differential_table(model, old, age_years=78).most_likely == "healthy_ageing"
    nmo = pd.DataFrame({"volume_ml": [0.04, 0.02, 0.03],
                        "location": ["infratentorial", "deep_white_matter", "infratentorial"]})
    assert score_differential_table(model, nmo, age_years=45).most_likely == "nmosd_like"


@needs_shipped
def test_unscorable_tables_raise_value_error(model: DifferentialModel) -> None:
    empty = pd.DataFrame({"volume_ml": pd.Series(dtype=float),
                          "location": pd.Series(dtype=object)})
    with pytest.raises(ValueError, match="no lesions"):
        score_differential_table(model, empty, age_years=40)
    with pytest.raises(ValueError, match="periventricular_fraction"):
        score_differential_table(model, pd.DataFrame({"volume_ml": [0.1]}), age_years=40)
    with pytest.raises(ValueError, match="age_years"):
        score_differential_table(model, _ms_like(), age_years=None)
    with pytest.raises(ValueError, match="missing"):
        score_differential(model, {"lesion_count": 3.0})


def test_result_validates_shapes() -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        DifferentialResult(np.array([0.5, 0.5, 0.5]), np.zeros((3, 2)), np.zeros(3), ("a", "b"),
                           np.zeros(2), "1", "x")
    with pytest.raises(ValueError, match="expected SHAP"):
        DifferentialResult(np.array([0.2, 0.3, 0.5]), np.zeros((3, 1)), np.zeros(3), ("a", "b"),
                           np.zeros(2), "1", "x")


def _copy_models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "differential", root / "differential")
    manifest = read_json(_MANIFEST)
    from ms_core.foundation.io import write_json

    write_json(root / "manifest.json",
               {"models": {"differential": manifest["models"]["differential"]}})
    return root


@needs_shipped
def test_altered_model_or_explainer_is_refused(tmp_path: Path) -> None:
    root = _copy_models(tmp_path)
    assert load_differential_model(root).features == MODEL_FEATURES
    onnx_path = root / "differential" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-1] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_differential_model(root)
    root2 = _copy_models(tmp_path / "b")
    exp = root2 / "differential" / "explainer.json"
    from ms_core.foundation.io import write_json

    altered = read_json(exp)
    altered["temperature"] *= 2.0
    write_json(exp, altered)
    with pytest.raises(ModelError, match="explainer sha256"):
        load_differential_model(root2)


# ----------------------------------------------------------------------------- training
def test_training_writes_a_loadable_model_and_refuses_bad_parity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.differential import train as tr

    root = tmp_path / "models"
    root.mkdir()
    from ms_core.foundation.io import write_json

    write_json(root / "manifest.json", {"models": {"other": {"onnx": "o", "card": "c",
                                                             "sha256": "0"}}})
    card = tr.train(root / "differential", n_train=600, n_test=300, n_boot=20)
    assert set(read_json(root / "manifest.json")["models"]) == {"other", "differential"}
    m = load_differential_model(root)
    assert m.temperature == pytest.approx(card["calibration"]["temperature"])
    assert card["export"]["parity"]["max_abs_prob_diff"] <= 1e-5
    assert (root / "differential" / "MODEL_CARD.md").read_text().startswith("# Model card")
    monkeypatch.setattr(tr, "PARITY_TOL", -1.0)
    with pytest.raises(tr.ParityError, match="refusing to write"):
        tr.train(tmp_path / "bad" / "differential", n_train=300, n_test=150, n_boot=5)
    assert not (tmp_path / "bad" / "differential" / "model.onnx").exists()
