"""What the pipeline has measured for a patient, read back from the study's derivatives.

The app shows these next to (not instead of) the demo's ground truth: per visit the network's
lesion count and volume (``segment``) and the brain volumes (:mod:`ms_core.longitudinal.atrophy`),
and per interval the lesion changes (``track``) and the percentage brain volume change (PBVC)
against the previous visit. Only *current* results count: made from the same image files (sha256)
with the same settings (see :func:`ms_core.segmentation.segment.segmentation_status`,
:func:`ms_core.longitudinal.tracking.tracking_status`,
:func:`ms_core.longitudinal.atrophy.volumes_status` and
:func:`ms_core.longitudinal.atrophy.pbvc_status`). Each number comes with one line saying where it
comes from (model, settings, file; :mod:`ms_core.study.provenance_text`) in a ``*_provenance``
column.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ms_core.foundation.domain import Visit
from ms_core.foundation.errors import InputError
from ms_core.lesions.mcdonald import (
    DISResult,
    DITResult,
    checklist_rows,
    dissemination_in_space,
    dissemination_in_time,
)
from ms_core.longitudinal.atrophy import VOLUME_FIELDS, AtrophyParams, pbvc_status, volumes_status
from ms_core.longitudinal.tracking import TrackParams, tracking_status
from ms_core.segmentation.segment import SegmentParams, segmentation_status
from ms_core.study.derivatives import PROVENANCE, atrophy_dir, derivatives_dir, tracking_dir
from ms_core.study.provenance_text import (
    change_provenance,
    pbvc_provenance,
    segmentation_provenance,
    volume_provenance,
)

__all__ = [
    "ATROPHY_COLUMNS",
    "MEASURED_COLUMNS",
    "McDonaldChecklist",
    "atrophy_frame",
    "atrophy_table",
    "history_by_lesion",
    "interval_changes",
    "lesion_history",
    "link_lesions",
    "mcdonald_checklist",
    "measured_table",
    "pending_analysis",
    "plausible_volume_ml",
    "visit_lesion_table",
    "volume_text",
    "volume_with_range",
]

#: Columns of :func:`measured_table`.
MEASURED_COLUMNS = ("session_id", "acq_date", "segmented", "lesion_count", "lesion_volume_ml",
                    "lesion_volume_low_ml", "lesion_volume_high_ml", "compared_with", "new",
                    "enlarging", "new_or_enlarging", "shrinking", "disappeared",
                    "brain_volume_ml", "bpf", "gm_fraction", "wm_fraction", "pbvc_from",
                    "pbvc_pct", "pbvc_pct_per_year", "segmentation_provenance",
                    "change_provenance", "volume_provenance", "pbvc_provenance")
#: Columns of :func:`atrophy_table`: the stored volumes
#: (:data:`ms_core.longitudinal.atrophy.VOLUME_FIELDS`) and the PBVC from the previous measured
#: visit (``pbvc_from``), each with its provenance.
ATROPHY_COLUMNS = ("session_id", "acq_date", *VOLUME_FIELDS, "pbvc_from", "interval_years",
                   "pbvc_pct", "pbvc_pct_per_year", "pbvc_method", "pbvc_qc_ncc",
                   "atrophy_warnings", "volume_provenance", "pbvc_provenance")
#: Default atrophy settings (a module-level value: frozen, safe as an argument default).
_ATROPHY_DEFAULTS = AtrophyParams()
#: Columns of :func:`atrophy_table` copied into :func:`measured_table`.
_ATROPHY_IN_MEASURED = ("brain_volume_ml", "bpf", "gm_fraction", "wm_fraction", "pbvc_from",
                        "pbvc_pct", "pbvc_pct_per_year", "volume_provenance", "pbvc_provenance")
#: Study-relative folder layout used in the provenance texts (``derivatives/ms_dash/...``).
_RELATIVE = Path()


def plausible_volume_ml(volume_ml: float, ratios: tuple[float, float] | None
                        ) -> tuple[float, float] | None:
    """The true lesion volumes (ml) that fit a measured ``volume_ml``, given the lowest and
    highest predicted / true volume ratio of the model on the real validation set
    (:func:`ms_core.segmentation.model_store.volume_ratio_range`): ``volume / highest`` to ``volume
    / lowest``. ``None`` without ratios or for a missing volume.

    >>> plausible_volume_ml(8.0, (0.8, 1.25))
    (6.4, 10.0)
    """
    if ratios is None or not np.isfinite(volume_ml):
        return None
    lo, hi = ratios
    if not 0.0 < lo <= hi:
        raise ValueError(f"volume ratios must satisfy 0 < lowest <= highest, got {ratios}")
    return (round(volume_ml / hi, 4), round(volume_ml / lo, 4))


def volume_with_range(volume_ml: float, ratios: tuple[float, float] | None) -> str:
    """``volume_ml`` as text with its plausible range when there is one.

    >>> volume_with_range(8.2, (0.8, 1.25))
    '8.20 ml, plausible 6.6–10.2 ml'
    >>> volume_with_range(8.2, None)
    '8.20 ml'
    """
    return volume_text(volume_ml, plausible_volume_ml(volume_ml, ratios))


def volume_text(volume_ml: float, span: tuple[float, float] | None) -> str:
    """``volume_ml`` and its plausible ``span`` (ml) as text; ``""`` for a missing volume.

    >>> volume_text(8.2, (6.56, 10.25)), volume_text(8.2, None), volume_text(float("nan"), None)
    ('8.20 ml, plausible 6.6–10.2 ml', '8.20 ml', '')
    """
    if not np.isfinite(volume_ml):
        return ""
    text = f"{volume_ml:.2f} ml"
    return text if span is None else f"{text}, plausible {span[0]:.1f}–{span[1]:.1f} ml"


def _lesions_csv(root: Path, visit: Visit) -> Path:
    return derivatives_dir(root, visit.participant_id, visit.session_id) / "lesions.csv"


def _changes_csv(root: Path, baseline: Visit, followup: Visit) -> Path:
    return tracking_dir(root, baseline, followup) / "lesion_changes.csv"


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read the {what} ({e})") from e


def visit_lesion_table(root: Path, visit: Visit,
                       params: SegmentParams = SegmentParams()) -> pd.DataFrame | None:
    """The visit's current segmentation lesion table (``lesions.csv``), or ``None``."""
    if segmentation_status(root, visit, params) is None:
        return None
    return _read_csv(_lesions_csv(root, visit), "lesion table")


def interval_changes(root: Path, baseline: Visit, followup: Visit,
                     params: TrackParams = TrackParams()) -> pd.DataFrame | None:
    """The current ``lesion_changes.csv`` of ``followup`` against ``baseline``, or ``None``."""
    if tracking_status(root, baseline, followup, params) is None:
        return None
    return _read_csv(_changes_csv(root, baseline, followup), "lesion changes")


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


def _number(value: object) -> float:
    """A stored number as float; NaN for ``None`` or anything not numeric."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def atrophy_frame(visits: Sequence[Visit], volumes: Mapping[str, Mapping[str, object] | None],
                  pbvc: Mapping[str, Mapping[str, object] | None]) -> pd.DataFrame:
    """One row per visit (date order) from stored atrophy records, NaN where there is none.

    Pure: ``volumes`` maps a session id to its tissue-volume record
    (:func:`ms_core.longitudinal.atrophy.measure_visit_volumes`) and ``pbvc`` a follow-up's session
    id to its PBVC record (:func:`ms_core.longitudinal.atrophy.measure_interval_pbvc`); missing or
    ``None`` entries give empty cells. Columns :data:`ATROPHY_COLUMNS`; ``volume_provenance`` and
    ``pbvc_provenance`` name each record's method, settings and file
    (:func:`ms_core.study.provenance_text.volume_provenance`, ``"not measured"`` without a record).

    >>> import datetime as dt
    >>> v = [Visit("sub-01", f"ses-0{i}", dt.date(2019 + i, 1, 1), None, None, None, None, None)
    ...      for i in (1, 2)]
    >>> t = atrophy_frame(v, {"ses-01": {"volumes": {"brain_volume_ml": 1100.0}}},
    ...                   {"ses-02": {"baseline_session": "ses-01", "pbvc_pct": -0.5}})
    >>> t[["brain_volume_ml", "pbvc_from", "pbvc_pct"]].values.tolist()
    [[1100.0, '', nan], [nan, 'ses-01', -0.5]]
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    rows = []
    for visit in ordered:
        vol_rec = volumes.get(visit.session_id) or {}
        vols = vol_rec.get("volumes")
        vols = vols if isinstance(vols, Mapping) else {}
        rec = pbvc.get(visit.session_id) or {}
        warnings = rec.get("warnings")
        folder = atrophy_dir(_RELATIVE, visit)
        rows.append({
            "session_id": visit.session_id, "acq_date": pd.Timestamp(visit.acq_date),
            **{k: _number(vols.get(k)) for k in VOLUME_FIELDS},
            "pbvc_from": str(rec.get("baseline_session") or ""),
            "interval_years": _number(rec.get("interval_years")),
            "pbvc_pct": _number(rec.get("pbvc_pct")),
            "pbvc_pct_per_year": _number(rec.get("pbvc_pct_per_year")),
            "pbvc_method": str(rec.get("method") or ""),
            "pbvc_qc_ncc": _number(rec.get("qc_ncc")),
            "atrophy_warnings": "; ".join(str(w) for w in warnings)
            if isinstance(warnings, list) else "",
            "volume_provenance": volume_provenance(
                vol_rec, (folder / "tissue_volumes.json").as_posix()),
            "pbvc_provenance": pbvc_provenance(rec, (
                folder / f"pbvc_from_{rec['baseline_session']}.json").as_posix()
                if rec.get("baseline_session") else ""),
        })
    dtypes = {c: "float64" for c in ATROPHY_COLUMNS} | {
        "session_id": "str", "acq_date": "datetime64[ns]", "pbvc_from": "str",
        "pbvc_method": "str", "atrophy_warnings": "str", "volume_provenance": "str",
        "pbvc_provenance": "str"}
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in ATROPHY_COLUMNS})
    return pd.DataFrame(rows, columns=list(ATROPHY_COLUMNS)).astype(dtypes)


def atrophy_table(root: Path, visits: Sequence[Visit],
                  params: AtrophyParams = _ATROPHY_DEFAULTS) -> pd.DataFrame:
    """A patient's current stored atrophy measurements, one row per visit (date order).

    Per visit the tissue volumes (:data:`ms_core.longitudinal.atrophy.VOLUME_FIELDS`), per interval
    the PBVC from the previous visit with a ``params.modality`` image (``pbvc_from``), in % and
    %/year, with the method, registration QC and protocol warnings; NaN (or "") where nothing
    current is stored. See :func:`atrophy_frame`.
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    usable = [v for v in ordered if params.modality in v.images]
    volumes = {v.session_id: volumes_status(root, v, params) for v in usable}
    pbvc = {b.session_id: pbvc_status(root, a, b, params) for a, b in itertools.pairwise(usable)}
    return atrophy_frame(ordered, volumes, pbvc)


def _volume_span(volume_ml: float, ratios: tuple[float, float] | None) -> dict[str, float]:
    span = plausible_volume_ml(volume_ml, ratios)
    return {"lesion_volume_low_ml": span[0] if span else np.nan,
            "lesion_volume_high_ml": span[1] if span else np.nan}


def measured_table(root: Path, visits: Sequence[Visit],
                   params: TrackParams = TrackParams(),
                   atrophy: AtrophyParams = _ATROPHY_DEFAULTS,
                   volume_ratios: tuple[float, float] | None = None) -> pd.DataFrame:
    """One row per visit (date order): the stored measurements, NaN where none are current.

    ``new`` ... ``disappeared`` count the lesion statuses against the previous visit
    (``compared_with``); ``new_or_enlarging`` is the trial end point's per-interval count.
    ``brain_volume_ml`` ... ``pbvc_pct_per_year`` come from :func:`atrophy_table` (the PBVC
    against ``pbvc_from``, the previous visit with a T1w). ``lesion_volume_low_ml`` and
    ``lesion_volume_high_ml`` are the plausible range of the lesion volume given the model's
    ``volume_ratios`` on the real validation set (:func:`plausible_volume_ml`; NaN without
    them). The ``*_provenance`` columns say where each group of numbers comes from
    (:mod:`ms_core.study.provenance_text`): the segmentation (model, method, threshold, minimum
    lesion size, provider, date, ``lesions.csv``), the comparison (visit, tracking method,
    enlarging ratio, change z, registration NCC, ``lesion_changes.csv``), the tissue volumes
    and the PBVC; ``"not measured"`` where no current result is stored.
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    rows = []
    for prev, visit in itertools.pairwise([None, *ordered]):
        assert visit is not None
        seg = segmentation_status(root, visit, params.segmentation)
        table = _read_csv(_lesions_csv(root, visit), "lesion table") if seg else None
        compared = prev.session_id if prev is not None else ""
        volume_ml = float(table.volume_ml.sum()) if table is not None else np.nan
        row: dict[str, object] = {
            "session_id": visit.session_id, "acq_date": pd.Timestamp(visit.acq_date),
            "segmented": table is not None,
            "lesion_count": float(len(table)) if table is not None else np.nan,
            "lesion_volume_ml": volume_ml,
            "compared_with": compared,
            **_volume_span(volume_ml, volume_ratios),
            "segmentation_provenance": segmentation_provenance(
                seg, _lesions_csv(_RELATIVE, visit).as_posix()),
        }
        track = tracking_status(root, prev, visit, params) if prev is not None else None
        changes = None
        if prev is not None and track is not None:
            changes = _read_csv(_changes_csv(root, prev, visit), "lesion changes")
        counts = {s: (float((changes.status == s).sum()) if changes is not None else np.nan)
                  for s in ("new", "enlarging", "shrinking", "disappeared")}
        row.update(counts, new_or_enlarging=counts["new"] + counts["enlarging"],
                   change_provenance=change_provenance(
                       track, compared,
                       _changes_csv(_RELATIVE, prev, visit).as_posix() if prev else ""))
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in MEASURED_COLUMNS
                                        if c not in _ATROPHY_IN_MEASURED])
    brain = atrophy_table(root, ordered, atrophy)
    for column in _ATROPHY_IN_MEASURED:
        table[column] = brain[column].to_numpy()
    return table[list(MEASURED_COLUMNS)]


@dataclass(frozen=True)
class McDonaldChecklist:
    """McDonald 2017 MRI items for one visit: DIS from its lesions, DIT against an earlier scan.

    ``rows`` come from :func:`ms_core.lesions.mcdonald.checklist_rows`; ``notes`` are the caveats.
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


# ----------------------------------------------------------------------------- persistent ids
def link_lesions(prev_ids: np.ndarray, curr_labels: np.ndarray, groups: np.ndarray,
                 next_id: int) -> tuple[dict[int, int], int]:
    """Persistent ids for the lesions of a visit, from the previous visit's ids.

    Parameters
    ----------
    prev_ids
        (X, Y, Z) int: the previous visit's *persistent* ids, resampled onto this visit's grid.
    curr_labels
        (X, Y, Z) int: this visit's lesion labels (its ``lesions.csv`` ids).
    groups
        (X, Y, Z) int: the comparison's lesion groups on this grid (``lesion_ids.nii.gz``).
    next_id
        First unused persistent id.

    Returns
    -------
    ``{lesion label: persistent id}`` and the next unused id. A lesion inherits the smallest
    persistent id found in its comparison group (after a merge the oldest id survives); the
    second and later parts of a split, and new lesions, get new ids.

    >>> prev = np.array([[[0, 5, 5, 0, 0, 0]]]); cur = np.array([[[0, 1, 1, 0, 2, 2]]])
    >>> grp = np.array([[[0, 1, 1, 0, 2, 2]]])
    >>> link_lesions(prev, cur, grp, 6)
    ({1: 5, 2: 6}, 7)
    """
    if not prev_ids.shape == curr_labels.shape == groups.shape:
        raise ValueError(f"grids differ: {prev_ids.shape}, {curr_labels.shape}, "
                         f"{groups.shape}; resample onto the visit's grid first")
    out: dict[int, int] = {}
    used: set[int] = set()
    for lab in np.unique(curr_labels[curr_labels > 0]).tolist():
        inside = curr_labels == lab
        group_ids = np.unique(groups[inside & (groups > 0)])
        region = np.isin(groups, group_ids) if group_ids.size else inside
        candidates = sorted(set(np.unique(prev_ids[(region | inside) & (prev_ids > 0)]).tolist())
                            - used)
        if candidates:
            out[int(lab)] = int(candidates[0])
            used.add(int(candidates[0]))
        else:
            out[int(lab)] = next_id
            next_id += 1
    return out, next_id


def lesion_history(root: Path, visits: Sequence[Visit],
                   params: TrackParams = TrackParams()) -> pd.DataFrame:
    """Persistent lesion ids across a patient's visits: one row per (visit, lesion).

    Follows the chain of current segmentations and comparisons from the first visit; it stops
    at the first visit that is not segmented or not compared with the one before. Columns:
    ``session_id``, ``lesion_id`` (the visit's own id), ``persistent_id``, ``volume_ml``,
    ``location``.
    """
    from ms_core.foundation.io import load_lesion_mask, read_json
    from ms_core.imaging.preprocess import Grid, resample_to_grid
    from ms_core.lesions.components import label_components

    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    columns = ["session_id", "lesion_id", "persistent_id", "volume_ml", "location"]
    rows: list[dict[str, object]] = []
    prev_ids: np.ndarray | None = None
    prev_affine: np.ndarray | None = None
    next_id = 1
    for prev, visit in itertools.pairwise([None, *ordered]):
        assert visit is not None
        table = visit_lesion_table(root, visit, params.segmentation)
        if table is None:
            break
        folder = derivatives_dir(root, visit.participant_id, visit.session_id)
        mask = load_lesion_mask(folder / "lesion_mask.nii.gz")
        labels = label_components(mask.labels > 0, affine=mask.affine,
                                  min_lesion_mm3=params.segmentation.min_lesion_mm3)
        if prev is None or prev_ids is None or prev_affine is None:
            mapping = {int(i): int(i) for i in table.lesion_id}
            next_id = max(mapping.values(), default=0) + 1
        else:
            if tracking_status(root, prev, visit, params) is None:
                break
            track = tracking_dir(root, prev, visit)
            f_to_b = np.asarray(read_json(track / PROVENANCE)["registration"][
                "followup_to_baseline_ras_mm"], dtype=np.float64)
            grid = Grid(labels.shape, mask.affine)
            carried = resample_to_grid(prev_ids.astype(np.float32),
                                       np.linalg.inv(f_to_b) @ prev_affine, grid, order=0)
            groups = load_lesion_mask(track / "lesion_ids.nii.gz").labels
            mapping, next_id = link_lesions(np.rint(carried).astype(np.int64), labels, groups,
                                            next_id)
        persistent = np.zeros(labels.shape, dtype=np.int32)
        for lab, pid in mapping.items():
            persistent[labels == lab] = pid
        for r in table.itertuples(index=False):
            rows.append({"session_id": visit.session_id, "lesion_id": int(r.lesion_id),
                         "persistent_id": mapping.get(int(r.lesion_id)),
                         "volume_ml": float(r.volume_ml),
                         "location": getattr(r, "location", None)})
        prev_ids, prev_affine = persistent, mask.affine
    return pd.DataFrame(rows, columns=columns)


def history_by_lesion(history: pd.DataFrame) -> pd.DataFrame:
    """Wide view of :func:`lesion_history`: one row per persistent lesion, its location (at
    its last visit) and its volume in ml per visit (NaN where the lesion is absent)."""
    if history.empty:
        return pd.DataFrame(columns=["persistent_id", "location"])
    wide = history.pivot_table(index="persistent_id", columns="session_id", values="volume_ml",
                               aggfunc="sum")
    location = history.groupby("persistent_id")["location"].last()
    out = wide.reset_index()
    out.insert(1, "location", location.reindex(out.persistent_id).to_numpy())
    out.columns.name = None
    return out
