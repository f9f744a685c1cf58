"""Confirmed disability worsening (CDW) from a series of EDSS visits.

Definition (the usual convention of trials and registries, e.g. MSBase: Kalincik et al., Brain
2015; the +1.0 / +0.5 split at 5.5 is discussed by Kragt et al., Mult Scler 2006), with a fixed
baseline:

* the baseline is the EDSS at the landmark visit, time 0; visits before it (negative times) are
  ignored, a visit whose EDSS is NaN (not rated) is skipped;
* the worsening threshold (:func:`cdw_threshold`) is +1.5 from a baseline of 0, +1.0 from 1.0 to
  5.5 and +0.5 above 5.5;
* a visit at ``t`` with ``0 < t <= horizon_years`` and ``EDSS >= baseline + threshold`` is a
  worsening; it is *confirmed* by the first later visit at least ``confirm_years`` after ``t``
  (0.5 for 24-week, 0.25 for 12-week confirmation) provided every rated EDSS from ``t`` to that
  visit, both included, stays at or above ``baseline + threshold`` (sustained). The confirming
  visit may fall after the horizon. A worsening with no later visit far enough is not an event.

The event is the first confirmed worsening. Times are in years since the landmark visit; they are
compared with a tolerance of :data:`TIME_TOL_YEARS`, so a visit exactly 0.5 years later confirms
a 24-week event. Real visits drift: to accept a window, pass e.g. ``confirm_years=0.45``.

:func:`confirmed_worsening` handles one series, :func:`cdw_table` a long table of many patients
with the same (vectorised) code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "CDW_COLUMNS",
    "EDSS_STEPS",
    "TIME_TOL_YEARS",
    "CdwResult",
    "cdw_table",
    "cdw_threshold",
    "check_edss",
    "confirmed_worsening",
]

#: Valid EDSS scores: 0, 1.0, 1.5, ..., 10 (0.5 does not exist on the scale).
EDSS_STEPS = (0.0, *(1.0 + 0.5 * i for i in range(19)))
#: Tolerance for comparing visit times, in years (about 30 seconds).
TIME_TOL_YEARS = 1e-6
#: Columns of :func:`cdw_table`.
CDW_COLUMNS = ("patient_id", "event", "event_time_years", "confirmed_time_years",
               "baseline_edss", "threshold")


@dataclass(frozen=True)
class CdwResult:
    """Outcome of one EDSS series.

    Attributes
    ----------
    event
        True when a confirmed worsening started within the horizon.
    event_time_years
        Time of the first confirmed worsening visit (None without an event).
    confirmed_time_years
        Time of the visit that confirmed it (None without an event); may exceed the horizon.
    baseline_edss
        EDSS at time 0; None for a series without any rated visit.
    threshold
        Required increase from the baseline (1.5, 1.0 or 0.5); None with ``baseline_edss``.
    """

    event: bool
    event_time_years: float | None
    confirmed_time_years: float | None
    baseline_edss: float | None
    threshold: float | None

    def __post_init__(self) -> None:
        if self.event and (self.event_time_years is None or self.confirmed_time_years is None):
            raise ValueError("an event needs event_time_years and confirmed_time_years")


def check_edss(edss: np.ndarray | Sequence[float], *, where: str = "") -> np.ndarray:
    """EDSS values as float64, NaN kept; raise on any value that is not a valid step.

    Parameters
    ----------
    edss
        (N,) scores; NaN marks a visit without a rating.
    where
        Context for the error message, e.g. ``"patient 'p1'"``.

    >>> check_edss([0, 1.0, 6.5, float("nan")]).tolist()
    [0.0, 1.0, 6.5, nan]
    """
    arr = np.asarray(edss, dtype=np.float64)
    finite = ~np.isnan(arr)
    vals = arr[finite]
    ok = (vals == 0.0) | ((vals >= 1.0) & (vals <= 10.0) & (vals * 2.0 == np.round(vals * 2.0)))
    if not ok.all():
        bad = float(vals[~ok][0])
        at = f" for {where}" if where else ""
        raise ValueError(f"invalid EDSS {bad}{at}: EDSS takes 0, 1.0, 1.5, ..., 10 "
                         "(NaN for a visit without a rating)")
    return arr


def cdw_threshold(baseline_edss: float) -> float:
    """Increase in EDSS that counts as worsening from ``baseline_edss``.

    >>> cdw_threshold(0.0), cdw_threshold(3.5), cdw_threshold(5.5), cdw_threshold(6.0)
    (1.5, 1.0, 1.0, 0.5)
    """
    base = float(check_edss([baseline_edss])[0])
    if math.isnan(base):
        raise ValueError("baseline EDSS is NaN; a threshold needs a rated baseline")
    return float(_thresholds(np.array([base]))[0])


def _thresholds(base: np.ndarray) -> np.ndarray:
    return np.where(base == 0.0, 1.5, np.where(base > 5.5, 0.5, 1.0))


def _check_horizon(horizon_years: float, confirm_years: float) -> None:
    if not (math.isfinite(horizon_years) and horizon_years > 0):
        raise ValueError(f"horizon_years must be > 0, got {horizon_years}")
    if not (math.isfinite(confirm_years) and confirm_years > 0):
        raise ValueError(f"confirm_years must be > 0, got {confirm_years} "
                         "(0.5 for 24-week, 0.25 for 12-week confirmation)")


def _cdw_core(times: np.ndarray, edss: np.ndarray, horizon_years: float,
              confirm_years: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CDW on padded (P, V) arrays: column 0 is the baseline, NaN pads, times increasing.

    Returns ``event`` (P,) bool, and the column of the event and of its confirmation (P,) int
    (meaningless where there is no event).
    """
    n_pat, n_vis = edss.shape
    rated = ~np.isnan(edss)
    base = edss[:, 0]
    limit = base + _thresholds(base)
    above = rated & (edss >= limit[:, None])
    below = rated & ~above
    candidate = above & (times > TIME_TOL_YEARS) & (times <= horizon_years + TIME_TOL_YEARS)
    # [p, i, j]: visit j rated, after i and at least confirm_years later than visit i.
    gap = times[:, None, :] - times[:, :, None]
    later = np.triu(np.ones((n_vis, n_vis), dtype=bool), k=1)
    confirms = later[None] & rated[:, None, :] & (gap >= confirm_years - TIME_TOL_YEARS)
    has_confirm = confirms.any(axis=2)
    first_j = np.argmax(confirms, axis=2)
    # Sustained: no rated visit below the limit from i to first_j, both included.
    n_below = np.cumsum(below, axis=1)
    below_through_j = np.take_along_axis(n_below, first_j, axis=1)
    sustained = below_through_j - (n_below - below) == 0
    ok = candidate & has_confirm & sustained
    event = ok.any(axis=1)
    event_col = np.argmax(ok, axis=1)
    confirm_col = first_j[np.arange(n_pat), event_col]
    return event, event_col, confirm_col


def confirmed_worsening(times_years: np.ndarray | Sequence[float],
                        edss: np.ndarray | Sequence[float], *, horizon_years: float = 2.0,
                        confirm_years: float = 0.5) -> CdwResult:
    """Confirmed disability worsening of one patient (definition in the module docstring).

    Parameters
    ----------
    times_years
        (N,) visit times in years since the landmark visit, strictly increasing; the baseline
        visit is at 0, earlier visits are ignored.
    edss
        (N,) EDSS at those visits (0, 1.0, 1.5, ..., 10); NaN for a visit without a rating.
    horizon_years
        Worsening must start at ``0 < t <= horizon_years``.
    confirm_years
        Minimum time from the worsening to its confirming visit (0.5: 24-week CDW).

    Returns
    -------
    CdwResult
        ``event=False`` and ``baseline_edss=None`` when no visit is rated.

    Raises
    ------
    ValueError
        for series of different lengths, non-finite or non-increasing times, invalid EDSS, or
        rated visits without a rated baseline at time 0.

    EDSS 2.0 at baseline, 3.0 at 6 months, still 3.0 at 12 months: 24-week CDW from 6 months.

    >>> r = confirmed_worsening([0.0, 0.5, 1.0, 1.5], [2.0, 3.0, 3.0, 2.0])
    >>> r.event, r.event_time_years, r.confirmed_time_years, r.threshold
    (True, 0.5, 1.0, 1.0)
    """
    _check_horizon(horizon_years, confirm_years)
    t = np.asarray(times_years, dtype=np.float64).ravel()
    e = check_edss(np.asarray(edss, dtype=np.float64).ravel())
    if t.shape != e.shape:
        raise ValueError(f"times_years has {t.size} visits but edss has {e.size}")
    if not np.isfinite(t).all():
        raise ValueError(f"visit times must be finite, got {float(t[~np.isfinite(t)][0])}")
    if t.size > 1 and not (np.diff(t) > 0).all():
        k = int(np.argmin(np.diff(t) > 0))
        raise ValueError(f"visit times must be strictly increasing, got {float(t[k + 1])} "
                         f"after {float(t[k])} years")
    keep = (t > -TIME_TOL_YEARS) & ~np.isnan(e)
    t, e = t[keep], e[keep]
    if t.size == 0:
        return CdwResult(False, None, None, None, None)
    if abs(float(t[0])) > TIME_TOL_YEARS:
        raise ValueError(f"no rated EDSS at the landmark visit (time 0); the first rated visit is "
                         f"at {float(t[0])} years: shift the times so the baseline is at 0")
    t[0] = 0.0
    event, ev_col, conf_col = _cdw_core(t[None], e[None], horizon_years, confirm_years)
    base = float(e[0])
    thr = float(_thresholds(e[:1])[0])
    if not bool(event[0]):
        return CdwResult(False, None, None, base, thr)
    return CdwResult(True, float(t[ev_col[0]]), float(t[conf_col[0]]), base, thr)


def cdw_table(visits: pd.DataFrame, *, horizon_years: float = 2.0,
              confirm_years: float = 0.5) -> pd.DataFrame:
    """Confirmed disability worsening of every patient in a long visit table.

    Parameters
    ----------
    visits
        One row per visit with columns ``patient_id``, ``time_years`` (since that patient's
        landmark visit) and ``edss`` (NaN: not rated). Rows may come in any order; they are
        sorted by time within each patient.
    horizon_years, confirm_years
        As in :func:`confirmed_worsening`.

    Returns
    -------
    pandas.DataFrame
        :data:`CDW_COLUMNS`, one row per patient in order of first appearance: ``event`` bool,
        times, baseline and threshold float (NaN where :class:`CdwResult` has None).

    Raises
    ------
    ValueError
        for a missing column, a non-finite time, two visits of a patient at the same time,
        invalid EDSS, or a patient with rated visits but no rated baseline at time 0.

    >>> v = pd.DataFrame({"patient_id": ["a"] * 3 + ["b"] * 3,
    ...                   "time_years": [0.0, 1.0, 1.5] * 2,
    ...                   "edss": [0.0, 1.5, 1.5, 6.0, 6.5, 6.0]})
    >>> cdw_table(v)[["patient_id", "event", "event_time_years"]].values.tolist()
    [['a', True, 1.0], ['b', False, nan]]
    """
    _check_horizon(horizon_years, confirm_years)
    missing = [c for c in ("patient_id", "time_years", "edss") if c not in visits.columns]
    if missing:
        raise ValueError(f"visit table lacks columns {missing}; it has {list(visits.columns)}")
    codes, uniques = pd.factorize(visits["patient_id"], sort=False)
    if (codes < 0).any():
        raise ValueError("patient_id has missing values; every visit needs a patient")
    t_all = visits["time_years"].to_numpy(dtype=np.float64)
    e_all = visits["edss"].to_numpy(dtype=np.float64)
    if not np.isfinite(t_all).all():
        k = int(np.argmin(np.isfinite(t_all)))
        raise ValueError(f"time_years must be finite, got {t_all[k]} for patient "
                         f"{uniques[codes[k]]!r}")
    rated = ~np.isnan(e_all)
    valid = ~rated | np.isin(e_all, EDSS_STEPS)
    if not valid.all():
        k = int(np.argmin(valid))
        raise ValueError(f"invalid EDSS {e_all[k]} for patient {uniques[codes[k]]!r} at "
                         f"{t_all[k]} years: EDSS takes 0, 1.0, 1.5, ..., 10 (NaN: not rated)")
    order = np.lexsort((t_all, codes))
    c, t, e = codes[order], t_all[order], e_all[order]
    dup = (np.diff(c) == 0) & (np.abs(np.diff(t)) <= TIME_TOL_YEARS)
    if dup.any():
        k = int(np.argmax(dup))
        raise ValueError(f"patient {uniques[c[k]]!r} has two visits at {t[k]} years")
    keep = (t > -TIME_TOL_YEARS) & ~np.isnan(e)
    c, t, e = c[keep], t[keep], e[keep]
    n_pat = len(uniques)
    counts = np.bincount(c, minlength=n_pat)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_t = np.zeros(n_pat)
    first_t[counts > 0] = t[starts[counts > 0]]
    late = (counts > 0) & (np.abs(first_t) > TIME_TOL_YEARS)
    if late.any():
        k = int(np.argmax(late))
        raise ValueError(f"patient {uniques[k]!r} has no rated EDSS at the landmark visit "
                         f"(time 0); the first rated visit is at {first_t[k]} years")
    n_vis = int(counts.max()) if n_pat else 0
    times = np.full((n_pat, max(n_vis, 1)), np.nan)
    edss = np.full((n_pat, max(n_vis, 1)), np.nan)
    col = np.arange(c.size) - starts[c]
    times[c, col] = t
    edss[c, col] = e
    times[counts > 0, 0] = 0.0
    event, ev_col, conf_col = _cdw_core(times, edss, horizon_years, confirm_years)
    rows = np.arange(n_pat)
    base = edss[:, 0]
    return pd.DataFrame({
        "patient_id": np.asarray(uniques),
        "event": event,
        "event_time_years": np.where(event, times[rows, ev_col], np.nan),
        "confirmed_time_years": np.where(event, times[rows, conf_col], np.nan),
        "baseline_edss": base,
        "threshold": np.where(np.isnan(base), np.nan, _thresholds(base)),
    }, columns=list(CDW_COLUMNS))
