"""DICOM series in, :class:`~ms_core.foundation.domain.Volume` out (RAS+ affine), with safe zip
handling.

:func:`read_dicom` takes a folder, a ``.zip`` file or a single (multi-frame) DICOM file: it
collects the files (zips extracted into a private temporary folder behind path, size and count
guards), groups the images by ``SeriesInstanceUID`` and picks one series (or raises
:class:`SeriesChoiceError` listing them), checks the slice geometry and converts the voxels with
``dcm2niix`` when installed, else pydicom. Only the voxels, the geometry and the few header
fields of :class:`SeriesInfo` leave this module; patient identifiers are dropped. Every problem
raises :class:`~ms_core.foundation.errors.InputError` naming the source and the reason.

The steps, the geometry checks and the PHI rules in detail: ``docs/import.md``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ms_core.foundation.domain import Volume
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_nifti_header
from ms_core.foundation.settings import max_voxels

__all__ = [
    "CONVERTERS",
    "DEFAULT_LIMITS",
    "SERIES_PATTERNS",
    "Converter",
    "DicomLimits",
    "DicomVolume",
    "SeriesChoiceError",
    "SeriesInfo",
    "dcm2niix_binary",
    "is_dicom_source",
    "list_series",
    "match_series",
    "read_dicom",
    "slice_geometry",
]

log = logging.getLogger(__name__)

Converter = Literal["auto", "dcm2niix", "pydicom"]
#: Accepted values of ``converter``: dcm2niix when installed ("auto"), or one of them explicitly.
CONVERTERS: tuple[Converter, ...] = ("auto", "dcm2niix", "pydicom")

#: Series-description patterns (case-insensitive) used to pick a series for a modality, and the
#: patterns that exclude a match (a "T2 FLAIR" is a FLAIR, not a T2w).
SERIES_PATTERNS: dict[str, tuple[str, str | None]] = {
    "FLAIR": (r"flair|dark[\s_-]*fluid", None),
    "T1w": (r"\bt1|mp[\s_-]*rage|spgr|bravo|\btfl", r"flair"),
    "T2w": (r"\bt2(?![\s_-]*\*)|\btse\b", r"flair"),
}

MIN_SLICES = 3
#: Tolerances of the geometry checks: direction cosines, and spacing as a fraction (with a floor).
_COSINE_TOL = 1e-3
_SPACING_REL_TOL = 0.01
_SPACING_ABS_TOL_MM = 0.01
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Exceptions pydicom raises on a corrupt file (it has no single base class for them).
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError,
                AttributeError, IndexError, struct.error)
_CHUNK = 1 << 20
#: SOP classes of MR images (MR, enhanced MR, enhanced MR colour, legacy converted enhanced MR).
_MR_IMAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
                               "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4"})


@dataclass(frozen=True)
class DicomLimits:
    """Caps applied while reading a DICOM source (before anything is decoded).

    Attributes
    ----------
    max_files
        Entries in a zip, or files under a folder.
    max_file_bytes
        Size of one file (uncompressed), in bytes.
    max_total_bytes
        All files together (uncompressed), in bytes: the zip-bomb guard.
    timeout_s
        Wall-clock limit of one dcm2niix run, in seconds.
    """

    max_files: int = 5000
    max_file_bytes: int = 512 * 2**20
    max_total_bytes: int = 1 * 2**30
    timeout_s: float = 300.0


#: The caps used when none are given.
DEFAULT_LIMITS = DicomLimits()


@dataclass(frozen=True)
class SeriesInfo:
    """What we keep of a series' headers (nothing that identifies the patient).

    ``uid`` is the SeriesInstanceUID, used only to choose a series; it is never written.
    """

    uid: str
    number: int | None
    description: str
    modality: str
    n_images: int
    acq_date: dt.date | None
    scanner: str | None
    field_strength_t: float | None

    @property
    def label(self) -> str:
        """Short name for messages and pickers, e.g. ``"series 3 'AX FLAIR' (12 images)"``."""
        number = f"series {self.number}" if self.number is not None else "series"
        return f"{number} '{self.description or 'no description'}' ({self.n_images} images)"


@dataclass(frozen=True, eq=False)
class DicomVolume:
    """A converted series: the volume (RAS+), its PHI-free summary and how it was converted."""

    volume: Volume
    series: SeriesInfo
    converter: str
    converter_version: str


class SeriesChoiceError(InputError):
    """The source holds several series and none (or more than one) matches the modality.

    ``series`` lists them all, so that the caller can ask the user to choose one.
    """

    def __init__(self, path: Path | str | None, problem: str,
                 series: Sequence[SeriesInfo]) -> None:
        super().__init__(path, problem)
        self.series = tuple(series)


@dataclass(frozen=True)
class _Frame:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    name: str  # for messages: the member name or path relative to the source
    frame: int | None
    position: tuple[float, ...]  # ImagePositionPatient, LPS+ mm
    orientation: tuple[float, ...]  # ImageOrientationPatient (row, then column cosines)
    pixel_spacing: tuple[float, ...]  # (between rows, between columns) in mm
    rows: int
    cols: int
    slope: float
    intercept: float
    instance: int | None


# ----------------------------------------------------------------------------- collecting files
def is_dicom_source(path: Path | str) -> bool:
    """True for a folder, a ``.zip`` (or zip) file or a file with the DICOM preamble."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".zip":
        return True
    return p.is_file() and (zipfile.is_zipfile(p) or bool(pydicom.misc.is_dicom(str(p))))


def _unsafe_member(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and (parts[0] == "/" or ".." in parts or ":" in parts[0])


def _extract_zip(source: Path, dest: Path, limits: DicomLimits) -> dict[Path, str]:
    """Extract the regular members of ``source`` into ``dest`` under numbered names."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(source, f"not a readable zip file ({e})") from e
    names: dict[Path, str] = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise InputError(source, f"zip has {len(infos)} entries; at most {limits.max_files} "
                                     "are accepted (zip only the series you need)")
        members = []
        for info in infos:
            if _unsafe_member(info.filename):
                raise InputError(source, f"unsafe member name {info.filename!r} (absolute path "
                                         "or '..'); refusing this zip")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(source, f"member {info.filename!r} is a symbolic link; "
                                         "refusing this zip")
            if info.is_dir() or info.filename.startswith("__MACOSX/") \
                    or PurePosixPath(info.filename).name.startswith("."):
                continue
            if info.flag_bits & 0x1:
                raise InputError(source, f"member {info.filename!r} is encrypted")
            if info.file_size > limits.max_file_bytes:
                raise InputError(source, f"member {info.filename!r} is {info.file_size} bytes "
                                         f"uncompressed; at most {limits.max_file_bytes}")
            members.append(info)
        declared = sum(i.file_size for i in members)
        if declared > limits.max_total_bytes:
            raise InputError(source, f"zip expands to {declared} bytes; at most "
                                     f"{limits.max_total_bytes} are accepted")
        total = 0
        for n, info in enumerate(members):
            target = dest / f"{n:06d}.dcm"
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > limits.max_total_bytes:
                            raise InputError(source, "zip expands beyond "
                                                     f"{limits.max_total_bytes} bytes; refused")
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
                raise InputError(source, f"cannot extract member {info.filename!r} ({e})") from e
            names[target] = info.filename
    return names


def _folder_files(source: Path, limits: DicomLimits) -> dict[Path, str]:
    names: dict[Path, str] = {}
    total = 0
    for folder, dirs, files in os.walk(source, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or not path.is_file():
                continue
            if len(names) >= limits.max_files:
                raise InputError(source, f"folder has more than {limits.max_files} files; "
                                         "point to the series' own folder")
            size = path.stat().st_size
            total += size
            if size > limits.max_file_bytes or total > limits.max_total_bytes:
                raise InputError(source, f"files are larger than the limits ({size} bytes for "
                                         f"{path.name}, {total} in all; at most "
                                         f"{limits.max_file_bytes} and {limits.max_total_bytes})")
            names[path] = str(path.relative_to(source))
    return names


@contextlib.contextmanager
def _collected(source: Path, limits: DicomLimits) -> Iterator[tuple[dict[Path, str], Path]]:
    """The files of ``source`` (path -> display name) and a private scratch folder."""
    if not source.exists():
        raise InputError(source, "file or folder not found")
    with tempfile.TemporaryDirectory(prefix="ms_dash_dicom_") as tmp:
        scratch = Path(tmp)
        if source.is_dir():
            files = _folder_files(source, limits)
        elif zipfile.is_zipfile(source):
            extracted = scratch / "zip"
            extracted.mkdir()
            files = _extract_zip(source, extracted, limits)
        elif source.suffix.lower() == ".zip":
            raise InputError(source, "not a readable zip file")
        else:
            if source.stat().st_size > limits.max_file_bytes:
                raise InputError(source, f"file is larger than {limits.max_file_bytes} bytes")
            files = {source: source.name}
        yield files, scratch


# ----------------------------------------------------------------------------- headers
def _floats(value: Any, n: int, what: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} of {name} is not numeric ({value!r})") from e
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{what} of {name} must have {n} finite values, got {value!r}")
    return out


def _item(ds: Dataset, frame: Dataset | None, group: str, tag: str) -> Any:
    """Value of ``tag`` in functional group ``group``: per-frame first, then shared."""
    for holder in (frame, *(ds.get("SharedFunctionalGroupsSequence") or [])):
        if holder is None or group not in holder or not holder[group].value:
            continue
        item = holder[group].value[0]
        if tag in item:
            return item[tag].value
    return None


def _frames_of(ds: Dataset, path: Path, name: str) -> list[_Frame]:
    """The 2D images in one dataset; ``ValueError`` when geometry tags are missing or bad."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    instance = int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
    n_frames = int(ds.get("NumberOfFrames") or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if n_frames > 1:
            raise ValueError(f"{name} has {n_frames} frames but no per-frame geometry "
                             "(functional groups)")
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if ds.get(tag) is None:
                raise ValueError(f"{name} has no {tag}; cannot place the slice in space")
        return [_Frame(
            path, name, None, _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", name),
            _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", name),
            _floats(ds.PixelSpacing, 2, "PixelSpacing", name),
            rows, cols, float(ds.get("RescaleSlope") or 1.0),
            float(ds.get("RescaleIntercept") or 0.0), instance)]
    if len(per_frame) != n_frames:
        raise ValueError(f"{name}: {n_frames} frames but {len(per_frame)} per-frame groups")
    frames = []
    for f, item in enumerate(per_frame):
        where = f"{name} frame {f + 1}"
        position = _item(ds, item, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _item(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _item(ds, item, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise ValueError(f"{where} lacks its position, orientation or pixel spacing")
        slope = _item(ds, item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _item(ds, item, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(_Frame(
            path, name, f, _floats(position, 3, "ImagePositionPatient", where),
            _floats(orientation, 6, "ImageOrientationPatient", where),
            _floats(spacing, 2, "PixelSpacing", where),
            rows, cols, float(slope if slope not in (None, "") else 1.0),
            float(intercept if intercept not in (None, "") else 0.0), instance))
    return frames


def _date(ds: Dataset) -> dt.date | None:
    for tag in ("AcquisitionDate", "SeriesDate", "StudyDate", "ContentDate"):
        text = str(ds.get(tag) or "").strip()
        if len(text) == 8 and text.isdigit():
            with contextlib.suppress(ValueError):
                return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return None


def _clean(text: object) -> str:
    """Header text safe for a message or a TSV cell: no control characters, trimmed."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(text or "")).strip()


def _field_strength_t(ds: Dataset) -> float | None:
    try:
        value = float(ds.get("MagneticFieldStrength") or 0.0)
    except (TypeError, ValueError):
        return None
    if value > 100:  # some older scanners store gauss
        value /= 10_000
    return value if 0.1 <= value <= 14.0 else None


def _info(uid: str, ds: Dataset, n_images: int) -> SeriesInfo:
    scanner = " ".join(p for p in (_clean(ds.get("Manufacturer")),
                                   _clean(ds.get("ManufacturerModelName"))) if p)
    try:
        number: int | None = int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    return SeriesInfo(uid=uid, number=number, description=_clean(ds.get("SeriesDescription")),
                      modality=_clean(ds.get("Modality")), n_images=n_images,
                      acq_date=_date(ds), scanner=scanner or None,
                      field_strength_t=_field_strength_t(ds))


def _scan(source: Path, files: dict[Path, str]
          ) -> tuple[dict[str, list[_Frame]], dict[str, SeriesInfo]]:
    """Read every header; group the image frames by SeriesInstanceUID."""
    frames: dict[str, list[_Frame]] = {}
    first: dict[str, Dataset] = {}
    for path, name in files.items():
        try:
            ds = pydicom.dcmread(path, defer_size=1024)  # large values are read on demand
        except InvalidDicomError:
            continue  # not DICOM (no preamble): text files, thumbnails, ...
        except _READ_ERRORS as e:
            raise InputError(source, f"{name}: corrupt DICOM header ({e})") from e
        uid = str(ds.get("SeriesInstanceUID") or "")
        complete = uid and "PixelData" in ds and ds.get("Rows") and ds.get("Columns")
        if not complete:
            sop = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
            if sop in _MR_IMAGE_CLASSES:
                raise InputError(source, f"{name}: MR image without pixel data or series UID "
                                         "(truncated or damaged file?)")
            continue  # DICOMDIR, structured reports, presentation states: not images
        try:
            if int(ds.get("SamplesPerPixel") or 1) != 1:
                raise ValueError(f"{name} is a colour image (SamplesPerPixel "
                                 f"{ds.SamplesPerPixel}); expected a grey-scale MR image")
            frames.setdefault(uid, []).extend(_frames_of(ds, path, name))
        except (ValueError, TypeError) as e:
            raise InputError(source, str(e)) from e
        first.setdefault(uid, ds)
    if not frames:
        raise InputError(source, f"no DICOM images found ({len(files)} files looked at; DICOM "
                                 "files need the 'DICM' preamble)")
    infos = {uid: _info(uid, first[uid], len(f)) for uid, f in frames.items()}
    return frames, infos


def match_series(series: Sequence[SeriesInfo], modality: str | None) -> SeriesInfo | None:
    """The only series whose description matches ``modality`` (:data:`SERIES_PATTERNS`).

    >>> flair = SeriesInfo("1", 3, "AX T2 FLAIR", "MR", 30, None, None, None)
    >>> t1 = SeriesInfo("2", 4, "sag T1 MPRAGE", "MR", 176, None, None, None)
    >>> match_series([flair, t1], "FLAIR").description, match_series([flair, t1], "T1w").number
    ('AX T2 FLAIR', 4)
    >>> match_series([flair, t1], "T2w") is None
    True
    """
    pattern, exclude = SERIES_PATTERNS.get(modality or "", (None, None))
    if pattern is None:
        return None
    matches = [s for s in series if re.search(pattern, s.description, re.I)
               and not (exclude and re.search(exclude, s.description, re.I))]
    return matches[0] if len(matches) == 1 else None


def _choose(source: Path, infos: dict[str, SeriesInfo], modality: str | None,
            series_uid: str | None) -> SeriesInfo:
    listed = sorted(infos.values(), key=lambda s: (s.number is None, s.number or 0, s.label))
    if series_uid is not None:
        if series_uid not in infos:
            raise SeriesChoiceError(source, "the chosen series is not in this source; "
                                            "choose one of the series found", listed)
        return infos[series_uid]
    if len(listed) == 1:
        return listed[0]
    match = match_series(listed, modality)
    if match is not None:
        return match
    names = "; ".join(s.label for s in listed)
    why = (f"none or several match {modality}" if modality in SERIES_PATTERNS
           else "no modality was given")
    raise SeriesChoiceError(source, f"{len(listed)} series found and {why}; choose one: {names}",
                            listed)


# ----------------------------------------------------------------------------- geometry
def slice_geometry(positions_lps: np.ndarray, orientation: Sequence[float],
                   pixel_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Slice order and RAS+ affine of a stack of parallel 2D images.

    Parameters
    ----------
    positions_lps
        (N, 3) ``ImagePositionPatient`` of each image (centre of its first pixel), LPS+ mm.
    orientation
        ``ImageOrientationPatient``: row direction cosines, then column direction cosines.
    pixel_spacing
        ``PixelSpacing`` (between rows, between columns), in mm.

    Returns
    -------
    order
        (N,) int: image indices sorted by position along the normal (row x column).
    affine
        (4, 4) float64 mapping array indices (column, row, slice) to RAS+ mm.

    Raises
    ------
    ValueError
        for fewer than 3 images, bad cosines, several images at one position, images not
        stacked along the normal, missing images or non-uniform spacing (the message says which).

    >>> pos = np.array([[0.0, 0.0, 6.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    >>> order, aff = slice_geometry(pos, [1, 0, 0, 0, 1, 0], [0.5, 0.5])
    >>> order.tolist(), np.diag(aff).tolist()
    ([1, 2, 0], [-0.5, -0.5, 3.0, 1.0])
    """
    pos = np.asarray(positions_lps, dtype=np.float64).reshape(-1, 3)
    if len(pos) < MIN_SLICES:
        raise ValueError(f"only {len(pos)} image(s); a volume needs at least {MIN_SLICES}")
    cosines = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    norms = np.linalg.norm(cosines, axis=1)
    if np.any(np.abs(norms - 1.0) > 0.01) or abs(float(cosines[0] @ cosines[1])) > 0.01:
        raise ValueError(f"ImageOrientationPatient {cosines.ravel().tolist()} is not two "
                         "orthogonal unit vectors")
    row, col = cosines / norms[:, None]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    gaps = np.diff(dist)
    d_row, d_col = float(pixel_spacing[0]), float(pixel_spacing[1])
    if d_row <= 0 or d_col <= 0:
        raise ValueError(f"PixelSpacing {list(pixel_spacing)} must be positive")
    in_plane = pos[order] - dist[:, None] * normal
    shift = float(np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)))
    if shift > max(0.05 * min(d_row, d_col), _SPACING_ABS_TOL_MM):
        raise ValueError(f"images are not stacked along their normal (shifted by up to "
                         f"{shift:.2f} mm in plane; gantry tilt?); not supported")
    tiny = max(_SPACING_ABS_TOL_MM, 1e-3 * float(np.ptp(dist)))
    if np.any(gaps < tiny):
        n_dup = int(np.sum(gaps < tiny))
        raise ValueError(f"{n_dup + 1} or more images share a slice position (multi-echo, "
                         "repeated or 4D series?); export a single 3D volume")
    step = float(np.median(gaps))
    tol = max(_SPACING_ABS_TOL_MM, _SPACING_REL_TOL * step)
    bad = np.abs(gaps - step) > tol
    if np.any(bad):
        multiples = np.rint(gaps / step)
        missing = bad & (multiples >= 2) & (np.abs(gaps - multiples * step) <= tol)
        if np.array_equal(missing, bad):
            n_missing = int(np.sum(multiples[missing] - 1))
            first_gap = int(np.flatnonzero(missing)[0])
            raise ValueError(f"{n_missing} slice(s) missing (spacing {step:.3g} mm; first gap "
                             f"after slice {first_gap + 1} of {len(pos)} at "
                             f"{dist[first_gap]:.2f} mm along the normal)")
        raise ValueError(f"non-uniform slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm); "
                         "only evenly spaced slices can be converted")
    step = float(dist[-1] - dist[0]) / (len(dist) - 1)
    lps = np.eye(4)
    lps[:3, 0] = row * d_col
    lps[:3, 1] = col * d_row
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[order[0]]
    return order, _LPS_TO_RAS @ lps


def _series_geometry(source: Path, info: SeriesInfo, frames: list[_Frame]
                     ) -> tuple[list[_Frame], np.ndarray]:
    where = f"{info.label}"
    orientations = np.array([f.orientation for f in frames])
    if np.abs(orientations - orientations[0]).max() > _COSINE_TOL:
        distinct = np.unique(np.round(orientations, 2), axis=0)
        raise InputError(source, f"{where}: images have {len(distinct)} different orientations "
                                 "(a localizer or a mixed series?); choose a series with one")
    sizes = {(f.rows, f.cols) for f in frames}
    if len(sizes) > 1:
        raise InputError(source, f"{where}: images have different sizes {sorted(sizes)}")
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.ptp(spacings, axis=0).max() > 1e-3 * spacings.max():
        raise InputError(source, f"{where}: images have different pixel spacings")
    n_voxels = frames[0].rows * frames[0].cols * len(frames)
    if n_voxels > max_voxels():
        raise InputError(source, f"{where}: {n_voxels} voxels; at most {max_voxels()} "
                                 "(MS_DASH_MAX_VOXELS)")
    try:
        order, affine = slice_geometry(np.array([f.position for f in frames]),
                                       orientations.mean(axis=0), spacings[0])
    except ValueError as e:
        raise InputError(source, f"{where}: {e}") from e
    return [frames[i] for i in order], affine


# ----------------------------------------------------------------------------- conversion
@functools.lru_cache(maxsize=1)
def dcm2niix_binary() -> tuple[str, str] | None:
    """``(path, version)`` of a working dcm2niix binary (the pip wheel's), or ``None``."""
    try:
        import dcm2niix
    except ImportError:
        return None
    path = str(getattr(dcm2niix, "bin", ""))
    if not path or not os.access(path, os.X_OK):
        return None
    try:
        done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v\d+\.\d+\.\d+", done.stdout + done.stderr)
    return (path, match.group(0)) if match else None


def _pixels_pydicom(source: Path, info: SeriesInfo, frames: list[_Frame]) -> np.ndarray:
    """(X, Y, Z) float32 rescaled values, frames already sorted."""
    out = np.empty((frames[0].cols, frames[0].rows, len(frames)), dtype=np.float32)
    cache: dict[Path, np.ndarray] = {}
    for k, f in enumerate(frames):
        if f.path not in cache:
            cache.clear()
            cache[f.path] = _decode(source, info, f)
        pixels = cache[f.path]
        image = pixels[f.frame] if f.frame is not None and pixels.ndim == 3 else pixels
        if image.shape != (f.rows, f.cols):
            raise InputError(source, f"{info.label}: {f.name}: pixel data shape {image.shape} "
                                     f"does not match Rows x Columns {(f.rows, f.cols)}")
        out[:, :, k] = image.T.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)
    return out


def _decode(source: Path, info: SeriesInfo, frame: _Frame) -> np.ndarray:
    try:
        ds = pydicom.dcmread(frame.path)
    except _READ_ERRORS as e:
        raise InputError(source, f"{info.label}: {frame.name}: corrupt file ({e})") from e
    try:
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as e:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        raise InputError(source, f"{info.label}: {frame.name}: cannot decode pixel data "
                                 f"({getattr(syntax, 'name', syntax)}) with pydicom; install "
                                 "dcm2niix (pip install dcm2niix) to read compressed DICOM"
                         ) from e
    except _READ_ERRORS as e:
        raise InputError(source, f"{info.label}: {frame.name}: corrupt pixel data ({e})") from e


def _onto_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
               shape: tuple[int, int, int]) -> np.ndarray | None:
    """``data`` (on ``src_affine``) re-indexed onto the grid (``dst_affine``, ``shape``), when
    the two grids are the same voxels up to axis flips and permutations; else ``None``."""
    t = np.linalg.inv(src_affine) @ dst_affine
    perm_matrix = np.rint(t[:3, :3])
    if not np.allclose(t[:3, :3], perm_matrix, atol=1e-3) or not np.array_equal(
            np.abs(perm_matrix).sum(axis=0), np.ones(3)) or not np.array_equal(
            np.abs(perm_matrix).sum(axis=1), np.ones(3)):
        return None
    perm = [int(np.flatnonzero(perm_matrix[:, a])[0]) for a in range(3)]
    out = data.transpose(perm)
    if out.shape != shape:
        return None
    for a in range(3):
        sign = perm_matrix[perm[a], a]
        expected = 0.0 if sign > 0 else shape[a] - 1.0
        if abs(t[perm[a], 3] - expected) > 1e-2:
            return None
        if sign < 0:
            out = np.flip(out, axis=a)
    return np.ascontiguousarray(out)


def _pixels_dcm2niix(source: Path, info: SeriesInfo, frames: list[_Frame], affine: np.ndarray,
                     scratch: Path, binary: str, limits: DicomLimits) -> np.ndarray:
    """Run dcm2niix on the series' files only; return its data on our grid (X, Y, Z)."""
    series_dir = scratch / "series"
    out_dir = scratch / "nifti"
    series_dir.mkdir()
    out_dir.mkdir()
    for n, path in enumerate(dict.fromkeys(f.path for f in frames)):
        target = series_dir / f"{n:06d}.dcm"
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    cmd = [binary, "-b", "n", "-z", "n", "-f", "volume", "-w", "1", "-o", str(out_dir),
           str(series_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limits.timeout_s,
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise InputError(source, f"{info.label}: dcm2niix took longer than "
                                 f"{limits.timeout_s:.0f} s") from e
    except OSError as e:
        raise InputError(source, f"{info.label}: cannot run dcm2niix ({e})") from e
    outputs = sorted(out_dir.glob("*.nii"))
    if done.returncode != 0 or len(outputs) != 1:
        report = done.stdout + done.stderr
        for n, name in enumerate(dict.fromkeys(f.name for f in frames)):
            report = report.replace(str(series_dir / f"{n:06d}.dcm"), name)
        problems = [ln.strip() for ln in report.splitlines()
                    if re.search(r"error|warning: file", ln, re.I)][-3:]
        raise InputError(source, f"{info.label}: dcm2niix wrote {len(outputs)} volumes (exit "
                                 f"status {done.returncode}; expected one 3D volume)"
                                 + (f": {' '.join(problems)}" if problems else ""))
    try:
        img = read_nifti_header(outputs[0])
    except InputError as e:
        raise InputError(source, f"{info.label}: dcm2niix's output is unusable ({e.problem})"
                         ) from e
    data = np.asarray(img.dataobj).astype(np.float32, copy=False)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    shape = (frames[0].cols, frames[0].rows, len(frames))
    on_grid = None if data.ndim != 3 else _onto_grid(data, img.affine, affine, shape)
    if on_grid is None:
        raise InputError(source, f"{info.label}: dcm2niix's volume {data.shape} does not lie on "
                                 "the grid of the DICOM headers; try converter='pydicom'")
    return on_grid


def _converter(converter: Converter) -> tuple[str, str, str | None]:
    """(name, version, binary) of the converter to use."""
    if converter not in CONVERTERS:
        raise ValueError(f"converter must be one of {CONVERTERS}, not {converter!r}")
    found = dcm2niix_binary() if converter != "pydicom" else None
    if found is not None:
        return "dcm2niix", found[1], found[0]
    if converter == "dcm2niix":
        raise InputError(None, "dcm2niix is not installed (pip install dcm2niix)")
    return "pydicom", pydicom.__version__, None


def list_series(source: Path | str, *, limits: DicomLimits = DEFAULT_LIMITS
                ) -> tuple[SeriesInfo, ...]:
    """The image series in a DICOM folder, zip or file, sorted by series number.

    Raises
    ------
    InputError
        for an unsafe or oversized zip, a corrupt header, or when no DICOM image is found.
    """
    src = Path(source)
    with _collected(src, limits) as (files, _scratch):
        _frames, infos = _scan(src, files)
    return tuple(sorted(infos.values(), key=lambda s: (s.number is None, s.number or 0,
                                                       s.label)))


def read_dicom(source: Path | str, *, modality: str | None = None, series_uid: str | None = None,
               converter: Converter = "auto", limits: DicomLimits = DEFAULT_LIMITS
               ) -> DicomVolume:
    """Convert one DICOM series of a folder, zip or file into a :class:`Volume`.

    Parameters
    ----------
    source
        A folder (searched recursively), a ``.zip`` file or one DICOM file.
    modality
        Name stored on the volume (``"FLAIR"``, ``"T1w"``, ...); also picks the series by its
        description when the source has several (:data:`SERIES_PATTERNS`).
    series_uid
        The ``SeriesInstanceUID`` to convert (from :func:`list_series`); overrides ``modality``.
    converter
        ``"auto"`` (dcm2niix when installed, else pydicom), ``"dcm2niix"`` or ``"pydicom"``.
    limits
        Size and count caps (:class:`DicomLimits`).

    Returns
    -------
    DicomVolume
        ``volume.data`` (X, Y, Z) float32 = (columns, rows, slices by increasing position along
        the normal) with rescale slope/intercept applied; ``volume.affine`` voxel -> RAS+ mm.

    Raises
    ------
    SeriesChoiceError
        when several series are found and none or more than one matches ``modality``.
    InputError
        for every other problem, naming the source, the member or series, and the reason.
    """
    src = Path(source)
    name, version, binary = _converter(converter)
    with _collected(src, limits) as (files, scratch):
        frames, infos = _scan(src, files)
        info = _choose(src, infos, modality, series_uid)
        if info.modality and info.modality != "MR":
            raise InputError(src, f"{info.label} is a {info.modality} series; expected MR")
        ordered, affine = _series_geometry(src, info, frames[info.uid])
        if binary is not None:
            data = _pixels_dcm2niix(src, info, ordered, affine, scratch, binary, limits)
        else:
            data = _pixels_pydicom(src, info, ordered)
    if not np.all(np.isfinite(data)):
        raise InputError(src, f"{info.label}: voxel values contain NaN or Inf")
    log.info("converted %s with %s: shape %s", info.label, name, data.shape)
    volume = Volume(data=data.astype(np.float32, copy=False), affine=affine,
                    modality=modality or "image", source=src)
    return DicomVolume(volume=volume, series=info, converter=name, converter_version=version)
