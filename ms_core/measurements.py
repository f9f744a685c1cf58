"""What the pipeline has measured for a patient, read back from the study's derivatives.

The app shows these next to (not instead of) the demo's ground truth: per visit the network's
lesion count and volume (``segment``), and per interval the lesion changes against the previous
visit (``track``). Only *current* results count: made from the same image files (sha256) with
the same settings (see :func:`ms_core.segment.segmentation_status` and
:func:`ms_core.longitudinal.tracking_status`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ms_core.domain import Visit
from ms_core.errors import InputError
from ms_core.longitudinal import TrackParams, tracking_dir, tracking_status
from ms_core.mcdonald import (
    DISResult,
    DITResult,
    checklist_rows,
    dissemination_in_space,
    dissemination_in_time,
)
from ms_core.segment import SegmentParams, segmentation_status
from ms_core.study import derivatives_dir

__all__ = ["MEASURED_COLUMNS", "McDonaldChecklist", "interval_changes", "mcdonald_checklist",
           "measured_table", "pending_analysis", "visit_lesion_table"]

#: Columns of :func:`measured_table`.
MEASURED_COLUMNS = ("session_id", "acq_date", "segmented", "lesion_count", "lesion_volume_ml",
                    "compared_with", "new", "enlarging", "new_or_enlarging", "shrinking",
                    "disappeared")


def visit_lesion_table(root: Path, visit: Visit,
                       params: SegmentParams = SegmentParams()) -> pd.DataFrame | None:
    """The visit's current segmentation lesion table (``lesions.csv``), or ``None``."""
    if segmentation_status(root, visit, params) is None:
        return None
    path = derivatives_dir(root, visit.participant_id, visit.session_id) / "lesions.csv"
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read the lesion table ({e})") from e


def interval_changes(root: Path, baseline: Visit, followup: Visit,
                     params: TrackParams = TrackParams()) -> pd.DataFrame | None:
    """The current ``lesion_changes.csv`` of ``followup`` against ``baseline``, or ``None``."""
    if tracking_status(root, baseline, followup, params) is None:
        return None
    path = tracking_dir(root, baseline, followup) / "lesion_changes.csv"
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read the lesion changes ({e})") from e


def pending_analysis(root: Path, visits: Sequence[Visit], params: TrackParams = TrackParams()
                     ) -> tuple[list[Visit], list[tuple[Visit, Visit]]]:
    """What is missing for a patient: visits to segment and (previous, next) pairs to compare.

    Visits without a usable FLAIR are skipped, and so are pairs that include one.
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    usable = [v for v in ordered if "FLAIR" in v.images]
    to_segment = [v for v in usable if segmentation_status(root, v, params.segmentation) is None]
    to_compare = [(a, b) for a, b in itertools.pairwise(usable)
                  if tracking_status(root, a, b, params) is None]
    return to_segment, to_compare


def measured_table(root: Path, visits: Sequence[Visit],
                   params: TrackParams = TrackParams()) -> pd.DataFrame:
    """One row per visit (date order): the stored measurements, NaN where none are current.

    ``new`` ... ``disappeared`` count the lesion statuses against the previous visit
    (``compared_with``); ``new_or_enlarging`` is the trial end point's per-interval count.
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    rows = []
    for prev, visit in itertools.pairwise([None, *ordered]):
        assert visit is not None
        table = visit_lesion_table(root, visit, params.segmentation)
        row: dict[str, object] = {
            "session_id": visit.session_id, "acq_date": pd.Timestamp(visit.acq_date),
            "segmented": table is not None,
            "lesion_count": float(len(table)) if table is not None else np.nan,
            "lesion_volume_ml": float(table.volume_ml.sum()) if table is not None else np.nan,
            "compared_with": prev.session_id if prev is not None else "",
        }
        changes = interval_changes(root, prev, visit, params) if prev is not None else None
        counts = {s: (float((changes.status == s).sum()) if changes is not None else np.nan)
                  for s in ("new", "enlarging", "shrinking", "disappeared")}
        row.update(counts, new_or_enlarging=counts["new"] + counts["enlarging"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(MEASURED_COLUMNS))


@dataclass(frozen=True)
class McDonaldChecklist:
    """McDonald 2017 MRI items for one visit: DIS from its lesions, DIT against an earlier scan.

    ``rows`` come from :func:`ms_core.mcdonald.checklist_rows`; ``notes`` are the caveats.
    """

    dis: DISResult
    dit: DITResult | None
    rows: list[dict[str, object]]
    notes: tuple[str, ...]


def mcdonald_checklist(lesions: pd.DataFrame, changes: pd.DataFrame | None,
                       has_followup: bool) -> McDonaldChecklist:
    """The checklist from a visit's lesion table (with ``location``) and, when the visit was
    compared with the baseline, that comparison's ``lesion_changes`` table."""
    if "location" not in lesions.columns:
        raise ValueError("the lesion table has no location column: segment the visit again")
    dis = dissemination_in_space({int(i): str(loc) for i, loc in
                                  zip(lesions.lesion_id, lesions.location, strict=True)})
    dit = None
    if changes is not None:
        new_ids = [int(i) for i in changes.lesion_id[changes.status == "new"]]
        dit = dissemination_in_time(new_ids, has_followup=True)
    elif not has_followup:
        dit = dissemination_in_time([], has_followup=False)
    notes = dis.notes + (dit.notes if dit is not None else ())
    return McDonaldChecklist(dis, dit, checklist_rows(dis, dit), tuple(dict.fromkeys(notes)))
