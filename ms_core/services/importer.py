"""Import one visit (FLAIR, optional T1w/T2w) into a study folder.

Two steps, so that a caller can show every problem before anything is written:

* :func:`check_visit` reads and validates the inputs (NIfTI through
  :func:`ms_core.foundation.io.load_volume`, DICOM folders or zips through
  :func:`ms_core.imaging.dicom.read_dicom`) and the visit's fields, and returns the images in memory
  with the list of problems. It writes nothing.
* :func:`write_visit` raises the check's problems as :class:`InputError`, or writes the visit:
  images into ``sub-X/ses-Y/anat/`` and rows into ``participants.tsv`` and
  ``sub-X/sub-X_sessions.tsv`` (the formats of :mod:`ms_core.study.layout`). :func:`import_visit` is
  the two in one call.

Writes are all-or-nothing: the images are written into a hidden staging folder inside the study
(``.import-*``) and renamed into place, then the tables are replaced atomically; any failure
moves the previous state back. An existing visit (a sessions row or an ``anat`` folder) is only
replaced with ``replace=True``; the visit's old derivatives (segmentation, tracking, ground truth)
are then removed with its old images, since they describe images that are gone. A folder that
does not exist yet (or is empty) becomes a new study with a ``participants.tsv``.

Every image is re-written through :func:`ms_core.foundation.io.save_volume`, which clears the NIfTI
header's text fields; DICOM header values other than those of
:class:`ms_core.imaging.dicom.SeriesInfo` never reach the study.
``derivatives/import/sub-X/ses-Y/provenance.json`` records how each image was made (converter and
version, series description, grid, sha256 of the written file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ms_core import __version__
from ms_core.foundation.domain import MODALITIES, MS_TYPES, Participant, Visit, Volume
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import (
    SPACING_RANGE_MM,
    atomic_write_bytes,
    load_volume,
    read_nifti_header,
    save_volume,
    sha256_file,
    write_json,
    write_tsv,
)
from ms_core.imaging.dicom import (
    DEFAULT_LIMITS,
    Converter,
    DicomLimits,
    SeriesInfo,
    is_dicom_source,
    read_dicom,
)
from ms_core.study.derivatives import PROVENANCE, derivatives_dir
from ms_core.study.layout import (
    PARTICIPANT_COLUMNS,
    SESSION_COLUMNS,
    Study,
    image_path,
    load_study,
    parse_edss,
    visit_dir,
)

__all__ = [
    "IMPORT_PIPELINE",
    "NIFTI_SUFFIXES",
    "ImportedImage",
    "VisitCheck",
    "check_visit",
    "import_visit",
    "next_session_id",
    "read_image",
    "staged_uploads",
    "write_visit",
]

log = logging.getLogger(__name__)

#: File names accepted as NIfTI; anything else must be a DICOM folder, zip or file.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Derivatives folder of the import provenance (``derivatives/import/sub-X/ses-Y/``).
IMPORT_PIPELINE = "import"
_SUB_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
_SES_RE = re.compile(r"^ses-[A-Za-z0-9]+$")
_CONTROL = re.compile(r"[\t\r\n\x00-\x1f\x7f]")

Progress = Callable[[float, str], None]


@dataclass(frozen=True, eq=False)
class ImportedImage:
    """One validated input image, in memory, ready to be written.

    ``dtype`` is the on-disk type it will be written with: the source's integer type when the
    values fit it exactly, else float32.
    """

    modality: str
    volume: Volume
    dtype: np.dtype
    source_kind: Literal["nifti", "dicom"]
    series: SeriesInfo | None = None
    converter: str | None = None


@dataclass(frozen=True, eq=False)
class VisitCheck:
    """Result of :func:`check_visit`: what would be written, and every problem found.

    ``session_row`` is the ``sub-X_sessions.tsv`` row (empty when a field is invalid);
    ``participant`` is the ``participants.tsv`` row used if the participant is new.
    """

    study_root: Path
    participant_id: str
    session_id: str
    images: dict[str, ImportedImage] = field(default_factory=dict)
    problems: tuple[InputError, ...] = ()
    session_row: dict[str, str] = field(default_factory=dict)
    participant: Participant | None = None
    replace: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def dicom_series(self) -> SeriesInfo | None:
        """The FLAIR's DICOM series (else the first DICOM image's), or ``None``."""
        order = sorted(self.images.values(), key=lambda i: i.modality != "FLAIR")
        return next((i.series for i in order if i.series is not None), None)

    def summary(self) -> pd.DataFrame:
        """One row per image: modality, source, grid, voxel size (mm), series, converter."""
        return pd.DataFrame([{
            "image": m, "source": i.source_kind,
            "grid": " × ".join(str(n) for n in i.volume.shape),
            "voxel size (mm)": " × ".join(f"{s:.3g}" for s in i.volume.spacing_mm),
            "series": i.series.label if i.series else "",
            "converter": i.converter or "nibabel",
        } for m, i in self.images.items()],
            columns=["image", "source", "grid", "voxel size (mm)", "series", "converter"])


# ----------------------------------------------------------------------------- reading inputs
def _storage_dtype(data: np.ndarray, preferred: np.dtype | None = None) -> np.dtype:
    """The narrowest of ``preferred``/int16/uint16 that holds ``data`` exactly, else float32."""
    if data.size and np.all(np.mod(data, 1) == 0):
        lo, hi = float(data.min()), float(data.max())
        candidates = [preferred] if preferred is not None else []
        for dtype in (*candidates, np.dtype(np.int16), np.dtype(np.uint16)):
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                if info.min <= lo and hi <= info.max:
                    return np.dtype(dtype)
    return np.dtype(np.float32)


def read_image(path: Path | str, modality: str, *, series_uid: str | None = None,
               converter: Converter = "auto", limits: DicomLimits = DEFAULT_LIMITS
               ) -> ImportedImage:
    """Read and validate one input: ``.nii``/``.nii.gz``, or a DICOM zip, folder or file.

    Raises
    ------
    InputError
        naming the file and the problem (:class:`ms_core.imaging.dicom.SeriesChoiceError` when a
        DICOM source holds several series and the one for ``modality`` must be chosen).
    """
    p = Path(path)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        volume = load_volume(p, modality)
        header_dtype = np.dtype(read_nifti_header(p).get_data_dtype())
        return ImportedImage(modality, volume, _storage_dtype(volume.data, header_dtype),
                             "nifti")
    if p.exists() and is_dicom_source(p):
        dcm = read_dicom(p, modality=modality, series_uid=series_uid, converter=converter,
                         limits=limits)
        lo, hi = SPACING_RANGE_MM
        spacing = dcm.volume.spacing_mm
        # the check ms_core.foundation.io applies to NIfTI
        if min(spacing) < lo or max(spacing) > hi:
            raise InputError(p, f"{dcm.series.label}: voxel size "
                                f"{[round(s, 3) for s in spacing]} mm is outside {lo}-{hi} mm")
        return ImportedImage(modality, dcm.volume, _storage_dtype(dcm.volume.data), "dicom",
                             dcm.series, f"{dcm.converter} {dcm.converter_version}")
    if not p.exists():
        raise InputError(p, "file or folder not found")
    raise InputError(p, "unsupported file: expected .nii or .nii.gz (NIfTI), or a DICOM .zip, "
                        "folder or file")


# ----------------------------------------------------------------------------- checking
def _as_date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError as e:
        raise ValueError(f"date {value!r} is not of the form YYYY-MM-DD") from e


def _visit_exists(root: Path, participant_id: str, session_id: str) -> bool:
    folder = visit_dir(root, participant_id, session_id)
    if folder.is_dir() and any(folder.iterdir()):
        return True
    sessions = root / participant_id / f"{participant_id}_sessions.tsv"
    if sessions.is_file():
        with contextlib.suppress(InputError):
            table = _read_table(sessions)
            if "session_id" in table.columns:
                return session_id in set(table["session_id"].str.strip())
    return False


def _study_problem(root: Path) -> str | None:
    if root.exists() and not root.is_dir():
        return "is a file, not a study folder"
    if root.is_dir() and not (root / "participants.tsv").exists() and any(root.iterdir()):
        return ("folder is not empty and has no participants.tsv; import into a study, a new "
                "folder or an empty one")
    return None


def _field_problems(participant_id: str, session_id: str, acq_date: dt.date | str,
                    edss: float | str | None, relapses_since_last: int | None,
                    texts: Mapping[str, str | None], participant: Participant | None
                    ) -> list[str]:
    problems = []
    if not _SUB_RE.match(participant_id):
        problems.append(f"participant id {participant_id!r} must look like 'sub-01' (letters "
                        "and digits after 'sub-')")
    if not _SES_RE.match(session_id):
        problems.append(f"session id {session_id!r} must look like 'ses-01'")
    try:
        if _as_date(acq_date) > dt.date.today():
            problems.append(f"visit date {acq_date} is in the future")
    except ValueError as e:
        problems.append(str(e))
    try:
        parse_edss(edss)
    except ValueError as e:
        problems.append(str(e))
    if relapses_since_last is not None and not 0 <= relapses_since_last <= 100:
        problems.append(f"relapses since last visit {relapses_since_last} must be 0..100")
    for name, text in texts.items():
        if text is not None and _CONTROL.search(text):
            problems.append(f"{name} {text!r} must not contain tabs or line breaks")
    if participant is not None:
        if participant.participant_id != participant_id:
            problems.append(f"participant details are for {participant.participant_id}, "
                            f"not {participant_id}")
        if participant.sex not in {"M", "F", "O", "n/a"}:
            problems.append(f"sex {participant.sex!r} must be M, F, O or n/a")
        if participant.ms_type not in MS_TYPES:
            problems.append(f"ms_type {participant.ms_type!r} must be one of {list(MS_TYPES)}")
    return problems


def check_visit(study_root: Path | str, participant_id: str, session_id: str,
                files: Mapping[str, Path], *, acq_date: dt.date | str,
                edss: float | str | None = None, relapses_since_last: int | None = None,
                dmt: str | None = None, scanner: str | None = None,
                field_strength_t: float | None = None, participant: Participant | None = None,
                replace: bool = False, series: Mapping[str, str] | None = None,
                converter: Converter = "auto", limits: DicomLimits = DEFAULT_LIMITS,
                progress: Progress | None = None) -> VisitCheck:
    """Validate a visit to import; collect every problem instead of stopping at the first.

    Parameters are those of :func:`import_visit`. Nothing is written; pass the result to
    :func:`write_visit`. Each problem is an :class:`InputError` naming the file (image problems)
    or the study folder (field problems).
    """
    root = Path(study_root)
    problems: list[InputError] = []
    study_problem = _study_problem(root)
    if study_problem:
        problems.append(InputError(root, study_problem))
    field_problems = [InputError(root, p) for p in _field_problems(
        participant_id, session_id, acq_date, edss, relapses_since_last,
        {"dmt": dmt, "scanner": scanner}, participant)]
    if field_strength_t is not None and not 0.1 <= field_strength_t <= 14.0:
        field_problems.append(InputError(root, f"field strength {field_strength_t} T is outside "
                                               "0.1..14"))
    problems += field_problems
    if not study_problem and not replace and _visit_exists(root, participant_id, session_id):
        problems.append(InputError(visit_dir(root, participant_id, session_id).parent,
                                   "this visit already exists; choose another session id or "
                                   "replace it"))
    unknown = sorted(set(files) - set(MODALITIES))
    if unknown:
        problems.append(InputError(root, f"unknown image types {unknown}; expected "
                                         f"{list(MODALITIES)}"))
    if "FLAIR" not in files:
        problems.append(InputError(root, "a FLAIR image is required"))
    images: dict[str, ImportedImage] = {}
    wanted = [m for m in MODALITIES if m in files]
    for n, modality in enumerate(wanted):
        if progress:
            progress(0.5 * n / len(wanted), f"Reading the {modality} image")
        try:
            images[modality] = read_image(files[modality], modality,
                                          series_uid=(series or {}).get(modality),
                                          converter=converter, limits=limits)
        except InputError as e:
            problems.append(e)
    check = VisitCheck(root, participant_id, session_id, images, tuple(problems),
                       participant=participant or Participant(participant_id, "n/a", None,
                                                              "other", None),
                       replace=replace)
    if field_problems:
        return check
    info = check.dicom_series()
    row = {
        "session_id": session_id, "acq_date": _as_date(acq_date).isoformat(),
        "edss": _cell(parse_edss(edss)), "relapses_since_last": _cell(relapses_since_last),
        "dmt": dmt or "n/a",
        "scanner": scanner or (info.scanner if info and info.scanner else "n/a"),
        "field_strength_t": _cell(field_strength_t if field_strength_t is not None
                                  else info.field_strength_t if info else None),
    }
    check.session_row.update(row)
    return check


# ----------------------------------------------------------------------------- writing
def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(path, f"cannot read table ({e})") from e


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else f"{value:.1f}"
    return str(value)


def _with_row(table: pd.DataFrame, key: str, row: dict[str, str]) -> pd.DataFrame:
    """``table`` with ``row`` replacing the row of the same ``key`` value, or appended."""
    table = table.copy()
    for column in row:
        if column not in table.columns:
            table[column] = "n/a"
    match = table[key].str.strip() == row[key] if len(table) else pd.Series([], dtype=bool)
    if match.any():
        index = table.index[match][0]
        for column, value in row.items():
            table.loc[index, column] = value
        return table
    new = {c: row.get(c, "n/a") for c in table.columns}
    return pd.concat([table, pd.DataFrame([new], dtype=str)], ignore_index=True)


@contextlib.contextmanager
def _study_lock(root: Path) -> Iterator[None]:
    """Serialise imports into one study between processes of this machine (advisory lock in
    the temporary folder, so that nothing is added to the study; none on Windows)."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"ms_dash_import_{key}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _participant_row(participant: Participant) -> dict[str, str]:
    row = {"participant_id": participant.participant_id, "sex": participant.sex,
           "birth_year": _cell(participant.birth_year), "ms_type": participant.ms_type,
           "onset_year": _cell(participant.onset_year)}
    if participant.trial_arm:
        row["trial_arm"] = participant.trial_arm
    return row


def _provenance(images: Mapping[str, ImportedImage], written: Mapping[str, Path],
                replaced: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    for modality, image in images.items():
        entry: dict[str, object] = {
            "file": written[modality].name, "sha256": sha256_file(written[modality]),
            "source": image.source_kind, "shape": list(image.volume.shape),
            "spacing_mm": [round(s, 6) for s in image.volume.spacing_mm],
            "dtype": str(image.dtype), "converter": image.converter or "nibabel",
        }
        if image.series is not None:
            entry |= {"series_number": image.series.number,
                      "series_description": image.series.description,
                      "n_images": image.series.n_images}
        out[modality] = entry
    return {"app_version": __version__, "created_utc": dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"), "replaced_existing_visit": replaced, "images": out}


class _Moves:
    """Renames done so far, undone in reverse order when a later step fails."""

    def __init__(self) -> None:
        self.done: list[tuple[Path, Path]] = []

    def move(self, src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self.done.append((src, dst))

    def undo(self) -> None:
        for src, dst in reversed(self.done):
            with contextlib.suppress(OSError):
                os.replace(dst, src)


def _restore(path: Path, old: bytes | None) -> None:
    with contextlib.suppress(OSError):
        if old is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, old)


def _write_visit(root: Path, participant_id: str, session_id: str, check: VisitCheck,
                 session_row: dict[str, str], participant: Participant, replace: bool,
                 progress: Progress | None) -> None:
    """Write the visit; on any failure put back the previous state and re-raise."""
    problem = _study_problem(root)
    if problem:
        raise InputError(root, problem)
    exists = _visit_exists(root, participant_id, session_id)
    if exists and not replace:
        raise InputError(visit_dir(root, participant_id, session_id).parent,
                         "this visit already exists; choose another session id or replace it")
    participants_path = root / "participants.tsv"
    sessions_path = root / participant_id / f"{participant_id}_sessions.tsv"
    participants = (_read_table(participants_path) if participants_path.exists()
                    else pd.DataFrame(columns=list(PARTICIPANT_COLUMNS)))
    sessions = (_read_table(sessions_path) if sessions_path.exists()
                else pd.DataFrame(columns=list(SESSION_COLUMNS)))
    for path, table, key in ((participants_path, participants, "participant_id"),
                             (sessions_path, sessions, "session_id")):
        if key not in table.columns:
            raise InputError(path, f"has no {key} column")
    anat = visit_dir(root, participant_id, session_id)
    provenance_dir = derivatives_dir(root, participant_id, session_id, IMPORT_PIPELINE)
    # Folders this import creates (parents first), removed again if it fails.
    created = [d for d in (root, anat.parents[1], anat.parent, *reversed(
        provenance_dir.parents[:3]), provenance_dir) if not d.exists()]
    old_tables = {p: (p.read_bytes() if p.exists() else None)
                  for p in (participants_path, sessions_path)}
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    moves = _Moves()
    try:
        written = {}
        for n, (modality, image) in enumerate(check.images.items()):
            if progress:
                progress(0.5 + 0.4 * n / len(check.images), f"Writing the {modality} image")
            name = image_path(root, participant_id, session_id, modality).name
            # Integer data of a fitting range is stored unscaled (float data would be scaled).
            save_volume(staging / "anat" / name, image.volume.data.astype(image.dtype),
                        image.volume.affine, image.dtype)
            written[modality] = anat / name
        if progress:
            progress(0.9, "Updating the study tables")
        if anat.exists():
            moves.move(anat, staging / "old" / "anat")
        for pipeline_dir in sorted((root / "derivatives").glob("*")):
            old = pipeline_dir / participant_id / session_id
            if exists and old.is_dir():
                moves.move(old, staging / "old" / "derivatives" / pipeline_dir.name)
        moves.move(staging / "anat", anat)
        write_json(provenance_dir / PROVENANCE,
                   _provenance(check.images, written, exists))
        write_tsv(sessions_path, _with_row(sessions, "session_id", session_row))
        if participant_id not in set(participants["participant_id"].str.strip()):
            write_tsv(participants_path,
                      _with_row(participants, "participant_id", _participant_row(participant)))
    except BaseException:
        for path, old_bytes in old_tables.items():
            _restore(path, old_bytes)
        shutil.rmtree(provenance_dir, ignore_errors=True)
        moves.undo()
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def write_visit(check: VisitCheck, *, progress: Progress | None = None) -> Visit:
    """Write a visit checked by :func:`check_visit` into its study (all or nothing).

    Raises
    ------
    InputError
        the check's problems (one as it is, several joined into one message), or a problem
        found while writing (the visit appeared meanwhile, an unreadable table); the study is
        then left as it was.
    """
    if len(check.problems) == 1:
        raise check.problems[0]
    if check.problems:
        raise InputError(None, "; ".join(str(p) for p in check.problems))
    root, pid, sid = check.study_root, check.participant_id, check.session_id
    participant = check.participant or Participant(pid, "n/a", None, "other", None)
    with _study_lock(root):
        _write_visit(root, pid, sid, check, check.session_row, participant, check.replace,
                     progress)
    if progress:
        progress(1.0, "Done")
    log.info("imported %s %s into %s", pid, sid, root)
    return load_study(root).visit(pid, sid)


def import_visit(study_root: Path | str, participant_id: str, session_id: str,
                 files: Mapping[str, Path], *, acq_date: dt.date | str,
                 edss: float | str | None = None, relapses_since_last: int | None = None,
                 dmt: str | None = None, scanner: str | None = None,
                 field_strength_t: float | None = None, participant: Participant | None = None,
                 replace: bool = False, series: Mapping[str, str] | None = None,
                 converter: Converter = "auto", limits: DicomLimits = DEFAULT_LIMITS,
                 progress: Progress | None = None) -> Visit:
    """Validate the images of one visit and write them, with its table rows, into a study.

    Parameters
    ----------
    study_root
        Study folder; created (with a ``participants.tsv``) when missing or empty.
    participant_id, session_id
        ``sub-<letters/digits>`` and ``ses-<letters/digits>``.
    files
        Modality (``"FLAIR"`` required, ``"T1w"``/``"T2w"`` optional) -> ``.nii``/``.nii.gz``
        file, DICOM ``.zip``, DICOM folder or DICOM file. Grids may differ between modalities.
    acq_date
        Visit date (``datetime.date`` or ``YYYY-MM-DD``).
    edss, relapses_since_last, dmt
        Clinical fields of the sessions row (missing = ``None``).
    scanner, field_strength_t
        Sessions-row fields; when ``None`` they are taken from the FLAIR's DICOM series
        (manufacturer and model; field strength in T), if any.
    participant
        Row for ``participants.tsv`` when the participant is new (default: sex ``n/a``, ms_type
        ``other``); an existing participant's row is never changed.
    replace
        Replace an existing visit (images, sessions row; its old derivatives are removed).
    series
        Modality -> DICOM ``SeriesInstanceUID`` when a zip holds several series.
    converter, limits
        DICOM conversion (:func:`ms_core.imaging.dicom.read_dicom`).
    progress
        Called with (fraction 0..1, what is being done).

    Returns
    -------
    Visit
        The imported visit as :func:`ms_core.study.layout.load_study` now reads it.

    Raises
    ------
    InputError
        naming the bad file or field; nothing in the study is changed. Several problems are
        joined into one message (:func:`check_visit` lists them separately).
    """
    check = check_visit(study_root, participant_id, session_id, files, acq_date=acq_date,
                        edss=edss, relapses_since_last=relapses_since_last, dmt=dmt,
                        scanner=scanner, field_strength_t=field_strength_t,
                        participant=participant, replace=replace, series=series,
                        converter=converter, limits=limits, progress=progress)
    return write_visit(check, progress=progress)


def next_session_id(study: Study, participant_id: str) -> str:
    """``ses-NN`` one above the participant's highest numbered session (``ses-01`` if none)."""
    numbers = [int(m.group(1)) for v in study.visits.get(participant_id, ())
               if (m := re.fullmatch(r"ses-(\d+)", v.session_id))]
    return f"ses-{max(numbers, default=0) + 1:02d}"


@contextlib.contextmanager
def staged_uploads(uploads: Mapping[str, tuple[str, bytes]]) -> Iterator[dict[str, Path]]:
    """Write uploaded files into a private temporary folder for :func:`import_visit`.

    ``uploads`` maps modality -> (file name as uploaded, bytes). Each file keeps its base name
    (so messages name it) under a folder of its own; everything is deleted on exit.
    """
    with tempfile.TemporaryDirectory(prefix="ms_dash_upload_") as tmp:
        paths = {}
        for modality, (name, payload) in uploads.items():
            base = re.sub(r"[^A-Za-z0-9._ -]", "_", Path(name.replace("\\", "/")).name)
            base = base.lstrip(".") or "upload"
            folder = Path(tmp) / re.sub(r"[^A-Za-z0-9]", "_", modality)
            folder.mkdir()
            path = folder / base
            path.write_bytes(payload)
            paths[modality] = path
        yield paths
