"""AppTest of the Prognosis page: score, SHAP waterfall, calibration curve, what-if controls,
and the link from location features to the lesions in the Patient page's viewer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from ms_core.foundation import state_keys
from ms_core.segmentation.model_store import MODELS_DIR
from tests.conftest import copy_study

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
pytestmark = pytest.mark.skipif(not (MODELS_DIR / "prognosis" / "model.onnx").exists(),
                                reason="no shipped prognosis model")


def _prognosis_page(study: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.switch_page("pages/prognosis.py").run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> Any:
    return next(m for m in at.metric if m.label == label)


def _charts(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_prognosis_page_scores_explains_and_answers_what_if(
        small_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _prognosis_page(small_study, monkeypatch)
    prob = _metric(at, "Probability of confirmed worsening within 2 years").value
    assert prob.endswith("%") and 0 < int(prob[:-1]) < 100
    # Nothing measured yet in this copy: the MRI inputs are imputed, and the page says so.
    assert any("imputed" in w.value for w in at.warning)
    charts = _charts(at)
    waterfall = next(c for c in charts if c["data"][0]["type"] == "waterfall")
    assert waterfall["data"][0]["y"][0] == "average patient"
    assert any("(imputed)" in label for label in waterfall["data"][0]["y"])
    assert any(c["layout"]["title"]["text"] == "Calibration of the model" for c in charts)

    slider = at.slider(key=f"{state_keys.WHAT_IF_PREFIX}dmt_efficacy")
    slider.set_value(0.0).run()
    none = _metric(at, "Probability with these inputs").value
    slider.set_value(2.0).run()
    high = _metric(at, "Probability with these inputs").value
    assert int(high[:-1]) < int(none[:-1])  # high-efficacy DMT lowers the modelled risk


def test_location_feature_links_to_its_lesions_in_the_viewer(
        segmented_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the first visit is segmented.
    study = copy_study(segmented_study, tmp_path / "study", drop=(("sub-01", "ses-02"),))
    at = _prognosis_page(study, monkeypatch)
    assert not any("imputed with the training medians" in w.value for w in at.warning)
    buttons = [b for b in at.button if b.label.startswith("Show ")]
    assert buttons, "a measured visit with lesions offers the location links"
    label = buttons[0].label
    buttons[0].click().run()
    assert not at.exception
    assert at.session_state[state_keys.LESION_LOCATION] in label.replace(" ", "_")
    assert any("(from the Prognosis page)" in i.value for i in at.info)
    shown = at.dataframe[0].value
    assert (shown["location"] == at.session_state[state_keys.LESION_LOCATION]).all()
    viewer = next(el for el in at.main if getattr(el, "type", "") == "component_instance")
    spec = json.loads(json.loads(viewer.proto.json_args)["spec"])
    assert spec["panes"][0]["overlays"][0]["name"] == "lesions_location.nii.gz"
    # Beside the McDonald checklist: the lesion-pattern score with its stated limits.
    pattern = _metric(at, "Pattern typical of MS (vs small-vessel / migraine-like)")
    assert pattern.value.endswith("%")
    assert any("research" in c.value.lower() for c in at.caption)


def test_explanation_figures_are_built_once_per_explanation() -> None:
    """Reruns reuse the waterfall and calibration figures; another explanation builds anew."""
    import numpy as np

    from ms_core.clinical.prognosis import PrognosisResult
    from ui import prognosis as ui_prognosis

    def explained(edss_shap: float) -> PrognosisResult:
        return PrognosisResult(
            prob=0.3, interval=(0.2, 0.4), shap_values=np.array([edss_shap, -0.2]),
            base_value=-1.0, feature_names=("edss", "age"), feature_values=np.array([3.0, 40.0]),
            imputed=(False, True), threshold=0.5, model_version="1")

    first = ui_prognosis.waterfall_figure(explained(0.5))
    assert ui_prognosis.waterfall_figure(explained(0.5)) is first
    other = ui_prognosis.waterfall_figure(explained(0.9))
    assert other is not first
    assert list(other.data[0].x[1:3]) == [0.9, -0.2] and list(first.data[0].x[1:3]) == [0.5, -0.2]
    assert first.data[0].y[2] == "age = 40 (imputed)"
    model = ui_prognosis.prognosis_model()
    calibration = ui_prognosis.calibration_figure(model, 0.3)
    assert ui_prognosis.calibration_figure(model, 0.3) is calibration
    moved = ui_prognosis.calibration_figure(model, 0.6)
    assert moved is not calibration and moved.layout.shapes[0].x0 == 0.6
