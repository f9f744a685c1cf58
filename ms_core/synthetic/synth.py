"""Small synthetic images with known answers, for tests and doctests.

Spheres are drawn in world millimetres, so their volume is known whatever the voxel size.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["anisotropic_affine", "sphere_labels", "sphere_volume_ml"]


def anisotropic_affine(spacing_mm: tuple[float, float, float] = (0.9, 1.1, 3.0),
                       origin_mm: tuple[float, float, float] = (-40.0, -50.0, -30.0)) -> np.ndarray:
    """A (4, 4) float64 RAS+ affine with the given voxel size and origin.

    >>> float(anisotropic_affine()[2, 2])
    3.0
    """
    aff = np.diag([*spacing_mm, 1.0])
    aff[:3, 3] = origin_mm
    return aff


def sphere_volume_ml(radius_mm: float) -> float:
    """Exact volume of a ball, in ml.

    >>> round(sphere_volume_ml(10.0), 3)
    4.189
    """
    return 4.0 / 3.0 * math.pi * radius_mm**3 / 1000.0


def sphere_labels(shape: tuple[int, int, int], affine: np.ndarray,
                  spheres: list[tuple[tuple[float, float, float], float]]) -> np.ndarray:
    """Label image (X, Y, Z) int32 with ball ``i + 1`` for each ``(centre_mm, radius_mm)``.

    A voxel belongs to a ball when its centre lies inside it (later balls win overlaps).
    """
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    labels = np.zeros(int(np.prod(shape)), dtype=np.int32)
    for i, (centre, radius) in enumerate(spheres, start=1):
        d2 = ((xyz - np.asarray(centre, dtype=np.float64)[:, None]) ** 2).sum(axis=0)
        labels[d2 <= radius**2] = i
    return labels.reshape(shape)
