"""Lesion masks to lesions: thresholding, connected components and the per-lesion table.

Components use 26-connectivity (voxels touching by a face, an edge or a corner belong to the
same lesion), the convention of most MS lesion-counting tools.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ms_core.foundation.domain import voxel_volume_ml

__all__ = ["LESION_TABLE_COLUMNS", "check_labels", "label_components", "lesion_table",
           "select_lesions", "threshold_probability"]

#: Columns of :func:`lesion_table`, in order.
LESION_TABLE_COLUMNS = (
    "lesion_id", "n_voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "mean_prob", "max_prob",
)
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def check_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an array after checking it is a 3D map of integer lesion ids >= 0.

    Raises ``ValueError`` (shape, negative ids) or ``TypeError`` (float labels).
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"labels must be a 3D (X, Y, Z) array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(f"labels must be integer lesion ids, got dtype {arr.dtype}; "
                        "label a binary mask with ms_core.lesions.components.label_components "
                        "first")
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"labels must be >= 0, got minimum {int(arr.min())}")
    return arr


def label_components(mask: np.ndarray, *, affine: np.ndarray,
                     min_lesion_mm3: float = 0.0) -> np.ndarray:
    """Label the 26-connected components of ``mask``, dropping those under ``min_lesion_mm3``.

    Parameters
    ----------
    mask
        (X, Y, Z) bool or integer array; non-zero is lesion.
    affine
        (4, 4) voxel -> mm affine, for the voxel volume.
    min_lesion_mm3
        Smallest lesion kept, in mm^3.

    Returns
    -------
    (X, Y, Z) int32 labels 1..N, numbered in scan order (stable for a given mask).

    >>> m = np.zeros((5, 5, 5), bool); m[0, 0, 0] = m[1, 1, 1] = m[4, 4, 4] = True
    >>> int(label_components(m, affine=np.eye(4)).max())
    2
    """
    binary = np.asarray(mask) > 0
    raw, n = ndi.label(binary, structure=_STRUCTURE_26)
    labels: np.ndarray = np.asarray(raw, dtype=np.int32)
    if n == 0 or min_lesion_mm3 <= 0:
        return labels
    voxel_mm3 = voxel_volume_ml(affine) * 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * voxel_mm3 >= min_lesion_mm3
    keep[0] = False
    new_ids = np.zeros(n + 1, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return np.asarray(new_ids[labels])


def select_lesions(mask: np.ndarray, ids: Sequence[int], *, affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8 mask of the lesions ``ids`` of a stored binary lesion mask.

    The ids are those of :func:`label_components` on ``mask`` (26-connected, scan order), which
    are the ``lesion_id`` of a segmentation's lesion table: the stored mask holds only the kept
    lesions, so labelling it again numbers them the same way.

    >>> m = np.zeros((5, 5, 5), np.uint8); m[0, 0, 0] = m[4, 4, 4] = 1
    >>> sel = select_lesions(m, [2], affine=np.eye(4))
    >>> int(sel[4, 4, 4]), int(sel.sum())
    (1, 1)
    """
    labels = label_components(mask, affine=affine)
    return np.isin(labels, np.asarray(list(ids), dtype=np.int32)).astype(np.uint8)


def threshold_probability(prob: np.ndarray, *, affine: np.ndarray, threshold: float = 0.5,
                          min_lesion_mm3: float = 0.0) -> np.ndarray:
    """Lesion labels from a probability map: ``prob >= threshold``, then small lesions removed.

    Raises ``ValueError`` for a threshold outside (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if min_lesion_mm3 < 0:
        raise ValueError(f"min_lesion_mm3 must be >= 0, got {min_lesion_mm3}")
    return label_components(np.asarray(prob) >= threshold, affine=affine,
                            min_lesion_mm3=min_lesion_mm3)


def lesion_table(labels: np.ndarray, *, affine: np.ndarray,
                 prob: np.ndarray | None = None) -> pd.DataFrame:
    """One row per lesion id in ``labels`` (columns :data:`LESION_TABLE_COLUMNS`).

    ``volume_ml`` is voxel count times voxel volume; the centroid is in world mm (RAS+);
    ``mean_prob``/``max_prob`` come from ``prob`` (NaN without it).
    """
    labels = np.asarray(labels)
    ids = np.unique(labels[labels > 0]).astype(np.int64)
    if ids.size == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in LESION_TABLE_COLUMNS}).astype(
            {"lesion_id": "int64", "n_voxels": "int64"})
    counts = ndi.sum_labels(np.ones(labels.shape, np.float64), labels, ids)
    centroids = np.asarray(ndi.center_of_mass(np.ones(labels.shape, np.float64), labels, ids))
    world = centroids @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    if prob is not None:
        p = np.asarray(prob, dtype=np.float64)
        mean_prob = ndi.mean(p, labels, ids)
        max_prob = ndi.maximum(p, labels, ids)
    else:
        mean_prob = max_prob = np.full(ids.size, np.nan)
    return pd.DataFrame({
        "lesion_id": ids, "n_voxels": counts.astype(np.int64),
        "volume_ml": counts * voxel_volume_ml(affine),
        "centroid_x_mm": world[:, 0], "centroid_y_mm": world[:, 1], "centroid_z_mm": world[:, 2],
        "mean_prob": np.asarray(mean_prob, np.float64),
        "max_prob": np.asarray(max_prob, np.float64),
    })
