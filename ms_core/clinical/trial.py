"""Clinical-trial end points of a study: per patient, per arm, and per-visit QC of the inputs.

Entry points: :func:`patient_endpoints` and :func:`study_endpoints` (follow-up years, relapses,
new or enlarging T2 lesions and PBVC per year, confirmed disability worsening, NEDA-3; each
count from one source, measured or ground truth, never mixed within a patient), :func:`arm_summary`
(rates with exact Poisson intervals, NEDA-3 with Wilson intervals, Kaplan-Meier time to
worsening) and :func:`study_qc_table` (protocol changes, registration quality, uncertain
segmentations). Definitions and references: ``docs/cohort.md``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from ms_core.clinical.patient_features import AtrophyReader
from ms_core.clinical.statistics import (
    KaplanMeier,
    finite_number,
    kaplan_meier,
    poisson_rate_ci,
    wilson_ci,
)
from ms_core.foundation.domain import DAYS_PER_YEAR, Participant, Visit
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json
from ms_core.longitudinal.measurements import measured_table
from ms_core.longitudinal.outcomes import confirmed_worsening
from ms_core.longitudinal.tracking import TrackParams
from ms_core.study.derivatives import truth_dir
from ms_core.study.layout import Study

__all__ = [
    "ARM_COLUMNS",
    "GROUND_TRUTH",
    "MEASURED",
    "NO_ARM",
    "NO_SOURCE",
    "PATIENT_COLUMNS",
    "SOURCES",
    "SourceChoice",
    "TrialEndpoints",
    "arm_summary",
    "filter_patients",
    "km_by_arm",
    "neda3",
    "patient_endpoints",
    "patient_table",
    "study_endpoints",
]

log = logging.getLogger(__name__)

#: Source label of values measured by this pipeline from the images.
MEASURED: Final = "measured"
#: Source label of values read from a synthetic study's ground truth (``truth.json``).
GROUND_TRUTH: Final = "ground truth"
#: Source label of a patient value that neither source gives for every interval.
NO_SOURCE = "none"
#: Source choices of :func:`study_endpoints`: ``"auto"`` takes the measured values of a patient
#: when every interval is measured and the ground truth otherwise; the other two take only that
#: source (patients without it get NaN).
SOURCES = ("auto", MEASURED, GROUND_TRUTH)
SourceChoice = Literal["auto", "measured", "ground truth"]
#: Arm label of participants without a ``trial_arm``.
NO_ARM = "no arm"
#: Columns of :func:`patient_table`.
PATIENT_COLUMNS = (
    "participant_id", "trial_arm", "ms_type", "sex", "n_visits", "first_visit",
    "followup_years", "relapses", "relapses_per_year", "new_enlarging",
    "new_enlarging_per_year", "lesion_source", "pbvc_pct", "pbvc_pct_per_year", "pbvc_source",
    "baseline_edss", "cdw_event", "cdw_time_years", "neda3", "notes",
)
#: Columns of :func:`arm_summary`.
ARM_COLUMNS = (
    "trial_arm", "n_patients", "patient_years",
    "new_enlarging", "new_enlarging_patient_years", "new_enlarging_per_py",
    "new_enlarging_ci_lo", "new_enlarging_ci_hi", "lesion_source",
    "neda3_n", "neda3_evaluable", "neda3_prop", "neda3_ci_lo", "neda3_ci_hi",
    "pbvc_n", "pbvc_mean_pct_per_year", "pbvc_sd_pct_per_year", "pbvc_source",
    "cdw_n", "cdw_events", "cdw_landmark_years", "cdw_free", "cdw_free_ci_lo", "cdw_free_ci_hi",
    "cdw_median_years",
)


# ============================================================================== NEDA-3
def neda3(relapse_free: bool | None, no_new_t2: bool | None, no_cdw: bool | None
          ) -> bool | None:
    """NEDA-3 from its three components (``None`` = unknown), in three-valued logic.

    Activity in any component rules NEDA-3 out even when another is unknown.

    >>> neda3(True, True, True), neda3(True, False, None), neda3(True, None, True)
    (True, False, None)
    """
    parts = (relapse_free, no_new_t2, no_cdw)
    if any(p is False for p in parts):
        return False
    if any(p is None for p in parts):
        return None
    return True


# ============================================================================== per patient
def _years(a: Visit, b: Visit) -> float:
    return (b.acq_date - a.acq_date).days / DAYS_PER_YEAR


def _pick(keys: Sequence[str], measured: Mapping[str, float | None],
          truth: Mapping[str, float | None], choice: SourceChoice
          ) -> tuple[list[float] | None, str]:
    """The per-interval values of one source, complete for ``keys``, and that source's label."""
    if choice not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, not {choice!r}")
    if not keys:
        return None, NO_SOURCE
    for label, values in ((MEASURED, measured), (GROUND_TRUTH, truth)):
        if choice not in ("auto", label):
            continue
        got = [values.get(k) for k in keys]
        if all(v is not None for v in got):
            return [float(v) for v in got if v is not None], label
    return None, NO_SOURCE


def _truth_pbvc(visits: Sequence[Visit], truths: Mapping[str, Mapping[str, Any] | None]
                ) -> dict[str, float | None]:
    """Interval PBVC (%) from ground-truth brain volumes, keyed by the later visit."""
    out: dict[str, float | None] = {}
    for a, b in itertools.pairwise(visits):
        va = finite_number((truths.get(a.session_id) or {}).get("brain_volume_ml"))
        vb = finite_number((truths.get(b.session_id) or {}).get("brain_volume_ml"))
        out[b.session_id] = 100.0 * (vb / va - 1.0) if va and vb is not None else None
    return out


def _cdw(visits: Sequence[Visit], confirm_years: float
         ) -> tuple[bool | None, float, float, str | None]:
    """(event or None, time in years, baseline EDSS, note) of one patient's EDSS series."""
    times = np.array([_years(visits[0], v) for v in visits])
    edss = np.array([np.nan if v.edss is None else v.edss for v in visits], dtype=np.float64)
    base = float(edss[0])
    if len(visits) < 2 or times[-1] <= 0:
        return None, math.nan, base, "no follow-up visit"
    if math.isnan(base):
        return None, math.nan, base, "baseline EDSS not rated"
    try:
        result = confirmed_worsening(times, edss, horizon_years=float(times[-1]),
                                     confirm_years=confirm_years)
    except ValueError as e:
        return None, math.nan, base, f"CDW not evaluable ({e})"
    if result.event and result.event_time_years is not None:
        return True, result.event_time_years, base, None
    last_rated = float(times[~np.isnan(edss)][-1])
    if last_rated <= 0:
        return None, math.nan, base, "no rated EDSS after baseline"
    return False, last_rated, base, None


def patient_endpoints(participant: Participant, visits: Sequence[Visit], *,
                      truths: Mapping[str, Mapping[str, Any] | None] | None = None,
                      measured_new_enlarging: Mapping[str, float | None] | None = None,
                      measured_pbvc_pct: Mapping[str, float | None] | None = None,
                      source: SourceChoice = "auto", confirm_years: float = 0.5
                      ) -> dict[str, Any]:
    """Trial end points of one patient (definitions in the module docstring).

    Parameters
    ----------
    participant
        The patient (arm, MS type, sex).
    visits
        The patient's visits (any order; sorted by date here).
    truths
        session_id -> parsed ``truth.json`` (``None`` or absent: no ground truth).
    measured_new_enlarging
        session_id of a follow-up visit -> new + enlarging lesions measured against the
        previous visit (``None``/absent: not measured).
    measured_pbvc_pct
        session_id of a follow-up visit -> measured PBVC (%) since the previous visit, *not*
        annualised (``None``/absent: not measured).
    source
        Which source the lesion and PBVC end points use (:data:`SOURCES`).
    confirm_years
        Confirmation window of the disability worsening, in years (0.5: 24 weeks).

    Returns
    -------
    dict
        One row of :data:`PATIENT_COLUMNS`; unknown numbers are NaN, unknown booleans None.

    >>> import datetime as dt
    >>> p = Participant("sub-01", "F", 1980, "RR", 2005, "control")
    >>> v = [Visit("sub-01", f"ses-0{i + 1}", dt.date(2020 + i, 1, 1), e, r, None, None, None)
    ...      for i, (e, r) in enumerate([(2.0, 0), (2.0, 0), (2.0, 1)])]
    >>> row = patient_endpoints(p, v, truths={"ses-02": {"new_or_enlarging": 0},
    ...                                       "ses-03": {"new_or_enlarging": 2}})
    >>> row["relapses"], row["new_enlarging"], row["lesion_source"], row["neda3"]
    (1.0, 2.0, 'ground truth', False)
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    truths = truths or {}
    notes: list[str] = []
    row: dict[str, Any] = {
        "participant_id": participant.participant_id,
        "trial_arm": participant.trial_arm or NO_ARM,
        "ms_type": participant.ms_type, "sex": participant.sex, "n_visits": len(ordered),
        "first_visit": pd.Timestamp(ordered[0].acq_date) if ordered else pd.NaT,
    }
    followups = ordered[1:]
    years = _years(ordered[0], ordered[-1]) if ordered else 0.0
    row["followup_years"] = years

    def per_year(total: float | None) -> float:
        return total / years if total is not None and years > 0 else math.nan

    counts = [v.relapses_since_last for v in followups]
    relapses = float(sum(c for c in counts if c is not None)) if followups else None
    if any(c is None for c in counts):
        relapses = None
        notes.append("relapse count missing at a follow-up visit")
    relapse_free = (False if any(c for c in counts if c is not None) else
                    None if relapses is None else True)
    row["relapses"] = math.nan if relapses is None else relapses
    row["relapses_per_year"] = per_year(relapses)

    keys = [v.session_id for v in followups]
    truth_counts = {k: finite_number((truths.get(k) or {}).get("new_or_enlarging")) for k in keys}
    lesions, lesion_source = _pick(keys, measured_new_enlarging or {}, truth_counts, source)
    new_t2 = float(sum(lesions)) if lesions is not None else None
    row.update(new_enlarging=math.nan if new_t2 is None else new_t2,
               new_enlarging_per_year=per_year(new_t2), lesion_source=lesion_source)
    if followups and lesions is None:
        notes.append(f"new/enlarging lesions not available from source {source!r}")

    pbvcs, pbvc_source = _pick(keys, measured_pbvc_pct or {}, _truth_pbvc(ordered, truths),
                               source)
    pbvc = (100.0 * (float(np.prod([1.0 + p / 100.0 for p in pbvcs])) - 1.0)
            if pbvcs is not None else None)
    row.update(pbvc_pct=math.nan if pbvc is None else pbvc, pbvc_pct_per_year=per_year(pbvc),
               pbvc_source=pbvc_source)

    event, time, base, note = _cdw(ordered, confirm_years) if ordered else (
        None, math.nan, math.nan, "no visits")
    if note:
        notes.append(note)
    row.update(baseline_edss=base, cdw_event=event, cdw_time_years=time)
    no_new_t2 = None if new_t2 is None else new_t2 == 0
    row["neda3"] = (neda3(relapse_free, no_new_t2, None if event is None else not event)
                    if followups else None)
    row["notes"] = "; ".join(notes)
    return row


def patient_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows of :func:`patient_endpoints` as a DataFrame with :data:`PATIENT_COLUMNS`.

    ``cdw_event`` and ``neda3`` are pandas ``boolean`` (``<NA>`` = unknown), ``n_visits`` int64,
    ``first_visit`` datetime64, the numbers float64.
    """
    table = pd.DataFrame(list(rows), columns=list(PATIENT_COLUMNS))
    floats = ("followup_years", "relapses", "relapses_per_year", "new_enlarging",
              "new_enlarging_per_year", "pbvc_pct", "pbvc_pct_per_year", "baseline_edss",
              "cdw_time_years")
    dtypes: dict[str, Any] = {c: "float64" for c in floats}
    dtypes.update({"n_visits": "int64", "cdw_event": "boolean", "neda3": "boolean",
                   "first_visit": "datetime64[ns]"})
    for c in ("participant_id", "trial_arm", "ms_type", "sex", "lesion_source", "pbvc_source",
              "notes"):
        dtypes[c] = "object"
    return table.astype(dtypes)


# ============================================================================== study
@dataclass(frozen=True, eq=False)
class TrialEndpoints:
    """Per-patient end points of a study and the problems met while reading its files."""

    patients: pd.DataFrame
    problems: tuple[str, ...] = ()


def _read_truths(root: Path, visits: Sequence[Visit], problems: list[str]
                 ) -> dict[str, Mapping[str, Any] | None]:
    out: dict[str, Mapping[str, Any] | None] = {}
    for v in visits:
        path = truth_dir(root, v.participant_id, v.session_id) / "truth.json"
        out[v.session_id] = None
        if not path.exists():
            continue
        try:
            truth = read_json(path)
        except InputError as e:
            problems.append(f"ground truth skipped: {e}")
            continue
        if isinstance(truth, dict):
            out[v.session_id] = truth
        else:
            problems.append(f"ground truth skipped: {path}: expected a JSON object")
    return out


def _measured_lesions(root: Path, visits: Sequence[Visit], params: TrackParams,
                      problems: list[str]) -> dict[str, float | None]:
    try:
        table = measured_table(root, visits, params)
    except InputError as e:
        problems.append(f"measurements skipped: {e}")
        return {}
    return {str(s): finite_number(n) for s, n in zip(table.session_id, table.new_or_enlarging,
                                              strict=True)}


def _measured_pbvc(root: Path, visits: Sequence[Visit], atrophy: AtrophyReader | None,
                   problems: list[str]) -> dict[str, float | None]:
    """The single place that reads measured atrophy: interval PBVC (%) by later visit."""
    if atrophy is None:
        return {}
    out: dict[str, float | None] = {}
    for a, b in itertools.pairwise(visits):
        try:
            stored = atrophy(root, a, b)
        except InputError as e:
            problems.append(f"atrophy skipped: {e}")
            stored = None
        rate = finite_number((stored or {}).get("pbvc_pct_per_year"))
        out[b.session_id] = None if rate is None else rate * _years(a, b)
    return out


def study_endpoints(study: Study, *, source: SourceChoice = "auto",
                    confirm_years: float = 0.5, atrophy: AtrophyReader | None = None,
                    params: TrackParams = TrackParams()) -> TrialEndpoints:
    """Per-patient end points of every participant of ``study`` (one row each, study order).

    Reads each visit's ``truth.json`` (when present), the pipeline's current measurements
    (:func:`ms_core.longitudinal.measurements.measured_table`) and, through ``atrophy``, the stored
    atrophy results. An unreadable file becomes a problem message (naming it) and that value
    unknown.

    Parameters
    ----------
    study
        A loaded study.
    source, confirm_years
        As in :func:`patient_endpoints`.
    atrophy
        Reader of stored atrophy results (:data:`~ms_core.clinical.patient_features.AtrophyReader`);
        ``None``: PBVC comes from the ground truth only.
    params
        Settings whose stored segmentations and comparisons count as current.
    """
    problems: list[str] = []
    rows = []
    for pid, participant in study.participants.items():
        visits = study.visits.get(pid, ())
        if not visits:
            problems.append(f"{pid}: no visits; left out of the end points")
            continue
        rows.append(patient_endpoints(
            participant, visits, truths=_read_truths(study.root, visits, problems),
            measured_new_enlarging=_measured_lesions(study.root, visits, params, problems),
            measured_pbvc_pct=_measured_pbvc(study.root, visits, atrophy, problems),
            source=source, confirm_years=confirm_years))
    return TrialEndpoints(patient_table(rows), tuple(problems))


def filter_patients(patients: pd.DataFrame, *, arms: Iterable[str] | None = None,
                    ms_types: Iterable[str] | None = None, sexes: Iterable[str] | None = None
                    ) -> pd.DataFrame:
    """Rows of a :func:`patient_table` whose arm, MS type and sex are in the given sets
    (``None``: no filter on that column)."""
    keep = np.ones(len(patients), dtype=bool)
    for column, allowed in (("trial_arm", arms), ("ms_type", ms_types), ("sex", sexes)):
        if allowed is not None:
            keep &= patients[column].isin(list(allowed)).to_numpy()
    return patients[keep]


# ============================================================================== per arm
def _source_label(sources: pd.Series) -> str:
    counts = sources[sources != NO_SOURCE].value_counts()
    if counts.empty:
        return NO_SOURCE
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{s} ({n})" for s, n in counts.items())


def km_by_arm(patients: pd.DataFrame, *, alpha: float = 0.05) -> dict[str, KaplanMeier]:
    """Kaplan-Meier estimate of time to confirmed disability worsening, per arm (sorted).

    Patients whose ``cdw_event`` is unknown are left out.
    """
    out: dict[str, KaplanMeier] = {}
    for arm, group in patients.groupby("trial_arm", sort=True):
        known = group[group["cdw_event"].notna()]
        out[str(arm)] = kaplan_meier(known["cdw_time_years"].to_numpy(dtype=np.float64),
                                     known["cdw_event"].to_numpy(dtype=bool), alpha=alpha)
    return out


def arm_summary(patients: pd.DataFrame, *, alpha: float = 0.05, landmark_years: float = 2.0
                ) -> pd.DataFrame:
    """One row per trial arm (sorted) with the pooled end points (:data:`ARM_COLUMNS`).

    Parameters
    ----------
    patients
        A :func:`patient_table` (possibly filtered).
    alpha
        1 - confidence level of every interval.
    landmark_years
        Time at which the Kaplan-Meier CDW-free probability is reported (``cdw_free``).

    Notes
    -----
    * ``patient_years``: total follow-up of the arm; ``new_enlarging_patient_years``: that of the
      patients whose lesion count is known, the exposure of ``new_enlarging_per_py``.
    * ``lesion_source``/``pbvc_source`` name the source; an arm whose patients use different
      sources lists each with its number of patients, e.g. ``"measured (3), ground truth (2)"``.
    * ``neda3_prop`` = ``neda3_n`` / ``neda3_evaluable`` (patients whose NEDA-3 is known).
    """
    rows = []
    kms = km_by_arm(patients, alpha=alpha)
    for arm, g in patients.groupby("trial_arm", sort=True):
        lesion_known = g[g["new_enlarging"].notna()]
        lesions = float(lesion_known["new_enlarging"].sum())
        exposure = float(lesion_known["followup_years"].sum())
        rate = lesions / exposure if exposure > 0 else math.nan
        r_lo, r_hi = (poisson_rate_ci(lesions, exposure, alpha=alpha) if exposure > 0
                      else (math.nan, math.nan))
        neda = g["neda3"].dropna()
        n_neda, n_eval = int(neda.astype(bool).sum()), len(neda)
        p_lo, p_hi = wilson_ci(n_neda, n_eval, alpha=alpha)
        pbvc = g["pbvc_pct_per_year"].dropna()
        km = kms[str(arm)]
        s, s_lo, s_hi = km.at(landmark_years)
        rows.append({
            "trial_arm": str(arm), "n_patients": len(g),
            "patient_years": float(g["followup_years"].sum()),
            "new_enlarging": lesions, "new_enlarging_patient_years": exposure,
            "new_enlarging_per_py": rate, "new_enlarging_ci_lo": r_lo,
            "new_enlarging_ci_hi": r_hi, "lesion_source": _source_label(g["lesion_source"]),
            "neda3_n": n_neda, "neda3_evaluable": n_eval,
            "neda3_prop": n_neda / n_eval if n_eval else math.nan,
            "neda3_ci_lo": p_lo, "neda3_ci_hi": p_hi,
            "pbvc_n": len(pbvc),
            "pbvc_mean_pct_per_year": float(pbvc.mean()) if len(pbvc) else math.nan,
            "pbvc_sd_pct_per_year": float(pbvc.std(ddof=1)) if len(pbvc) > 1 else math.nan,
            "pbvc_source": _source_label(g["pbvc_source"]),
            "cdw_n": km.n_patients, "cdw_events": km.total_events,
            "cdw_landmark_years": float(landmark_years), "cdw_free": s,
            "cdw_free_ci_lo": s_lo, "cdw_free_ci_hi": s_hi,
            "cdw_median_years": km.median_years(),
        })
    return pd.DataFrame(rows, columns=list(ARM_COLUMNS))


