"""Tests for ms_core.study.provenance_text: one-line provenance of stored results.

The records below copy the fields that ``ms_core segment``, ``ms_core track`` and
``ms_core atrophy`` write (a real run on the demo study, derivatives/ms_dash/sub-02/ses-03).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ms_core.study.provenance_text import (
    NOT_MEASURED,
    change_provenance,
    model_text,
    pbvc_provenance,
    segmentation_provenance,
    volume_provenance,
)

SHA = "5ed5d7042e1cf11968fcd443a01cff843d222accfa5573a7d0e5692e67c67af2"
MODEL = {"name": "lesion_seg", "sha256": SHA, "version": "2.0.0"}
SEG_PARAMS = {"bias_correction": False, "denoise": False, "device": "auto", "method": "network",
              "min_lesion_mm3": 10.0, "overlap": 0.5, "skull_stripped": False, "threshold": 0.5,
              "tta": False}
SEGMENTATION = {"created_utc": "2026-12-01T13:55:10+00:00", "model": MODEL,
                "parameters": SEG_PARAMS, "provider": "CPUExecutionProvider",
                "tool": "ms_core segment", "version": "0.1.0"}
TRACKING = {"created_utc": "2026-12-01T13:55:35+00:00", "model": MODEL,
            "parameters": {"change_z": 2.0, "enlarging_ratio": 0.3, "method": "joint",
                           "min_change_mm3": 10.0, "segmentation": SEG_PARAMS},
            "provider": "CPUExecutionProvider (stored segmentation)",
            "qc": {"protocol_warnings": [], "registration_ncc": 0.9249},
            "registration": {"ncc": 0.9249}}
VOLUMES = {"created_utc": "2026-12-01T13:56:38+00:00", "inputs": {"image": {}, "lesion_mask": {}},
           "parameters": {"lesion_filling": True, "modality": "T1w",
                          "segmentation": SEG_PARAMS},
           "tool": "ms_core atrophy volumes", "version": "0.1.0"}
PBVC = {"baseline_session": "ses-02", "created_utc": "2026-12-01T13:57:24+00:00",
        "interval_years": 1.8124572210814511, "method": "bsi",
        "parameters": {"method": "bsi", "modality": "T1w", "spacing_mm": 1.0},
        "qc_ncc": 0.9882987141609192, "tool": "ms_core atrophy pbvc", "version": "0.1.0",
        "warnings": []}


def test_segmentation_names_model_settings_provider_date_and_file() -> None:
    text = segmentation_provenance(SEGMENTATION, "derivatives/ms_dash/sub-02/ses-03/lesions.csv")
    assert text == ("lesion_seg v2.0.0 (sha256 5ed5d704…), network, threshold 0.5, min 10 mm³, "
                    "CPUExecutionProvider, 2026-12-01; "
                    "derivatives/ms_dash/sub-02/ses-03/lesions.csv")


def test_segmentation_lists_optional_steps_only_when_on() -> None:
    params = SEG_PARAMS | {"tta": True, "bias_correction": True}
    text = segmentation_provenance(SEGMENTATION | {"parameters": params})
    assert "TTA" in text and "N4" in text and "denoised" not in text


def test_baseline_method_says_there_is_no_network_model() -> None:
    prov = {"parameters": SEG_PARAMS | {"method": "baseline"}, "provider": "numpy",
            "model": None}
    assert segmentation_provenance(prov).startswith("no network model, baseline, threshold 0.5")


def test_comparison_names_visit_method_thresholds_registration_and_file() -> None:
    path = "derivatives/ms_dash/sub-02/ses-03/change_from_ses-02/lesion_changes.csv"
    assert change_provenance(TRACKING, "ses-02", path) == (
        "vs ses-02, joint tracking, enlarging +30 %, change z 2, min change 10 mm³, "
        "registration NCC 0.925, lesion_seg v2.0.0 (sha256 5ed5d704…), lesion threshold 0.5, "
        f"2026-12-01; {path}")


def test_comparison_falls_back_to_the_qc_ncc() -> None:
    prov = {k: v for k, v in TRACKING.items() if k != "registration"}
    assert "registration NCC 0.925" in change_provenance(prov, "ses-02")


def test_volumes_say_how_lesions_were_filled() -> None:
    path = "derivatives/ms_dash/sub-02/ses-03/atrophy/tissue_volumes.json"
    assert volume_provenance(VOLUMES, path) == (
        "T1w tissue classification (MNI priors), lesions filled (network segmentation, "
        f"threshold 0.5), ms_core 0.1.0, 2026-12-01; {path}")
    unsegmented = VOLUMES | {"inputs": {"image": {}}}
    assert "lesions not filled (visit not segmented)" in volume_provenance(unsegmented)
    off = unsegmented | {"parameters": VOLUMES["parameters"] | {"lesion_filling": False}}
    assert "lesion filling off" in volume_provenance(off)


def test_pbvc_names_method_interval_qc_and_warnings() -> None:
    path = "derivatives/ms_dash/sub-02/ses-03/atrophy/pbvc_from_ses-02.json"
    assert pbvc_provenance(PBVC, path) == (
        "vs ses-02 over 1.81 years, boundary shift integral (BSI) on T1w at 1 mm, "
        f"registration NCC 0.988, ms_core 0.1.0, 2026-12-01; {path}")
    warned = PBVC | {"warnings": ["scanner changed", "contrast changed"], "method": "jacobian"}
    text = pbvc_provenance(warned)
    assert "Jacobian integration" in text and "2 protocol warning(s)" in text


@pytest.mark.parametrize("build", [segmentation_provenance, volume_provenance,
                                   pbvc_provenance, lambda r: change_provenance(r, "ses-01")])
def test_no_record_is_not_measured(build: Callable[[Any], str]) -> None:
    assert build(None) == NOT_MEASURED
    assert build({}) == NOT_MEASURED


def test_malformed_fields_are_left_out_not_guessed() -> None:
    prov = {"model": "lesion_seg", "parameters": {"threshold": "high", "method": "network"},
            "created_utc": 20261201}
    assert segmentation_provenance(prov) == "network"
    assert model_text({"name": "m"}) == "m"
    assert model_text({"version": "1"}) is None
    record = {"interval_years": "long", "qc_ncc": None, "method": "bsi",
              "baseline_session": "ses-01", "warnings": "none"}
    assert pbvc_provenance(record) == "vs ses-01, boundary shift integral (BSI)"
