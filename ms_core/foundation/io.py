"""All disk access of ms_core: NIfTI in and out, atomic writes, JSON/TSV helpers.

Axis order
----------
Arrays are indexed (x, y, z) exactly as nibabel returns them; the 4x4 ``affine`` maps voxel
indices (i, j, k) to RAS+ world millimetres (x to the Right, y Anterior, z Superior). SimpleITK
uses LPS+ physical coordinates and (z, y, x) array order: :func:`to_sitk` and :func:`from_sitk`
are the only places that convert between the two.

Writes are atomic: data goes to a temporary file in the destination folder, is flushed to disk
and then renamed over the target, so a crash leaves either the old file or the new one.

Reads are validated before allocation: size caps, data type, dimensions, affine, voxel size and
the length of the data the header promises are checked from the header and the file size;
voxel values (NaN/Inf, constant scans, labels) and the gzip checksum when the data is read. Every
failure is a :class:`~ms_core.foundation.errors.NiftiError` naming the file (docs/reliability.md
lists the checks and the fuzzing behind them).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ms_core.foundation.domain import MODALITIES, LesionMask, Volume, affine_spacing, check_affine
from ms_core.foundation.errors import NiftiError
from ms_core.foundation.settings import DEFAULT_MAX_VOXELS, cache_dir, max_file_bytes, max_voxels

__all__ = [
    "MAX_VOXELS",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "cached_arrays",
    "from_sitk",
    "header_warnings",
    "itk_single_thread",
    "load_lesion_mask",
    "load_volume",
    "nifti_bytes",
    "probability_viewer_bytes",
    "read_json",
    "read_nifti_header",
    "remove_stale_temp_files",
    "save_labels",
    "save_volume",
    "sha256_file",
    "to_sitk",
    "write_json",
    "write_tsv",
]

log = logging.getLogger(__name__)

#: Default largest image, in voxels per 3D volume (512^3, 512 MiB as float32); the limit in force
#: is :func:`ms_core.foundation.settings.max_voxels` (env ``MS_DASH_MAX_VOXELS``).
MAX_VOXELS = DEFAULT_MAX_VOXELS
#: Plausible voxel sizes in mm for human brain MRI (7 T: 0.2 mm; thick 2D slices: up to ~7 mm).
SPACING_RANGE_MM = (0.1, 10.0)
#: Largest expansion of deflate (zlib technical details): bounds what a .gz file can hold.
_DEFLATE_MAX_RATIO = 1032
#: Largest lesion id a label image may hold (labels are stored as int32).
_MAX_LABEL = int(np.iinfo(np.int32).max)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
#: Permissions of files we write: read/write for the owner, readable by others (as umask allows).
FILE_MODE = 0o666 & ~_UMASK
#: NIfTI header text fields that may carry identifying information; cleared on every write.
PHI_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


# ----------------------------------------------------------------------------- file hashes
#: Hashes of files already read, by (device, inode, size, mtime_ns, ctime_ns).
_HASHES: dict[tuple[int, int, int, int, int], str] = {}
_MAX_HASHES = 4096
#: A file changed less than this long ago is hashed again on every call: a rewrite within one
#: tick of the file-system clock could keep both timestamps (the "racy clean" case of git).
RACY_NS = 2_000_000_000


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes.

    The status checks of the app and of batch runs hash the same inputs and outputs on every
    call, so a digest is remembered for the life of the process, keyed by the file's device,
    inode, size, modification and status-change times. Any write, replacement or ``touch``
    changes the key (the status-change time cannot be set back), so the answer stays the
    file's current bytes; files changed within the last :data:`RACY_NS` are always re-read.
    """
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = _HASHES.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        while block := fh.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
        if len(_HASHES) >= _MAX_HASHES:
            _HASHES.clear()
        _HASHES[key] = digest
    return digest


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. If the
    process is killed (``SIGKILL``, power loss) a hidden ``.NAME.*.tmp`` file may be left
    behind, never a partial ``path``; :func:`remove_stale_temp_files` clears those.
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
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(folder: Path | str, names: tuple[str, ...]) -> list[Path]:
    """Delete temporary files that :func:`atomic_open` left for ``names`` in ``folder``.

    Only call this while no other writer can be writing those names (hold the folder's
    :func:`ms_core.study.locks.folder_lock`). Returns the files removed.
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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
#: Exceptions nibabel, gzip and numpy raise on a malformed header or corrupt voxel data; all of
#: them become a :class:`NiftiError` naming the file (the fuzz tests in tests/test_fuzz.py check
#: that nothing else escapes).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError, TypeError,
    IndexError, KeyError, OverflowError, struct.error, np.linalg.LinAlgError,
)


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def _spatial_shape(p: Path, shape: tuple[int, ...], volume: int | None) -> tuple[int, int, int]:
    """The 3D shape to read from an image of ``shape``; checks dimensions and ``volume``."""
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:  # (X, Y, Z, T, 1, ...) as some tools write
        dims.pop()
    if len(dims) == 4 and dims[3] == 1 and volume is None:
        dims.pop()
    if len(dims) < 3:
        raise NiftiError(p, f"expected a 3D image, got {len(dims)}D shape {tuple(shape)}")
    if min(dims) < 1:
        raise NiftiError(p, f"image shape {tuple(shape)} has an empty axis")
    if len(dims) == 4:
        n = dims[3]
        if volume is None:
            raise NiftiError(p, (
                f"expected a 3D image, got 4D shape {tuple(shape)} ({n} volumes); pass a single "
                f"volume, or choose one with volume=0..{n - 1}"))
        if not 0 <= volume < n:
            raise NiftiError(p, f"volume {volume} does not exist; this file has volumes 0..{n - 1}")
    elif len(dims) > 4:
        raise NiftiError(p, f"expected a 3D image, got {len(dims)}D shape {tuple(shape)}")
    elif volume not in (None, 0):
        raise NiftiError(p, f"volume {volume} does not exist; this is a 3D image")
    return (dims[0], dims[1], dims[2])


def read_nifti_header(path: Path | str, *, volume: int | None = None) -> nib.Nifti1Image:
    """Open ``path`` as NIfTI and check its header, without reading the voxel data.

    Checks, before any voxel is allocated: the file exists, is not empty and is at most
    :func:`ms_core.foundation.settings.max_file_bytes` (``MS_DASH_MAX_FILE_MB``); it is NIfTI-1/2
    with a supported data type (integers or floats up to 64 bits; not complex or RGB); it is 3D, or
    4D with ``volume`` chosen (trailing axes of length 1 are ignored); one volume has at most
    :func:`ms_core.foundation.settings.max_voxels` voxels (``MS_DASH_MAX_VOXELS``, default 512^3);
    the affine is finite and non-singular with voxel sizes within :data:`SPACING_RANGE_MM`; and the
    file can hold the voxel data its header promises (``.nii``: its size; ``.nii.gz``: 1032
    times its size, deflate's largest expansion). Other truncated or corrupt ``.nii.gz`` files
    are found when the data is read (:func:`load_volume`, :func:`load_lesion_mask`).

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
    size = p.stat().st_size
    if size == 0:
        raise NiftiError(p, "empty file")
    limit = max_file_bytes()
    if size > limit:
        raise NiftiError(p, (f"file is {_mib(size)}, over the {_mib(limit)} limit; "
                             "set MS_DASH_MAX_FILE_MB to accept larger files"))
    try:
        # mmap=False: the data is copied into memory when read, never mapped from a file that
        # could change or shrink under us (SIGBUS), and never written back.
        loaded = nib.load(p, mmap=False)
    except _READ_ERRORS as e:
        raise NiftiError(p, f"cannot read NIfTI header ({e})") from e
    if not isinstance(loaded, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(p, f"expected a NIfTI image, got {type(loaded).__name__}")
    img: nib.Nifti1Image = loaded
    try:
        dtype = np.dtype(img.header.get_data_dtype())
        shape = tuple(int(s) for s in img.shape)
        affine_raw = img.affine
    except _READ_ERRORS as e:
        raise NiftiError(p, f"cannot read NIfTI header ({e})") from e
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise NiftiError(p, (f"unsupported voxel data type {dtype}; expected integers or "
                             "floats of at most 64 bits"))
    xyz = _spatial_shape(p, shape, volume)
    n_voxels = math.prod(xyz)
    cap = max_voxels()
    if n_voxels > cap:
        raise NiftiError(p, (f"image size {xyz} ({n_voxels} voxels) is over the limit of {cap} "
                             "voxels; set MS_DASH_MAX_VOXELS to accept larger images"))
    if affine_raw is None:
        raise NiftiError(p, "bad orientation matrix: the header defines none")
    # Only an image without an sform takes its geometry from pixdim; nibabel leaves the codes as
    # stored but repairs zero pixdims, so those are read from the file's own bytes.
    if int(img.header["sform_code"]) == 0:
        raw = _raw_header(p, img)
        if _broken_pixdim(raw):
            raise NiftiError(p, (f"pixdim[1:4] is {_pixdim_text(raw)} (zero or NaN) and there "
                                 "is no sform (sform_code 0): the voxel size is unknown"))
    try:
        affine = check_affine(affine_raw)
    except ValueError as e:
        raise NiftiError(p, f"bad orientation matrix: {e}") from e
    spacing = affine_spacing(affine)
    lo, hi = SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        sizes = np.round(spacing, 3).tolist()
        raise NiftiError(p, f"voxel size {sizes} mm is outside {lo}-{hi} mm")
    offset = int(getattr(img.dataobj, "offset", 0))
    need = offset + math.prod(shape) * dtype.itemsize
    if str(p).endswith(".gz"):
        # Deflate expands at most 1032:1, so a small .gz whose header promises gigabytes is
        # refused here, before nibabel allocates a buffer for them.
        capacity = _DEFLATE_MAX_RATIO * size
        have = f"{size} compressed bytes (at most {capacity} once uncompressed)"
    else:
        capacity, have = size, f"{size} bytes"
    if need > capacity:
        raise NiftiError(p, (f"file is truncated: the header promises {need} bytes "
                             f"(voxel data from byte {offset}) but the file has {have}"))
    return img


def _read_data(img: nib.Nifti1Image, p: Path, volume: int | None = None) -> np.ndarray:
    """The (X, Y, Z) voxel array of ``img`` (one ``volume`` of a 4D file), scaled by nibabel."""
    ndim = len(img.shape)
    index: tuple[int | slice, ...] = (slice(None),) * 3
    if ndim > 3:
        index += ((volume or 0),) + (0,) * (ndim - 4)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asanyarray(img.dataobj[index] if ndim > 3 else img.dataobj)
    except MemoryError as e:
        raise NiftiError(p, f"not enough memory to read {img.shape} voxels") from e
    except _READ_ERRORS as e:
        raise NiftiError(p, f"voxel data is truncated or corrupt ({e})") from e
    data = np.asarray(data)
    if data.ndim != 3:
        raise NiftiError(p, f"voxel data has shape {data.shape}, expected 3D")
    if str(p).endswith(".gz"):
        expected = int(getattr(img.dataobj, "offset", 0)) + math.prod(img.shape) * int(
            np.dtype(img.get_data_dtype()).itemsize)
        _verify_gzip(p, expected)
    return data


def _verify_gzip(p: Path, expected: int) -> None:
    """Read ``p`` to the end of its gzip stream so that the CRC32 and length are checked.

    nibabel stops reading once it has the voxel data, and deflate has no checksum of its own,
    so a flipped bit in the compressed data could otherwise decode silently to wrong voxels.
    Reading stops (unverified, logged) if the stream runs on 16 MiB past ``expected`` bytes:
    a NIfTI file has nothing after its data, and a deflate bomb must not cost minutes.
    """
    limit = expected + (16 << 20)
    seen = 0
    try:
        with gzip.open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                seen += len(block)
                if seen > limit:
                    log.warning("%s: %d bytes after the image data; gzip checksum not verified",
                                p, seen - expected)
                    return
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiError(p, f"voxel data is truncated or corrupt (gzip check: {e})") from e


def _check_not_constant(p: Path, data: np.ndarray) -> None:
    if data.size == 0:
        return
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        what = "empty (every voxel is 0)" if lo == 0 else f"constant (every voxel is {lo:g})"
        raise NiftiError(p, f"image is {what}; expected an MR image with contrast")


#: How far (mm at the image's corners, or degrees) the qform may stray from the sform before
#: :func:`header_warnings` reports it.
QFORM_SFORM_MM, QFORM_SFORM_DEG = 1.0, 1.0


def _raw_header(p: Path, img: nib.Nifti1Image) -> Any:
    """The header as stored in the file: nibabel repairs ``sizeof_hdr`` and zero pixdims when
    it loads one, which would hide the contradictions :func:`header_warnings` reports."""
    try:
        with nib.openers.ImageOpener(str(p)) as fobj:
            return type(img.header).from_fileobj(fobj, check=False)
    except _READ_ERRORS as e:
        raise NiftiError(p, f"cannot read NIfTI header ({e})") from e


def _broken_pixdim(raw: Any) -> bool:
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    return bool(np.any(~np.isfinite(pixdim)) or np.any(pixdim == 0))


def _pixdim_text(raw: Any) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in raw["pixdim"][1:4]) + "]"


def header_warnings(path: Path | str) -> list[str]:
    """Contradictions in a NIfTI header that loading resolves by trusting the sform.

    - ``sizeof_hdr`` other than 348 (NIfTI-1) or 540 (NIfTI-2): the header was recognised by
      its magic string;
    - ``pixdim[1:4]`` zero or NaN beside a valid sform: voxel sizes come from the sform (an
      image with such pixdims and no sform is refused by :func:`read_nifti_header`);
    - qform and sform both set but more than :data:`QFORM_SFORM_MM` mm apart at the image's
      corners or :data:`QFORM_SFORM_DEG` degrees apart in orientation: the sform is used.

    Each message names the file and the field. [] when the header is consistent.
    """
    p = Path(path)
    return _header_warnings(p, read_nifti_header(p))


def _header_warnings(p: Path, img: nib.Nifti1Image) -> list[str]:
    raw = _raw_header(p, img)
    out: list[str] = []
    expected = 540 if isinstance(img, nib.Nifti2Image) else 348
    if int(raw["sizeof_hdr"]) != expected:
        out.append(f"{p}: sizeof_hdr is {int(raw['sizeof_hdr'])}, not {expected}; the header was "
                   f"read as NIfTI-{1 if expected == 348 else 2} from its magic string")
    sform_set, qform_set = int(raw["sform_code"]) > 0, int(raw["qform_code"]) > 0
    if sform_set and _broken_pixdim(raw):
        sizes = ", ".join(f"{v:.3g}" for v in affine_spacing(raw.get_sform()))
        out.append(f"{p}: pixdim[1:4] is {_pixdim_text(raw)} (zero or NaN); voxel sizes taken "
                   f"from the sform ({sizes} mm)")
    elif sform_set and qform_set:
        sform = raw.get_sform()
        try:
            qform = raw.get_qform()
            affine_spacing(qform)
        except (ValueError, np.linalg.LinAlgError) as e:  # e.g. quaternion b, c, d over 1
            out.append(f"{p}: the qform cannot be read ({e}); the sform is used")
            return out
        shape = np.asarray(img.shape[:3], dtype=np.float64) - 1
        corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1])
                            for k in (0, shape[2])]).T
        mm = float(np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0).max())
        rot_s = sform[:3, :3] / affine_spacing(sform)
        rot_q = qform[:3, :3] / affine_spacing(qform)
        cos = np.clip((np.trace(rot_s.T @ rot_q) - 1.0) / 2.0, -1.0, 1.0)
        deg = float(np.degrees(np.arccos(cos)))
        if mm > QFORM_SFORM_MM or deg > QFORM_SFORM_DEG:
            out.append(f"{p}: qform and sform disagree by up to {mm:.1f} mm at the image "
                       f"corners and {deg:.1f} degrees; the sform is used")
    return out


def load_volume(path: Path | str, modality: str, *, canonical: bool = False,
                volume: int | None = None, allow_constant: bool | None = None) -> Volume:
    """Load a scalar 3D image as a :class:`Volume` (float32).

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz`` file.
    modality
        Name stored on the volume, e.g. ``"FLAIR"``.
    canonical
        Reorient to the closest RAS+ voxel order (a permutation/flip only: no resampling).
    volume
        Which volume of a 4D file to read (0-based); a 4D file with more than one volume and no
        ``volume`` is refused.
    allow_constant
        Accept an image whose voxels are all equal (all zero, say). ``None`` (default): refused
        for MR scans (``modality`` in ``FLAIR``, ``T1w``, ``T2w``), accepted for derived maps
        (a probability map of a visit without lesions is all zero).

    Raises
    ------
    NiftiError
        when the file fails :func:`read_nifti_header`, its data is truncated or corrupt, it
        contains NaN/Inf (also after scaling by ``scl_slope``/``scl_inter``), or it is constant
        where that is refused. NaN/Inf are never cleaned silently: a scanner or converter that
        writes them has a problem the user should see.

    A scan (``modality`` in ``FLAIR``, ``T1w``, ``T2w``) whose header contradicts itself is
    loaded from its sform with a logged warning (:func:`header_warnings`).
    """
    p = Path(path)
    img = read_nifti_header(p, volume=volume)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 becomes Inf
        data = _read_data(img, p, volume).astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise NiftiError(p, (f"image contains NaN or Inf values ({bad} voxels, after scaling); "
                             "fix the converter or mask them before loading"))
    if allow_constant is False or (allow_constant is None and modality in MODALITIES):
        _check_not_constant(p, data)
    if modality in MODALITIES:  # scans; derived maps are written by us
        for warning in _header_warnings(p, img):
            log.warning("%s", warning)
    affine = check_affine(img.affine)
    if canonical:
        ornt = nib.orientations.io_orientation(affine)
        if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
            affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
            data = nib.orientations.apply_orientation(data, ornt)
    return Volume(data=data, affine=affine, modality=modality, source=p)


def load_lesion_mask(path: Path | str, *, volume: int | None = None) -> LesionMask:
    """Load an integer label image (0 = background) as a :class:`LesionMask`.

    An all-zero mask is valid (a visit without lesions). Float files are accepted when every
    value is a whole number (after ``scl_slope``/``scl_inter``).

    Raises
    ------
    NiftiError
        as :func:`read_nifti_header`, or for NaN/Inf, non-integer, negative or out-of-range
        (over 2^31 - 1) labels.
    """
    p = Path(path)
    img = read_nifti_header(p, volume=volume)
    data = _read_data(img, p, volume)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise NiftiError(p, "mask contains NaN or Inf values")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise NiftiError(p, "mask has non-integer values; expected labels 0, 1, 2, ...")
        data = rounded
    if data.size and data.min() < 0:
        raise NiftiError(p, "mask has negative labels")
    if data.size and data.max() > _MAX_LABEL:
        raise NiftiError(p, f"mask label {data.max()} is over the largest id {_MAX_LABEL}")
    return LesionMask(labels=data.astype(np.int32, copy=False), affine=img.affine, source=p)


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


def probability_viewer_bytes(path: Path | str) -> bytes:
    """A stored probability map as compact gzipped uint8 NIfTI bytes for the browser viewer.

    Values ``round(255 p)`` (0-255) instead of float32 probabilities: the same picture under a
    colour map, at a small fraction of the message size (a float32 map of a 3D FLAIR grid is
    about 16 MB in base64). Not for computation: read the stored file for that.
    """
    prob = load_volume(path, "prob")
    quantised = np.rint(np.clip(prob.data, 0.0, 1.0) * 255.0).astype(np.uint8)
    return nifti_bytes(quantised, prob.affine, np.uint8)


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
@contextlib.contextmanager
def itk_single_thread(what: str) -> Iterator[None]:
    """Run SimpleITK filters on one thread and report ITK's failures as ``ValueError``.

    ITK sums over threads in no fixed order, so one thread makes results bit-identical on any
    machine. ITK reports failures (no overlap, a diverging optimiser) as ``RuntimeError``; they
    come out as ``ValueError("<what> failed: <ITK's last line>")``. The global thread count is
    restored afterwards.
    """
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    except RuntimeError as e:
        raise ValueError(f"{what} failed: {str(e).splitlines()[-1]}") from e
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def to_sitk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image of ``data`` (X, Y, Z) with ``affine`` (RAS+), in ITK's LPS+ space.

    The only place where the axis order (SimpleITK arrays are (z, y, x)) and the RAS/LPS sign
    flip are handled; :func:`from_sitk` is its inverse. Only affines without shear are
    representable (origin, spacing and direction).
    """
    import SimpleITK as sitk

    aff = check_affine(affine)
    spacing = affine_spacing(aff)
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


# --------------------------------------------------------------------- derived-array cache
_BOOL_SHAPE = "@bool_shape"  # suffix of the entry holding a bit-packed bool array's shape


def cached_arrays(name: str, key: str | None, names: tuple[str, ...],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``build`` derives, kept in the cache folder as ``NAME-KEY.npz``.

    Parameters
    ----------
    name
        Cache entry name, e.g. ``"mni152_template"``.
    key
        Changes whenever the arrays would (a hash of the deriving code and library versions);
        None skips the cache.
    names
        The arrays ``build`` returns; a cache file missing any of them is rebuilt.
    build
        Derives the arrays (the slow path).

    The folder is :func:`ms_core.foundation.settings.cache_dir` (``MS_DASH_CACHE_DIR``; ``off``
    skips the cache). The cache only saves time, it is never a source of truth: an unreadable file
    is rebuilt and a folder that cannot be written is logged, and ``build``'s arrays are returned.
    Files are written atomically; entries of ``name`` with another key are deleted. Bool arrays
    are stored bit-packed; the npz is read without pickles.
    """
    folder = cache_dir()
    if folder is None or key is None:
        return build()
    path = folder / f"{name}-{key}.npz"
    if path.exists():
        try:
            return _read_cached(path, names)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, e)
    arrays = build()
    stored: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        if a.dtype == np.bool_:
            stored[k] = np.packbits(a.ravel())
            stored[k + _BOOL_SHAPE] = np.asarray(a.shape, dtype=np.int64)
        else:
            stored[k] = a
    try:
        savez: Callable[..., None] = np.savez  # keyword names are array names, no options
        with atomic_open(path) as fh:
            savez(fh, **stored)
        for old in folder.glob(f"{glob.escape(name)}-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:
        log.warning("cannot write the cache file %s (%s); continuing without it", path, e)
    return arrays


def _read_cached(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a :func:`cached_arrays` file (KeyError if one is missing)."""
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        for k in names:
            if k + _BOOL_SHAPE in files:
                shape = tuple(int(n) for n in npz[k + _BOOL_SHAPE])
                bits = np.unpackbits(npz[k], count=math.prod(shape))
                out[k] = bits.astype(bool).reshape(shape)
            elif k in files:
                out[k] = npz[k]
            else:
                raise KeyError(f"no array {k!r}")
    return out
