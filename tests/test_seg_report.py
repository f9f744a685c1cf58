"""training.seg.report: the real-set summary and the model card's text follow the figures."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ms_core.foundation.io import read_json
from ms_core.segmentation.model_store import MODELS_DIR
from training.seg.report import model_card_markdown, real_summary, t1_makes_it_worse


def _scan(dice: float, f1: float, pred_ml: float, truth_ml: float) -> dict[str, Any]:
    return {"dice": dice, "f1_any": f1, "f1_any_min_size": f1, "tpr_any": 0.6, "ppv_any": 0.9,
            "pred_ml": pred_ml, "truth_ml": truth_ml, "ece_brain": 0.01, "ece_uncertain": 0.1}


def test_real_summary_means_and_targets() -> None:
    good = {"a": _scan(0.72, 0.70, 7.0, 8.0), "b": _scan(0.60, 0.62, 1.1, 0.8),
            "c": _scan(0.80, 0.70, 80.0, 73.0)}
    s = real_summary(good)
    assert s["n"] == 3 and s["dice"] == pytest.approx(0.70667, abs=1e-4)
    assert s["f1_any"] == pytest.approx(0.67333, abs=1e-4)
    assert s["volume_ratio_range"] == pytest.approx([7.0 / 8.0, 1.1 / 0.8])
    assert s["targets"] == {"mean_dice": True, "mean_f1": True, "min_dice": True,
                            "volumes": True}
    # Under 2 ml the volume target is absolute (0.5 ml), above it relative (30 %).
    s = real_summary({**good, "b": _scan(0.60, 0.62, 1.4, 0.8)})
    assert s["targets"]["volumes"] is False
    s = real_summary({**good, "c": _scan(0.80, 0.70, 100.0, 73.0)})
    assert s["targets"]["volumes"] is False
    s = real_summary({**good, "b": _scan(0.50, 0.62, 1.1, 0.8)})
    assert s["targets"]["min_dice"] is False and s["targets"]["mean_dice"] is False


def _card(targets: dict[str, bool]) -> dict[str, Any]:
    card = copy.deepcopy(read_json(MODELS_DIR / "lesion_seg" / "model.json"))
    scans = {"patient26": _scan(0.71, 0.72, 6.0, 8.2), "P18": _scan(0.6, 0.6, 1.0, 0.8)}
    card["evaluation"] = {
        "real_validation": {"network_flair": scans},
        "real_validation_mean": {"network_flair": {**real_summary(scans), "targets": targets}},
        "volume_ratio_range": [0.73, 1.25], "demo_first_visits_mean": {}, "report": "docs/x.md"}
    return card


@pytest.mark.parametrize("failed", [[], ["mean_f1"], ["volumes", "min_dice"]])
def test_card_limits_name_the_failed_targets(failed: list[str]) -> None:
    targets = {k: k not in failed for k in ("mean_dice", "mean_f1", "min_dice", "volumes")}
    text = model_card_markdown(_card(targets))
    assert ("Meets the real-set targets" in text) is (not failed)
    for name in failed:
        assert name.replace("_", " ") in text.split("failed:")[1].split(")")[0]
    assert "| patient26 | 8.20 | 6.00 | 0.710 | 0.720 |" in text
    assert "0.73–1.25" in text


def test_t1w_is_ignored_once_it_makes_the_real_set_worse() -> None:
    flair = {"a": _scan(0.70, 0.70, 7.0, 8.0), "b": _scan(0.60, 0.60, 1.0, 0.8)}
    worse_f1 = {"a": _scan(0.72, 0.50, 7.0, 8.0), "b": _scan(0.60, 0.60, 1.0, 0.8)}
    better = {"a": _scan(0.72, 0.72, 7.0, 8.0), "b": _scan(0.61, 0.60, 1.0, 0.8)}

    def results(with_t1: dict[str, Any] | None) -> dict[str, Any]:
        mean = {"network_flair": real_summary(flair)}
        if with_t1 is not None:
            mean["network_flair_t1"] = real_summary(with_t1)
        return {"real": {"mean": mean}}

    assert t1_makes_it_worse(results(worse_f1)) is True
    assert t1_makes_it_worse(results(better)) is False
    assert t1_makes_it_worse(results(None)) is False  # a model that ignores T1w
