"""Segmentation metrics: voxel Dice, lesion-wise detection and volume difference.

Lesions are 26-connected components. A true lesion is *detected* when a predicted lesion overlaps
it; a predicted lesion is a *false positive* when it overlaps no true lesion. Two overlap rules
are reported: at least one voxel (``any``), and at least 10 % of the lesion's own voxels
(``10pct``, as in the MSSEG challenges' stricter counts).

Reference masks hold lesions far smaller than a segmentation reports (patient26's consensus of
open_ms_data has 3-voxel specks; ``segment`` drops lesions under 10 mm^3 by default), so two
more views are printed beside the issue's all-lesion counts, never instead of them: detection per
reference-lesion size band, and the one-voxel rule with lesions under ``min_lesion_mm3`` left out
of *both* masks.
"""

from __future__ import annotations

import itertools
from typing import TypedDict

import numpy as np

from ms_core.foundation.domain import LesionMask, voxel_volume_ml
from ms_core.foundation.errors import InputError
from ms_core.lesions.components import label_components

__all__ = ["SIZE_BANDS_MM3", "LesionDetection", "MaskMetrics", "SizeBand", "calibration_error",
           "detection_by_size", "dice", "evaluate_masks", "lesion_detection"]

#: Upper edges (mm^3) of the reference-lesion size bands of :func:`detection_by_size`; 10 mm^3
#: is the segmentation's default smallest reported lesion.
SIZE_BANDS_MM3 = (10.0, 100.0)


class LesionDetection(TypedDict):
    """Lesion-wise counts and rates of :func:`lesion_detection` (rates None: no denominator)."""

    n_true: int
    n_pred: int
    detected: int
    false_positives: int
    tpr: float | None
    fpr: float | None
    f1: float | None


class SizeBand(TypedDict):
    """Reference lesions of one size band and how many have a predicted voxel."""

    band_mm3: str
    n_true: int
    detected: int
    tpr: float | None


class MaskMetrics(TypedDict):
    """Everything :func:`evaluate_masks` measures (the ``evaluate`` CLI prints it as JSON)."""

    dice: float
    lesion_any_voxel: LesionDetection
    lesion_10pct: LesionDetection
    pred_volume_ml: float
    truth_volume_ml: float
    abs_volume_diff_ml: float
    min_lesion_mm3: float
    lesion_any_voxel_min_size: LesionDetection
    lesion_by_size: list[SizeBand]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Voxel Dice of two binary masks; 1.0 when both are empty.

    >>> a = np.zeros((4, 4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4, 4), bool); b[1:3] = True
    >>> dice(a, b)
    0.5
    """
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def calibration_error(prob: np.ndarray, truth: np.ndarray, region: np.ndarray, *,
                      bins: int = 10, min_prob: float = 0.0) -> float | None:
    """Expected calibration error of a probability map over ``region`` (Guo et al. 2017).

    Voxels of ``region`` with probability at least ``min_prob`` are put in ``bins`` equal-width
    probability bins; the error is the voxel-weighted mean over bins of |mean probability -
    share of true lesion voxels|. 0 is perfect; ``None`` when no voxel qualifies. Inside a
    whole brain most voxels are certain background, which makes the error small whatever the
    lesions; ``min_prob`` (e.g. 0.05) looks at the voxels the model hesitates over.

    >>> p = np.array([0.9, 0.9, 0.1, 0.1]); t = np.array([1, 1, 0, 1])
    >>> round(calibration_error(p, t, np.ones(4, bool)), 3)
    0.25
    """
    pr, tr, mask = np.asarray(prob, np.float64), np.asarray(truth) > 0, np.asarray(region) > 0
    if not pr.shape == tr.shape == mask.shape:
        raise ValueError(f"probability {pr.shape}, truth {tr.shape} and region {mask.shape} "
                         "must share one grid")
    keep = mask & (pr >= min_prob)
    n = int(keep.sum())
    if n == 0:
        return None
    p_in, t_in = pr[keep], tr[keep]
    which = np.minimum((p_in * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    p_sum = np.bincount(which, weights=p_in, minlength=bins)
    t_sum = np.bincount(which, weights=t_in.astype(np.float64), minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(p_sum[used] - t_sum[used])) / n)


def _overlap_counts(a_labels: np.ndarray, b_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each label of ``a_labels``: its voxel count and its voxels inside ``b_mask``."""
    n = int(a_labels.max()) if a_labels.size else 0
    sizes = np.bincount(a_labels.ravel(), minlength=n + 1)[1:]
    inside = np.bincount(a_labels[b_mask].ravel(), minlength=n + 1)[1:]
    return sizes, inside


def lesion_detection(pred: np.ndarray, truth: np.ndarray,
                     min_overlap_fraction: float = 0.0) -> LesionDetection:
    """Lesion-wise counts and rates; ``min_overlap_fraction=0`` means one voxel is enough.

    Returns ``n_true``, ``n_pred``, ``detected`` (true lesions found), ``false_positives``
    (predicted lesions matching nothing), ``tpr`` = detected / n_true, ``fpr`` =
    false_positives / n_pred and ``f1`` = 2 P R / (P + R) with P = 1 - fpr, R = tpr. Rates are
    ``None`` where their denominator is 0.
    """
    p_mask, t_mask = np.asarray(pred) > 0, np.asarray(truth) > 0
    eye = np.eye(4)
    t_lab = label_components(t_mask, affine=eye)
    p_lab = label_components(p_mask, affine=eye)
    t_size, t_hit = _overlap_counts(t_lab, p_mask)
    p_size, p_hit = _overlap_counts(p_lab, t_mask)

    def found(size: np.ndarray, hit: np.ndarray) -> np.ndarray:
        need = np.maximum(1, np.ceil(min_overlap_fraction * size))
        return hit >= need

    detected = int(found(t_size, t_hit).sum())
    false_pos = int((~found(p_size, p_hit)).sum())
    n_true, n_pred = int(t_size.size), int(p_size.size)
    tpr = detected / n_true if n_true else None
    fpr = false_pos / n_pred if n_pred else None
    if tpr is None or fpr is None:
        f1 = None
    else:
        precision = 1.0 - fpr
        f1 = 0.0 if precision + tpr == 0 else 2 * precision * tpr / (precision + tpr)
    return {"n_true": n_true, "n_pred": n_pred, "detected": detected,
            "false_positives": false_pos, "tpr": tpr, "fpr": fpr, "f1": f1}


def detection_by_size(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                      bands_mm3: tuple[float, ...] = SIZE_BANDS_MM3) -> list[SizeBand]:
    """Reference lesions per size band (edges ``bands_mm3``, mm^3, from the ``affine``'s voxel
    volume) and how many of them have at least one predicted voxel.

    >>> t = np.zeros((9, 9, 9), bool); t[0, 0, 0] = True; t[4:8, 4:8, 4:8] = True
    >>> [(b["band_mm3"], b["n_true"], b["detected"])
    ...  for b in detection_by_size(t & (np.arange(9) > 3)[:, None, None], t, np.eye(4))]
    [('<10', 1, 0), ('10-100', 1, 1), ('>=100', 0, 0)]
    """
    t_lab = label_components(truth, affine=affine)
    size, hit = _overlap_counts(t_lab, np.asarray(pred) > 0)
    size_mm3 = size * voxel_volume_ml(affine) * 1000.0
    edges = [0.0, *bands_mm3, np.inf]
    out: list[SizeBand] = []
    for lo, hi in itertools.pairwise(edges):
        name = f"<{hi:g}" if lo == 0 else (f">={lo:g}" if np.isinf(hi) else f"{lo:g}-{hi:g}")
        inside = (size_mm3 >= lo) & (size_mm3 < hi)
        n, found = int(inside.sum()), int((inside & (hit > 0)).sum())
        out.append({"band_mm3": name, "n_true": n, "detected": found,
                    "tpr": found / n if n else None})
    return out


def evaluate_masks(pred: LesionMask, truth: LesionMask, *,
                   min_lesion_mm3: float = 10.0) -> MaskMetrics:
    """All metrics of ``pred`` against ``truth``; both must lie on the same grid.

    ``min_lesion_mm3`` is the size under which lesions are left out of both masks for
    ``lesion_any_voxel_min_size`` (the other figures count every lesion).

    Raises
    ------
    InputError
        when shapes or affines differ (resample the prediction onto the truth grid first).
    """
    if pred.labels.shape != truth.labels.shape or not np.allclose(pred.affine, truth.affine,
                                                                  atol=1e-3):
        raise InputError(pred.source, (
            f"prediction grid {pred.labels.shape} does not match truth grid "
            f"{truth.labels.shape} of {truth.source} (or their affines differ); resample the "
            "prediction onto the truth image first"))
    if min_lesion_mm3 < 0:
        raise ValueError(f"min_lesion_mm3 must be >= 0, got {min_lesion_mm3}")
    vox_ml = voxel_volume_ml(truth.affine)
    pred_ml = pred.n_voxels * vox_ml
    truth_ml = truth.n_voxels * vox_ml
    large = [label_components(m.labels, affine=truth.affine, min_lesion_mm3=min_lesion_mm3)
             for m in (pred, truth)]
    return {
        "dice": dice(pred.labels, truth.labels),
        "lesion_any_voxel": lesion_detection(pred.labels, truth.labels, 0.0),
        "lesion_10pct": lesion_detection(pred.labels, truth.labels, 0.10),
        "pred_volume_ml": pred_ml, "truth_volume_ml": truth_ml,
        "abs_volume_diff_ml": abs(pred_ml - truth_ml),
        "min_lesion_mm3": float(min_lesion_mm3),
        "lesion_any_voxel_min_size": lesion_detection(large[0], large[1], 0.0),
        "lesion_by_size": detection_by_size(pred.labels, truth.labels, truth.affine),
    }
