"""Tests for ms_core.clinical.diagnosis (pattern features, simulation, scoring) and its training
script."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ms_core.clinical.diagnosis import (
    DIAGNOSIS_FEATURES,
    LIMITS,
    MODEL_FEATURES,
    PUNCTATE_DIAMETER_MM,
    SOURCES,
    DiagnosisResult,
    cohort_features,
    equivalent_diameter_mm,
    load_diagnosis_model,
    pattern_features,
    score_lesion_table,
    score_pattern,
    simulate_patterns,
)
from ms_core.lesions.location import LOCATIONS
from ms_core.segmentation.inference import TabularModel
from ms_core.segmentation.model_store import MODELS_DIR, ModelError, read_json, register_model

_MANIFEST = MODELS_DIR / "manifest.json"
SHIPPED = _MANIFEST.exists() and "diagnosis" in read_json(_MANIFEST).get("models", {})
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="diagnosis model not registered")

#: Volume (ml) of a ball of 3 mm diameter: pi / 6 * 27 mm^3.
_V3MM_ML = math.pi / 6 * 27 / 1000


def _ms_like() -> pd.DataFrame:
    return pd.DataFrame({
        "volume_ml": [0.30, 0.12, 0.08, 0.05, 0.20, 0.06],
        "location": ["periventricular", "periventricular", "juxtacortical", "juxtacortical",
                     "infratentorial", "deep_white_matter"],
    })


def _svd_like() -> pd.DataFrame:
    return pd.DataFrame({
        "volume_ml": [0.011, 0.012, 0.015, 0.013, 0.6, 0.011, 0.02],
        "location": ["deep_white_matter"] * 5 + ["periventricular", "deep_white_matter"],
    })


# ----------------------------------------------------------------------------- features
def test_equivalent_diameter_of_a_3mm_ball() -> None:
    assert float(equivalent_diameter_mm(_V3MM_ML)) == pytest.approx(PUNCTATE_DIAMETER_MM)


def test_features_of_an_empty_table() -> None:
    empty = pd.DataFrame({"volume_ml": pd.Series(dtype=float),
                          "location": pd.Series(dtype=object)})
    f = pattern_features(empty, age_years=40)
    assert tuple(f) == DIAGNOSIS_FEATURES
    assert f["lesion_count"] == 0 and f["total_volume_ml"] == 0 and f["count_ge_3mm"] == 0
    assert f["has_periventricular"] == 0 and f["has_infratentorial"] == 0
    for name in ("log10_total_volume_ml", "log10_median_volume_ml", "punctate_fraction",
                 "periventricular_fraction", "median_elongation"):
        assert math.isnan(f[name]), name


def test_features_of_a_single_lesion() -> None:
    f = pattern_features(pd.DataFrame({"volume_ml": [0.1], "location": ["infratentorial"]}),
                         age_years=None)
    assert math.isnan(f["age_years"])
    assert f["lesion_count"] == 1 and f["log1p_lesion_count"] == pytest.approx(math.log(2))
    assert f["infratentorial_fraction"] == 1 and f["periventricular_fraction"] == 0
    assert f["has_infratentorial"] == 1 and f["has_juxtacortical"] == 0
    assert f["log10_median_volume_ml"] == pytest.approx(-1.0)
    assert f["count_ge_3mm"] == 1 and f["punctate_fraction"] == 0


def test_size_threshold_at_3mm() -> None:
    t = pd.DataFrame({"volume_ml": [_V3MM_ML * 1.001, _V3MM_ML * 0.999]})
    f = pattern_features(t, age_years=30)
    assert f["count_ge_3mm"] == 1 and f["punctate_fraction"] == 0.5


def test_missing_optional_columns_give_nan_and_shape_columns_are_used() -> None:
    f = pattern_features(pd.DataFrame({"volume_ml": [0.1, 0.2]}), age_years=30)
    assert all(math.isnan(f[f"{loc}_fraction"]) for loc in LOCATIONS)
    assert math.isnan(f["has_juxtacortical"]) and math.isnan(f["median_sphericity"])
    t = _ms_like().assign(elongation=[0.5, 0.6, 0.7, np.nan, 0.9, 1.0], sphericity=0.8)
    g = pattern_features(t, age_years=30)
    assert g["median_elongation"] == pytest.approx(0.7) and g["median_sphericity"] == 0.8
    assert sum(g[f"{loc}_fraction"] for loc in LOCATIONS) == pytest.approx(1.0)
    # A lesion without a location makes every location feature unknown.
    unlocated = _ms_like()
    unlocated.loc[1, "location"] = None
    h = pattern_features(unlocated, age_years=30)
    assert math.isnan(h["periventricular_fraction"])


def test_bad_tables_and_ages_are_rejected() -> None:
    with pytest.raises(ValueError, match="needs a 'volume_ml' column"):
        pattern_features(pd.DataFrame({"location": ["periventricular"]}), age_years=30)
    with pytest.raises(ValueError, match="finite and >= 0"):
        pattern_features(pd.DataFrame({"volume_ml": [-0.1]}), age_years=30)
    with pytest.raises(ValueError, match="unknown lesion locations \\['brainstem'\\]"):
        pattern_features(pd.DataFrame({"volume_ml": [0.1], "location": ["brainstem"]}),
                         age_years=30)
    with pytest.raises(ValueError, match="age_years must be in 0-120"):
        pattern_features(_ms_like(), age_years=-3)
    with pytest.raises(TypeError, match="DataFrame"):
        pattern_features({"volume_ml": [0.1]}, age_years=30)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- simulation
def test_simulation_is_deterministic_and_well_formed() -> None:
    a, b = simulate_patterns(60, seed=3), simulate_patterns(60, seed=3)
    pd.testing.assert_frame_equal(a.patients, b.patients)
    pd.testing.assert_frame_equal(a.lesions, b.lesions)
    c = simulate_patterns(60, seed=4)
    assert not a.lesions.volume_ml.equals(c.lesions.volume_ml)
    assert set(a.patients.source) <= set(SOURCES)
    assert set(a.lesions.location) <= set(LOCATIONS)
    assert a.lesions.groupby("patient_id").size().min() >= 1  # every patient has a lesion
    assert (a.lesions.volume_ml >= 0.003).all()  # above the lowest detection floor
    assert (a.patients.true_ms == (a.patients.source == "ms")).all()
    feats = cohort_features(a)
    assert list(feats.columns) == list(DIAGNOSIS_FEATURES) and len(feats) == 60
    assert np.isfinite(feats[list(MODEL_FEATURES)].to_numpy()).all()


def test_simulation_input_checks() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        simulate_patterns(0, seed=1)
    with pytest.raises(ValueError, match="label_noise"):
        simulate_patterns(5, seed=1, label_noise=0.6)


def test_simulated_sources_differ_as_described() -> None:
    cohort = simulate_patterns(600, seed=11)
    feats = cohort_features(cohort)
    by = feats.groupby(cohort.patients.source.to_numpy()).median()
    assert by.loc["svd", "age_years"] > by.loc["ms", "age_years"] + 20
    assert by.loc["ms", "juxtacortical_fraction"] > by.loc["svd", "juxtacortical_fraction"]
    assert by.loc["migraine", "lesion_count"] < by.loc["ms", "lesion_count"]
    assert by.loc["svd", "deep_white_matter_fraction"] > by.loc["ms",
                                                                 "deep_white_matter_fraction"]
    noisy = (cohort.patients.label_ms != cohort.patients.true_ms).mean()
    assert 0.01 < noisy < 0.10  # 5 % of labels flipped


# ----------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def shipped() -> TabularModel:
    if not SHIPPED:
        pytest.skip("diagnosis model not registered")
    return load_diagnosis_model()


@needs_shipped
def test_shipped_model_loads_verified(shipped: TabularModel) -> None:
    card = shipped.model.card
    assert tuple(card["features"]) == MODEL_FEATURES
    assert shipped.model.sha256 == card["sha256"] and shipped.output_name == "probabilities"
    assert card["export"]["parity"]["max_abs_prob_diff"] <= 1e-5
    for key in ("command", "seed", "commit", "date"):
        assert key in card["training"]
    assert card["limits"] and card["intended_use"]


@needs_shipped
def test_ms_typical_patterns_score_higher_than_svd(shipped: TabularModel) -> None:
    ms = score_lesion_table(shipped, _ms_like(), age_years=32)
    svd = score_lesion_table(shipped, _svd_like(), age_years=71)
    assert ms.prob_ms_pattern > 0.8 > 0.2 > svd.prob_ms_pattern
    assert ms.pattern == "MS-typical" and svd.pattern.startswith("other")
    assert ms.limits == LIMITS and ms.model_version == shipped.model.card["version"]
    assert list(ms.features) == list(MODEL_FEATURES)
    # On a synthetic cohort the true MS patients score higher than the SVD patients.
    cohort = simulate_patterns(200, seed=99)
    x = cohort_features(cohort)[list(MODEL_FEATURES)].to_numpy()
    p = shipped.predict_proba(x)[:, 1]
    src = cohort.patients.source.to_numpy()
    assert np.median(p[src == "ms"]) > 0.7 > 0.3 > np.median(p[src == "svd"])


@needs_shipped
def test_missing_features_are_named(shipped: TabularModel) -> None:
    f = pattern_features(_ms_like().drop(columns="location"), age_years=None)
    with pytest.raises(ValueError, match=r"age_years.*periventricular_fraction"):
        score_pattern(shipped, f)
    with pytest.raises(ValueError, match="no lesions"):
        score_lesion_table(shipped, _ms_like().iloc[0:0], age_years=30)
    f = pattern_features(_ms_like(), age_years=30)
    del f["punctate_fraction"]
    with pytest.raises(ValueError, match="\\['punctate_fraction'\\]"):
        score_pattern(shipped, f)


def test_result_checks_probability() -> None:
    with pytest.raises(ValueError, match="prob_ms_pattern"):
        DiagnosisResult(prob_ms_pattern=1.5, features={}, model_version="1", model_sha256="x")


@needs_shipped
def test_altered_or_inconsistent_model_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "models"
    copy.mkdir()
    shutil.copy(MODELS_DIR / "manifest.json", copy / "manifest.json")
    shutil.copytree(MODELS_DIR / "diagnosis", copy / "diagnosis")
    assert load_diagnosis_model(copy).model.sha256
    card_path = copy / "diagnosis" / "model.json"
    card = json.loads(card_path.read_text())
    card["features"] = [*card["features"][:-1], "shoe_size_mm"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="unknown: \\['shoe_size_mm'\\]"):
        load_diagnosis_model(copy)
    raw = bytearray((copy / "diagnosis" / "model.onnx").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "diagnosis" / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="altered"):
        load_diagnosis_model(copy)


# ----------------------------------------------------------------------------- training
def test_training_writes_a_verified_model_with_parity(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from training.diagnosis import train as tr

    out = tmp_path / "models" / "diagnosis"
    card = tr.train(out, seed=1, n_train=300, n_test=150, n_boot=50,
                    eval_out=tmp_path / "eval.json", real_data=None)
    assert card["export"]["parity"]["max_abs_prob_diff"] <= tr.PARITY_TOL
    assert 0.7 < card["metrics"]["test"]["recorded_labels"]["auc"] < 1.0
    lo, hi = card["metrics"]["test"]["recorded_labels"]["auc_ci95"]
    assert lo <= card["metrics"]["test"]["recorded_labels"]["auc"] <= hi
    model = load_diagnosis_model(tmp_path / "models")  # registered: sha matches manifest
    assert model.model.sha256 == card["sha256"]
    assert (out / "MODEL_CARD.md").read_text().startswith("# Model card: diagnosis")
    assert json.loads((tmp_path / "eval.json").read_text())["model_sha256"] == card["sha256"]
    # Other models in the manifest are kept when the entry is replaced.
    manifest = tmp_path / "models" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["models"]["other"] = {"onnx": "o.onnx", "card": "o.json", "sha256": "0"}
    manifest.write_text(json.dumps(data))
    register_model(tmp_path / "models", "diagnosis", data["models"]["diagnosis"])
    assert set(json.loads(manifest.read_text())["models"]) == {"diagnosis", "other"}


def test_training_refuses_to_write_without_parity(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("skl2onnx")
    from training import onnx_checks
    from training.diagnosis import train as tr

    real = onnx_checks.onnx_probabilities
    monkeypatch.setattr(onnx_checks, "onnx_probabilities",
                        lambda onnx_bytes, x: np.clip(real(onnx_bytes, x) + 1e-3, 0, 1))
    out = tmp_path / "models" / "diagnosis"
    with pytest.raises(tr.ParityError, match="refusing to write"):
        tr.train(out, seed=1, n_train=200, n_test=100, n_boot=10, eval_out=None,
                 real_data=None)
    assert not (out / "model.onnx").exists() and not (tmp_path / "models" / "manifest.json"
                                                      ).exists()


def test_real_ms_masks_give_features(open_ms_data: Path, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    """One real MS patient (open_ms_data, MNI space): components, age join and features.

    The MNI zones take about 15 s to build, so the location classifier (tested in
    test_location.py) is replaced by one that calls every lesion periventricular.
    """
    pytest.importorskip("sklearn")
    import ms_core.lesions.location
    from training.diagnosis import train as tr

    monkeypatch.setattr(ms_core.lesions.location, "classify_lesions", lambda labels, affine, s2m: {
        int(i): "periventricular" for i in np.unique(labels) if i > 0})
    table = tr.real_data_features(open_ms_data, patients=["patient26"])
    assert len(table) == 1
    row = table.iloc[0]
    assert row["lesion_count"] > 0 and row["age_years"] == 40  # patient_info.csv
    assert row["periventricular_fraction"] == 1.0
    assert np.isfinite(row[list(MODEL_FEATURES)].to_numpy(dtype=float)).all()
    result = tr.real_data_check(table, lambda x: np.tile([0.4, 0.6], (len(x), 1)))
    assert result["n_scored"] == 1 and result["n_ms_typical"] == 1
    assert result["patients"][0]["patient"] == "patient26"
