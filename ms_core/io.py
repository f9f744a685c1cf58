"""All disk access of ms_core: NIfTI in and out, atomic writes, JSON/TSV helpers.

Axis order
----------
Arrays are indexed (x, y, z) exactly as nibabel returns them; the 4x4 ``affine`` maps voxel
indices (i, j, k) to RAS+ world millimetres (x to the Right, y Anterior, z Superior). SimpleITK
uses LPS+ physical coordinates and (z, y, x) array order: :func:`to_sitk` and :func:`from_sitk`
are the only places that convert between the two.

Writes are atomic: data goes to a temporary file in the destination folder, is flushed to disk
and then renamed over the target, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.filebasedimages import ImageFileError

from ms_core.domain import LesionMask, Volume, check_affine
from ms_core.errors import NiftiError

__all__ = [
    "MAX_VOXELS",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "from_sitk",
    "load_lesion_mask",
    "load_volume",
    "nifti_bytes",
    "read_json",
    "read_nifti_header",
    "save_labels",
    "save_volume",
    "to_sitk",
    "write_json",
    "write_tsv",
]

log = logging.getLogger(__name__)

#: Largest image we accept, in voxels (about 1 GiB of float32).
MAX_VOXELS = 256 * 1024 * 1024
#: Plausible voxel sizes in mm for human brain MRI.
SPACING_RANGE_MM = (0.05, 20.0)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
#: Permissions of files we write: read/write for the owner, readable by others (as umask allows).
FILE_MODE = 0o666 & ~_UMASK
#: NIfTI header text fields that may carry identifying information; cleared on every write.
PHI_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(payload)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: Path | str) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`InputError` naming it."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise NiftiError(p, "file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NiftiError(p, f"not valid JSON ({e})") from e


def write_tsv(path: Path | str, table: pd.DataFrame) -> None:
    """Write ``table`` as a tab-separated file ('n/a' for missing values), atomically."""
    atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(f"Cannot serialise {type(obj).__name__} to JSON")


# ----------------------------------------------------------------------------- NIfTI reading
def read_nifti_header(path: Path | str) -> nib.Nifti1Image:
    """Open ``path`` as NIfTI and check its header, without reading the voxel data.

    Checks: file exists and is not empty, is NIfTI-1/2, is 3D (or 4D with one volume), has at most
    :data:`MAX_VOXELS` voxels, a finite non-singular affine and plausible voxel sizes.

    Raises
    ------
    NiftiError
        naming ``path`` and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise NiftiError(p, "file not found")
    if not p.is_file():
        raise NiftiError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise NiftiError(p, "empty file")
    try:
        img = nib.load(p)
    except (ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise NiftiError(p, f"cannot read NIfTI header ({e})") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(p, f"expected a NIfTI image, got {type(img).__name__}")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise NiftiError(p, f"expected a 3D image, got shape {shape}; pass a single volume")
    if min(shape) < 1 or int(np.prod(shape)) > MAX_VOXELS:
        raise NiftiError(p, f"image size {shape} is outside 1..{MAX_VOXELS} voxels")
    try:
        affine = check_affine(img.affine)
    except ValueError as e:
        raise NiftiError(p, f"bad orientation matrix: {e}") from e
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    lo, hi = SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        sizes = np.round(spacing, 3).tolist()
        raise NiftiError(p, f"voxel size {sizes} mm is outside {lo}-{hi} mm")
    return img


def _read_data(img: nib.Nifti1Image, p: Path) -> np.ndarray:
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise NiftiError(p, f"voxel data is truncated or corrupt ({e})") from e
    if data.ndim == 4:
        data = data[..., 0]
    return np.asarray(data)


def load_volume(path: Path | str, modality: str, *, canonical: bool = False) -> Volume:
    """Load a scalar 3D image as a :class:`Volume` (float32).

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz`` file.
    modality
        Name stored on the volume, e.g. ``"FLAIR"``.
    canonical
        Reorient to the closest RAS+ voxel order (a permutation/flip only: no resampling).

    Raises
    ------
    NiftiError
        when the file is missing, corrupt, not 3D, has a bad affine, or contains NaN/Inf.
    """
    p = Path(path)
    img = read_nifti_header(p)
    if canonical:
        img = nib.as_closest_canonical(img)
    data = _read_data(img, p).astype(np.float32, copy=False)
    if not np.all(np.isfinite(data)):
        raise NiftiError(p, "image contains NaN or Inf values")
    return Volume(data=data, affine=img.affine, modality=modality, source=p)


def load_lesion_mask(path: Path | str) -> LesionMask:
    """Load an integer label image (0 = background) as a :class:`LesionMask`."""
    p = Path(path)
    img = read_nifti_header(p)
    data = _read_data(img, p)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise NiftiError(p, "mask contains NaN or Inf values")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise NiftiError(p, "mask has non-integer values; expected labels 0, 1, 2, ...")
        data = rounded.astype(np.int32)
    if data.size and data.min() < 0:
        raise NiftiError(p, "mask has negative labels")
    return LesionMask(labels=data, affine=img.affine, source=p)


# ----------------------------------------------------------------------------- NIfTI writing
def _scrubbed_image(data: np.ndarray, affine: np.ndarray, dtype: Any) -> nib.Nifti1Image:
    # Float data written to an integer dtype is scaled by nibabel (scl_slope/scl_inter), as
    # scanners store their images; integer data of a fitting range is stored unscaled.
    img = nib.Nifti1Image(np.asarray(data), check_affine(affine))
    img.header.set_data_dtype(dtype)
    for key in PHI_FIELDS:
        img.header[key] = b""
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


def nifti_bytes(data: np.ndarray, affine: np.ndarray, dtype: Any = np.float32) -> bytes:
    """Serialise an array as gzipped NIfTI-1 bytes (for the browser viewer or downloads)."""
    img = _scrubbed_image(data, affine, dtype)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def save_volume(path: Path | str, data: np.ndarray, affine: np.ndarray,
                dtype: Any = np.float32) -> None:
    """Write a NIfTI-1 image atomically with identifying header fields cleared.

    ``.nii.gz`` paths are gzipped (level 1, no timestamp, so equal data gives equal bytes).
    """
    img = _scrubbed_image(data, affine, dtype)
    raw = img.to_bytes()
    payload = gzip.compress(raw, compresslevel=1, mtime=0) if str(path).endswith(".gz") else raw
    atomic_write_bytes(path, payload)


def save_labels(path: Path | str, labels: np.ndarray, affine: np.ndarray) -> None:
    """Write a label image (uint8 if ids fit, else uint16) atomically."""
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else np.uint16
    save_volume(path, labels, affine, dtype)


# ----------------------------------------------------------------------------- SimpleITK bridge
def to_sitk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image of ``data`` (X, Y, Z) with ``affine`` (RAS+), in ITK's LPS+ space.

    The only place where the axis order (SimpleITK arrays are (z, y, x)) and the RAS/LPS sign
    flip are handled; :func:`from_sitk` is its inverse. Only affines without shear are
    representable (origin, spacing and direction).
    """
    import SimpleITK as sitk

    aff = check_affine(affine)
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    direction = aff[:3, :3] / spacing
    lps = np.diag([-1.0, -1.0, 1.0])
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(v) for v in lps @ aff[:3, 3]))
    img.SetDirection(tuple(float(v) for v in (lps @ direction).ravel()))
    return img


def from_sitk(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(data (X, Y, Z), affine RAS+)`` of a SimpleITK image; inverse of :func:`to_sitk`."""
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = lps @ direction * np.asarray(img.GetSpacing(), dtype=np.float64)
    aff[:3, 3] = lps @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return np.ascontiguousarray(data), aff
