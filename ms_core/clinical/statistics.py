"""Interval estimates and survival for the trial views: Wilson intervals for proportions, exact
Poisson intervals for rates, and the Kaplan-Meier estimator with Greenwood intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "KaplanMeier",
    "finite_number",
    "kaplan_meier",
    "poisson_rate_ci",
    "wilson_ci",
]


# ============================================================================== intervals
def wilson_ci(k: float, n: float, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (Wilson 1927; Newcombe 1998, method 3).

    Parameters
    ----------
    k
        Number of successes, ``0 <= k <= n``.
    n
        Number of trials; ``n = 0`` gives ``(nan, nan)``.
    alpha
        1 - confidence level (0.05: 95 %).

    Returns
    -------
    (lo, hi)
        Bounds in [0, 1].

    >>> [round(x, 4) for x in wilson_ci(81, 263)]
    [0.2553, 0.3662]
    """
    _check_alpha(alpha)
    if not (0 <= k <= n) or not math.isfinite(n):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))



def poisson_rate_ci(count: float, exposure: float, *, alpha: float = 0.05
                    ) -> tuple[float, float]:
    """Exact (Garwood 1936) interval of a Poisson rate ``count / exposure``.

    Parameters
    ----------
    count
        Observed events (a whole number >= 0), e.g. new/enlarging T2 lesions.
    exposure
        Exposure, e.g. patient-years (> 0); 0 gives ``(nan, nan)``.
    alpha
        1 - confidence level.

    Returns
    -------
    (lo, hi)
        Bounds of the rate, in events per unit of exposure (per patient-year).

    >>> [round(x, 3) for x in poisson_rate_ci(5, 1.0)]
    [1.623, 11.668]
    """
    _check_alpha(alpha)
    if count < 0 or not float(count).is_integer():
        raise ValueError(f"count must be a whole number >= 0, got {count}")
    if exposure < 0 or not math.isfinite(exposure):
        raise ValueError(f"exposure must be finite and >= 0, got {exposure}")
    if exposure == 0:
        return (math.nan, math.nan)
    lo = 0.0 if count == 0 else float(stats.chi2.ppf(alpha / 2.0, 2.0 * count)) / 2.0
    hi = float(stats.chi2.ppf(1.0 - alpha / 2.0, 2.0 * count + 2.0)) / 2.0
    return (lo / exposure, hi / exposure)



def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha} (0.05 for a 95 % interval)")



# ============================================================================== Kaplan-Meier
@dataclass(frozen=True, eq=False)
class KaplanMeier:
    """Kaplan-Meier estimate of the event-free probability, one row per distinct time.

    All arrays are (K,) and start with time 0 (survival 1); the other rows are the distinct
    observed times (events and censorings). Survival only drops at times with events.

    Attributes
    ----------
    time_years
        float64, increasing, in years.
    survival
        float64, S(t) just after each time.
    std_err
        float64, Greenwood standard error of S(t).
    ci_lo, ci_hi
        float64 pointwise confidence bounds of S(t) (see :func:`kaplan_meier`).
    n_at_risk
        int64, patients still followed just before each time.
    n_events, n_censored
        int64, events and censorings at each time.
    """

    time_years: np.ndarray
    survival: np.ndarray
    std_err: np.ndarray
    ci_lo: np.ndarray
    ci_hi: np.ndarray
    n_at_risk: np.ndarray
    n_events: np.ndarray
    n_censored: np.ndarray

    def __post_init__(self) -> None:
        n = np.shape(self.time_years)
        for name in ("survival", "std_err", "ci_lo", "ci_hi", "n_at_risk", "n_events",
                     "n_censored"):
            if np.shape(getattr(self, name)) != n:
                raise ValueError(f"{name} must have shape {n}, got "
                                 f"{np.shape(getattr(self, name))}")

    @property
    def total_events(self) -> int:
        return int(self.n_events.sum())

    @property
    def n_patients(self) -> int:
        return int(self.n_at_risk[0]) if self.n_at_risk.size else 0

    def at(self, t_years: float) -> tuple[float, float, float]:
        """(S, lo, hi) at ``t_years``; NaN beyond the last observed time or without patients.

        >>> km = kaplan_meier([1.0, 2.0, 3.0], [True, False, False])
        >>> [round(v, 3) for v in km.at(1.5)][0]
        0.667
        """
        if self.n_patients == 0 or t_years < 0 or t_years > float(self.time_years[-1]):
            return (math.nan, math.nan, math.nan)
        i = int(np.searchsorted(self.time_years, t_years, side="right")) - 1
        return (float(self.survival[i]), float(self.ci_lo[i]), float(self.ci_hi[i]))

    def median_years(self) -> float:
        """First time at which S(t) <= 0.5; NaN when the curve never gets there."""
        below = np.nonzero(self.survival <= 0.5)[0]
        return float(self.time_years[below[0]]) if below.size else math.nan

    def table(self) -> pd.DataFrame:
        """The estimate as a DataFrame (one row per time, the attribute names as columns)."""
        return pd.DataFrame({
            "time_years": self.time_years, "n_at_risk": self.n_at_risk,
            "n_events": self.n_events, "n_censored": self.n_censored,
            "survival": self.survival, "std_err": self.std_err,
            "ci_lo": self.ci_lo, "ci_hi": self.ci_hi,
        })



def kaplan_meier(time_years: Sequence[float] | np.ndarray, event: Sequence[bool] | np.ndarray,
                 *, alpha: float = 0.05, ci: Literal["log-log", "plain"] = "log-log"
                 ) -> KaplanMeier:
    """Kaplan-Meier product-limit estimate (Kaplan & Meier 1958) with Greenwood (1926) variance.

    Parameters
    ----------
    time_years
        (N,) time of the event or of censoring, in years, finite and >= 0.
    event
        (N,) True for an event, False for a censored time. At a time with both, the events
        come first (the censored patients are still at risk).
    alpha
        1 - confidence level of the pointwise interval.
    ci
        ``"log-log"`` (default; Kalbfleisch & Prentice 2002): ``S ** exp(+-z * se_loglog)``,
        which stays inside [0, 1]; ``"plain"``: ``S +- z * se`` clipped to [0, 1]. Both use
        the Greenwood variance ``Var S(t) = S(t)^2 * sum d / (n (n - d))``.

    Returns
    -------
    KaplanMeier

    Raises
    ------
    ValueError
        for arrays of different lengths, negative or non-finite times, or a bad ``ci``.

    >>> km = kaplan_meier([1.0, 1.0, 2.0, 3.0], [True, False, True, False])
    >>> km.time_years.tolist(), km.survival.round(3).tolist()
    ([0.0, 1.0, 2.0, 3.0], [1.0, 0.75, 0.375, 0.375])
    """
    _check_alpha(alpha)
    if ci not in ("log-log", "plain"):
        raise ValueError(f"ci must be 'log-log' or 'plain', not {ci!r}")
    t = np.asarray(time_years, dtype=np.float64).ravel()
    e = np.asarray(event, dtype=bool).ravel()
    if t.shape != e.shape:
        raise ValueError(f"time_years has {t.size} values but event has {e.size}")
    if t.size and (not np.isfinite(t).all() or (t < 0).any()):
        bad = float(t[~(np.isfinite(t) & (t >= 0))][0])
        raise ValueError(f"times must be finite and >= 0 years, got {bad}")
    uniq = np.unique(t)
    uniq = uniq[uniq > 0]
    times = np.concatenate([[0.0], uniq])
    d = np.array([int((e & (t == u)).sum()) for u in times], dtype=np.int64)
    c = np.array([int((~e & (t == u)).sum()) for u in times], dtype=np.int64)
    n_risk = np.array([int((t >= u).sum()) for u in times], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(n_risk > 0, 1.0 - d / np.maximum(n_risk, 1), 1.0)
        surv = np.cumprod(factor)
        term = np.where(d > 0, d / (n_risk * (n_risk - d)).astype(np.float64), 0.0)
        gw = np.cumsum(term)  # inf once every patient at risk had the event
        se = np.where(surv > 0, surv * np.sqrt(gw), 0.0)
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    lo: np.ndarray
    hi: np.ndarray
    if ci == "plain":
        lo, hi = np.clip(surv - z * se, 0.0, 1.0), np.clip(surv + z * se, 0.0, 1.0)
    else:
        lo, hi = surv.copy(), surv.copy()
        inner = (surv > 0) & (surv < 1) & (gw > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.sqrt(gw[inner]) / np.abs(np.log(surv[inner]))
        lo[inner] = surv[inner] ** np.exp(z * v)
        hi[inner] = surv[inner] ** np.exp(-z * v)
    return KaplanMeier(times, surv, se, lo, hi, n_risk, d, c)



def finite_number(value: Any) -> float | None:
    """A JSON/pandas number as float, None when missing, NaN, boolean or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    v = float(value)
    return v if math.isfinite(v) else None
