"""Deterministic rigid and affine registration with SimpleITK.

Returned transforms are (4, 4) float64 matrices in RAS+ mm that map a point of the *fixed*
image's world to the corresponding point of the *moving* image's world (the direction needed to
resample the moving image onto the fixed grid). Determinism: fixed random sampling seed, a fixed
sampling percentage and a single-threaded metric.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ms_core.foundation.io import itk_single_thread, to_sitk

__all__ = ["ncc", "register_affine"]

log = logging.getLogger(__name__)
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


def _single(transform: Any) -> Any:
    """The concrete transform inside a registration result (composite of one, or plain)."""
    import SimpleITK as sitk

    t = transform
    if isinstance(t, sitk.CompositeTransform) or t.GetName() == "CompositeTransform":
        t = sitk.CompositeTransform(t)
        if t.GetNumberOfTransforms() != 1:
            raise ValueError(f"expected one transform, got {t.GetNumberOfTransforms()}")
        t = t.GetNthTransform(0)
    return t.Downcast()


def _matrix_of(transform: Any) -> np.ndarray:
    """4x4 RAS matrix of a SimpleITK affine-like transform (fixed point -> moving point)."""
    t = _single(transform)
    a = np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(t.GetCenter(), dtype=np.float64)
    tr = np.asarray(t.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = tr + c - a @ c
    return np.asarray(_FLIP @ lps @ _FLIP)


def register_affine(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray,
                    moving_affine: np.ndarray, *, rigid_only: bool = False, seed: int = 0,
                    sampling: float = 1.0, shrink: tuple[int, ...] = (4, 2)) -> np.ndarray:
    """Register ``moving`` to ``fixed`` (rigid, then affine unless ``rigid_only``).

    Parameters
    ----------
    fixed, moving
        (X, Y, Z) images; contrasts may differ (Mattes mutual information, 32 bins).
    fixed_affine, moving_affine
        Their (4, 4) voxel -> RAS+ mm affines.
    rigid_only
        Stop after the 6-parameter rigid stage (visits of one patient).
    seed
        Seed of the metric's random sampling: same inputs and seed give the same result.
    sampling
        Fraction of fixed voxels sampled by the metric (1.0: all, fully deterministic).
    shrink
        Pyramid levels as shrink factors of the fixed image (coarse to fine). Pass images at
        about 2 mm and ``(2, 1)`` for speed.

    Returns
    -------
    (4, 4) float64 RAS+ matrix mapping fixed-world points to moving-world points.
    """
    import SimpleITK as sitk

    for name, image in (("fixed", fixed), ("moving", moving)):
        if not np.any(np.asarray(image) > 0):
            raise ValueError(f"cannot register: the {name} image is blank")
    f = sitk.Cast(to_sitk(fixed, fixed_affine), sitk.sitkFloat32)
    m = sitk.Cast(to_sitk(moving, moving_affine), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(
        f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)

    def run(transform: Any, shrink: list[int], iterations: int) -> Any:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        if sampling < 1.0:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(sampling, seed + 1)  # ITK seed 0 means wall clock
        else:
            reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
            gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(shrink)
        reg.SetSmoothingSigmasPerLevel([s / 2.0 for s in shrink])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(transform, inPlace=False)
        reg.SetNumberOfThreads(1)
        out = reg.Execute(f, m)
        log.debug("registration stage: metric %.4f after %d iterations",
                  reg.GetMetricValue(), reg.GetOptimizerIteration())
        return out

    with itk_single_thread("registration"):  # bit-identical results; ITK errors as ValueError
        rigid = run(initial, list(shrink), 100)
        if rigid_only:
            return _matrix_of(rigid)
        rigid_t = _single(rigid)
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(rigid_t.GetMatrix())
        affine.SetTranslation(rigid_t.GetTranslation())
        affine.SetCenter(rigid_t.GetCenter())
        return _matrix_of(run(affine, list(shrink), 100))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equally shaped intensity arrays (0 when either is
    constant): the registration quality check of visit pairs and of the PBVC.

    >>> round(ncc(np.arange(5.0), 2 * np.arange(5.0) + 1), 6)
    1.0
    """
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0
