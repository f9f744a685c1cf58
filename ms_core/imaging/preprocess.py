"""Preprocessing: working grid, resampling, intensity normalisation, cropping, brain extraction,
optional N4 bias-field correction and denoising.

All functions are affine-aware: an image is always ``(data, affine)`` with ``affine`` mapping
(x, y, z) voxel indices to RAS+ mm. Images are resampled linearly, labels with nearest neighbour.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from ms_core.foundation.domain import Volume, check_affine
from ms_core.foundation.io import from_sitk, itk_single_thread, to_sitk
from ms_core.imaging.anatomy import TYPICAL_CONTRAST, load_template, synthetic_head
from ms_core.imaging.registration import register_affine

__all__ = [
    "Grid",
    "MatrixMemo",
    "brain_mask_from_template",
    "brain_mask_from_transform",
    "crop_box",
    "denoise",
    "match_histogram",
    "n4_bias_correct",
    "normalize_intensity",
    "normalize_percentile",
    "normalize_to_white_matter",
    "normalize_zscore",
    "pad_to_multiple",
    "register_visit_pair",
    "resample_to_grid",
    "template_to_subject",
    "volume_digest",
    "warp_from_template",
    "white_matter_level",
    "working_grid",
]

log = logging.getLogger(__name__)
DenoiseMethod = Literal["curvature", "median"]


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


#: Registered white-matter prior above which voxels inform :func:`white_matter_level`.
WM_PRIOR_MIN = 0.5


def white_matter_level(data: np.ndarray, brain: np.ndarray, wm_prior: np.ndarray, *,
                       bins: int = 200) -> float:
    """The white-matter intensity of ``data``: the mode of its histogram inside ``brain`` where
    the registered white-matter prior (``wm_prior``, (X, Y, Z) 0-1) exceeds 0.5.

    Lesions and grey-matter partial volume form tails of that histogram, so its peak stays on
    normal-appearing white matter whatever the lesion load or the grey / white matter contrast,
    where the brain median moves with both (real scans: within 2.5 % of the white-matter median
    of patient26, MSLesSeg P18 and P39 against 8 % for the brain median; docs/segmentation.md).
    The histogram spans the 1st-99th percentiles in ``bins`` bins, smoothed over 2 bins.

    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(100.0, 5.0, (20, 20, 20))
    >>> img[:5] = rng.normal(170.0, 20.0, (5, 20, 20))  # a quarter of it lesion
    >>> round(white_matter_level(img, img > 0, np.ones(img.shape)) / 100.0, 1)
    1.0

    Raises ``ValueError`` when fewer than 1000 voxels qualify (no white matter in the mask).
    """
    arr = np.asarray(data, dtype=np.float32)
    prior = np.asarray(wm_prior)
    if prior.shape != arr.shape:
        raise ValueError(f"white-matter prior shape {prior.shape} differs from image shape "
                         f"{arr.shape}; warp the prior onto the image grid first")
    values = arr[(np.asarray(brain) > 0) & (prior > WM_PRIOR_MIN)]
    if values.size < 1000:
        raise ValueError(f"only {values.size} brain voxels have a white-matter prior above "
                         f"{WM_PRIOR_MIN}: is the template registered to this image?")
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if not hi > lo:
        raise ValueError("white matter has no intensity spread: the image looks blank")
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    peak = int(np.argmax(ndi.gaussian_filter1d(counts.astype(np.float64), 2.0)))
    level = 0.5 * float(edges[peak] + edges[peak + 1])
    if not level > 0:
        raise ValueError(f"white-matter intensity is {level}: the image looks blank")
    return level


def normalize_to_white_matter(data: np.ndarray, brain: np.ndarray,
                              wm_prior: np.ndarray) -> np.ndarray:
    """Divide by :func:`white_matter_level`; zero outside ``brain``. (X, Y, Z) float32."""
    mask = np.asarray(brain) > 0
    if not mask.any():
        raise ValueError("brain mask is empty: cannot normalise intensities")
    level = white_matter_level(data, mask, wm_prior)
    return np.asarray(np.where(mask, np.asarray(data, np.float32) / level, 0.0),
                      dtype=np.float32)


def normalize_zscore(data: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Mean 0 and standard deviation 1 inside ``brain``; zero outside it (nnU-Net's MRI
    normalisation with its brain mask). (X, Y, Z) float32.

    >>> out = normalize_zscore(np.arange(8.0).reshape(2, 2, 2), np.ones((2, 2, 2), bool))
    >>> round(float(out.mean()), 6), round(float(out.std()), 6)
    (0.0, 1.0)
    """
    mask = np.asarray(brain) > 0
    if not mask.any():
        raise ValueError("brain mask is empty: cannot normalise intensities")
    vals = np.asarray(data[mask], dtype=np.float64)
    sd = float(vals.std())
    if not sd > 0:
        raise ValueError("the image has no intensity spread inside the brain: it looks blank")
    return np.asarray(np.where(mask, (data - vals.mean()) / sd, 0.0), dtype=np.float32)


def normalize_percentile(data: np.ndarray, brain: np.ndarray, lo: float = 0.5,
                         hi: float = 99.5) -> np.ndarray:
    """The brain's ``lo`` and ``hi`` intensity percentiles mapped to 0 and 1 (values beyond
    clipped, as MONAI's ``ScaleIntensityRangePercentiles`` with ``clip=True``); zero outside
    ``brain``. (X, Y, Z) float32.

    >>> img = np.arange(8.0).reshape(2, 2, 2)
    >>> out = normalize_percentile(img, np.ones(img.shape, bool), 0, 100)
    >>> float(out.min()), float(out.max())
    (0.0, 1.0)
    """
    mask = np.asarray(brain) > 0
    if not mask.any():
        raise ValueError("brain mask is empty: cannot normalise intensities")
    a, b = np.percentile(data[mask], [lo, hi])
    if not b > a:
        raise ValueError("the image has no intensity spread inside the brain: it looks blank")
    scaled = np.clip((data - a) / (b - a), 0.0, 1.0)
    return np.asarray(np.where(mask, scaled, 0.0), dtype=np.float32)


def match_histogram(moving: np.ndarray, reference: np.ndarray, brain: np.ndarray, *,
                    quantiles: int = 1001) -> np.ndarray:
    """``moving`` mapped so that its intensities inside ``brain`` follow ``reference``'s.

    Monotone piecewise-linear quantile mapping: the moving image's 0.0-100.0 percentiles inside
    the brain (``quantiles`` of them) go to the reference's; values beyond the extremes
    extend the end segments' slopes. Both images on one grid; zero outside ``brain``.
    (X, Y, Z) float32. One way to harmonise two visits before subtracting them; the other is
    dividing each by its white-matter level (:func:`normalize_to_white_matter`); both are
    measured by ``bench/harmonisation_check.py``.

    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(1.0, 0.1, (20, 20, 20))
    >>> mov = 3.0 * ref + 2.0  # another scanner gain and offset
    >>> out = match_histogram(mov, ref, np.ones(ref.shape, bool))
    >>> bool(np.abs(out - ref).max() < 1e-3)
    True
    """
    mask = np.asarray(brain) > 0
    if np.asarray(moving).shape != mask.shape or np.asarray(reference).shape != mask.shape:
        raise ValueError(f"shapes differ: moving {np.shape(moving)}, reference "
                         f"{np.shape(reference)}, brain {mask.shape}; resample first")
    if not mask.any():
        raise ValueError("brain mask is empty: cannot match histograms")
    q = np.linspace(0.0, 100.0, quantiles)
    src = np.percentile(np.asarray(moving, np.float64)[mask], q)
    dst = np.percentile(np.asarray(reference, np.float64)[mask], q)
    src, keep = np.unique(src, return_index=True)  # np.interp needs rising x
    dst = dst[keep]
    if src.size < 2:
        raise ValueError("the moving image is constant inside the brain: nothing to match")
    mov = np.asarray(moving, np.float64)
    out = np.interp(mov, src, dst)
    lo_slope = (dst[1] - dst[0]) / (src[1] - src[0])
    hi_slope = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    out = np.where(mov < src[0], dst[0] + (mov - src[0]) * lo_slope, out)
    out = np.where(mov > src[-1], dst[-1] + (mov - src[-1]) * hi_slope, out)
    return np.asarray(np.where(mask, out, 0.0), dtype=np.float32)


def _check_image_and_brain(data: np.ndarray, brain: np.ndarray, what: str
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``data`` as (X, Y, Z) float32 and ``brain`` as bool, checked for shape and emptiness."""
    arr = np.asarray(data, dtype=np.float32)
    mask = np.asarray(brain) > 0
    if arr.ndim != 3:
        raise ValueError(f"{what} needs a 3D image (X, Y, Z), got shape {arr.shape}")
    if mask.shape != arr.shape:
        raise ValueError(f"{what}: brain mask shape {mask.shape} differs from image shape "
                         f"{arr.shape}; resample the mask onto the image grid first")
    if not mask.any():
        raise ValueError(f"brain mask is empty: cannot run {what}")
    return arr, mask


def _box_affine(affine: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Affine of the sub-array ``data[box]`` of an image on ``affine``."""
    shift = np.eye(4)
    shift[:3, 3] = [float(b.start) for b in box]
    return np.asarray(check_affine(affine) @ shift, dtype=np.float64)


def n4_bias_correct(data: np.ndarray, affine: np.ndarray, brain: np.ndarray | None, *,
                    shrink: int = 4, iterations: tuple[int, ...] = (50, 50, 30)) -> np.ndarray:
    """N4 bias-field correction (Tustison et al., IEEE TMI 2010) inside ``brain``, or of the
    whole head when ``brain`` is ``None``.

    The standard fast recipe: SimpleITK's ``N4BiasFieldCorrectionImageFilter`` estimates the
    smooth log bias field on the image and mask subsampled by ``shrink`` (default B-spline
    settings: 4 control points per axis at the first level, order 3), and the field is then
    evaluated on the full-resolution grid and divided out.

    - With a ``brain`` mask (segmentation preprocessing): only positive voxels inside ``brain``
      drive the fit (N4 works on log intensities), the image is cropped to the mask first, the
      field is divided out inside the mask only, and the result is rescaled so that the median
      over the fitted voxels is unchanged (intensities keep their original range).
    - ``brain=None`` (raw images with skull, as brain volumetry in
      :mod:`ms_core.segmentation.tissue` uses it): negative intensities are set to 0, the head (an
      Otsu threshold, 200 bins, of the subsampled image) drives the fit, and the field is divided
      out of the whole image without rescaling.

    Runs single-threaded: same input, bit-identical output, whatever the number of cores.
    About 1-5 s for a whole brain at 1 mm on one CPU core (shrink 4, the default iterations).

    Parameters
    ----------
    data
        (X, Y, Z) image with positive intensities inside the brain (any real dtype).
    affine
        (4, 4) voxel -> RAS+ mm matrix of ``data`` (without shear); sets the physical spacing
        of the B-spline lattice.
    brain
        (X, Y, Z) bool brain mask on the same grid, or ``None`` for the whole head.
    shrink
        Subsampling factor per axis for the fit (>= 1; 4 is the usual choice at 1 mm; at most
        an eighth of the axis length).
    iterations
        Maximum iterations per fitting level; its length is the number of levels (the control
        lattice doubles at each level).

    Returns
    -------
    (X, Y, Z) float32: ``data`` divided by the estimated bias field inside ``brain`` (unchanged
    outside it), or everywhere for ``brain=None``.

    Raises
    ------
    ValueError
        for a non-3D image, a mask of another shape, an empty mask, too few positive brain
        (or head) voxels, ``shrink < 1``, or empty or non-positive ``iterations``.
    """
    import SimpleITK as sitk

    if shrink < 1:
        raise ValueError(f"shrink must be an integer >= 1, got {shrink}")
    if len(iterations) == 0 or any(int(i) < 1 for i in iterations):
        raise ValueError(f"iterations must be one or more positive counts, got {iterations}")
    if brain is None:
        return _n4_whole_head(data, affine, shrink, iterations)
    arr, mask = _check_image_and_brain(data, brain, "N4 bias correction")
    box = crop_box(mask, margin=2)
    sub, sub_mask = arr[box], mask[box]
    fit = sub_mask & (sub > 0)
    factors = [max(1, min(int(shrink), n // 8)) for n in sub.shape]
    need = 64 * int(np.prod(factors))
    if int(fit.sum()) < need:
        raise ValueError(f"N4 needs at least {need} positive voxels inside the brain, got "
                         f"{int(fit.sum())}; check the image and mask, or lower shrink")
    img = to_sitk(sub, _box_affine(affine, box))
    fit_img = to_sitk(fit.astype(np.uint8), _box_affine(affine, box))
    log_bias = _n4_log_field(img, sitk.Shrink(img, factors), sitk.Shrink(fit_img, factors),
                             iterations)
    corrected = sub / np.exp(log_bias.astype(np.float64))
    corrected *= float(np.median(sub[fit])) / float(np.median(corrected[fit]))
    log.debug("N4: shrink %s, %d levels, bias range x%.3f..x%.3f", factors, len(iterations),
              float(np.exp(log_bias[fit].min())), float(np.exp(log_bias[fit].max())))
    out = arr.copy()
    out[box] = np.where(sub_mask, corrected, sub)
    return out


def _n4_log_field(image: Any, small: Any, small_mask: Any, iterations: tuple[int, ...]
                  ) -> np.ndarray:
    """N4 fitted on ``small`` inside ``small_mask`` (SimpleITK images), the log bias field
    evaluated on ``image``'s grid: (X, Y, Z) float32.

    Fit and field evaluation both run on one thread: ITK's threaded sums are unordered, and the
    B-spline field that ``GetLogBiasFieldAsImage`` evaluates (with the global default thread
    count, which the filter's own setting does not reach) differs in the last bits with the
    number of threads. So the same input gives bit-identical output on any machine.
    """
    import SimpleITK as sitk

    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetNumberOfThreads(1)
    with itk_single_thread("N4 bias correction"):
        n4.Execute(small, small_mask)
        log_bias, _ = from_sitk(n4.GetLogBiasFieldAsImage(image))
    return log_bias


def _n4_whole_head(data: np.ndarray, affine: np.ndarray, shrink: int,
                   iterations: tuple[int, ...]) -> np.ndarray:
    """:func:`n4_bias_correct` with ``brain=None``: Otsu head mask, field removed everywhere."""
    import SimpleITK as sitk

    arr = np.maximum(np.asarray(data, dtype=np.float32), 0.0)
    if arr.ndim != 3:
        raise ValueError(f"N4 bias correction needs a 3D image (X, Y, Z), got shape {arr.shape}")
    factors = [max(1, min(int(shrink), n // 8)) for n in arr.shape]
    img = to_sitk(arr, check_affine(affine))
    small = sitk.Shrink(img, factors)
    head = sitk.OtsuThreshold(small, 0, 1, 200)  # 1 above the threshold: the head
    n_head = int(sitk.GetArrayViewFromImage(head).sum())
    if n_head < 64:
        raise ValueError(f"N4 needs at least 64 head voxels after subsampling by {factors}, "
                         f"got {n_head}; is the image blank?")
    log_bias = _n4_log_field(img, small, head, iterations)
    return np.asarray(arr * np.exp(-log_bias), dtype=np.float32)


def denoise(data: np.ndarray, brain: np.ndarray, *, method: DenoiseMethod = "curvature",
            iterations: int = 5) -> np.ndarray:
    """Edge-preserving denoising of ``data`` inside ``brain``; voxels outside are unchanged.

    Methods:

    - ``"curvature"``: SimpleITK's ``CurvatureFlowImageFilter`` (mean-curvature motion of the
      iso-intensity surfaces, time step 0.0625 per iteration, ``iterations`` steps). It smooths
      along edges, not across them, and is invariant to the intensity scale, so it needs no
      noise level.
    - ``"median"``: a 3 x 3 x 3 median filter (``scipy.ndimage.median_filter``); ``iterations``
      is ignored. Keeps step edges, removes impulse noise, but erases structures of 1 voxel.

    Both work in voxel units: use them on an isotropic grid (the 1 mm working grid). Only brain
    voxels feed the filter: outside ``brain`` each voxel takes its nearest brain voxel's value
    first, so the mask border is not treated as an edge.

    Parameters
    ----------
    data
        (X, Y, Z) image (any real dtype).
    brain
        (X, Y, Z) bool brain mask on the same grid.
    method
        ``"curvature"`` or ``"median"``.
    iterations
        Curvature-flow steps (>= 1).

    Returns
    -------
    (X, Y, Z) float32 denoised inside ``brain``.

    Raises
    ------
    ValueError
        for an unknown method, ``iterations < 1``, a non-3D image, a mask of another shape or
        an empty mask.

    >>> img = np.full((12, 12, 12), 100.0); img[6, 6, 6] = 400.0
    >>> float(denoise(img, img > 0, method="median")[6, 6, 6])
    100.0
    """
    import SimpleITK as sitk

    if method not in ("curvature", "median"):
        raise ValueError(f"denoise method must be 'curvature' or 'median', got {method!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    arr, mask = _check_image_and_brain(data, brain, "denoising")
    box = crop_box(mask, margin=2)
    sub = arr[box]
    # Outside the brain, copy the nearest brain voxel: the mask border is then no artificial
    # edge (curvature flow would shrink it, the median would pull zeros in).
    nearest = ndi.distance_transform_edt(~mask[box], return_distances=False, return_indices=True)
    sub = sub[tuple(nearest)]
    if method == "median":
        smooth = np.asarray(ndi.median_filter(sub, size=3, mode="nearest"), dtype=np.float32)
    else:
        flow = sitk.CurvatureFlowImageFilter()
        flow.SetTimeStep(0.0625)  # 0.5 / 2^3: the explicit scheme's stable step in 3D
        flow.SetNumberOfIterations(int(iterations))
        # Voxel units: the identity affine gives the filter unit spacing.
        smooth, _ = from_sitk(flow.Execute(to_sitk(sub, np.eye(4))))
    out = arr.copy()
    out[box] = np.where(mask[box], smooth, arr[box])
    return out


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


class MatrixMemo:
    """Results of deterministic registrations, remembered for the life of the process.

    A small LRU map from a hashable key to a (4, 4) matrix, safe across threads (the app's job
    runner and the script thread share it). Entries are copied in and out, so a caller that
    changes its matrix does not change the memo. A key and a matrix are about 200 bytes, so
    the default 256 entries cost nothing.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[object, ...]) -> np.ndarray | None:
        """A copy of the matrix remembered for ``key``, or None."""
        with self._lock:
            known = self._entries.get(key)
            if known is None:
                return None
            self._entries.move_to_end(key)
            return known.copy()

    def put(self, key: tuple[object, ...], matrix: np.ndarray) -> None:
        """Remember a copy of ``matrix``; the least recently used entries beyond
        ``max_entries`` are forgotten."""
        with self._lock:
            self._entries[key] = np.array(matrix, dtype=np.float64, copy=True)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: Template registrations (:func:`template_to_subject`).
_TRANSFORMS = MatrixMemo()
#: Visit-to-visit registrations (:func:`register_visit_pair`).
_VISIT_PAIRS = MatrixMemo()


def volume_digest(volume: Volume) -> str:
    """Hex sha256 of a volume's voxels (as float32), shape and affine: equal for equal images.

    About 50 ms for a 256 x 256 x 176 scan, against about 10 s for the registration it keys.
    """
    data = np.ascontiguousarray(volume.data, dtype=np.float32)
    h = hashlib.sha256(repr((data.shape, "float32")).encode())
    h.update(data.data)  # the contiguous buffer, not a copy
    h.update(np.ascontiguousarray(volume.affine, dtype=np.float64).tobytes())
    return h.hexdigest()


def template_to_subject(volume: Volume, *, skull_stripped: bool = False,
                        resolution_mm: float = 3.0) -> np.ndarray:
    """Affine registration of the MNI152 template to ``volume``: (4, 4) subject -> MNI mm.

    The target is the template synthesised in the volume's contrast (:func:`synthetic_head`),
    with skull and scalp for raw scans or without for skull-stripped ones; both images are
    registered at ``resolution_mm`` with Mattes mutual information on a seeded 25 % sample
    (deterministic: same input, same transform).

    Being deterministic, the result is remembered for the life of the process, keyed by
    :func:`volume_digest`, the modality and the two options. A visit segmented after a
    comparison that extracted its brain (the app's "Compare" before "Segment"), or segmented
    again with other settings through the library, skips the registration (about 10 s on 2
    cores); so do the test suite's repeated runs on the same demo visits. A copy is returned.
    """
    modality = volume.modality if volume.modality in TYPICAL_CONTRAST else "FLAIR"
    key = (volume_digest(volume), modality, bool(skull_stripped), float(resolution_mm))
    known = _TRANSFORMS.get(key)
    if known is not None:
        return known
    coarse = working_grid(volume, resolution_mm)
    subject = resample_to_grid(volume.data, volume.affine, coarse, order=1)
    tpl = load_template()
    target = synthetic_head(modality, with_skull=not skull_stripped)
    tpl_grid = Grid(tpl.shape, tpl.affine)
    step = max(1, round(resolution_mm / float(abs(tpl.affine[0, 0]))))
    small = target[::step, ::step, ::step]
    small_aff = tpl_grid.affine @ np.diag([step, step, step, 1.0])
    matrix = register_affine(subject, coarse.affine, small, small_aff, shrink=(2, 1),
                             sampling=0.25, seed=0)
    _TRANSFORMS.put(key, matrix)
    return matrix


def register_visit_pair(baseline: Volume, followup: Volume, *, resolution_mm: float = 2.0,
                        seed: int = 0) -> np.ndarray:
    """Rigid registration of two visits: (4, 4) matrix mapping follow-up world mm to baseline
    world mm.

    Both images are resampled to ``resolution_mm`` RAS grids first, so voxel size and
    orientation may differ between visits; Mattes mutual information on a seeded 25 % sample
    (deterministic for a given ``seed``). Like :func:`template_to_subject`, the result is
    remembered for the life of the process, keyed by both images' :func:`volume_digest`, the
    resolution and the seed: the lesion comparison (:mod:`ms_core.longitudinal.tracking`) and the
    atrophy of the same interval (:mod:`ms_core.longitudinal.atrophy`) register a pair once. Raises
    ValueError when an image is blank. A copy is returned.
    """
    key = (volume_digest(baseline), volume_digest(followup), float(resolution_mm), int(seed))
    known = _VISIT_PAIRS.get(key)
    if known is not None:
        return known
    fixed_grid = working_grid(followup, resolution_mm)
    moving_grid = working_grid(baseline, resolution_mm)
    fixed = resample_to_grid(followup.data, followup.affine, fixed_grid, order=1)
    moving = resample_to_grid(baseline.data, baseline.affine, moving_grid, order=1)
    matrix = register_affine(fixed, fixed_grid.affine, moving, moving_grid.affine,
                             rigid_only=True, seed=seed, sampling=0.25, shrink=(2, 1))
    _VISIT_PAIRS.put(key, matrix)
    return matrix


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
