"""McDonald 2017 MRI criteria for dissemination in space (DIS) and in time (DIT), brain MRI only.

Reference: Thompson AJ, Banwell BL, Barkhof F, et al. Diagnosis of multiple sclerosis: 2017
revisions of the McDonald criteria. Lancet Neurol 2018;17:162-173.

Dissemination in space
    At least one T2-hyperintense lesion in at least two of four CNS areas: periventricular,
    cortical or juxtacortical, infratentorial, spinal cord. Unlike the 2010 criteria, symptomatic
    lesions count as well as asymptomatic ones (2017 change), and cortical lesions count with
    juxtacortical ones. The spinal cord is not visible on brain MRI, so it is reported as not
    assessed; with a single brain area, a cord lesion on spinal MRI would complete DIS.
Dissemination in time
    A new T2-hyperintense or gadolinium-enhancing lesion on follow-up MRI compared with a baseline
    scan, whatever the timing of the baseline; or the simultaneous presence of gadolinium-enhancing
    and non-enhancing lesions at any time. Without contrast-enhanced T1 the second route cannot be
    assessed. CSF-specific oligoclonal bands can substitute for DIT (not an MRI finding).

These are MRI findings that *support* a diagnosis; McDonald criteria apply only to patients with a
typical clinically isolated syndrome and when no better explanation exists. Lesion locations come
from :mod:`ms_core.lesions.location`; the deep white matter class counts towards no area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ms_core.lesions.location import DISPLAY_NAMES, LOCATIONS

__all__ = [
    "CHECKLIST_COLUMNS",
    "DIS_AREAS",
    "DISResult",
    "DITResult",
    "checklist_rows",
    "dissemination_in_space",
    "dissemination_in_time",
]

#: DIS areas visible on brain MRI, as location classes of :mod:`ms_core.lesions.location`.
DIS_AREAS = ("periventricular", "juxtacortical", "infratentorial")
#: Keys of each row of :func:`checklist_rows`, in display order.
CHECKLIST_COLUMNS = ("item", "satisfied", "lesions", "note")
#: Areas needed for DIS (out of the four areas of McDonald 2017).
_MIN_AREAS = 2

_CITATION = "McDonald 2017 (Thompson et al., Lancet Neurol 2018;17:162-173)"
_NOTE_CORD = ("Spinal cord (the fourth DIS area) is not visible on brain MRI and was not "
              "assessed.")
_NOTE_SYMPTOMATIC = ("Symptomatic and asymptomatic lesions both count (2017 revision; the 2010 "
                     "criteria excluded symptomatic lesions in brainstem or cord syndromes).")
_NOTE_ONE_AREA = ("Only one brain area is involved: a lesion on spinal cord MRI would complete "
                  "DIS.")
_NOTE_AGE = ("In patients over 50 or with vascular risk factors, a single periventricular lesion "
             "is weak evidence; consider requiring more.")
_NOTE_GD = ("Simultaneous gadolinium-enhancing and non-enhancing lesions cannot be assessed "
            "without contrast-enhanced T1.")
_NOTE_OCB = "CSF-specific oligoclonal bands can substitute for DIT (not an MRI finding)."
_NOTE_SUPPORT = ("MRI findings support but do not make the diagnosis: they apply to a typical "
                 "clinically isolated syndrome with no better explanation.")


@dataclass(frozen=True)
class DISResult:
    """Dissemination in space from brain MRI.

    Attributes
    ----------
    areas
        Lesion ids per DIS area (keys :data:`DIS_AREAS`, ids sorted; empty tuple if none).
    n_areas
        Number of areas with at least one lesion (0-3 on brain MRI).
    satisfied
        ``n_areas >= 2``.
    n_deep_white_matter
        Lesions in no DIS area (deep white matter).
    notes
        Caveats to show with the result (spinal cord not assessed, ...).
    """

    areas: dict[str, tuple[int, ...]]
    n_areas: int
    satisfied: bool
    n_deep_white_matter: int = 0
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class DITResult:
    """Dissemination in time from a follow-up brain MRI.

    Attributes
    ----------
    new_lesion_ids
        New T2 lesions on follow-up compared with baseline, sorted.
    satisfied
        At least one new lesion (``False`` when no follow-up exists).
    has_followup
        Whether a follow-up scan was compared with a baseline.
    notes
        Caveats (gadolinium route not assessable, oligoclonal bands, ...).
    """

    new_lesion_ids: tuple[int, ...]
    satisfied: bool
    has_followup: bool = True
    notes: tuple[str, ...] = field(default=())


def _check_id(value: object) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"lesion ids must be integers, got {value!r} ({type(value).__name__})")
    if int(value) < 1:
        raise ValueError(f"lesion ids must be >= 1 (0 is background), got {value!r}")
    return int(value)


def dissemination_in_space(locations: Mapping[int, str]) -> DISResult:
    """McDonald 2017 DIS from brain MRI lesion locations.

    Parameters
    ----------
    locations
        ``lesion_id -> location`` with locations in :data:`ms_core.lesions.location.LOCATIONS`
        (e.g. from :func:`ms_core.lesions.location.classify_lesions`).

    Returns
    -------
    DISResult

    Raises
    ------
    ValueError
        for an unknown location name or a lesion id below 1.
    TypeError
        for a lesion id that is not an integer.

    >>> r = dissemination_in_space({1: "periventricular", 2: "infratentorial"})
    >>> r.satisfied, r.n_areas, r.areas["infratentorial"]
    (True, 2, (2,))
    """
    areas: dict[str, list[int]] = {a: [] for a in DIS_AREAS}
    n_deep = 0
    for lid, loc in locations.items():
        ident = _check_id(lid)
        if loc not in LOCATIONS:
            raise ValueError(f"lesion {lid} has unknown location {loc!r}; use one of {LOCATIONS}")
        if loc in areas:
            areas[loc].append(ident)
        else:
            n_deep += 1
    frozen = {a: tuple(sorted(ids)) for a, ids in areas.items()}
    n_areas = sum(1 for ids in frozen.values() if ids)
    satisfied = n_areas >= _MIN_AREAS
    notes = [_NOTE_CORD, _NOTE_SYMPTOMATIC]
    if n_areas == 1:
        notes.append(_NOTE_ONE_AREA)
    if frozen["periventricular"] and len(frozen["periventricular"]) < 3:
        notes.append(_NOTE_AGE)
    notes.append(_NOTE_SUPPORT)
    return DISResult(areas=frozen, n_areas=n_areas, satisfied=satisfied,
                     n_deep_white_matter=n_deep, notes=tuple(notes))


def dissemination_in_time(new_lesion_ids: Sequence[int], *,
                          has_followup: bool = True) -> DITResult:
    """McDonald 2017 DIT from new T2 lesions on a follow-up MRI.

    Parameters
    ----------
    new_lesion_ids
        Ids of lesions that are new on the follow-up scan compared with baseline (e.g. the
        ``new`` lesions of the longitudinal matching). Duplicates are merged.
    has_followup
        ``False`` when the patient has a single scan: DIT is then not satisfied by MRI.

    Returns
    -------
    DITResult

    Raises
    ------
    ValueError
        for ids below 1, or new lesions given without a follow-up.
    TypeError
        for ids that are not integers.

    >>> dissemination_in_time([3, 3, 7]).new_lesion_ids
    (3, 7)
    >>> dissemination_in_time([]).satisfied
    False
    """
    ids = tuple(sorted({_check_id(i) for i in new_lesion_ids}))
    if ids and not has_followup:
        raise ValueError(f"new lesions {list(ids)} given but has_followup=False; "
                         "new lesions need a follow-up scan")
    notes: list[str] = []
    if not has_followup:
        notes.append("Only one scan: DIT by MRI needs a follow-up scan compared with baseline.")
    elif not ids:
        notes.append("No new T2 lesion on follow-up compared with baseline.")
    notes += [_NOTE_GD, _NOTE_OCB]
    return DITResult(new_lesion_ids=ids, satisfied=bool(ids), has_followup=has_followup,
                     notes=tuple(notes))


def _ids_text(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


def checklist_rows(dis: DISResult, dit: DITResult | None = None) -> list[dict[str, object]]:
    """The McDonald 2017 MRI checklist as table rows for the app.

    Each row has the keys :data:`CHECKLIST_COLUMNS`: ``item`` (str), ``satisfied`` (``True``,
    ``False`` or ``None`` for "not assessable on brain MRI"), ``lesions`` (comma-separated ids,
    or "" ) and ``note`` (str). Without ``dit`` the DIT rows say that no follow-up was given.

    >>> rows = checklist_rows(dissemination_in_space({1: "periventricular"}))
    >>> [r["satisfied"] for r in rows][:5]
    [True, False, False, None, False]
    """
    rows: list[dict[str, object]] = []
    for area in DIS_AREAS:
        ids = dis.areas.get(area, ())
        rows.append({"item": f"DIS: {DISPLAY_NAMES[area]} (≥ 1 T2 lesion)",
                     "satisfied": bool(ids), "lesions": _ids_text(ids), "note": ""})
    rows.append({"item": "DIS: spinal cord (≥ 1 T2 lesion)", "satisfied": None, "lesions": "",
                 "note": "not visible on brain MRI"})
    rows.append({"item": "DIS: ≥ 1 lesion in ≥ 2 of 4 areas", "satisfied": dis.satisfied,
                 "lesions": "", "note": f"{dis.n_areas} of 3 brain areas; {_CITATION}"})
    if dit is None:
        dit_row: dict[str, object] = {"satisfied": None, "lesions": "",
                                      "note": "no follow-up scan compared"}
    elif not dit.has_followup:
        dit_row = {"satisfied": False, "lesions": "", "note": "only one scan"}
    else:
        dit_row = {"satisfied": dit.satisfied, "lesions": _ids_text(dit.new_lesion_ids),
                   "note": "compared with baseline"}
    rows.append({"item": "DIT: new T2 lesion on follow-up vs baseline", **dit_row})
    rows.append({"item": "DIT: simultaneous Gd-enhancing and non-enhancing lesions",
                 "satisfied": None, "lesions": "", "note": "needs contrast-enhanced T1"})
    rows.append({"item": "DIT substitute: CSF-specific oligoclonal bands", "satisfied": None,
                 "lesions": "", "note": "not an MRI finding"})
    return rows
