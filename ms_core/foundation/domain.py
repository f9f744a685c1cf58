"""Typed, frozen domain objects shared by every module.

Arrays are indexed (x, y, z) in the voxel order of the file; ``affine`` maps voxel indices to
RAS+ world millimetres (nibabel convention).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DAYS_PER_YEAR",
    "LESION_LOCATIONS",
    "MODALITIES",
    "MS_TYPES",
    "LesionMask",
    "Participant",
    "Visit",
    "Volume",
    "check_affine",
    "voxel_volume_ml",
]

#: Days per year (Julian year) for every interval in years: follow-up, PBVC per year,
#: patient-years, treatment duration.
DAYS_PER_YEAR = 365.25
#: Lesion location classes (McDonald 2017 / MAGNIMS topography), in this order everywhere:
#: the segmentation's lesion table, the demo's truth, the clinical features.
LESION_LOCATIONS = ("periventricular", "juxtacortical", "infratentorial", "deep_white_matter")
MODALITIES = ("FLAIR", "T1w", "T2w")
MS_TYPES = ("CIS", "RR", "SP", "PP", "HC", "other")


def check_affine(affine: np.ndarray, *, name: str = "affine") -> np.ndarray:
    """Return ``affine`` as a (4, 4) float64 array, or raise ``ValueError`` saying what is wrong.

    >>> check_affine(np.eye(4)).dtype
    dtype('float64')
    """
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"{name} must have shape (4, 4), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf: {arr.tolist()}")
    if abs(np.linalg.det(arr[:3, :3])) < 1e-9:
        raise ValueError(f"{name} is singular (zero voxel size or degenerate axes)")
    return arr


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along the three array axes: the lengths of the affine's first three columns.

    >>> affine_spacing(np.diag([0.5, 1.0, 3.0, 1.0])).tolist()
    [0.5, 1.0, 3.0]
    >>> affine_spacing(np.array([[0, -2, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])).tolist()
    [2.0, 2.0, 1.0]
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing: np.ndarray = np.sqrt((m ** 2).sum(axis=0))
    return spacing


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (1 ml = 1000 mm^3).

    >>> round(voxel_volume_ml(np.diag([1.0, 1.0, 3.0, 1.0])), 6)
    0.003
    """
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])) / 1000.0)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image: ``data`` (X, Y, Z) float32, ``affine`` (4, 4) voxel -> RAS+ mm."""

    data: np.ndarray
    affine: np.ndarray
    modality: str
    source: Path | None = None

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise ValueError(f"Volume data must be 3D (X, Y, Z), got shape {data.shape}")
        object.__setattr__(self, "data", data.astype(np.float32, copy=False))
        object.__setattr__(self, "affine", check_affine(self.affine))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the three array axes, in mm."""
        sp = affine_spacing(self.affine)
        return (float(sp[0]), float(sp[1]), float(sp[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.data.shape
        return (int(s[0]), int(s[1]), int(s[2]))


@dataclass(frozen=True, eq=False)
class LesionMask:
    """Lesion labels on an image grid: ``labels`` (X, Y, Z) int32, 0 = background.

    A binary mask has labels {0, 1}; a labelled mask carries one integer id per lesion.
    """

    labels: np.ndarray
    affine: np.ndarray
    source: Path | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 3:
            raise ValueError(f"LesionMask labels must be 3D (X, Y, Z), got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
            raise TypeError(f"LesionMask labels must be integers, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError("LesionMask labels must be >= 0")
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
        object.__setattr__(self, "affine", check_affine(self.affine))

    @property
    def n_voxels(self) -> int:
        return int(np.count_nonzero(self.labels))

    @property
    def volume_ml(self) -> float:
        return self.n_voxels * voxel_volume_ml(self.affine)

    def matches(self, volume: Volume) -> bool:
        """True when this mask lies on ``volume``'s grid (same shape, affines equal to 1e-4 mm)."""
        return self.labels.shape == volume.data.shape and bool(
            np.allclose(self.affine, volume.affine, atol=1e-4)
        )


@dataclass(frozen=True)
class Participant:
    """One row of ``participants.tsv``."""

    participant_id: str
    sex: str
    birth_year: int | None
    ms_type: str
    onset_year: int | None
    trial_arm: str | None = None


@dataclass(frozen=True)
class Visit:
    """One row of ``sub-X_sessions.tsv`` plus the image files found for that session."""

    participant_id: str
    session_id: str
    acq_date: dt.date
    edss: float | None
    relapses_since_last: int | None
    dmt: str | None
    scanner: str | None
    field_strength_t: float | None
    images: dict[str, Path] = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        return f"{self.session_id} ({self.acq_date.isoformat()})"
