"""AppTest of the Cohort / trial page (summary, charts, drill-down to a patient, exports) and of
the Models & QC page (verified models, provider, per-visit QC) on the small demo study."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from ms_core.foundation import state_keys
from ms_core.segmentation.model_store import MODELS_DIR, load_segmentation_card

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"


def _page(study: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> AppTest:
    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _charts(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_cohort_page_summarises_arms_and_exports(small_study: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    downloads: dict[str, bytes] = {}
    original = DeltaGenerator.download_button

    def capture(self: DeltaGenerator, label: str, data: bytes, *args: Any,
                **kwargs: Any) -> Any:  # records what each download button would send
        downloads[kwargs["file_name"]] = data
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", capture)
    at = _page(small_study, monkeypatch, "pages/cohort.py")
    assert at.title[0].value == "Cohort / trial"

    summary = at.dataframe[0].value
    assert summary["Arm"].tolist() == ["control", "treatment"]
    assert summary["Patients"].tolist() == [1, 1]
    assert (summary["Lesion source"] == "ground truth").all()
    notes = " ".join(m.value for m in at.markdown)
    assert "ground truth of the synthetic study" in notes and "clinical tables" in notes

    charts = {c["layout"]["title"]["text"]: c for c in _charts(at)}
    assert sorted(charts) == ["Brain volume change per year (PBVC)", "NEDA-3 over the follow-up",
                              "New/enlarging T2 lesions per patient-year",
                              "Time to confirmed disability worsening (Kaplan-Meier)"]
    bars = charts["New/enlarging T2 lesions per patient-year"]["data"][0]
    assert bars["type"] == "bar" and bars["x"] == ["control", "treatment"]
    assert bars["error_y"]["array"] is not None  # the confidence intervals
    # the counts stand under each arm's name, also where a bar has height 0
    rows = summary.set_index("Arm")
    for title, column in (("New/enlarging T2 lesions per patient-year",
                           "New/enlarging T2 lesions"),
                          ("NEDA-3 over the follow-up", "NEDA-3 (95 % CI)")):
        axis = charts[title]["layout"]["xaxis"]
        assert axis["tickvals"] == ["control", "treatment"]
        for arm, tick in zip(axis["tickvals"], axis["ticktext"], strict=True):
            name, count = tick.split("<br>")
            numbers = re.findall(r"[\d.]+", count)
            assert name == arm and numbers  # the table's leading numbers, e.g. "3 in 4.4 ..."
            assert re.findall(r"[\d.]+", str(rows.loc[arm, column]))[:len(numbers)] == numbers
    km = charts["Time to confirmed disability worsening (Kaplan-Meier)"]
    assert {t["line"]["shape"] for t in km["data"] if t.get("mode") == "lines"} == {"hv"}
    assert any(t.get("fill") == "tonexty" for t in km["data"])  # CI band

    patients = at.dataframe[1].value
    assert patients["participant_id"].tolist() == ["sub-01", "sub-02"]
    stem = f"{small_study.name}_trial_patients"
    assert len(at.get("download_button")) == 3
    assert all(len(data) > 0 for data in downloads.values())
    csv = pd.read_csv(io.BytesIO(downloads[f"{stem}.csv"]))
    parquet = pd.read_parquet(io.BytesIO(downloads[f"{stem}.parquet"]))
    assert csv["participant_id"].tolist() == parquet["participant_id"].tolist() == [
        "sub-01", "sub-02"]
    assert parquet["neda3"].dtype == "boolean"
    assert json.loads(downloads[f"{stem}.provenance.json"])["parameters"]["source"] == "auto"

    at.multiselect(key=state_keys.COHORT_ARMS).set_value(["treatment"]).run()
    assert not at.exception
    assert at.dataframe[0].value["Arm"].tolist() == ["treatment"]
    assert at.dataframe[1].value["participant_id"].tolist() == ["sub-02"]


def test_selecting_a_patient_opens_the_patient_page(small_study: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(small_study, monkeypatch, "pages/cohort.py")
    assert at.session_state[state_keys.PARTICIPANT] == "sub-01"
    at.session_state[state_keys.COHORT_TABLE] = {
        "selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    button = next(b for b in at.button if b.label == "Open sub-02 on the Patient page")
    button.click().run()
    assert not at.exception
    assert at.session_state[state_keys.PARTICIPANT] == "sub-02"
    assert at.title[0].value == "Patient sub-02"
    assert at.sidebar.selectbox(key=state_keys.patient_picker(str(small_study))).value == "sub-02"


def test_measured_only_source_says_nothing_is_measured(small_study: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(small_study, monkeypatch, "pages/cohort.py")
    at.radio(key=state_keys.COHORT_SOURCE).set_value("measured").run()
    assert not at.exception
    summary = at.dataframe[0].value
    assert (summary["Lesion source"] == "none").all()
    assert (summary["New/enlarging T2 per patient-year (95 % CI)"] == "n/a").all()
    assert "not available" in " ".join(m.value for m in at.markdown)


@pytest.mark.skipif(not (MODELS_DIR / "manifest.json").exists(), reason="no shipped models")
def test_models_page_verifies_models_and_shows_provider_and_qc(
        small_study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(small_study, monkeypatch, "pages/models.py")
    headers = [h.value for h in at.subheader]
    models = [h for h in headers if " v" in h]
    import json

    from ms_core.segmentation.model_store import MODELS_DIR

    shipped = sorted(json.loads((MODELS_DIR / "manifest.json").read_text())["models"])
    assert sorted(m.split(" v")[0] for m in models) == shipped  # every model of the manifest
    assert {"diagnosis", "lesion_seg", "prognosis"} <= set(shipped)
    verified = [s.value for s in at.success if s.value.startswith("sha256 verified")]
    assert len(verified) == len(shipped)
    provider = next(m for m in at.metric if m.label.startswith("Provider in use"))
    assert provider.value.endswith("ExecutionProvider")
    from ms_core.segmentation.inference import load_onnx_model

    why_not = load_onnx_model(load_segmentation_card(), "auto", threads=1).cuda_unavailable
    shown = [c.value for c in at.caption if c.value.startswith("CUDA is not used")]
    assert shown == ([f"CUDA is not used: {why_not}."] if why_not else [])
    assert len(at.expander) >= len(shipped)  # the model cards
    qc = at.dataframe[0].value
    assert qc["session_id"].tolist() == ["ses-01", "ses-02", "ses-03"] * 2
    assert {"protocol_change", "registration_ncc", "uncertain_volume_fraction",
            "qc_flags"} <= set(qc.columns)
