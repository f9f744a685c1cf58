"""Per-lesion radiomics-style features in NumPy: size, position, shape, intensity and texture.

Entry points: :func:`lesion_features` (one row per lesion) and :func:`feature_columns`.
pyradiomics does not install on Python 3.11 here, so this is a documented subset with
pyradiomics-like definitions: the surface area by the discrete Crofton formula (13 directions,
anisotropic voxels handled), principal axes from the voxel boxes' second moments, first-order
statistics (kurtosis not excess) and a 13-direction GLCM. Definitions and their accuracy:
``docs/lesion_location.md``, section "Features".
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import SphericalVoronoi

from ms_core.foundation.domain import (
    DAYS_PER_YEAR,
    LESION_LOCATIONS,
    Participant,
    Visit,
    check_affine,
    voxel_volume_ml,
)
from ms_core.lesions.components import check_labels

__all__ = [
    "DMT_EFFICACY",
    "ENTROPY_BINS",
    "FIRST_ORDER",
    "GLCM_FEATURES",
    "GLCM_LEVELS",
    "LOCATION_FEATURES",
    "PROGNOSIS_FEATURES",
    "SHAPE_COLUMNS",
    "age_years",
    "dmt_efficacy",
    "feature_columns",
    "first_order",
    "glcm_features",
    "lesion_features",
    "principal_axes_mm",
    "surface_area_mm2",
    "visit_features",
]

log = logging.getLogger(__name__)

#: Columns that do not depend on the images, in order.
SHAPE_COLUMNS = (
    "lesion_id", "n_voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "surface_area_mm2", "sphericity", "major_axis_mm", "minor_axis_mm", "least_axis_mm",
    "elongation", "flatness",
)
#: First-order statistics per image.
FIRST_ORDER = ("mean", "sd", "min", "p10", "median", "p90", "max", "skewness", "kurtosis",
               "entropy")
#: GLCM features per image.
GLCM_FEATURES = ("contrast", "homogeneity", "energy", "correlation")
#: Histogram bins for the first-order entropy.
ENTROPY_BINS = 32
#: Grey levels of the GLCM quantisation.
GLCM_LEVELS = 16
# --- Patient-visit feature table (prognosis models) ------------------------------------------
#: Lesion locations (``ms_core.lesions.location``) that get a volume and a count column each.
LOCATION_FEATURES = LESION_LOCATIONS
#: Columns of the patient-visit feature table, in the order the prognosis models take them.
#: Units are in the names; NaN marks a value that was not measured (the models impute it, see
#: ``docs/prognosis.md``). Binary columns are 0/1 floats.
#:
#: * clinical: ``age_years``, ``sex_male``, ``disease_duration_years`` (since onset),
#:   ``edss_baseline`` (EDSS at this visit), ``relapses_2y`` (relapses in the 2 years before),
#:   ``dmt_efficacy`` (0 none, 1 moderate, 2 high; :data:`DMT_EFFICACY`), ``progressive_course``
#:   (1 for SP/PP MS);
#: * lesions at this visit: total and per-location volume (ml) and count;
#: * change: ``new_enlarging_per_year`` (new or enlarging T2 lesions since the previous visit,
#:   per year) and ``pbvc_pct_per_year`` (annualised percentage brain volume change, negative
#:   for atrophy), both NaN at a first visit;
#: * tissue: ``bpf`` (brain parenchymal fraction), ``gm_fraction`` and ``wm_fraction`` (of the
#:   intracranial volume).
PROGNOSIS_FEATURES = (
    "age_years", "sex_male", "disease_duration_years", "edss_baseline", "relapses_2y",
    "dmt_efficacy", "progressive_course",
    "lesion_volume_ml", "lesion_count",
    *(f"{loc}_{kind}" for loc in LOCATION_FEATURES for kind in ("volume_ml", "count")),
    "new_enlarging_per_year", "pbvc_pct_per_year", "bpf", "gm_fraction", "wm_fraction",
)
#: DMT name (lower case) -> efficacy class: 1 moderate-efficacy, 2 high-efficacy (as in the
#: usual escalation / induction grouping, e.g. the 2018 ECTRIMS/EAN guideline). Anything not
#: listed counts as 0 (no DMT) only when it is empty or "none"; unknown names raise.
DMT_EFFICACY = {
    "none": 0, "": 0,
    "interferon beta-1a": 1, "interferon beta-1b": 1, "peginterferon beta-1a": 1,
    "glatiramer acetate": 1, "teriflunomide": 1, "dimethyl fumarate": 1,
    "diroximel fumarate": 1,
    "fingolimod": 2, "siponimod": 2, "ozanimod": 2, "ponesimod": 2, "cladribine": 2,
    "natalizumab": 2, "anti-cd20": 2, "ocrelizumab": 2, "ofatumumab": 2, "ublituximab": 2,
    "rituximab": 2, "alemtuzumab": 2,
}


def dmt_efficacy(dmt: str | None) -> int:
    """Efficacy class of a DMT name (:data:`DMT_EFFICACY`); ``None`` or "none" is 0.

    >>> dmt_efficacy("Anti-CD20"), dmt_efficacy(None), dmt_efficacy("interferon beta-1a")
    (2, 0, 1)
    """
    key = (dmt or "").strip().lower()
    if key not in DMT_EFFICACY:
        raise ValueError(f"unknown DMT {dmt!r}; known: {sorted(k for k in DMT_EFFICACY if k)}")
    return DMT_EFFICACY[key]


_PROGRESSIVE = {"SP": 1.0, "PP": 1.0, "SPMS": 1.0, "PPMS": 1.0, "PR": 1.0,
                "RR": 0.0, "RRMS": 0.0, "CIS": 0.0}


def _years_since_mid(year: int | None, date: dt.date) -> float:
    """Years from 1 July of ``year`` (only the year is recorded) to ``date``; NaN if unknown."""
    if year is None:
        return float("nan")
    return (date - dt.date(year, 7, 1)).days / DAYS_PER_YEAR


def age_years(participant: Participant, date: dt.date) -> float | None:
    """Age at ``date`` from the birth year (counted from 1 July), ``None`` when unknown."""
    age = _years_since_mid(participant.birth_year, date)
    return None if age != age else age


def _relapses_2y(visits: Sequence[Visit], visit: Visit) -> float:
    """Relapses reported at the visits of the 2 years up to ``visit`` (inclusive).

    Each visit reports the relapses since the previous one; an interval that starts before the
    window counts whole. NaN when one of those visits has no count.
    """
    start = visit.acq_date - dt.timedelta(days=round(2 * DAYS_PER_YEAR))
    window = [v for v in visits if start < v.acq_date <= visit.acq_date]
    counts = [v.relapses_since_last for v in window]
    if any(c is None for c in counts):
        return float("nan")
    return float(sum(c for c in counts if c is not None))


def visit_features(participant: Participant, visits: Sequence[Visit], visit: Visit, *,
                   lesions: pd.DataFrame | None = None,
                   new_enlarging: float | None = None, interval_years: float | None = None,
                   pbvc_pct_per_year: float | None = None,
                   tissue: Mapping[str, float] | None = None) -> dict[str, float]:
    """One row of the patient-visit feature table (:data:`PROGNOSIS_FEATURES`, NaN = missing).

    Parameters
    ----------
    participant, visits, visit
        The patient's clinical record; ``visits`` are all the patient's visits (for the
        relapse window), ``visit`` the one scored.
    lesions
        The visit's per-lesion table (``volume_ml`` and ``location`` columns), e.g. the
        segmentation's ``lesions.csv``; ``None`` when not measured.
    new_enlarging, interval_years
        New plus enlarging lesions since the previous visit and the years between the two.
    pbvc_pct_per_year
        Annualised percentage brain volume change since the previous visit.
    tissue
        ``bpf``, ``gm_fraction`` and ``wm_fraction`` of this visit.

    Age and disease duration count from 1 July of the recorded birth / onset year.
    An unknown DMT name or MS type gives NaN (logged), not an error.
    """
    row = dict.fromkeys(PROGNOSIS_FEATURES, float("nan"))
    row["age_years"] = _years_since_mid(participant.birth_year, visit.acq_date)
    sex = (participant.sex or "").upper()
    row["sex_male"] = 1.0 if sex == "M" else 0.0 if sex == "F" else float("nan")
    row["disease_duration_years"] = _years_since_mid(participant.onset_year, visit.acq_date)
    row["edss_baseline"] = float(visit.edss) if visit.edss is not None else float("nan")
    row["relapses_2y"] = _relapses_2y(visits, visit)
    try:
        row["dmt_efficacy"] = float(dmt_efficacy(visit.dmt))
    except ValueError as e:
        log.warning("%s %s: %s", participant.participant_id, visit.session_id, e)
    row["progressive_course"] = _PROGRESSIVE.get((participant.ms_type or "").upper(),
                                                 float("nan"))
    if lesions is not None:
        row["lesion_volume_ml"] = float(lesions["volume_ml"].sum())
        row["lesion_count"] = float(len(lesions))
        where = lesions["location"] if "location" in lesions else pd.Series(dtype=object)
        for loc in LOCATION_FEATURES:
            mine = lesions[where == loc] if len(where) else lesions.iloc[:0]
            known = "location" in lesions
            row[f"{loc}_volume_ml"] = float(mine["volume_ml"].sum()) if known else float("nan")
            row[f"{loc}_count"] = float(len(mine)) if known else float("nan")
    if new_enlarging is not None and interval_years is not None and interval_years > 0:
        row["new_enlarging_per_year"] = float(new_enlarging) / interval_years
    if pbvc_pct_per_year is not None:
        row["pbvc_pct_per_year"] = float(pbvc_pct_per_year)
    for key in ("bpf", "gm_fraction", "wm_fraction"):
        if tissue is not None and tissue.get(key) is not None:
            row[key] = float(tissue[key])
    return row


#: The 13 unique neighbour offsets of 3D 26-connectivity (the other 13 are their opposites).
_DIRECTIONS = tuple(d for d in itertools.product((-1, 0, 1), repeat=3)
                    if d > (0, 0, 0))


def feature_columns(image_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """All columns of :func:`lesion_features` for images named ``image_names``, in order.

    >>> feature_columns(["FLAIR"])[13:15]
    ('FLAIR_mean', 'FLAIR_sd')
    """
    cols = list(SHAPE_COLUMNS)
    for name in image_names:
        cols += [f"{name}_{s}" for s in FIRST_ORDER]
        cols += [f"{name}_glcm_{f}" for f in GLCM_FEATURES]
    return tuple(cols)


@functools.lru_cache(maxsize=32)
def _crofton_weights(matrix: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    """Per direction of :data:`_DIRECTIONS`: (solid-angle weight, step length in mm)."""
    a = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    steps = np.array([a @ np.asarray(d, dtype=np.float64) for d in _DIRECTIONS])
    lengths = np.linalg.norm(steps, axis=1)
    units = steps / lengths[:, None]
    areas = SphericalVoronoi(np.vstack([units, -units])).calculate_areas() / (4.0 * np.pi)
    weights = areas[: len(_DIRECTIONS)] + areas[len(_DIRECTIONS):]
    return tuple((float(w), float(n)) for w, n in zip(weights, lengths, strict=True))


def surface_area_mm2(mask: np.ndarray, affine: np.ndarray) -> float:
    """Surface area (mm^2) of a binary mask by the discrete Crofton formula (module docstring).

    Parameters
    ----------
    mask
        (X, Y, Z) bool; voxels beyond the array count as outside.
    affine
        (4, 4) voxel -> mm; sets the 13 line directions, their steps and weights.

    Returns
    -------
    float
        ``2 sum_i w_i N_i V / |d_i|``: ``N_i`` lesion / background transitions between voxels one
        step ``d_i`` apart, ``V`` the voxel volume, ``w_i`` the solid-angle share of ``d_i``.

    >>> cube = np.ones((20, 20, 20), bool)  # 2400 mm^2, about 10 % low for grid-aligned faces
    >>> round(surface_area_mm2(cube, np.eye(4)))
    2160
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    a = check_affine(affine)[:3, :3]
    voxel_mm3 = abs(float(np.linalg.det(a)))
    total = 0.0
    for d, (weight, step_mm) in zip(_DIRECTIONS, _crofton_weights(tuple(a.ravel().tolist())),
                                    strict=True):
        lo = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(d, m.shape, strict=True))
        hi = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(d, m.shape, strict=True))
        n_transitions = int(np.count_nonzero(m[lo] != m[hi]))
        total += weight * n_transitions * voxel_mm3 / step_mm
    return 2.0 * total


def principal_axes_mm(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Eigenvalues (mm^2, descending) of the second-moment matrix of voxels ``ijk`` (N, 3).

    Each voxel is a solid box, so its own covariance ``A A^T / 12`` is added (``A`` the affine's
    3x3): a single voxel of 1 x 1 x 3 mm gives (0.75, 0.0833, 0.0833). Returns (3,) float64.

    >>> principal_axes_mm(np.zeros((1, 3)), np.diag([1.0, 1.0, 3.0, 1.0])).round(4).tolist()
    [0.75, 0.0833, 0.0833]
    """
    pts = np.asarray(ijk, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise ValueError(f"ijk must be (N >= 1, 3) voxel indices, got shape {pts.shape}")
    a = check_affine(affine)[:3, :3]
    xyz = pts @ a.T
    centred = xyz - xyz.mean(axis=0)
    cov = centred.T @ centred / pts.shape[0] + a @ a.T / 12.0
    eig = np.linalg.eigvalsh(cov)[::-1]
    return np.asarray(np.clip(eig, 0.0, None), dtype=np.float64)


def first_order(values: np.ndarray) -> dict[str, float]:
    """First-order statistics of intensities ``values`` (N,) (definitions: module docstring).

    Returns NaN for every statistic when ``values`` is empty.

    >>> first_order(np.array([1.0, 2.0, 3.0, 4.0]))["median"]
    2.5
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return dict.fromkeys(FIRST_ORDER, float("nan"))
    mean = float(v.mean())
    sd = float(v.std())
    p10, median, p90 = (float(q) for q in np.percentile(v, [10.0, 50.0, 90.0]))
    if sd > 0:
        z = (v - mean) / sd
        skew, kurt = float((z**3).mean()), float((z**4).mean())
    else:
        skew = kurt = float("nan")
    lo, hi = float(v.min()), float(v.max())
    if hi > lo:
        hist, _ = np.histogram(v, bins=ENTROPY_BINS, range=(lo, hi))
        p = hist[hist > 0] / v.size
        entropy = float(-(p * np.log2(p)).sum())
    else:
        entropy = 0.0
    return {"mean": mean, "sd": sd, "min": lo, "p10": p10, "median": median, "p90": p90,
            "max": hi, "skewness": skew, "kurtosis": kurt, "entropy": entropy}


def _quantise(box: np.ndarray, inside: np.ndarray, levels: int) -> np.ndarray:
    """Grey levels 0..levels-1 over the range of ``box[inside]``; (bounding box) int64."""
    vals = box[inside]
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        return np.zeros(box.shape, dtype=np.int64)
    q = np.floor((box - lo) / (hi - lo) * levels).astype(np.int64)
    return np.asarray(np.clip(q, 0, levels - 1))


def _glcm_props(glcm: np.ndarray) -> dict[str, float]:
    p = glcm / glcm.sum()
    n = p.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    diff2 = (i - j) ** 2
    mu_i, mu_j = float((i * p).sum()), float((j * p).sum())
    sd_i = float(np.sqrt(((i - mu_i) ** 2 * p).sum()))
    sd_j = float(np.sqrt(((j - mu_j) ** 2 * p).sum()))
    if sd_i > 0 and sd_j > 0:
        corr = float(((i - mu_i) * (j - mu_j) * p).sum() / (sd_i * sd_j))
    else:
        corr = 1.0
    return {"contrast": float((diff2 * p).sum()), "homogeneity": float((p / (1.0 + diff2)).sum()),
            "energy": float((p**2).sum()), "correlation": corr}


def glcm_features(box: np.ndarray, inside: np.ndarray, *,
                  levels: int = GLCM_LEVELS) -> dict[str, float]:
    """Direction-averaged GLCM features of ``box`` restricted to ``inside`` (module docstring).

    Parameters
    ----------
    box
        (X, Y, Z) float intensities, e.g. a lesion's bounding box.
    inside
        (X, Y, Z) bool, same shape: the lesion voxels.
    levels
        Number of grey levels (>= 2).

    Returns NaN for every feature when no pair of neighbouring voxels lies inside.

    Two half-cubes of levels 0 and 1: the 4 directions within a half give homogeneity 1, the 9
    crossing it 1 / (1 + 1), so the mean is (4 + 9 / 2) / 13:

    >>> b = np.zeros((2, 2, 2)); b[1] = 1.0
    >>> round(glcm_features(b, np.ones((2, 2, 2), bool), levels=2)["homogeneity"], 3)
    0.654
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    data = np.asarray(box, dtype=np.float64)
    mask = np.asarray(inside, dtype=bool)
    if data.shape != mask.shape:
        raise ValueError(f"box {data.shape} and inside {mask.shape} must have the same shape")
    if not mask.any():
        return dict.fromkeys(GLCM_FEATURES, float("nan"))
    q = _quantise(data, mask, levels)
    per_dir: list[dict[str, float]] = []
    for d in _DIRECTIONS:
        a_sl = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(d, q.shape, strict=True))
        b_sl = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(d, q.shape, strict=True))
        both = mask[a_sl] & mask[b_sl]
        if not both.any():
            continue
        qa, qb = q[a_sl][both], q[b_sl][both]
        counts = np.bincount(qa * levels + qb, minlength=levels * levels).reshape(levels, levels)
        per_dir.append(_glcm_props((counts + counts.T).astype(np.float64)))
    if not per_dir:
        return dict.fromkeys(GLCM_FEATURES, float("nan"))
    return {f: float(np.mean([r[f] for r in per_dir])) for f in GLCM_FEATURES}


def _check_inputs(labels: np.ndarray, images: Mapping[str, np.ndarray]) -> np.ndarray:
    arr = check_labels(labels)
    for name, img in images.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"image names must be non-empty strings, got {name!r}")
        shape = np.shape(img)
        if shape != arr.shape:
            raise ValueError(f"image {name!r} has shape {shape} but labels have {arr.shape}; "
                             "resample the image onto the label grid first")
    return arr


def lesion_features(labels: np.ndarray, affine: np.ndarray,
                    images: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row of features per lesion id (definitions in the module docstring).

    Parameters
    ----------
    labels
        (X, Y, Z) int lesion ids, 0 = background.
    affine
        (4, 4) voxel -> RAS+ mm of ``labels`` and of every image.
    images
        ``name -> (X, Y, Z)`` intensities on the same grid, e.g. ``{"FLAIR": ..., "T1w": ...}``;
        may be empty (shape features only).

    Returns
    -------
    pandas.DataFrame
        Columns :func:`feature_columns` of the image names, one row per id sorted by id; an
        empty frame with those columns for an empty mask. Intensity features are in the
        images' units.

    Raises
    ------
    ValueError
        for labels that are not 3D or negative, a bad affine, or an image of another shape.
    TypeError
        for float labels.
    """
    arr = _check_inputs(labels, images)
    aff = check_affine(affine)
    names = list(images)
    columns = feature_columns(names)
    ids = np.unique(arr[arr > 0]).astype(np.int64)
    if ids.size == 0:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        return empty.astype({"lesion_id": "int64", "n_voxels": "int64"})
    data = {n: np.asarray(images[n], dtype=np.float64) for n in names}
    voxel_ml = voxel_volume_ml(aff)
    boxes = ndi.find_objects(arr.astype(np.int64, copy=False))
    rows: list[dict[str, float | int]] = []
    for lid in ids:
        sl = boxes[int(lid) - 1]
        if sl is None:  # pragma: no cover - ids come from the array itself
            continue
        inside = arr[sl] == lid
        local = np.argwhere(inside)
        ijk = local + np.array([s.start for s in sl])
        n_vox = int(local.shape[0])
        volume_ml = n_vox * voxel_ml
        centroid = aff[:3, :3] @ ijk.mean(axis=0) + aff[:3, 3]
        area = surface_area_mm2(inside, aff)
        volume_mm3 = volume_ml * 1000.0
        sphericity = float(np.pi ** (1 / 3) * (6.0 * volume_mm3) ** (2 / 3) / area)
        eig = principal_axes_mm(ijk, aff)
        axes = 2.0 * np.sqrt(5.0 * eig)
        row: dict[str, float | int] = {
            "lesion_id": int(lid), "n_voxels": n_vox, "volume_ml": volume_ml,
            "centroid_x_mm": float(centroid[0]), "centroid_y_mm": float(centroid[1]),
            "centroid_z_mm": float(centroid[2]), "surface_area_mm2": area,
            "sphericity": sphericity, "major_axis_mm": float(axes[0]),
            "minor_axis_mm": float(axes[1]), "least_axis_mm": float(axes[2]),
            "elongation": float(np.sqrt(eig[1] / eig[0])),
            "flatness": float(np.sqrt(eig[2] / eig[0])),
        }
        for name in names:
            box = data[name][sl]
            for stat, value in first_order(box[inside]).items():
                row[f"{name}_{stat}"] = value
            for feat, value in glcm_features(box, inside).items():
                row[f"{name}_glcm_{feat}"] = value
        rows.append(row)
    log.debug("features of %d lesions, %d images", len(rows), len(names))
    return pd.DataFrame(rows, columns=list(columns))
