"""The study layout (BIDS-like) and its validating loader.

::

    STUDY/
      dataset_description.json
      participants.tsv                      participant_id sex birth_year ms_type onset_year
                                            [trial_arm]
      sub-X/sub-X_sessions.tsv              session_id acq_date edss relapses_since_last dmt
                                            scanner field_strength_t
      sub-X/ses-Y/anat/sub-X_ses-Y_{FLAIR,T1w,T2w}.nii.gz
      derivatives/ms_dash/sub-X/ses-Y/      results of our pipelines (lesion_mask.nii.gz, ...)
      derivatives/ground_truth/sub-X/ses-Y/ known truth of synthetic studies (demo)

:func:`load_study` never raises for problems inside the study: each one becomes a
:class:`StudyIssue` naming the file and the problem, and the rest of the study stays usable.
Only a missing study folder or participants table raises :class:`StudyError`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from ms_core.foundation.domain import DAYS_PER_YEAR, MODALITIES, MS_TYPES, Participant, Visit
from ms_core.foundation.errors import InputError, StudyError
from ms_core.foundation.io import read_json, read_nifti_header
from ms_core.study.derivatives import derivatives_dir, truth_dir

__all__ = [
    "DEMO_GENERATOR",
    "PARTICIPANT_COLUMNS",
    "SESSION_COLUMNS",
    "Study",
    "StudyIssue",
    "confine_study",
    "image_path",
    "is_demo_study",
    "lesion_overlay_path",
    "load_study",
    "visit_dir",
]

PARTICIPANT_COLUMNS = ("participant_id", "sex", "birth_year", "ms_type", "onset_year")
SESSION_COLUMNS = (
    "session_id", "acq_date", "edss", "relapses_since_last", "dmt", "scanner", "field_strength_t",
)
_SUB_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
_SES_RE = re.compile(r"^ses-[A-Za-z0-9]+$")
_MISSING = {"", "n/a", "na", "nan", "none"}


@dataclass(frozen=True)
class StudyIssue:
    """One problem found while loading a study."""

    path: Path
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Study:
    """A loaded study: participants, their visits (sorted by date) and the problems found."""

    root: Path
    participants: dict[str, Participant]
    visits: dict[str, tuple[Visit, ...]]
    issues: tuple[StudyIssue, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.root.name

    def visit(self, participant_id: str, session_id: str) -> Visit:
        for v in self.visits.get(participant_id, ()):
            if v.session_id == session_id:
                return v
        raise KeyError(f"{participant_id}/{session_id} is not in study {self.root}")

    def issues_for(self, participant_id: str) -> list[StudyIssue]:
        """Issues whose file lies in this participant's folder."""
        return [i for i in self.issues if participant_id in i.path.parts]

    def visits_table(self) -> pd.DataFrame:
        """All visits as one table (one row per visit), with years since each patient's first."""
        rows = []
        for pid, visits in self.visits.items():
            p = self.participants[pid]
            first = visits[0].acq_date if visits else None
            for v in visits:
                rows.append({
                    "participant_id": pid, "session_id": v.session_id, "acq_date": v.acq_date,
                    "years_from_first": (v.acq_date - first).days / DAYS_PER_YEAR if first else 0.0,
                    "edss": v.edss, "relapses_since_last": v.relapses_since_last, "dmt": v.dmt,
                    "scanner": v.scanner, "field_strength_t": v.field_strength_t,
                    "trial_arm": p.trial_arm, "ms_type": p.ms_type,
                    "modalities": ",".join(sorted(v.images)),
                })
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- paths
def visit_dir(root: Path, participant_id: str, session_id: str) -> Path:
    return Path(root) / participant_id / session_id / "anat"


def image_path(root: Path, participant_id: str, session_id: str, modality: str) -> Path:
    name = f"{participant_id}_{session_id}_{modality}.nii.gz"
    return visit_dir(root, participant_id, session_id) / name


def lesion_overlay_path(root: Path, participant_id: str, session_id: str
                        ) -> tuple[Path, str] | None:
    """The lesion mask to overlay for a visit and where it comes from, or ``None``.

    Our own segmentation (``derivatives/ms_dash``) wins over a synthetic study's ground truth.
    """
    seg = derivatives_dir(root, participant_id, session_id) / "lesion_mask.nii.gz"
    if seg.exists():
        return seg, "segmentation"
    truth = truth_dir(root, participant_id, session_id) / "lesion_labels.nii.gz"
    if truth.exists():
        return truth, "ground truth"
    return None


# ----------------------------------------------------------------------------- parsing helpers
def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in _MISSING


def _text(value: object) -> str | None:
    return None if _is_missing(value) else str(value).strip()


def _parse_number(value: object, what: str) -> float | None:
    if _is_missing(value):
        return None
    try:
        return float(str(value).strip())
    except ValueError as e:
        raise ValueError(f"{what} {value!r} is not a number") from e


def _parse_int(value: object, what: str, lo: int, hi: int) -> int | None:
    number = _parse_number(value, what)
    if number is None:
        return None
    if not number.is_integer() or not lo <= number <= hi:
        raise ValueError(f"{what} {value!r} must be a whole number in {lo}..{hi}")
    return int(number)


def _parse_float(value: object, what: str, lo: float, hi: float) -> float | None:
    number = _parse_number(value, what)
    if number is None:
        return None
    if not lo <= number <= hi:
        raise ValueError(f"{what} {number} is outside {lo}..{hi}")
    return number


def parse_edss(value: object) -> float | None:
    """EDSS score: 0-10 in steps of 0.5, or ``None`` when missing.

    >>> parse_edss("3.5")
    3.5
    >>> parse_edss("n/a") is None
    True
    """
    edss = _parse_float(value, "EDSS", 0.0, 10.0)
    if edss is not None and not (edss * 2).is_integer():
        raise ValueError(f"EDSS {edss} is not a multiple of 0.5")
    return edss


def parse_date(value: object) -> dt.date:
    """ISO date ``YYYY-MM-DD``; anything else raises ``ValueError`` quoting the value."""
    text = _text(value)
    if text is None:
        raise ValueError("acq_date is missing")
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError as e:
        raise ValueError(f"acq_date {text!r} is not a date of the form YYYY-MM-DD") from e


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(path, f"cannot read table ({e})") from e


# ----------------------------------------------------------------------------- loading
def _load_participants(root: Path, issues: list[StudyIssue]) -> dict[str, Participant]:
    path = root / "participants.tsv"
    if not path.exists():
        raise StudyError(path, "participants table not found; is this a study folder?")
    table = _read_tsv(path)
    missing = [c for c in PARTICIPANT_COLUMNS if c not in table.columns]
    if missing:
        raise StudyError(path, f"missing columns {missing}; expected {list(PARTICIPANT_COLUMNS)}")
    this_year = dt.date.today().year
    out: dict[str, Participant] = {}
    for line, row in enumerate(table.to_dict("records"), start=2):
        pid = str(row["participant_id"]).strip()
        if not _SUB_RE.match(pid):
            issues.append(StudyIssue(path, f"line {line}: participant_id {pid!r} must look like "
                                           "'sub-01' (letters and digits after 'sub-')"))
            continue
        if pid in out:
            issues.append(StudyIssue(path, f"line {line}: duplicate participant_id {pid}"))
            continue
        try:
            birth = _parse_int(row["birth_year"], "birth_year", 1900, this_year)
            onset = _parse_int(row["onset_year"], "onset_year", 1900, this_year)
            if birth is not None and onset is not None and onset < birth:
                raise ValueError(f"onset_year {onset} is before birth_year {birth}")
            sex = (_text(row["sex"]) or "n/a").upper()
            if sex not in {"M", "F", "O", "N/A"}:
                raise ValueError(f"sex {row['sex']!r} must be M, F, O or n/a")
            ms_type = _text(row["ms_type"]) or "other"
            if ms_type not in MS_TYPES:
                raise ValueError(f"ms_type {ms_type!r} must be one of {list(MS_TYPES)}")
        except ValueError as e:
            issues.append(StudyIssue(path, f"line {line} ({pid}): {e}"))
            continue
        arm = _text(row.get("trial_arm"))
        out[pid] = Participant(pid, sex if sex != "N/A" else "n/a", birth, ms_type, onset, arm)
    return out


def _visit_images(root: Path, pid: str, sid: str, issues: list[StudyIssue],
                  check_images: bool) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for modality in MODALITIES:
        path = image_path(root, pid, sid, modality)
        if not path.exists():
            continue
        if check_images:
            try:
                read_nifti_header(path)
            except InputError as e:
                issues.append(StudyIssue(path, e.problem))
                continue
        images[modality] = path
    if "FLAIR" not in images:
        issues.append(StudyIssue(visit_dir(root, pid, sid),
                                 "no usable FLAIR image; lesion analysis needs one", "warning"))
    return images


def _load_visits(root: Path, pid: str, issues: list[StudyIssue],
                 check_images: bool) -> tuple[Visit, ...]:
    path = root / pid / f"{pid}_sessions.tsv"
    if not path.exists():
        issues.append(StudyIssue(path, "sessions table not found; participant has no visits"))
        return ()
    try:
        table = _read_tsv(path)
    except InputError as e:
        issues.append(StudyIssue(path, e.problem))
        return ()
    missing = [c for c in SESSION_COLUMNS if c not in table.columns]
    if missing:
        issues.append(StudyIssue(path, f"missing columns {missing}"))
        return ()
    visits: dict[str, Visit] = {}
    for line, row in enumerate(table.to_dict("records"), start=2):
        sid = str(row["session_id"]).strip()
        if not _SES_RE.match(sid) or sid in visits:
            why = "duplicate" if sid in visits else "must look like 'ses-01'"
            issues.append(StudyIssue(path, f"line {line}: session_id {sid!r} {why}"))
            continue
        try:
            acq_date = parse_date(row["acq_date"])
        except ValueError as e:
            issues.append(StudyIssue(path, f"line {line} ({sid}): {e}; visit skipped"))
            continue
        values: dict[str, object] = {}
        for name, parse in (
            ("edss", parse_edss),
            ("relapses_since_last", lambda v: _parse_int(v, "relapses_since_last", 0, 100)),
            ("field_strength_t", lambda v: _parse_float(v, "field_strength_t", 0.1, 14.0)),
        ):
            try:
                values[name] = parse(row[name])
            except ValueError as e:
                issues.append(StudyIssue(path, f"line {line} ({sid}): {e}; left empty"))
                values[name] = None
        visits[sid] = Visit(
            participant_id=pid, session_id=sid, acq_date=acq_date,
            edss=values["edss"],  # type: ignore[arg-type]
            relapses_since_last=values["relapses_since_last"],  # type: ignore[arg-type]
            dmt=_text(row["dmt"]), scanner=_text(row["scanner"]),
            field_strength_t=values["field_strength_t"],  # type: ignore[arg-type]
            images=_visit_images(root, pid, sid, issues, check_images),
        )
    return tuple(sorted(visits.values(), key=lambda v: (v.acq_date, v.session_id)))


#: ``GeneratedBy`` name in ``dataset_description.json`` of a study built by ``ms_core demo``.
DEMO_GENERATOR = "ms_core demo"


def is_demo_study(root: Path | str) -> bool:
    """Whether ``root`` is a synthetic demo study (its ``dataset_description.json`` says it was
    generated by ``ms_core demo``); False when the file is missing or unreadable."""
    path = Path(root) / "dataset_description.json"
    if not path.is_file():
        return False
    try:
        description = read_json(path)
        return any(isinstance(g, dict) and g.get("Name") == DEMO_GENERATOR
                   for g in description.get("GeneratedBy", []))
    except (InputError, OSError, AttributeError, TypeError):
        return False


def confine_study(path: Path | str, roots: Sequence[Path] | None) -> Path:
    """``path`` with ``..`` and symbolic links resolved, when it lies in one of ``roots`` (or
    is one); ``roots`` None: no limit.

    The test compares whole path components, so ``/data/studies-old`` is not inside
    ``/data/studies``; a symbolic link inside a root that points out of it is outside.

    Raises
    ------
    StudyError
        naming ``path`` and the allowed folders.
    """
    resolved = Path(path).expanduser().resolve()
    if roots is None:
        return resolved
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise StudyError(Path(path), f"outside the allowed study folders ({allowed}; set "
                                 f"MS_DASH_STUDY_ROOTS to change them)")


def load_study(root: Path | str, *, check_images: bool = True) -> Study:
    """Load and validate a study folder.

    Parameters
    ----------
    root
        The study folder (contains ``participants.tsv``).
    check_images
        Read each image's header (fast; voxel data is checked when an image is opened).

    Raises
    ------
    StudyError
        when ``root`` is not a folder or has no readable participants table.
    """
    root = Path(root)
    if not root.is_dir():
        raise StudyError(root, "study folder not found")
    issues: list[StudyIssue] = []
    participants = _load_participants(root, issues)
    visits = {pid: _load_visits(root, pid, issues, check_images) for pid in participants}
    listed = set(participants)
    for folder in sorted(root.glob("sub-*")):
        if folder.is_dir() and folder.name not in listed:
            issues.append(StudyIssue(folder, "folder is not listed in participants.tsv",
                                     "warning"))
    return Study(root=root, participants=participants, visits=visits, issues=tuple(issues))
