"""Where the pipeline's results live in a study, and whether a stored result is current.

Every stage stores its results under ``derivatives/ms_dash/sub-X/ses-Y/`` with a JSON record
(its provenance) that names the inputs by sha256, the settings and, where it has them, the
output files by sha256 and size. A stored result is current while all of these still hold.
Segmentation (``provenance.json``), tracking (``change_from_<ses>/provenance.json``) and
atrophy (``atrophy/*.json``) use the folders and checks here; each stage adds its own
comparison of settings and models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ms_core.foundation.domain import Visit
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json, sha256_file

__all__ = [
    "ATROPHY_FOLDER",
    "PIPELINE",
    "PROVENANCE",
    "TRUTH",
    "atrophy_dir",
    "derivatives_dir",
    "input_record",
    "inputs_current",
    "output_record",
    "outputs_intact",
    "patient_dir",
    "pipeline_dir",
    "read_record",
    "tracking_dir",
    "truth_dir",
]

#: Our pipeline's folder under ``derivatives/``.
PIPELINE = "ms_dash"
#: The known truth of synthetic studies (the demo), beside our results.
TRUTH = "ground_truth"
#: A visit's segmentation record, and a comparison's, in their folders.
PROVENANCE = "provenance.json"
#: A visit's atrophy records, under its folder.
ATROPHY_FOLDER = "atrophy"


def pipeline_dir(root: Path | str, pipeline: str = PIPELINE) -> Path:
    """``derivatives/<pipeline>``: all of a pipeline's results (the cohort table lives here)."""
    return Path(root) / "derivatives" / pipeline


def patient_dir(root: Path | str, participant_id: str, pipeline: str = PIPELINE) -> Path:
    """``derivatives/<pipeline>/sub-X``: a patient's results (reports live here)."""
    return pipeline_dir(root, pipeline) / participant_id


def derivatives_dir(root: Path | str, participant_id: str, session_id: str,
                    pipeline: str = PIPELINE) -> Path:
    """``derivatives/<pipeline>/sub-X/ses-Y``: a visit's results."""
    return patient_dir(root, participant_id, pipeline) / session_id


def truth_dir(root: Path | str, participant_id: str, session_id: str) -> Path:
    """``derivatives/ground_truth/sub-X/ses-Y``: a synthetic visit's known truth."""
    return derivatives_dir(root, participant_id, session_id, TRUTH)


def tracking_dir(root: Path | str, baseline: Visit, followup: Visit) -> Path:
    """Where the comparison of two visits is stored: under the follow-up's results."""
    return (derivatives_dir(root, followup.participant_id, followup.session_id)
            / f"change_from_{baseline.session_id}")


def atrophy_dir(root: Path | str, visit: Visit) -> Path:
    """Where a visit's atrophy records are stored: ``tissue_volumes.json`` holds its volumes,
    ``pbvc_from_<ses>.json`` the brain volume change since the earlier visit ``<ses>``."""
    return derivatives_dir(root, visit.participant_id, visit.session_id) / ATROPHY_FOLDER


def input_record(files: Mapping[str, Path | None]) -> dict[str, dict[str, str]]:
    """The ``inputs`` entry of a record: each file's path and sha256 (``None`` files left out)."""
    return {k: {"path": str(p), "sha256": sha256_file(p)} for k, p in files.items()
            if p is not None}


def output_record(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``outputs`` entry of a record: each written file's sha256 and size in bytes."""
    return {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
            for name in names}


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON record at ``path``, or ``None`` when it is missing, unreadable or not an
    object (a result without its record is never taken as current)."""
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (InputError, OSError):
        return None
    return record if isinstance(record, dict) else None


def inputs_current(record: Mapping[str, Any], files: Mapping[str, Path | None]) -> bool:
    """Whether the record's inputs are exactly ``files`` (``None`` ones left out) with the
    sha256 the files have now. A malformed ``inputs`` entry or an unreadable file is not."""
    try:
        stored = {k: v["sha256"] for k, v in record["inputs"].items()}
        return bool(stored == {k: sha256_file(p) for k, p in files.items() if p is not None})
    except (KeyError, TypeError, AttributeError, OSError):
        return False


def outputs_intact(folder: Path, record: Mapping[str, Any], names: Iterable[str]) -> bool:
    """Whether every output file the record lists (exactly ``names``) is present with its
    recorded size and sha256. A record written before outputs were recorded (no ``outputs``
    key) only needs the files to exist."""
    names = tuple(names)
    recorded = record.get("outputs")
    if recorded is None:
        return all((folder / name).is_file() for name in names)
    if not isinstance(recorded, dict) or set(recorded) != set(names):
        return False
    try:
        for name, entry in recorded.items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return False
            if sha256_file(path) != entry["sha256"]:
                return False
    except (KeyError, TypeError, OSError):
        return False
    return True
