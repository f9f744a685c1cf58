"""training.seg.report: the model card's text follows the patient26 figures it is given."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ms_core.io import read_json
from ms_core.models import MODELS_DIR
from training.seg.report import model_card_markdown


def _card(dice: float, f1: float) -> dict[str, Any]:
    card = copy.deepcopy(read_json(MODELS_DIR / "lesion_seg" / "model.json"))
    card["evaluation"]["patient26"]["network_flair"].update({"dice": dice, "f1_any": f1})
    return card


@pytest.mark.parametrize(("dice", "f1", "met"), [(0.71, 0.72, True), (0.71, 0.69, False),
                                                 (0.65, 0.75, False)])
def test_limits_say_whether_the_real_data_target_is_met(dice: float, f1: float,
                                                        met: bool) -> None:
    text = model_card_markdown(_card(dice, f1))
    assert ("meets the target" in text) is met
    assert ("is below the target" in text) is not met
    assert f"| network flair | {dice:.3f} | {f1:.3f} |" in text
