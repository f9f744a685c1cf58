"""One patient's course over all visits, as tables ready to plot.

Pure functions: they take the patient's :class:`~ms_core.foundation.domain.Visit` objects (sorted by
date, as :func:`ms_core.study.layout.load_study` returns them) and, optionally, each visit's
``truth.json`` already read, and return pandas DataFrames. Nothing here reads files or plots.

Conventions
-----------
* The ``dmt`` of a visit is the therapy from that visit onward: a period starts at the first
  visit with a given DMT and ends at the first visit with another one (or at the last visit).
* Missing values stay missing: EDSS ``NaN``, relapse counts ``<NA>``, volumes ``NaN``. A visit
  with no DMT recorded belongs to a period labelled :data:`NO_DMT`.
* Every row says where its numbers come from (``clinical_source``, ``truth_source``): the
  study's sessions table for EDSS, relapses and DMT, and the synthetic study's ``truth.json``
  for the ground-truth volumes (paths relative to the study folder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ms_core.foundation.domain import DAYS_PER_YEAR, Visit
from ms_core.study.derivatives import truth_dir

__all__ = [
    "NO_DMT",
    "NO_TRUTH",
    "PERIOD_COLUMNS",
    "VISIT_COLUMNS",
    "clinical_source",
    "dmt_periods",
    "has_volumes",
    "relapse_visits",
    "truth_source",
    "visit_table",
]

#: Label of a period whose visits have no DMT recorded (empty, ``none`` or ``n/a``).
NO_DMT = "none recorded"
#: ``truth_source`` of a visit without ground truth.
NO_TRUTH = "no ground truth (no truth.json)"
#: Columns of :func:`visit_table`.
VISIT_COLUMNS = (
    "session_id", "acq_date", "years_from_first", "edss", "edss_step", "relapses_since_last",
    "dmt", "lesion_volume_ml", "brain_volume_ml", "lesion_count", "new_or_enlarging",
    "clinical_source", "truth_source",
)
#: Columns of :func:`dmt_periods`.
PERIOD_COLUMNS = ("dmt", "start", "end", "first_session", "last_session", "n_visits")
#: truth.json fields copied into :func:`visit_table` (all optional).
_TRUTH_FIELDS = ("lesion_volume_ml", "brain_volume_ml", "lesion_count", "new_or_enlarging")


def _dmt_label(visit: Visit) -> str:
    return visit.dmt if visit.dmt else NO_DMT


def _number(value: Any) -> float:
    """A truth.json number as float, NaN when missing or not numeric."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def clinical_source(visit: Visit) -> str:
    """Where a visit's EDSS, relapse count and DMT come from: the study's sessions table.

    The app reads them as entered with the study (rated by the study's clinicians; generated
    with the synthetic demo study) and computes none of them.

    >>> import datetime as dt
    >>> clinical_source(Visit("sub-01", "ses-01", dt.date(2020, 1, 1), 2.0, 0, None, None, None))
    'sub-01/sub-01_sessions.tsv (as entered with the study, not computed by the app)'
    """
    pid = visit.participant_id
    return f"{pid}/{pid}_sessions.tsv (as entered with the study, not computed by the app)"


def truth_source(visit: Visit, truth: Mapping[str, Any] | None) -> str:
    """Where a visit's ground-truth volumes come from: its ``truth.json``, or :data:`NO_TRUTH`.

    Only synthetic studies have one: the demo generator (:mod:`ms_core.synthetic.demo`) writes the
    volumes it drew, so they are known, not measured.

    >>> import datetime as dt
    >>> v = Visit("sub-01", "ses-01", dt.date(2020, 1, 1), None, None, None, None, None)
    >>> truth_source(v, {"brain_volume_ml": 1100.0})
    'demo ground truth (known by construction): derivatives/ground_truth/sub-01/ses-01/truth.json'
    """
    if truth is None:
        return NO_TRUTH
    path = (truth_dir(Path(), visit.participant_id, visit.session_id) / "truth.json").as_posix()
    return f"demo ground truth (known by construction): {path}"


def _empty(columns: Sequence[str], dtypes: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in columns})


def visit_table(visits: Sequence[Visit],
                truths: Mapping[str, Mapping[str, Any] | None] | None = None) -> pd.DataFrame:
    """One row per visit, in date order, with clinical data and ground-truth volumes.

    Parameters
    ----------
    visits
        One patient's visits (any order; rows come out sorted by date, then session id).
    truths
        Optional session_id -> parsed ``truth.json`` (or ``None`` when the visit has none).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`VISIT_COLUMNS`: ``acq_date`` datetime64, ``years_from_first`` float
        (years since the first visit), ``edss`` float (NaN when missing), ``edss_step`` (EDSS
        carried forward from the last visit that had one, for drawing a step line and placing
        markers), ``relapses_since_last`` Int64, ``dmt`` str, the truth fields
        ``lesion_volume_ml``, ``brain_volume_ml`` (ml), ``lesion_count``,
        ``new_or_enlarging`` as float (NaN without truth), and where they come from:
        ``clinical_source`` (:func:`clinical_source`) and ``truth_source``
        (:func:`truth_source`).

    >>> import datetime as dt
    >>> v = [Visit("sub-01", "ses-01", dt.date(2020, 1, 1), 2.0, 0, "A", None, None),
    ...      Visit("sub-01", "ses-02", dt.date(2021, 1, 1), None, 2, "A", None, None)]
    >>> visit_table(v)[["edss", "edss_step", "relapses_since_last"]].to_dict("list")
    {'edss': [2.0, nan], 'edss_step': [2.0, 2.0], 'relapses_since_last': [0, 2]}
    """
    dtypes = {"acq_date": "datetime64[ns]", "relapses_since_last": "Int64", "dmt": "str",
              "session_id": "str", "clinical_source": "str", "truth_source": "str"}
    dtypes.update({c: "float64" for c in ("years_from_first", "edss", "edss_step",
                                           *_TRUTH_FIELDS)})
    if not visits:
        return _empty(VISIT_COLUMNS, dtypes)
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    first = ordered[0].acq_date
    truths = truths or {}
    rows = []
    for v in ordered:
        truth = truths.get(v.session_id)
        rows.append({
            "session_id": v.session_id,
            "acq_date": pd.Timestamp(v.acq_date),
            "years_from_first": (v.acq_date - first).days / DAYS_PER_YEAR,
            "edss": float("nan") if v.edss is None else float(v.edss),
            "relapses_since_last": v.relapses_since_last,
            "dmt": _dmt_label(v),
            **{f: _number((truth or {}).get(f)) for f in _TRUTH_FIELDS},
            "clinical_source": clinical_source(v),
            "truth_source": truth_source(v, truth),
        })
    table = pd.DataFrame(rows)
    table["edss_step"] = table["edss"].ffill()
    return table[list(VISIT_COLUMNS)].astype(dtypes)


def dmt_periods(visits: Sequence[Visit]) -> pd.DataFrame:
    """Therapy periods: runs of consecutive visits with the same DMT.

    A period starts at its first visit and ends where the next period starts; the last period
    ends at the last visit (so a DMT first seen at the last visit gives a zero-length period).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PERIOD_COLUMNS`: ``dmt`` str, ``start``/``end`` datetime64,
        ``first_session``/``last_session`` (the visits recorded with that DMT) and
        ``n_visits`` int. Empty (with those columns) when there are no visits.

    >>> import datetime as dt
    >>> v = [Visit("sub-01", f"ses-0{i}", dt.date(2020 + i, 1, 1), None, None, d, None, None)
    ...      for i, d in enumerate(["A", "A", "B"], start=1)]
    >>> dmt_periods(v)[["dmt", "start", "end", "n_visits"]].astype(str).values.tolist()
    [['A', '2021-01-01', '2023-01-01', '2'], ['B', '2023-01-01', '2023-01-01', '1']]
    """
    dtypes = {"dmt": "str", "start": "datetime64[ns]", "end": "datetime64[ns]",
              "first_session": "str", "last_session": "str", "n_visits": "int64"}
    if not visits:
        return _empty(PERIOD_COLUMNS, dtypes)
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    runs: list[list[Visit]] = []
    for v in ordered:
        if runs and _dmt_label(runs[-1][-1]) == _dmt_label(v):
            runs[-1].append(v)
        else:
            runs.append([v])
    rows = []
    for i, run in enumerate(runs):
        end = runs[i + 1][0].acq_date if i + 1 < len(runs) else run[-1].acq_date
        rows.append({
            "dmt": _dmt_label(run[0]), "start": pd.Timestamp(run[0].acq_date),
            "end": pd.Timestamp(end), "first_session": run[0].session_id,
            "last_session": run[-1].session_id, "n_visits": len(run),
        })
    return pd.DataFrame(rows, columns=list(PERIOD_COLUMNS)).astype(dtypes)


def relapse_visits(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a :func:`visit_table` with at least one relapse since the previous visit.

    >>> t = pd.DataFrame({"relapses_since_last": pd.array([0, None, 3], dtype="Int64")})
    >>> relapse_visits(t).index.tolist()
    [2]
    """
    counts = table["relapses_since_last"].astype("Int64")
    return table[counts.fillna(0) > 0]


def has_volumes(table: pd.DataFrame) -> bool:
    """True when any visit of a :func:`visit_table` has a lesion or brain volume.

    >>> has_volumes(visit_table([]))
    False
    """
    if table.empty:
        return False
    return bool(table[["lesion_volume_ml", "brain_volume_ml"]].notna().to_numpy().any())
