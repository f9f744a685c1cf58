"""Preprocessing: working grid, resampling, intensity normalisation, cropping, brain extraction.

All functions are affine-aware: an image is always ``(data, affine)`` with ``affine`` mapping
(x, y, z) voxel indices to RAS+ mm. Images are resampled linearly, labels with nearest neighbour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ms_core.anatomy import TYPICAL_CONTRAST, load_template, synthetic_head
from ms_core.domain import Volume, check_affine
from ms_core.registration import register_affine

__all__ = [
    "Grid",
    "brain_mask_from_template",
    "brain_mask_from_transform",
    "crop_box",
    "normalize_intensity",
    "pad_to_multiple",
    "resample_to_grid",
    "template_to_subject",
    "warp_from_template",
    "working_grid",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: ``shape`` (X, Y, Z) and ``affine`` (4, 4) voxel -> RAS+ mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", check_affine(self.affine))


def working_grid(volume: Volume, spacing_mm: float = 1.0) -> Grid:
    """Axis-aligned RAS+ grid with ``spacing_mm`` voxels covering ``volume``'s field of view.

    >>> v = Volume(np.zeros((10, 10, 4)), np.diag([-2.0, 2.0, 5.0, 1.0]), "FLAIR")
    >>> g = working_grid(v)
    >>> g.shape, float(g.affine[0, 0])
    ((19, 19, 16), 1.0)
    """
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    corners = np.array([[i, j, k, 1.0] for i in (0, volume.shape[0] - 1)
                        for j in (0, volume.shape[1] - 1) for k in (0, volume.shape[2] - 1)])
    world = (volume.affine @ corners.T)[:3]
    lo, hi = world.min(axis=1), world.max(axis=1)
    shape = tuple(int(np.ceil((h - lo_) / spacing_mm - 1e-6)) + 1
                  for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lo
    return Grid((shape[0], shape[1], shape[2]), affine)


def resample_to_grid(data: np.ndarray, affine: np.ndarray, grid: Grid, *, order: int,
                     cval: float = 0.0) -> np.ndarray:
    """Resample ``data`` (on ``affine``) onto ``grid`` through world coordinates.

    ``order=1`` (linear) for images, ``order=0`` (nearest) for labels. Returns (X, Y, Z) on the
    grid, float32 for ``order > 0`` and the input dtype for ``order == 0``.
    """
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0 (labels), 1 or 3 (images), got {order}")
    m = np.linalg.inv(check_affine(affine)) @ grid.affine
    src = np.asarray(data) if order == 0 else np.asarray(data, dtype=np.float32)
    out = ndi.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=grid.shape,
                               order=order, mode="constant", cval=cval, prefilter=order > 1)
    return np.asarray(out)


def normalize_intensity(data: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Divide by the median intensity inside ``brain``; zero outside it. (X, Y, Z) float32.

    The median of brain tissue is robust to lesions, skull remnants and scanner gain, and keeps
    the FLAIR contrast ordering (CSF < WM < GM < lesion) the network was trained on.

    Raises ``ValueError`` for an empty mask or a non-positive median (a blank image).
    """
    mask = np.asarray(brain) > 0
    if not mask.any():
        raise ValueError("brain mask is empty: cannot normalise intensities")
    med = float(np.median(data[mask]))
    if not med > 0:
        raise ValueError(f"median brain intensity is {med}: the image looks blank")
    return np.asarray(np.where(mask, data / med, 0.0), dtype=np.float32)


def crop_box(mask: np.ndarray, margin: int = 4) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (the whole array if it is empty)."""
    idx = np.argwhere(np.asarray(mask) > 0)
    shape = np.asarray(mask).shape
    if idx.size == 0:
        return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, shape)
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])))


def pad_to_multiple(data: np.ndarray, multiple: int, *, minimum: int = 0
                    ) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the last three axes up to a multiple of ``multiple`` (and at least ``minimum``).

    Returns the padded array and the slices that cut the original back out of it.
    """
    spatial = data.shape[-3:]
    target = [max(minimum, int(np.ceil(s / multiple)) * multiple) for s in spatial]
    pads = [(0, 0)] * (data.ndim - 3) + [(0, t - s) for s, t in zip(spatial, target, strict=True)]
    back = tuple([slice(None)] * (data.ndim - 3) + [slice(0, s) for s in spatial])
    return np.pad(data, pads), back


def template_to_subject(volume: Volume, *, skull_stripped: bool = False,
                        resolution_mm: float = 3.0) -> np.ndarray:
    """Affine registration of the MNI152 template to ``volume``: (4, 4) subject -> MNI mm.

    The target is the template synthesised in the volume's contrast (:func:`synthetic_head`),
    with skull and scalp for raw scans or without for skull-stripped ones; both images are
    registered at ``resolution_mm`` with Mattes mutual information on a seeded 25 % sample
    (deterministic: same input, same transform).
    """
    modality = volume.modality if volume.modality in TYPICAL_CONTRAST else "FLAIR"
    coarse = working_grid(volume, resolution_mm)
    subject = resample_to_grid(volume.data, volume.affine, coarse, order=1)
    tpl = load_template()
    target = synthetic_head(modality, with_skull=not skull_stripped)
    tpl_grid = Grid(tpl.shape, tpl.affine)
    step = max(1, round(resolution_mm / float(abs(tpl.affine[0, 0]))))
    small = target[::step, ::step, ::step]
    small_aff = tpl_grid.affine @ np.diag([step, step, step, 1.0])
    return register_affine(subject, coarse.affine, small, small_aff, shrink=(2, 1),
                           sampling=0.25, seed=0)


def brain_mask_from_template(volume: Volume, grid: Grid, *, skull_stripped: bool = False
                             ) -> np.ndarray:
    """Brain mask on ``grid``: the MNI152 brain mask warped by :func:`template_to_subject`.

    Returns (X, Y, Z) bool (intracranial brain: parenchyma and the CSF between).
    """
    return brain_mask_from_transform(
        template_to_subject(volume, skull_stripped=skull_stripped), grid)


def brain_mask_from_transform(subject_to_mni: np.ndarray, grid: Grid) -> np.ndarray:
    """The MNI152 brain mask on ``grid`` for a known subject -> MNI matrix, holes filled."""
    mask = warp_from_template(load_template().brain, subject_to_mni, grid) >= 0.5
    return np.asarray(ndi.binary_fill_holes(mask))


def warp_from_template(template_map: np.ndarray, subject_to_mni: np.ndarray,
                       grid: Grid) -> np.ndarray:
    """Resample a map on the template grid onto ``grid`` (linear), given the subject -> MNI
    matrix of :func:`template_to_subject`. Returns (X, Y, Z) float32."""
    m = np.linalg.inv(load_template().affine) @ subject_to_mni @ grid.affine
    out = ndi.affine_transform(template_map, m[:3, :3], offset=m[:3, 3],
                               output_shape=grid.shape, order=1, mode="constant", cval=0.0)
    return np.asarray(out, dtype=np.float32)
