"""Tests for ms_core.lesions.mcdonald: McDonald 2017 DIS / DIT on brain MRI and the checklist rows.

Reference: Thompson et al., Lancet Neurol 2018;17:162-173 (DIS: >= 1 T2 lesion in >= 2 of
periventricular, cortical/juxtacortical, infratentorial, spinal cord; DIT: a new T2 lesion on
follow-up, or simultaneous enhancing and non-enhancing lesions).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ms_core.lesions.mcdonald import (
    CHECKLIST_COLUMNS,
    DIS_AREAS,
    checklist_rows,
    dissemination_in_space,
    dissemination_in_time,
)


def test_two_areas_satisfy_dis() -> None:
    r = dissemination_in_space({4: "juxtacortical", 1: "periventricular", 2: "periventricular"})
    assert r.satisfied and r.n_areas == 2
    assert r.areas == {"periventricular": (1, 2), "juxtacortical": (4,), "infratentorial": ()}


def test_one_area_does_not_satisfy_dis_and_mentions_the_cord() -> None:
    r = dissemination_in_space({i: "periventricular" for i in range(1, 11)})
    assert not r.satisfied and r.n_areas == 1
    assert any("spinal cord" in n.lower() and "complete" in n for n in r.notes)


def test_deep_white_matter_counts_towards_no_area() -> None:
    r = dissemination_in_space({1: "deep_white_matter", 2: "deep_white_matter",
                                3: "infratentorial"})
    assert not r.satisfied and r.n_areas == 1 and r.n_deep_white_matter == 2


def test_all_three_brain_areas() -> None:
    r = dissemination_in_space({1: "periventricular", 2: "juxtacortical", 3: "infratentorial"})
    assert r.satisfied and r.n_areas == 3


def test_no_lesions() -> None:
    r = dissemination_in_space({})
    assert not r.satisfied and r.n_areas == 0
    assert all(ids == () for ids in r.areas.values())
    assert any("not visible on brain MRI" in n for n in r.notes)


def test_symptomatic_lesions_note_and_numpy_ids() -> None:
    r = dissemination_in_space({np.int64(3): "infratentorial", np.int32(5): "juxtacortical"})
    assert r.satisfied and r.areas["infratentorial"] == (3,)
    assert any("Symptomatic" in n for n in r.notes)


@pytest.mark.parametrize(("locations", "error"), [
    ({1: "cortex"}, ValueError),
    ({0: "periventricular"}, ValueError),
    ({1.5: "periventricular"}, TypeError),
    ({True: "periventricular"}, TypeError),
])
def test_bad_input_is_rejected(locations: dict[object, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        dissemination_in_space(locations)  # type: ignore[arg-type]


def test_results_are_frozen() -> None:
    r = dissemination_in_space({1: "periventricular"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.satisfied = True  # type: ignore[misc]


def test_dit_new_lesion_satisfies_and_notes_gadolinium() -> None:
    r = dissemination_in_time([8, 3, 8])
    assert r.satisfied and r.new_lesion_ids == (3, 8) and r.has_followup
    assert any("gadolinium" in n.lower() and "contrast" in n for n in r.notes)
    assert any("oligoclonal" in n for n in r.notes)


def test_dit_without_new_lesions_or_followup() -> None:
    assert not dissemination_in_time([]).satisfied
    single = dissemination_in_time([], has_followup=False)
    assert not single.satisfied and not single.has_followup
    assert any("follow-up" in n for n in single.notes)
    with pytest.raises(ValueError, match="has_followup"):
        dissemination_in_time([2], has_followup=False)
    with pytest.raises(ValueError, match="-1"):
        dissemination_in_time([-1])


def test_checklist_rows() -> None:
    dis = dissemination_in_space({1: "periventricular", 2: "infratentorial", 6: "infratentorial"})
    rows = checklist_rows(dis, dissemination_in_time([6]))
    assert all(tuple(r) == CHECKLIST_COLUMNS for r in rows)
    by_item = {str(r["item"]): r for r in rows}
    assert [r["satisfied"] for r in rows[:len(DIS_AREAS)]] == [True, False, True]
    infra = next(r for k, r in by_item.items() if "infratentorial" in k)
    assert infra["lesions"] == "2, 6"
    cord = next(r for k, r in by_item.items() if "spinal cord" in k)
    assert cord["satisfied"] is None
    overall = next(r for k, r in by_item.items() if "2 of 4" in k)
    assert overall["satisfied"] is True
    dit = next(r for k, r in by_item.items() if k.startswith("DIT: new"))
    assert dit["satisfied"] is True and dit["lesions"] == "6"
    gd = next(r for k, r in by_item.items() if "Gd" in k)
    assert gd["satisfied"] is None


def test_checklist_without_followup() -> None:
    rows = checklist_rows(dissemination_in_space({}))
    dit = next(r for r in rows if str(r["item"]).startswith("DIT: new"))
    assert dit["satisfied"] is None
    rows = checklist_rows(dissemination_in_space({}), dissemination_in_time([], has_followup=False))
    dit = next(r for r in rows if str(r["item"]).startswith("DIT: new"))
    assert dit["satisfied"] is False
