"""What the app shows for one visit: summary, image geometry, lesion overlay and truth table.

Everything here is pure (dataclasses, NumPy and pandas in and out) except :func:`read_geometry`,
which reads a NIfTI header through :func:`ms_core.foundation.io.read_nifti_header`.

Geometry follows :mod:`ms_core.foundation.io`: arrays are (x, y, z) in file voxel order and the
affine maps voxel indices to RAS+ mm; the orientation code names the world direction each array axis
points to (nibabel's ``aff2axcodes``, e.g. ``"LAS"``: x to the Left, y Anterior, z Superior).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from ms_core.foundation.domain import LesionMask, Visit, affine_spacing, check_affine
from ms_core.foundation.io import nifti_bytes, read_nifti_header

__all__ = [
    "LESION_COLUMNS",
    "ImageGeometry",
    "LesionTotals",
    "VisitSummary",
    "binary_overlay_bytes",
    "image_geometry",
    "lesion_totals",
    "overlay_caption",
    "read_geometry",
    "summarize_visit",
    "truth_lesion_table",
    "visit_metadata_warnings",
]

#: Columns of :func:`truth_lesion_table`, in display order.
LESION_COLUMNS = ("lesion_id", "location", "status", "volume_ml")
#: Lesion statuses that count as activity since the previous visit.
ACTIVE_STATUSES = ("new", "enlarging")
#: A lesion with this status is listed for reference but no longer counts.
GONE_STATUS = "disappeared"
MISSING = "n/a"


@dataclass(frozen=True)
class ImageGeometry:
    """Grid of one image: ``shape`` (X, Y, Z) voxels, ``spacing_mm`` and orientation code."""

    modality: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str


def image_geometry(modality: str, shape: tuple[int, ...], affine: np.ndarray) -> ImageGeometry:
    """Geometry of a 3D image from its shape and (4, 4) voxel -> RAS+ mm affine.

    Parameters
    ----------
    modality
        Name of the image, e.g. ``"FLAIR"``.
    shape
        Array shape (X, Y, Z); a trailing singleton 4th axis is dropped.
    affine
        (4, 4) voxel -> RAS+ mm matrix.

    >>> g = image_geometry("FLAIR", (10, 12, 5), np.diag([-0.9, 0.9, 3.0, 1.0]))
    >>> g.spacing_mm, g.orientation
    ((0.9, 0.9, 3.0), 'LAS')
    """
    dims = tuple(int(s) for s in shape)
    if len(dims) == 4 and dims[3] == 1:
        dims = dims[:3]
    if len(dims) != 3:
        raise ValueError(f"Expected a 3D image shape (X, Y, Z), got {dims}")
    aff = check_affine(affine)
    spacing = affine_spacing(aff)
    codes = nib.orientations.aff2axcodes(aff)
    return ImageGeometry(
        modality=modality,
        shape=(dims[0], dims[1], dims[2]),
        spacing_mm=(round(float(spacing[0]), 4), round(float(spacing[1]), 4),
                    round(float(spacing[2]), 4)),
        orientation="".join(str(c) for c in codes),
    )


def read_geometry(path: Path | str, modality: str) -> ImageGeometry:
    """Geometry of a NIfTI file from its header only (no voxel data is read).

    Raises
    ------
    NiftiError
        naming ``path`` when the header is missing, corrupt or not a usable 3D image.
    """
    img = read_nifti_header(path)
    return image_geometry(modality, img.shape, img.affine)


def _fmt_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return MISSING
    text = f"{value:g}"
    return f"{text} {unit}".strip()


@dataclass(frozen=True)
class VisitSummary:
    """The clinical and acquisition facts of one visit, ready to display."""

    visit: Visit
    images: tuple[ImageGeometry, ...] = field(default=())
    unreadable: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, str]:
        """Display label -> text, in display order; missing values read ``"n/a"``.

        Each readable image adds its shape, voxel size and orientation; an image that exists
        but cannot be read is listed as ``"unreadable"``.
        """
        v = self.visit
        rows = {
            "Date": v.acq_date.isoformat(),
            "EDSS": _fmt_number(v.edss),
            "Relapses since last visit": _fmt_number(v.relapses_since_last),
            "DMT": v.dmt or MISSING,
            "Scanner": v.scanner or MISSING,
            "Field strength": _fmt_number(v.field_strength_t, "T"),
        }
        for g in self.images:
            rows[f"{g.modality} shape (voxels)"] = " × ".join(str(s) for s in g.shape)
            rows[f"{g.modality} voxel size (mm)"] = " × ".join(f"{s:g}" for s in g.spacing_mm)
            rows[f"{g.modality} orientation"] = g.orientation
        for modality in self.unreadable:
            rows[f"{modality} image"] = "unreadable"
        return rows

    def as_frame(self) -> pd.DataFrame:
        """:meth:`as_dict` as a two-column table (``field``, ``value``)."""
        items = self.as_dict()
        return pd.DataFrame({"field": list(items), "value": list(items.values())})


def summarize_visit(visit: Visit, images: Mapping[str, ImageGeometry | None] | None = None
                    ) -> VisitSummary:
    """Summarise a visit; ``images`` maps modality -> geometry, or ``None`` when unreadable.

    >>> import datetime as dt
    >>> v = Visit("sub-01", "ses-01", dt.date(2020, 1, 2), 3.5, 0, None, "X 3T", 3.0)
    >>> summarize_visit(v).as_dict()["DMT"]
    'n/a'
    """
    images = images or {}
    readable = tuple(g for g in images.values() if g is not None)
    unreadable = tuple(m for m, g in images.items() if g is None)
    return VisitSummary(visit=visit, images=readable, unreadable=unreadable)


# ----------------------------------------------------------------------------- lesion overlay
def binary_overlay_bytes(mask: LesionMask) -> bytes:
    """Gzipped NIfTI bytes of ``mask > 0`` as uint8 {0, 1} on the mask's own grid and affine.

    A labelled mask (one id per lesion) becomes one colour in the viewer this way.
    """
    binary = (mask.labels > 0).astype(np.uint8)
    return nifti_bytes(binary, mask.affine, np.uint8)


def overlay_caption(source: str, path: Path | str) -> str:
    """Tell the user where the red overlay comes from.

    ``source`` is the second item of :func:`ms_core.study.layout.lesion_overlay_path`.

    >>> overlay_caption("ground truth", "x/lesion_labels.nii.gz").startswith("Red: synthetic")
    True
    """
    name = Path(path).name
    if source == "segmentation":
        return f"Red: lesions found by our segmentation ({name})."
    if source == "ground truth":
        return (f"Red: synthetic ground truth of the demo study ({name}), "
                "not a segmentation result.")
    raise ValueError(f"Unknown overlay source {source!r}; expected 'segmentation' or "
                     "'ground truth'")


# ----------------------------------------------------------------------------- truth table
def truth_lesion_table(truth: Mapping[str, Any]) -> pd.DataFrame:
    """The lesions of a ``truth.json`` as a table with :data:`LESION_COLUMNS`, sorted by id.

    >>> truth_lesion_table({"lesions": [{"lesion_id": 2, "location": "periventricular",
    ...     "status": "new", "volume_ml": 0.1}]}).columns.tolist()
    ['lesion_id', 'location', 'status', 'volume_ml']
    """
    lesions = truth.get("lesions", [])
    if not isinstance(lesions, list):
        raise ValueError(f"truth 'lesions' must be a list, got {type(lesions).__name__}")
    table = pd.DataFrame(
        [{c: les.get(c) for c in LESION_COLUMNS} for les in lesions], columns=list(LESION_COLUMNS)
    )
    table = table.astype({"lesion_id": "Int64", "volume_ml": "float64"})
    return table.sort_values("lesion_id", ignore_index=True)


@dataclass(frozen=True)
class LesionTotals:
    """Totals over the lesions present at a visit (disappeared lesions excluded)."""

    n_lesions: int
    volume_ml: float
    n_new_or_enlarging: int


def lesion_totals(table: pd.DataFrame) -> LesionTotals:
    """Count and total volume of present lesions, and how many are new or enlarging.

    >>> t = pd.DataFrame({"lesion_id": [1, 2, 3], "location": ["a"] * 3,
    ...     "status": ["new", "stable", "disappeared"], "volume_ml": [0.5, 0.25, 0.0]})
    >>> lesion_totals(t)
    LesionTotals(n_lesions=2, volume_ml=0.75, n_new_or_enlarging=1)
    """
    present = table[table["status"] != GONE_STATUS]
    return LesionTotals(
        n_lesions=len(present),
        volume_ml=round(float(present["volume_ml"].fillna(0.0).sum()), 5),
        n_new_or_enlarging=int(present["status"].isin(ACTIVE_STATUSES).sum()),
    )


def visit_metadata_warnings(baseline: Visit, followup: Visit) -> list[str]:
    """Scanner or field-strength changes recorded in the study's session tables."""
    out: list[str] = []
    if (baseline.field_strength_t and followup.field_strength_t
            and baseline.field_strength_t != followup.field_strength_t):
        out.append(f"field strength changed: {baseline.field_strength_t:g} T -> "
                   f"{followup.field_strength_t:g} T")
    if baseline.scanner and followup.scanner and baseline.scanner != followup.scanner:
        out.append(f"scanner changed: {baseline.scanner} -> {followup.scanner}")
    return out
