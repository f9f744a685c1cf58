"""Percentage brain volume change between two visits: halfway-space registration,
differential bias correction, and the boundary shift integral or Jacobian integration
(:func:`percent_brain_volume_change`, :func:`pbvc_by_method`).

Method, references and accuracy: ``docs/atrophy.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from ms_core.foundation.domain import Volume, voxel_volume_ml
from ms_core.foundation.io import itk_single_thread, to_sitk
from ms_core.imaging.anatomy import load_template
from ms_core.imaging.preprocess import (
    Grid,
    n4_bias_correct,
    register_visit_pair,
    resample_to_grid,
    template_to_subject,
    warp_from_template,
)
from ms_core.imaging.registration import ncc
from ms_core.segmentation.tissue import (
    Classified,
    check_matrix,
    check_volume,
    classify_tissue,
    priors_on_grid,
)

__all__ = [
    "PBVC_METHODS",
    "PBVCMethod",
    "PBVCResult",
    "annualised_pct_per_year",
    "pbvc_by_method",
    "percent_brain_volume_change",
]

log = logging.getLogger(__name__)

PBVCMethod = Literal["bsi", "jacobian"]
#: Methods accepted by :func:`percent_brain_volume_change`, the default first.
PBVC_METHODS: tuple[str, ...] = ("bsi", "jacobian")


#: Intensity window of the boundary shift integral, as fractions of the CSF -> tissue step.
_BSI_WINDOW = (0.2, 0.8)
#: Half-width of the boundary region of the boundary shift integral, in mm.
_BSI_HALF_WIDTH_MM = 3.0
#: Smoothing of the differential bias field, in mm.
_DBC_SIGMA_MM = 10.0
#: Demons iterations and Gaussian regularisation of the displacement field (mm).
_DEMONS_ITERATIONS = 40
_DEMONS_SIGMA_MM = 1.0


@dataclass(frozen=True, eq=False)
class PBVCResult:
    """Percentage brain volume change from a baseline to a follow-up (negative = loss).

    Attributes
    ----------
    pbvc_pct
        100 * (follow-up - baseline) / baseline brain volume, in %.
    method
        ``"bsi"`` (boundary shift integral) or ``"jacobian"`` (Jacobian integration).
    qc_ncc
        Normalised cross-correlation of the two registered, normalised images inside the brain
        boundary region: 0.97-0.99 for the demo study's pairs; values below about 0.9 mean poor
        registration, motion or artefacts, so check the images before trusting the PBVC.
    baseline_brain_ml
        Baseline brain volume used as the denominator, in ml.
    volume_change_ml
        Follow-up minus baseline brain volume, in ml.
    followup_to_baseline
        (4, 4) rigid matrix mapping follow-up world mm to baseline world mm.
    warnings
        Protocol differences that make the measurement less reliable.
    """

    pbvc_pct: float
    method: str
    qc_ncc: float
    baseline_brain_ml: float
    volume_change_ml: float
    followup_to_baseline: np.ndarray
    warnings: tuple[str, ...] = field(default=())


def annualised_pct_per_year(pbvc_pct: float, interval_years: float) -> float:
    """Annualised PBVC in %/year, assuming a constant yearly rate (compound).

    ``((1 + pbvc / 100) ** (1 / years) - 1) * 100``; for the usual intervals and rates it
    differs from ``pbvc / years`` by less than 0.01 %/year.

    >>> round(annualised_pct_per_year(-1.99, 2.0), 3)
    -1.0
    """
    if not np.isfinite(interval_years) or interval_years <= 0:
        raise ValueError(f"interval_years must be > 0, got {interval_years}; check visit dates")
    if not np.isfinite(pbvc_pct) or pbvc_pct <= -100.0:
        raise ValueError(f"pbvc_pct must be a finite value > -100 %, got {pbvc_pct}")
    return float(((1.0 + pbvc_pct / 100.0) ** (1.0 / interval_years) - 1.0) * 100.0)


def _rigid_half(matrix: np.ndarray) -> np.ndarray:
    """The rigid transform H with H @ H = ``matrix`` (rotation angle and translation halved)."""
    from scipy.spatial.transform import Rotation

    rot = matrix[:3, :3]
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt  # nearest rotation (drops tiny scale/shear of a numerically rigid matrix)
    half = Rotation.from_matrix(rot).as_rotvec() / 2.0
    r_half = Rotation.from_rotvec(half).as_matrix()
    # H = [R_h, t_h]; H @ H = [R, R_h t_h + t_h]  =>  t_h = (R_h + I)^-1 t.
    out = np.eye(4)
    out[:3, :3] = r_half
    out[:3, 3] = np.linalg.solve(r_half + np.eye(3), matrix[:3, 3])
    return out


# ============================================================================== longitudinal
@dataclass(frozen=True, eq=False)
class _HalfwayPair:
    """Both visits on one grid in halfway space, bias corrected, and the mean classified.

    ``covered`` (X, Y, Z) bool: inside the field of view of both images.
    """

    grid: Grid
    baseline: np.ndarray
    followup: np.ndarray
    brain: np.ndarray
    classified: Classified
    covered: np.ndarray


def _box_grid(lo_mm: np.ndarray, hi_mm: np.ndarray, spacing_mm: float) -> Grid:
    """Axis-aligned RAS grid with ``spacing_mm`` voxels covering the world box [lo, hi]."""
    n = np.ceil((hi_mm - lo_mm) / spacing_mm - 1e-6).astype(int) + 1
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lo_mm
    return Grid((int(n[0]), int(n[1]), int(n[2])), affine)


def _halfway_grid(baseline: Volume, to_halfway: np.ndarray, baseline_to_mni: np.ndarray,
                  spacing_mm: float, margin_mm: float = 8.0) -> Grid:
    """Halfway-space grid around the intracranial volume (within the baseline's view)."""
    shape = baseline.shape
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    world = (to_halfway @ baseline.affine @ corners.T)[:3]
    coarse = _box_grid(world.min(axis=1), world.max(axis=1), 4.0)
    icv = warp_from_template(load_template().brain, baseline_to_mni @ np.linalg.inv(to_halfway),
                             coarse) > 0.01
    idx = np.argwhere(icv)
    if idx.size == 0:
        raise ValueError("the brain lies outside the baseline image: template registration "
                         "failed; check the image orientation")
    lo = (coarse.affine @ np.append(idx.min(axis=0), 1.0))[:3] - margin_mm
    hi = (coarse.affine @ np.append(idx.max(axis=0), 1.0))[:3] + margin_mm
    return _box_grid(lo, hi, spacing_mm)


def _smooth_in_mask(values: np.ndarray, mask: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Normalised Gaussian convolution of ``values`` known inside ``mask`` (X, Y, Z)."""
    m = mask.astype(np.float32)
    num = ndi.gaussian_filter(np.where(mask, values, 0.0).astype(np.float32), sigma_vox)
    den = ndi.gaussian_filter(m, sigma_vox)
    return np.asarray(num / np.maximum(den, 1e-3), dtype=np.float32)


def _halfway_pair(baseline: Volume, followup: Volume, f2b: np.ndarray,
                  baseline_brain: np.ndarray | None, spacing_mm: float) -> _HalfwayPair:
    """Resample both visits into halfway space, correct the bias and classify the mean."""
    b_corr = n4_bias_correct(baseline.data, baseline.affine, None)
    f_corr = n4_bias_correct(followup.data, followup.affine, None)
    half = _rigid_half(f2b)  # halfway y -> baseline world: half @ y; follow-up: inv(half) @ y
    s2m = template_to_subject(Volume(b_corr, baseline.affine, baseline.modality))
    grid = _halfway_grid(baseline, np.linalg.inv(half), s2m, spacing_mm)
    b = resample_to_grid(b_corr, np.linalg.inv(half) @ baseline.affine, grid, order=1)
    f = resample_to_grid(f_corr, half @ followup.affine, grid, order=1)
    covered = (resample_to_grid(np.ones(baseline.shape, np.uint8),
                                np.linalg.inv(half) @ baseline.affine, grid, order=0) > 0) & (
        resample_to_grid(np.ones(followup.shape, np.uint8), half @ followup.affine, grid,
                         order=0) > 0)
    icv, priors = priors_on_grid(s2m @ half, grid)
    # Global gain, then classification of the mean image (brain, tissue fractions).
    wm_prior = (priors[2] > 0.8) & (icv > 0.99) & (b > 0) & (f > 0)
    if not wm_prior.any():
        raise ValueError("no white matter found in both images: check the registration")
    f = np.asarray(f * (np.median(b[wm_prior]) / np.median(f[wm_prior])), dtype=np.float32)
    cls = classify_tissue(0.5 * (b + f), icv, priors)
    # Differential bias: smoothed log ratio in white matter at least 2 mm from other tissue,
    # where atrophy (moving boundaries) does not change the intensity.
    stable_wm = ndi.binary_erosion((cls.fractions[2] > 0.95) & (icv > 0.99),
                                   iterations=max(1, round(2.0 / spacing_mm)))
    stable_wm &= (b > 0) & (f > 0)
    if int(stable_wm.sum()) < 1000:
        raise ValueError("too little white matter to correct the bias difference between the "
                         "visits; check the registration and the image contrast")
    ratio = np.zeros(grid.shape, np.float32)
    ratio[stable_wm] = np.log(f[stable_wm] / b[stable_wm])
    smooth = _smooth_in_mask(ratio, stable_wm, _DBC_SIGMA_MM / spacing_mm)
    f = np.asarray(f * np.exp(-smooth), dtype=np.float32)
    if baseline_brain is not None:
        brain = resample_to_grid(np.asarray(baseline_brain, dtype=np.float32),
                                 np.linalg.inv(half) @ baseline.affine, grid, order=1) >= 0.5
    else:
        brain = (cls.fractions[1] + cls.fractions[2]) >= 0.5
    return _HalfwayPair(grid, b, f, brain, cls, covered)


@dataclass(frozen=True)
class _Levels:
    """Intensity of CSF, GM and WM in one image, from voxels that atrophy does not change."""

    csf: float
    gm: float
    wm: float

    @property
    def contrast(self) -> float:
        """Position of GM between CSF (0) and WM (1): a property of the sequence."""
        return (self.gm - self.csf) / (self.wm - self.csf)


def _stable_regions(pair: _HalfwayPair) -> tuple[np.ndarray, np.ndarray]:
    """Parenchyma > 4 mm inside the brain surface and CSF > 3 mm outside it (ventricle cores).

    Both stay the same tissue when the boundary moves by up to a few mm, so their intensities
    measure the sequence's contrast, not the atrophy.
    """
    cls = pair.classified
    brain_frac = cls.fractions[1] + cls.fractions[2]
    inside = cls.icv > 0.99
    depth_in = ndi.distance_transform_edt(pair.brain)
    depth_out = ndi.distance_transform_edt(~pair.brain)
    spacing_mm = float(abs(pair.grid.affine[0, 0]))
    parenchyma = inside & (brain_frac > 0.98) & (depth_in > 4.0 / spacing_mm)
    csf = np.zeros_like(parenchyma)
    for dist_mm, purity in ((3.0, 0.98), (2.0, 0.98), (2.0, 0.9), (1.0, 0.9)):
        csf = inside & (cls.fractions[0] > purity) & (depth_out > dist_mm / spacing_mm)
        if int(csf.sum()) >= 200:
            break
    if int(csf.sum()) < 20 or int(parenchyma.sum()) < 200:
        raise ValueError("too little stable CSF or parenchyma to normalise the intensities; "
                         "is this a whole-brain image?")
    return parenchyma, csf


def _levels(image: np.ndarray, fractions: np.ndarray, parenchyma: np.ndarray,
            csf: np.ndarray) -> _Levels:
    """GM and WM intensity by least squares on the stable parenchyma (GM/WM fractions of the
    mean image), CSF as the median of the stable CSF."""
    x = np.stack([fractions[1][parenchyma], fractions[2][parenchyma]], axis=1)
    (gm, wm), *_ = np.linalg.lstsq(x.astype(np.float64), image[parenchyma].astype(np.float64),
                                   rcond=None)
    return _Levels(csf=float(np.median(image[csf])), gm=float(gm), wm=float(wm))


def _normalised_pair(pair: _HalfwayPair, contrast_tol: float = 0.03
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """Both images mapped so that CSF is 0 and the parenchymal class nearest to CSF is 1.

    Same contrast (same sequence): after the differential bias correction both images share
    one intensity scale, so one mapping (the mean of their levels) serves both and any error in
    the levels cancels in the difference. Different contrast (GM position between CSF and WM
    differs by more than ``contrast_tol``, e.g. a scanner change): each image with its own
    levels. Returns ``(nb, nf, relative contrast change)``.
    """
    parenchyma, csf = _stable_regions(pair)
    frac = pair.classified.fractions
    lb = _levels(pair.baseline, frac, parenchyma, csf)
    lf = _levels(pair.followup, frac, parenchyma, csf)
    for name, lev in (("baseline", lb), ("follow-up", lf)):
        if abs(lev.wm - lev.gm) < 1e-6 or abs(lev.wm - lev.csf) < 1e-6:
            raise ValueError(f"no grey/white/CSF contrast in the {name} image: {lev}")
    change = lf.contrast / lb.contrast - 1.0

    def norm(image: np.ndarray, lev: _Levels) -> np.ndarray:
        near = lev.gm if abs(lev.gm - lev.csf) <= abs(lev.wm - lev.csf) else lev.wm
        return np.asarray((image - lev.csf) / (near - lev.csf), dtype=np.float32)

    if abs(change) > contrast_tol:
        return norm(pair.baseline, lb), norm(pair.followup, lf), change
    shared = _Levels(csf=0.5 * (lb.csf + lf.csf), gm=0.5 * (lb.gm + lf.gm),
                     wm=0.5 * (lb.wm + lf.wm))
    return norm(pair.baseline, shared), norm(pair.followup, shared), change


def _boundary_region(brain: np.ndarray, icv: np.ndarray, half_width_vox: int) -> np.ndarray:
    """Voxels within ``half_width_vox`` of the brain surface (outer, ventricular, sulcal)."""
    ball = ndi.generate_binary_structure(3, 1)
    outer = ndi.binary_dilation(brain, ball, iterations=half_width_vox)
    inner = ndi.binary_erosion(brain, ball, iterations=half_width_vox)
    inside_head = ndi.binary_dilation(icv > 0.5, ball, iterations=half_width_vox + 2)
    return np.asarray(outer & ~inner & inside_head)


def _bsi_ml(nb: np.ndarray, nf: np.ndarray, region: np.ndarray, voxel_ml: float) -> float:
    """Boundary shift integral (ml lost from baseline to follow-up) inside ``region``."""
    lo, hi = _BSI_WINDOW
    cb = np.clip((nb[region] - lo) / (hi - lo), 0.0, 1.0)
    cf = np.clip((nf[region] - lo) / (hi - lo), 0.0, 1.0)
    return float((cb - cf).sum(dtype=np.float64)) * voxel_ml


def _jacobian_determinant(displacement_ras: np.ndarray, spacing_mm: float) -> np.ndarray:
    """det(I + grad u) of a displacement field (X, Y, Z, 3) in RAS mm on an axis-aligned RAS
    grid of ``spacing_mm`` voxels; (X, Y, Z) float32."""
    grads = np.empty((*displacement_ras.shape[:3], 3, 3), dtype=np.float32)
    for c in range(3):
        for axis, g in enumerate(np.gradient(displacement_ras[..., c], spacing_mm)):
            grads[..., c, axis] = g
    grads += np.eye(3, dtype=np.float32)
    return np.asarray(np.linalg.det(grads), dtype=np.float32)


def _jacobian_change_ml(nb: np.ndarray, nf: np.ndarray, grid: Grid,
                        weight: np.ndarray) -> float:
    """Brain volume change (ml) by Jacobian integration of a symmetric-forces demons field.

    The soft brain maps (the BSI window) are registered (follow-up moving, baseline fixed); the
    determinant of the displacement field's Jacobian, integrated over ``weight`` (the brain
    fraction, (X, Y, Z)), gives the follow-up volume of the baseline brain.
    """
    import SimpleITK as sitk

    lo, hi = _BSI_WINDOW
    soft_b = np.clip((nb - lo) / (hi - lo), 0.0, 1.0)
    soft_f = np.clip((nf - lo) / (hi - lo), 0.0, 1.0)
    fixed = sitk.Cast(to_sitk(soft_b, grid.affine), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(soft_f, grid.affine), sitk.sitkFloat32)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(_DEMONS_ITERATIONS)
    demons.SetStandardDeviations(_DEMONS_SIGMA_MM)
    with itk_single_thread("demons registration"):
        disp = demons.Execute(fixed, moving)
    # (z, y, x, 3) LPS mm -> (x, y, z, 3) RAS mm; ITK's own Jacobian filter ignores the
    # direction cosines, so the determinant is computed here.
    u = sitk.GetArrayFromImage(disp).transpose(2, 1, 0, 3) * np.array([-1.0, -1.0, 1.0])
    spacing = float(abs(grid.affine[0, 0]))
    jac = _jacobian_determinant(u.astype(np.float32), spacing)
    return float((weight * (jac - 1.0)).sum(dtype=np.float64)) * voxel_volume_ml(grid.affine)


def _protocol_warnings(baseline: Volume, followup: Volume, contrast_change: float,
                       uncovered: float) -> tuple[str, ...]:
    out = []
    if uncovered > 0.005:
        out.append(f"{100 * uncovered:.1f} % of the intracranial volume lies outside one of the "
                   "images: the PBVC covers only the brain seen at both visits")
    if abs(contrast_change) > 0.03:
        out.append(f"grey-matter contrast changed by {100 * contrast_change:+.1f} % (scanner or "
                   "sequence change): each visit normalised on its own; PBVC is less reliable")
    sb, sf = np.asarray(baseline.spacing_mm), np.asarray(followup.spacing_mm)
    if not np.allclose(np.sort(sb), np.sort(sf), atol=0.05):
        out.append(f"voxel size changed from {np.round(sb, 2).tolist()} to "
                   f"{np.round(sf, 2).tolist()} mm: PBVC is less reliable across protocols")
    return tuple(out)


def percent_brain_volume_change(baseline: Volume, followup: Volume, *,
                                baseline_brain: np.ndarray | None = None,
                                followup_to_baseline: np.ndarray | None = None,
                                method: PBVCMethod = "bsi",
                                spacing_mm: float = 1.0) -> PBVCResult:
    """Percentage brain volume change from ``baseline`` to ``followup`` (negative = loss).

    Parameters
    ----------
    baseline, followup
        The same sequence (T1w preferred, 3D, about 1 mm) at two visits, raw with skull: the
        skull holds the rigid registration. Voxel size and orientation may differ.
    baseline_brain
        Optional (X, Y, Z) brain parenchyma mask on the baseline grid, used to place the
        boundary region; by default the brain of the halfway mean image (partial-volume
        classification) is used.
    followup_to_baseline
        Optional (4, 4) rigid matrix mapping follow-up world mm to baseline world mm (as
        :func:`ms_core.longitudinal.tracking.register_visits` returns), computed on *these* images.
        Registered here when ``None`` (rigid, whole head, about 3 s; remembered per process
        with the comparison's, :func:`ms_core.imaging.preprocess.register_visit_pair`).
    method
        ``"bsi"`` boundary shift integral (default, the more accurate on the demo study) or
        ``"jacobian"`` Jacobian integration of a demons registration.
    spacing_mm
        Voxel size of the halfway grid; keep 1 mm (or the images' voxel size), coarser grids
        are only for quick tests.

    Returns
    -------
    PBVCResult

    Raises
    ------
    ValueError
        for different modalities, a blank image, a mask on another grid or a failed
        registration.
    """
    return pbvc_by_method(baseline, followup, methods=(method,), baseline_brain=baseline_brain,
                          followup_to_baseline=followup_to_baseline,
                          spacing_mm=spacing_mm)[method]


def pbvc_by_method(baseline: Volume, followup: Volume, *,
                   methods: Sequence[str] = PBVC_METHODS,
                   baseline_brain: np.ndarray | None = None,
                   followup_to_baseline: np.ndarray | None = None,
                   spacing_mm: float = 1.0) -> dict[str, PBVCResult]:
    """:func:`percent_brain_volume_change` for several methods sharing one preparation.

    Registration, halfway resampling, bias correction, classification and normalisation run
    once; each method then measures the change.

    Parameters
    ----------
    baseline, followup, baseline_brain, followup_to_baseline, spacing_mm
        As in :func:`percent_brain_volume_change`.
    methods
        Names from :data:`PBVC_METHODS`.

    Returns
    -------
    dict
        ``{method: PBVCResult}`` in the order of ``methods``.
    """
    check_volume(baseline, "baseline")
    check_volume(followup, "followup")
    unknown = [m for m in methods if m not in PBVC_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be among {PBVC_METHODS}, got {list(methods)}")
    if baseline.modality != followup.modality:
        raise ValueError(f"baseline is {baseline.modality} but follow-up is "
                         f"{followup.modality}; compare the same sequence")
    if baseline_brain is not None and np.asarray(baseline_brain).shape != baseline.shape:
        raise ValueError(f"baseline_brain shape {np.asarray(baseline_brain).shape} differs from "
                         f"the baseline image {baseline.shape}; pass a mask on the baseline grid")
    if not 0.25 <= spacing_mm <= 4.0:
        raise ValueError(f"spacing_mm must be in [0.25, 4] mm, got {spacing_mm}")
    if followup_to_baseline is None:
        f2b = register_visit_pair(baseline, followup)
    else:
        f2b = check_matrix(followup_to_baseline, "followup_to_baseline")
    pair = _halfway_pair(baseline, followup, f2b, baseline_brain, spacing_mm)
    nb, nf, contrast_change = _normalised_pair(pair)
    voxel_ml = voxel_volume_ml(pair.grid.affine)
    region = _boundary_region(pair.brain, pair.classified.icv,
                              max(1, round(_BSI_HALF_WIDTH_MM / spacing_mm))) & pair.covered
    brain_frac = (pair.classified.fractions[1] + pair.classified.fractions[2]) * (
        pair.classified.icv)
    mid_brain_ml = float(brain_frac.sum(dtype=np.float64)) * voxel_ml
    qc = ncc(nb[region], nf[region])
    inside = pair.classified.icv > 0.5
    uncovered = 1.0 - float(pair.covered[inside].mean()) if inside.any() else 0.0
    warnings = _protocol_warnings(baseline, followup, contrast_change, uncovered)
    out: dict[str, PBVCResult] = {}
    for method in methods:
        if method == "bsi":
            change_ml = -_bsi_ml(nb, nf, region, voxel_ml)
        else:
            change_ml = _jacobian_change_ml(nb, nf, pair.grid, brain_frac * pair.covered)
        baseline_ml = mid_brain_ml - change_ml / 2.0
        if baseline_ml <= 0:
            raise ValueError("no brain tissue found in the baseline image")
        out[method] = PBVCResult(
            pbvc_pct=100.0 * change_ml / baseline_ml, method=method, qc_ncc=qc,
            baseline_brain_ml=baseline_ml, volume_change_ml=change_ml,
            followup_to_baseline=f2b, warnings=warnings)
        log.info("PBVC (%s): %.3f %% (%.2f ml of %.1f ml), ncc %.3f", method,
                 out[method].pbvc_pct, change_ml, baseline_ml, qc)
    return out
