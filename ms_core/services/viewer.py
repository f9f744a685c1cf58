"""What the Patient page's image viewer shows, computed without Streamlit.

- :func:`preview_lesions`: lesions at another probability threshold and minimum lesion size
  than the stored segmentation, with the stored location class carried over by overlap, so the
  viewer's sliders update the mask and the lesion table live (a preview: stored results, the
  timeline and the trial endpoints keep the stored settings).
- :func:`status_labels` and :data:`STATUS_STYLES`: a label volume coloured by lesion status from
  a stored two-visit comparison (new, enlarging, stable, shrinking, disappeared, ...).
- :func:`status_labels_at_baseline`: the same colours on the baseline's grid, as the lesions
  were at baseline (for the previous visit beside the follow-up).
- :func:`lesion_at`: which lesion a clicked world point (mm) falls in.
- :func:`link_transforms`: the matrices that link a baseline viewer's crosshair to the
  follow-up's through the stored rigid registration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ms_core.foundation.io import load_volume, nifti_bytes
from ms_core.imaging.preprocess import Grid, resample_to_grid
from ms_core.lesions.components import label_components, lesion_table, threshold_probability

__all__ = ["LESION_COLOUR", "STATUS_STYLES", "LabelStyle", "Preview", "image_viewer_bytes",
           "label_lut", "labels_viewer_bytes", "lesion_at", "link_transforms", "preview_lesions",
           "status_labels", "status_labels_at_baseline"]

#: Location of a previewed lesion that overlaps no stored lesion (it appears only at the
#: preview's settings; re-run the segmentation with them to classify it).
UNCLASSIFIED = "not classified"


@dataclass(frozen=True)
class LabelStyle:
    """One value of a label overlay: its code in the volume, name and RGB colour."""

    code: int
    name: str
    rgb: tuple[int, int, int]

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)


#: Lesion status colours (colour-blind aware: new and enlarging warm, stable neutral, losses
#: cool); the codes are those of :func:`status_labels`.
STATUS_STYLES = (
    LabelStyle(1, "new", (230, 25, 75)),
    LabelStyle(2, "enlarging", (245, 130, 48)),
    LabelStyle(3, "stable", (255, 225, 25)),
    LabelStyle(4, "shrinking", (66, 212, 244)),
    LabelStyle(5, "disappeared", (0, 90, 200)),
    LabelStyle(6, "merged", (240, 50, 230)),
    LabelStyle(7, "split", (145, 30, 180)),
)
#: The one colour of a plain lesion mask (code 1).
LESION_COLOUR = LabelStyle(1, "lesion", (230, 25, 75))


def label_lut(styles: tuple[LabelStyle, ...]) -> dict[str, list[int] | list[str]]:
    """A NiiVue label colour map (``R``, ``G``, ``B``, ``A``, ``I``, ``labels``) for ``styles``:
    code 0 transparent, every other code up to the largest drawn in its colour."""
    top = max(s.code for s in styles)
    by_code = {s.code: s for s in styles}
    rows = [by_code.get(i) for i in range(top + 1)]
    return {
        "R": [s.rgb[0] if s else 0 for s in rows],
        "G": [s.rgb[1] if s else 0 for s in rows],
        "B": [s.rgb[2] if s else 0 for s in rows],
        "A": [255 if s and i else 0 for i, s in enumerate(rows)],
        "I": list(range(top + 1)),
        "labels": [s.name if s else "" for s in rows],
    }


def labels_viewer_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
    """A label volume (codes 0-255) as gzipped uint8 NIfTI bytes for the browser."""
    data = np.asarray(labels)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"label codes must lie in 0-255, got {data.min()}-{data.max()}")
    return nifti_bytes(data.astype(np.uint8), affine, np.uint8)


def image_viewer_bytes(path: Path | str, modality: str, *, margin_vox: int = 4,
                       step: int = 1) -> bytes:
    """A scan as a compact display copy for the browser: cropped to the head, uint8, gzipped.

    ``step`` > 1 keeps every ``step``-th voxel along each axis (a coarser copy, about
    ``step**3`` times smaller, for a second pane when the message would be too large).

    The box keeps every voxel brighter than 2 % of the 99.5th percentile (plus ``margin_vox``);
    intensities are scaled linearly from 0 to the 99.9th percentile onto 0-255 (the brightest
    0.1 % saturate, as a display window would do anyway). The affine is shifted with the crop,
    so overlays on the full grid still line up. Not for computation: read the file for that.
    """
    vol = load_volume(path, modality)
    data = vol.data
    sample = data[::2, ::2, ::2]  # percentiles of a display window: a sample is enough
    hi = float(np.percentile(sample, 99.5))
    inside = data > 0.02 * hi if hi > 0 else data != 0
    if not inside.any():
        inside = np.ones(data.shape, bool)
    idx = np.nonzero(inside)
    lo = [max(int(a.min()) - margin_vox, 0) for a in idx]
    up = [min(int(a.max()) + margin_vox + 1, n) for a, n in zip(idx, data.shape, strict=True)]
    crop = data[lo[0]:up[0], lo[1]:up[1], lo[2]:up[2]]
    top = float(np.percentile(crop[::2, ::2, ::2], 99.9)) or 1.0
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    quantised = np.rint(np.clip(crop[::step, ::step, ::step] / top, 0.0, 1.0) * 255.0
                        ).astype(np.uint8)
    affine = np.array(vol.affine, np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.asarray(lo, np.float64) + affine[:3, 3]
    affine[:3, :3] *= step
    return nifti_bytes(quantised, affine, np.uint8)


def status_labels(lesion_ids: np.ndarray, changes: pd.DataFrame) -> np.ndarray:
    """A uint8 volume with each tracked lesion's voxels set to its status code.

    ``lesion_ids``: the comparison's ``lesion_ids.nii.gz`` (the ``lesion_id`` of every lesion
    voxel of either visit, on the follow-up grid); ``changes``: its ``lesion_changes.csv``
    (``lesion_id``, ``status``). Ids missing from the table stay 0; an unknown status raises
    ``ValueError``.
    """
    ids = np.asarray(lesion_ids)
    codes = {s.name: s.code for s in STATUS_STYLES}
    unknown = sorted(set(changes["status"]) - set(codes))
    if unknown:
        raise ValueError(f"unknown lesion status {unknown}; known: {sorted(codes)}")
    top = int(ids.max()) if ids.size else 0
    table_ids = changes["lesion_id"].to_numpy(np.int64)
    lookup = np.zeros(max(top, int(table_ids.max()) if len(table_ids) else 0) + 1, np.uint8)
    lookup[table_ids] = [codes[s] for s in changes["status"]]
    out: np.ndarray = lookup[np.clip(ids, 0, None).astype(np.int64)]
    return out


def status_labels_at_baseline(status: np.ndarray, change_mask: np.ndarray,
                              followup_affine: np.ndarray, followup_to_baseline: np.ndarray,
                              baseline: Grid) -> np.ndarray:
    """The comparison's status colours as the lesions were at baseline, on ``baseline``'s grid.

    ``status``: :func:`status_labels` of the comparison and ``change_mask`` its
    ``change_mask.nii.gz`` (1 = lesion tissue that appeared, 2 = tissue that went away), both on
    the follow-up grid (``followup_affine``); ``followup_to_baseline``: the stored rigid
    registration (follow-up world mm to baseline world mm). New lesions and the tissue that
    appeared are left out (they were not there at baseline); stable, shrinking, disappeared
    lesions and the baseline part of enlarging ones keep their colour. Nearest-neighbour
    resampling, uint8 like :func:`status_labels`.
    """
    codes = np.asarray(status, dtype=np.uint8)
    change = np.asarray(change_mask)
    if codes.shape != change.shape:
        raise ValueError(f"status {codes.shape} and change mask {change.shape} differ in shape")
    f2b = _registration_matrix(followup_to_baseline)
    new = next(s.code for s in STATUS_STYLES if s.name == "new")
    then = np.where((codes == new) | (change == 1), np.uint8(0), codes)
    out: np.ndarray = resample_to_grid(then, f2b @ np.asarray(followup_affine, np.float64),
                                       baseline, order=0)
    return out


@dataclass(frozen=True, eq=False)
class Preview:
    """Lesions at the viewer's settings.

    ``labels`` (int32) cover only the box around the lesions (and the stored mask), on the
    probability map's grid; ``affine`` maps that box to world mm (the map's affine shifted by
    ``offset`` voxels), so world coordinates, centroids and overlays are those of the full
    grid. ``table``: :func:`ms_core.lesions.components.lesion_table` columns plus ``location``.
    """

    labels: np.ndarray
    affine: np.ndarray
    offset: tuple[int, int, int]
    table: pd.DataFrame
    threshold: float
    min_lesion_mm3: float


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s true voxels, or ``None`` when there are none."""
    found = ndi.find_objects(mask.astype(np.uint8))
    return found[0] if found else None


def preview_lesions(prob: np.ndarray, affine: np.ndarray, *, threshold: float,
                    min_lesion_mm3: float, stored_mask: np.ndarray | None = None,
                    stored_table: pd.DataFrame | None = None) -> Preview:
    """Threshold the stored probability map again and tabulate the lesions.

    ``stored_mask``/``stored_table``: the stored segmentation's binary mask and lesion table;
    each previewed lesion takes the ``location`` of the stored lesion it overlaps most (stored
    ids are the mask's components in scan order, as when the segmentation was written), and
    :data:`UNCLASSIFIED` when it overlaps none. The work is done inside the box around the
    voxels at or above the threshold and the stored mask: every lesion lies in it, and scan
    order (hence the ids) is the same as on the full grid. Raises ``ValueError`` for a
    threshold outside (0, 1] or a negative size.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    prob = np.asarray(prob)
    wanted = prob >= threshold
    if stored_mask is not None:
        wanted |= np.asarray(stored_mask) > 0
    box = _box(wanted) or tuple(slice(0, 1) for _ in prob.shape[:3])
    offset = tuple(int(b.start) for b in box)
    crop_affine = np.array(affine, np.float64)
    crop_affine[:3, 3] = crop_affine[:3, :3] @ np.asarray(offset, np.float64) + crop_affine[:3, 3]
    prob_c = prob[box]
    labels = threshold_probability(prob_c, affine=crop_affine, threshold=threshold,
                                   min_lesion_mm3=min_lesion_mm3)
    table = lesion_table(labels, affine=crop_affine, prob=prob_c)
    location = [UNCLASSIFIED] * len(table)
    if (stored_mask is not None and stored_table is not None and len(table)
            and "location" in stored_table.columns):
        stored = label_components(np.asarray(stored_mask)[box], affine=crop_affine)
        where = dict(zip(stored_table["lesion_id"].astype(int), stored_table["location"],
                         strict=True))
        both = (labels > 0) & (stored > 0)
        pairs = np.stack([labels[both], stored[both]], axis=1).astype(np.int64)
        if len(pairs):
            uniq, counts = np.unique(pairs, axis=0, return_counts=True)
            best: dict[int, tuple[int, int]] = {}
            for (new_id, old_id), n in zip(uniq.tolist(), counts.tolist(), strict=True):
                if n > best.get(new_id, (0, 0))[0]:
                    best[new_id] = (n, old_id)
            index = {int(i): k for k, i in enumerate(table["lesion_id"])}
            for new_id, (_, old_id) in best.items():
                location[index[new_id]] = str(where.get(old_id, UNCLASSIFIED))
    table["location"] = location
    return Preview(labels, crop_affine, (offset[0], offset[1], offset[2]), table, threshold,
                   min_lesion_mm3)


def lesion_at(labels: np.ndarray, affine: np.ndarray, mm: tuple[float, float, float] | list[float],
              *, radius_vox: int = 1) -> int | None:
    """The lesion id at world point ``mm`` (RAS+ millimetres), or ``None``.

    A click on the voxel next to a small lesion still selects it: when the voxel itself is
    background, the most frequent lesion id within ``radius_vox`` voxels is taken.
    """
    vox = np.linalg.inv(np.asarray(affine, np.float64)) @ np.array([*mm, 1.0], np.float64)
    ijk = np.rint(vox[:3]).astype(int)
    shape = np.asarray(labels.shape[:3])
    if np.any(ijk < 0) or np.any(ijk >= shape):
        return None
    here = int(labels[tuple(ijk)])
    if here > 0:
        return here
    lo = np.maximum(ijk - radius_vox, 0)
    hi = np.minimum(ijk + radius_vox + 1, shape)
    patch = np.asarray(labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    found = patch[patch > 0]
    if found.size == 0:
        return None
    ids, counts = np.unique(found, return_counts=True)
    return int(ids[np.argmax(counts)])


def link_transforms(followup_to_baseline: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(baseline → follow-up, follow-up → baseline) world matrices for linked crosshairs.

    The follow-up viewer is the reference; ``followup_to_baseline`` is the stored rigid
    registration (identity when the visits have not been compared: then only scanner
    coordinates link them, which the page says).
    """
    f2b = np.eye(4) if followup_to_baseline is None else _registration_matrix(
        followup_to_baseline)
    return np.linalg.inv(f2b), f2b


def _registration_matrix(followup_to_baseline: np.ndarray) -> np.ndarray:
    """The stored registration as a float64 (4, 4) array, or ``ValueError``."""
    f2b = np.asarray(followup_to_baseline, dtype=np.float64)
    if f2b.shape != (4, 4) or not np.all(np.isfinite(f2b)):
        raise ValueError(f"followup_to_baseline must be a finite 4x4 matrix, got {f2b.shape}")
    return f2b

