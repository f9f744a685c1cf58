"""Brain atrophy of a study's visits: tissue volumes per visit and PBVC per interval, stored with
their provenance under :func:`~ms_core.study.derivatives.atrophy_dir` and read back while
current (:func:`measure_visit_volumes`, :func:`measure_interval_pbvc`, :func:`volumes_status`,
:func:`pbvc_status`, :func:`pending_atrophy`, :func:`read_atrophy`).

The measurements themselves: :mod:`ms_core.segmentation.tissue` (tissue volumes of one image)
and :mod:`ms_core.longitudinal.pbvc` (the change between two). Method and accuracy:
``docs/atrophy.md``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ms_core import __version__
from ms_core.foundation.domain import DAYS_PER_YEAR, MODALITIES, Visit, Volume
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import load_lesion_mask, load_volume, write_json
from ms_core.imaging.preprocess import Grid, resample_to_grid
from ms_core.lesions.visits import visit_metadata_warnings
from ms_core.longitudinal.pbvc import (
    PBVC_METHODS,
    PBVCMethod,
    annualised_pct_per_year,
    percent_brain_volume_change,
)
from ms_core.segmentation.segment import LEGACY_PARAM_DEFAULTS, SegmentParams, segmentation_status
from ms_core.segmentation.tissue import TissueVolumes, tissue_volumes
from ms_core.study.derivatives import (
    atrophy_dir,
    derivatives_dir,
    input_record,
    inputs_current,
    read_record,
)

__all__ = [
    "VOLUME_FIELDS",
    "AtrophyParams",
    "atrophy_visits",
    "interval_years",
    "lesions_on_grid",
    "measure_interval_pbvc",
    "measure_visit_volumes",
    "pair_atrophy",
    "pbvc_status",
    "pending_atrophy",
    "read_atrophy",
    "volume_record",
    "volumes_status",
]

log = logging.getLogger(__name__)

# ============================================================================== study derivatives
#: Keys of a stored per-visit volume record (:func:`volume_record`), in table order.
VOLUME_FIELDS = ("brain_volume_ml", "gm_volume_ml", "wm_volume_ml", "csf_ml", "icv_ml", "bpf",
                 "gm_fraction", "wm_fraction", "lesion_filled_ml")


@dataclass(frozen=True)
class AtrophyParams:
    """Settings of the study-level atrophy measurements (recorded in the provenance).

    ``modality``: the sequence measured at every visit (T1w: validated; FLAIR: not).
    ``method`` and ``spacing_mm``: those of :func:`percent_brain_volume_change`.
    ``lesion_filling``: fill the lesions of the visit's *current* stored segmentation (made with
    ``segmentation``) before the tissue classification; without one the volumes are measured
    unfilled, and become out of date once the visit is segmented.
    """

    modality: str = "T1w"
    method: PBVCMethod = "bsi"
    spacing_mm: float = 1.0
    lesion_filling: bool = True
    segmentation: SegmentParams = field(default_factory=SegmentParams)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InputError(None, f"atrophy modality must be one of {list(MODALITIES)}, not "
                                   f"{self.modality!r}")
        if self.method not in PBVC_METHODS:
            raise InputError(None, f"atrophy method must be one of {list(PBVC_METHODS)}, not "
                                   f"{self.method!r}")
        if not 0.25 <= self.spacing_mm <= 4.0:
            raise InputError(None, f"atrophy spacing must be in [0.25, 4] mm, got "
                                   f"{self.spacing_mm}")


def _volume_params(params: AtrophyParams) -> dict[str, Any]:
    return {"modality": params.modality, "lesion_filling": params.lesion_filling,
            "segmentation": asdict(params.segmentation)}


def _pbvc_params(params: AtrophyParams) -> dict[str, Any]:
    return {"modality": params.modality, "method": params.method,
            "spacing_mm": params.spacing_mm}


def _same_params(stored: Any, expected: dict[str, Any]) -> bool:
    stored = dict(stored)
    if isinstance(stored.get("segmentation"), dict):  # settings added to SegmentParams later
        stored["segmentation"] = {**LEGACY_PARAM_DEFAULTS, **stored["segmentation"]}
    return bool(stored == json.loads(json.dumps(expected)))


def volume_record(volumes: TissueVolumes) -> dict[str, float]:
    """The stored form of :class:`TissueVolumes` (keys :data:`VOLUME_FIELDS`).

    ``gm_fraction`` and ``wm_fraction`` are GM / ICV and WM / ICV.

    >>> v = TissueVolumes(1100.0, 600.0, 500.0, 400.0, 1500.0, 1100 / 1500, 2.0)
    >>> {k: round(x, 3) for k, x in volume_record(v).items() if "fraction" in k}
    {'gm_fraction': 0.4, 'wm_fraction': 0.333}
    """
    return {"brain_volume_ml": volumes.brain_ml, "gm_volume_ml": volumes.gm_ml,
            "wm_volume_ml": volumes.wm_ml, "csf_ml": volumes.csf_ml,
            "icv_ml": volumes.icv_ml, "bpf": volumes.bpf,
            "gm_fraction": volumes.gm_ml / volumes.icv_ml,
            "wm_fraction": volumes.wm_ml / volumes.icv_ml,
            "lesion_filled_ml": volumes.lesion_ml}


def interval_years(baseline: Visit, followup: Visit) -> float:
    """Years (of 365.25 days) between two visits' acquisition dates."""
    return (followup.acq_date - baseline.acq_date).days / DAYS_PER_YEAR


def _volumes_path(root: Path, visit: Visit) -> Path:
    return atrophy_dir(root, visit) / "tissue_volumes.json"


def _pbvc_path(root: Path, baseline: Visit, followup: Visit) -> Path:
    return atrophy_dir(root, followup) / f"pbvc_from_{baseline.session_id}.json"


def _visit_image(visit: Visit, modality: str) -> Path:
    if modality not in visit.images:
        raise InputError(None, f"{visit.participant_id} {visit.session_id} has no usable "
                               f"{modality} image for brain volumetry")
    return visit.images[modality]


def _filling_mask(root: Path, visit: Visit, params: AtrophyParams) -> Path | None:
    """The visit's current stored lesion mask (for lesion filling), or ``None``."""
    if not params.lesion_filling or "FLAIR" not in visit.images:
        return None
    if segmentation_status(root, visit, params.segmentation) is None:
        return None
    path = derivatives_dir(root, visit.participant_id, visit.session_id) / "lesion_mask.nii.gz"
    return path if path.exists() else None


def _current(path: Path, inputs: dict[str, Path | None],
             params: dict[str, Any]) -> dict[str, Any] | None:
    """The stored record at ``path`` when it was made from ``inputs`` with ``params``."""
    record = read_record(path)
    if record is None or not inputs_current(record, inputs):
        return None
    try:
        same = _same_params(record["parameters"], params)
    except (KeyError, TypeError, AttributeError, ValueError):
        return None
    return record if same else None


def volumes_status(root: Path, visit: Visit, params: AtrophyParams = AtrophyParams()
                   ) -> dict[str, Any] | None:
    """The visit's stored tissue-volume record when it is current, else ``None``.

    Current: made with ``params`` from the image whose sha256 still matches, and filled with
    the lesion mask of the visit's current segmentation (or unfilled when there is none).
    """
    if params.modality not in visit.images:
        return None
    return _current(_volumes_path(root, visit),
                    {"image": visit.images[params.modality],
                     "lesion_mask": _filling_mask(root, visit, params)},
                    _volume_params(params))


def pbvc_status(root: Path, baseline: Visit, followup: Visit,
                params: AtrophyParams = AtrophyParams()) -> dict[str, Any] | None:
    """The stored PBVC record of ``followup`` against ``baseline`` when it is current."""
    if params.modality not in baseline.images or params.modality not in followup.images:
        return None
    return _current(_pbvc_path(root, baseline, followup),
                    {"baseline_image": baseline.images[params.modality],
                     "followup_image": followup.images[params.modality]},
                    _pbvc_params(params))


def _provenance(kind: str, params: dict[str, Any],
                inputs: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {"tool": f"ms_core atrophy {kind}", "version": __version__,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "parameters": params, "inputs": inputs}


def lesions_on_grid(labels: np.ndarray, affine: np.ndarray, volume: Volume) -> np.ndarray:
    """A lesion mask (labels on ``affine``) on ``volume``'s grid, dilated by one voxel.

    Nearest-neighbour through world coordinates: the two images must share scanner space (as a
    session's FLAIR and T1w do). The dilation covers the partial-volume rim of lesions drawn on
    another sequence. Returns (X, Y, Z) bool.
    """
    on = resample_to_grid((np.asarray(labels) > 0).astype(np.uint8), affine,
                          Grid(volume.shape, volume.affine), order=0)
    return np.asarray(ndi.binary_dilation(on > 0))


def measure_visit_volumes(root: Path, visit: Visit, params: AtrophyParams = AtrophyParams()
                          ) -> dict[str, Any]:
    """Tissue volumes of a study visit, stored in :func:`atrophy_dir` (about 20-30 s).

    The stored record is returned without computing when it is current
    (:func:`volumes_status`). Otherwise the visit's ``params.modality`` image goes through
    :func:`tissue_volumes` (its own MNI registration), with the lesions of the visit's current
    stored segmentation filled, and the record (``volumes``: :data:`VOLUME_FIELDS`, provenance:
    parameters, input paths and sha256, app version, seconds) is written atomically.

    Raises
    ------
    InputError
        naming the image when the visit has none or the measurement fails.
    """
    current = volumes_status(root, visit, params)
    if current is not None:
        return current
    t0 = time.perf_counter()
    image = _visit_image(visit, params.modality)
    mask_path = _filling_mask(root, visit, params)
    recorded = input_record({"image": image, "lesion_mask": mask_path})
    volume = load_volume(image, params.modality)
    lesions = None
    if mask_path is not None:
        mask = load_lesion_mask(mask_path)
        lesions = lesions_on_grid(mask.labels, mask.affine, volume)
    t_load = time.perf_counter()
    try:
        volumes = tissue_volumes(volume, lesion_mask=lesions,
                                 skull_stripped=params.segmentation.skull_stripped)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(image, f"brain volumetry failed: {e}") from e
    record = {**_provenance("volumes", _volume_params(params), recorded),
              "participant_id": visit.participant_id, "session_id": visit.session_id,
              "volumes": volume_record(volumes),
              "seconds": {"load": round(t_load - t0, 3),
                          "tissue_volumes": round(time.perf_counter() - t_load, 3)}}
    write_json(_volumes_path(root, visit), record)
    log.info("%s %s: brain %.1f ml, BPF %.4f", visit.participant_id, visit.session_id,
             volumes.brain_ml, volumes.bpf)
    return _plain(record)


def measure_interval_pbvc(root: Path, baseline: Visit, followup: Visit,
                          params: AtrophyParams = AtrophyParams()) -> dict[str, Any]:
    """PBVC from ``baseline`` to ``followup``, annualised, stored in the follow-up's
    :func:`atrophy_dir` (about 20 s at 1 mm).

    The stored record is returned without computing when it is current (:func:`pbvc_status`).
    The record holds ``pbvc_pct``, ``pbvc_pct_per_year`` (``None`` for visits on the same
    date), ``interval_years``, ``method``, ``qc_ncc``, ``baseline_brain_ml``,
    ``volume_change_ml``, the rigid ``followup_to_baseline_ras_mm`` matrix, ``warnings``
    (protocol changes: from the images and the session tables) and the provenance.

    Raises
    ------
    InputError
        naming the follow-up image when a visit has no image or the measurement fails.
    """
    current = pbvc_status(root, baseline, followup, params)
    if current is not None:
        return current
    t0 = time.perf_counter()
    b_path = _visit_image(baseline, params.modality)
    f_path = _visit_image(followup, params.modality)
    recorded = input_record({"baseline_image": b_path, "followup_image": f_path})
    b_vol, f_vol = load_volume(b_path, params.modality), load_volume(f_path, params.modality)
    t_load = time.perf_counter()
    try:
        res = percent_brain_volume_change(b_vol, f_vol, method=params.method,
                                          spacing_mm=params.spacing_mm)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f_path, f"brain volume change failed: {e}") from e
    years = interval_years(baseline, followup)
    rate = annualised_pct_per_year(res.pbvc_pct, years) if years > 0 else None
    record = {**_provenance("pbvc", _pbvc_params(params), recorded),
              "participant_id": followup.participant_id,
              "baseline_session": baseline.session_id, "followup_session": followup.session_id,
              "interval_years": years, "pbvc_pct": res.pbvc_pct, "pbvc_pct_per_year": rate,
              "method": res.method, "qc_ncc": res.qc_ncc,
              "baseline_brain_ml": res.baseline_brain_ml,
              "volume_change_ml": res.volume_change_ml,
              "followup_to_baseline_ras_mm": res.followup_to_baseline,
              "warnings": [*res.warnings, *visit_metadata_warnings(baseline, followup)],
              "seconds": {"load": round(t_load - t0, 3),
                          "pbvc": round(time.perf_counter() - t_load, 3)}}
    write_json(_pbvc_path(root, baseline, followup), record)
    return _plain(record)


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as read back from its JSON file (lists, floats, strings)."""
    return dict(json.loads(json.dumps(record, default=_jsonable)))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _measurable(visits: Sequence[Visit], params: AtrophyParams) -> list[Visit]:
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    return [v for v in ordered if params.modality in v.images]


def pending_atrophy(root: Path, visits: Sequence[Visit], params: AtrophyParams = AtrophyParams()
                    ) -> tuple[list[Visit], list[tuple[Visit, Visit]]]:
    """What is missing for a patient: visits whose volumes and (previous, next) pairs whose
    PBVC are not stored or out of date. Visits without a ``params.modality`` image are skipped
    (a pair then spans the gap)."""
    usable = _measurable(visits, params)
    return ([v for v in usable if volumes_status(root, v, params) is None],
            [(a, b) for a, b in itertools.pairwise(usable)
             if pbvc_status(root, a, b, params) is None])


def atrophy_visits(root: Path, visits: Sequence[Visit], params: AtrophyParams = AtrophyParams(),
                   progress: Callable[[float], None] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Measure (or read back) a patient's volumes per visit and PBVC per interval.

    Run after segmenting the visits so that their lesions are filled. Returns the records by
    session id: ``(volumes, pbvc)``, the PBVC keyed by the follow-up visit.
    """
    usable = _measurable(visits, params)
    pairs = list(itertools.pairwise(usable))
    steps = max(1, len(usable) + len(pairs))
    volumes: dict[str, dict[str, Any]] = {}
    pbvc: dict[str, dict[str, Any]] = {}
    for i, visit in enumerate(usable):
        volumes[visit.session_id] = measure_visit_volumes(root, visit, params)
        if progress is not None:
            progress((i + 1) / steps)
    for j, (a, b) in enumerate(pairs, start=len(usable) + 1):
        pbvc[b.session_id] = measure_interval_pbvc(root, a, b, params)
        if progress is not None:
            progress(j / steps)
    return volumes, pbvc


def pair_atrophy(baseline: Volume, followup: Volume, *,
                 baseline_lesions: np.ndarray | None = None,
                 followup_lesions: np.ndarray | None = None, method: PBVCMethod = "bsi",
                 spacing_mm: float = 1.0, skull_stripped: bool = False) -> dict[str, Any]:
    """PBVC and both visits' tissue volumes of one pair of images, as a JSON-ready dict.

    The ``atrophy`` block of the track CLI's provenance: ``pbvc_pct``, ``method``,
    ``qc_ncc``, ``baseline_brain_ml``, ``volume_change_ml``, ``followup_to_baseline_ras_mm``,
    ``warnings``, ``baseline`` and ``followup`` (:func:`volume_record`, lesions filled when
    masks on each image's grid are given) and ``seconds``.
    """
    t0 = time.perf_counter()
    vb = tissue_volumes(baseline, lesion_mask=baseline_lesions, skull_stripped=skull_stripped)
    vf = tissue_volumes(followup, lesion_mask=followup_lesions, skull_stripped=skull_stripped)
    t1 = time.perf_counter()
    res = percent_brain_volume_change(baseline, followup, method=method, spacing_mm=spacing_mm)
    return {"modality": baseline.modality, "method": res.method, "pbvc_pct": res.pbvc_pct,
            "qc_ncc": res.qc_ncc, "baseline_brain_ml": res.baseline_brain_ml,
            "volume_change_ml": res.volume_change_ml,
            "followup_to_baseline_ras_mm": res.followup_to_baseline.tolist(),
            "warnings": list(res.warnings), "spacing_mm": spacing_mm,
            "lesion_filling": baseline_lesions is not None or followup_lesions is not None,
            "baseline": volume_record(vb), "followup": volume_record(vf),
            "seconds": {"tissue_volumes": round(t1 - t0, 3),
                        "pbvc": round(time.perf_counter() - t1, 3)}}


def read_atrophy(root: Path, previous: Visit | None, visit: Visit,
                 params: AtrophyParams = AtrophyParams()) -> dict[str, float | None] | None:
    """A visit's current stored atrophy for the prognosis features, or ``None`` if none.

    ``{"pbvc_pct_per_year", "bpf", "gm_fraction", "wm_fraction"}``: the PBVC from ``previous``
    (``None`` without one or when that interval is not measured) and the visit's tissue
    fractions (``None`` when its volumes are not measured). Matches
    ``ms_core.clinical.patient_features.AtrophyReader``.
    """
    volumes = volumes_status(root, visit, params)
    pbvc = pbvc_status(root, previous, visit, params) if previous is not None else None
    if volumes is None and pbvc is None:
        return None
    vols = volumes.get("volumes", {}) if volumes is not None else {}
    rate = pbvc.get("pbvc_pct_per_year") if pbvc is not None else None

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) else None

    return {"pbvc_pct_per_year": number(rate),
            **{k: number(vols.get(k)) for k in ("bpf", "gm_fraction", "wm_fraction")}}
