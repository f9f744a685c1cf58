"""The prognosis feature table of one patient, built from the study's clinical tables and the
pipeline's stored measurements (segmentation, tracking, atrophy).

Only *current* measurements are used (same input files and settings, see
:mod:`ms_core.longitudinal.measurements`); anything not measured yet stays NaN and is imputed by the
model, and :func:`patient_feature_table` says which columns were measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ms_core.foundation.domain import DAYS_PER_YEAR, Participant, Visit
from ms_core.lesions.features import PROGNOSIS_FEATURES, visit_features
from ms_core.longitudinal.atrophy import read_atrophy
from ms_core.longitudinal.measurements import interval_changes, visit_lesion_table
from ms_core.longitudinal.tracking import TrackParams

__all__ = ["MRI_FEATURES", "AtrophyReader", "patient_feature_table"]

#: Features that come from the images (the rest come from the clinical tables).
MRI_FEATURES = tuple(f for f in PROGNOSIS_FEATURES if f not in (
    "age_years", "sex_male", "disease_duration_years", "edss_baseline", "relapses_2y",
    "dmt_efficacy", "progressive_course"))
#: ``(root, previous visit or None, visit) -> {"pbvc_pct_per_year", "bpf", "gm_fraction",
#: "wm_fraction"}`` (values may be None), or None when atrophy was not measured.
AtrophyReader = Callable[[Path, Visit | None, Visit], Mapping[str, float | None] | None]


def patient_feature_table(root: Path, participant: Participant, visits: Sequence[Visit],
                          params: TrackParams = TrackParams(),
                          atrophy: AtrophyReader | None = read_atrophy) -> pd.DataFrame:
    """One row per visit (date order): ``session_id``, :data:`PROGNOSIS_FEATURES` and
    ``mri_measured`` (how many of :data:`MRI_FEATURES` are not NaN).

    ``atrophy`` reads the stored brain-volume measurements of a visit (default
    :func:`ms_core.longitudinal.atrophy.read_atrophy`); with ``None`` the tissue and PBVC columns
    stay NaN.
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    rows = []
    for prev, visit in itertools.pairwise([None, *ordered]):
        assert visit is not None
        lesions = visit_lesion_table(root, visit, params.segmentation)
        new_enl = years = None
        if prev is not None:
            changes = interval_changes(root, prev, visit, params)
            if changes is not None:
                new_enl = float(changes.status.isin(["new", "enlarging"]).sum())
                years = (visit.acq_date - prev.acq_date).days / DAYS_PER_YEAR
        measured = atrophy(root, prev, visit) if atrophy is not None else None
        pbvc = measured.get("pbvc_pct_per_year") if measured else None
        tissue = {k: v for k, v in (measured or {}).items() if v is not None}
        row = visit_features(participant, ordered, visit, lesions=lesions,
                             new_enlarging=new_enl, interval_years=years,
                             pbvc_pct_per_year=pbvc, tissue=tissue or None)
        rows.append({"session_id": visit.session_id, **row})
    table = pd.DataFrame(rows, columns=["session_id", *PROGNOSIS_FEATURES])
    table["mri_measured"] = table[list(MRI_FEATURES)].notna().sum(axis=1)
    return table
