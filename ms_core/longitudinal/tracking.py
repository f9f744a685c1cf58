"""Two visits of one patient: co-registration, change detection and lesion matching.

Entry points: :func:`track_volumes` and :func:`track_files` (the ``track`` CLI),
:func:`track_visits` and :func:`tracking_status` (a study's stored comparisons). The baseline is
registered rigidly to the follow-up, both are segmented on the follow-up's 1 mm working grid,
change evidence comes from the ``joint`` rule (default), mask ``difference`` or the change
network (``network``, :func:`change_probabilities`), and lesions are matched into new,
enlarging, stable, shrinking, disappeared, merged and split. ``change_mask.nii.gz`` lies on the
follow-up FLAIR's grid (1 new or enlarging tissue, 2 shrinking or disappearing). Method and
measured accuracy: ``docs/longitudinal.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ms_core import __version__
from ms_core.foundation.domain import Visit, Volume, affine_spacing, voxel_volume_ml
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import (
    atomic_write_text,
    header_warnings,
    load_volume,
    read_json,
    save_labels,
    write_json,
)
from ms_core.imaging.preprocess import (
    Grid,
    crop_box,
    match_histogram,
    normalize_intensity,
    normalize_to_white_matter,
    pad_to_multiple,
    register_visit_pair,
    resample_to_grid,
    template_to_subject,
)
from ms_core.imaging.registration import ncc
from ms_core.lesions.components import label_components
from ms_core.lesions.visits import visit_metadata_warnings
from ms_core.longitudinal.atrophy import lesions_on_grid, pair_atrophy
from ms_core.segmentation.inference import OnnxModel, load_onnx_model, sliding_window
from ms_core.segmentation.model_store import load_model_card, load_segmentation_card
from ms_core.segmentation.segment import (
    LEGACY_PARAM_DEFAULTS,
    SegmentParams,
    StageTimer,
    flair_on_working_grid,
    model_info,
    probability_on_grid,
    white_matter_prior,
)
from ms_core.study.derivatives import (
    PROVENANCE,
    derivatives_dir,
    input_record,
    inputs_current,
    read_record,
    tracking_dir,
)
from ms_core.study.locks import folder_lock

__all__ = [
    "CHANGE_COLUMNS",
    "CHANGE_MODEL",
    "EVIDENCE_INTENSITY",
    "EVIDENCE_NETWORK",
    "EVIDENCE_SEGMENTATION",
    "HARMONISATIONS",
    "STATUSES",
    "AtrophyRequest",
    "PairMaps",
    "PairRegistration",
    "TrackParams",
    "TrackResult",
    "change_channels",
    "change_probabilities",
    "change_zscore",
    "detect_changes",
    "harmonise_pair",
    "intensity_led_count",
    "intensity_new_spots",
    "intensity_profile_warnings",
    "match_lesions",
    "prepare_pair",
    "protocol_warnings",
    "register_visits",
    "track_files",
    "track_visits",
    "track_volumes",
    "tracking_status",
    "visit_metadata_warnings",
    "write_track_outputs",
]

log = logging.getLogger(__name__)

STATUSES = ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split")
#: Columns of ``lesion_changes.csv``; the first six are the CLI contract.
CHANGE_COLUMNS = ("lesion_id", "status", "volume_baseline_ml", "volume_followup_ml",
                  "centroid_mm", "confidence", "n_baseline_components",
                  "n_followup_components", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                  "evidence")
#: ``evidence`` of a row: the lesion is in a segmentation, or it is an intensity-led new lesion
#: (:attr:`TrackParams.intensity_new_z`) that neither visit's segmentation contains.
EVIDENCE_SEGMENTATION, EVIDENCE_INTENSITY = "segmentation", "intensity change"
#: ``evidence`` of a lesion that the change network found apart from every segmented lesion.
EVIDENCE_NETWORK = "change network"
ChangeMethod = Literal["joint", "difference", "network"]
CHANGE_METHODS = ("joint", "difference", "network")
#: The change-detection network's name in the models manifest (method ``network``).
CHANGE_MODEL = "lesion_change"
#: How the two visits are made comparable before the change network subtracts them: each
#: divided by its white-matter level, or the baseline histogram-matched to the follow-up.
HARMONISATIONS = ("white_matter", "histogram")
#: Settings added after comparisons were first stored, at the values that reproduce them.
_TRACK_LEGACY_DEFAULTS = {"intensity_new_z": None, "intensity_new_ratio": 1.3,
                          "intensity_new_mm3": 20.0, "harmonisation": "white_matter",
                          "change_threshold": 0.5}
#: Intensity-led new lesions keep this far (mm) from the edge of the brain mask and of the
#: baseline's field of view.
_EDGE_MM = 3.0
#: Share of a group's added (or lost) voxels that the intensity change must confirm.
_SUPPORT = 0.5


@dataclass(frozen=True)
class TrackParams:
    """Settings of a two-visit comparison (recorded in the provenance)."""

    method: ChangeMethod = "joint"
    segmentation: SegmentParams = field(default_factory=SegmentParams)
    enlarging_ratio: float = 0.3
    change_z: float = 2.0
    min_change_mm3: float = 10.0
    #: Intensity-led new lesions (``joint`` only; None: off). A follow-up spot that the
    #: segmentation misses at both visits is still reported *new* when, over at least
    #: ``intensity_new_mm3``, the registered FLAIR brightened by ``intensity_new_z`` robust SDs
    #: and the follow-up FLAIR is at least ``intensity_new_ratio`` times the brain median
    #: (see :func:`intensity_new_spots`; on since 2026-12-03, docs/longitudinal.md).
    intensity_new_z: float | None = 5.0
    intensity_new_ratio: float = 1.3
    intensity_new_mm3: float = 20.0
    #: ``network`` only: the harmonisation (:data:`HARMONISATIONS`) and the probability at
    #: which the change network's voxels count as change.
    harmonisation: str = "white_matter"
    change_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in CHANGE_METHODS:
            raise InputError(None, f"method must be one of {', '.join(CHANGE_METHODS)}, not "
                                   f"{self.method!r}")
        if self.harmonisation not in HARMONISATIONS:
            raise InputError(None, f"harmonisation must be one of {', '.join(HARMONISATIONS)}, "
                                   f"not {self.harmonisation!r}")
        if not 0.0 < self.change_threshold < 1.0:
            raise InputError(None, f"change threshold must be in (0, 1), got "
                                   f"{self.change_threshold}")
        if not 0.0 < self.enlarging_ratio < 10.0:
            raise InputError(None, f"enlarging ratio must be in (0, 10), got "
                                   f"{self.enlarging_ratio}")
        if self.change_z <= 0:
            raise InputError(None, f"change z must be > 0, got {self.change_z}")
        if self.min_change_mm3 < 0:
            raise InputError(None, f"min change must be >= 0 mm^3, got {self.min_change_mm3}")
        if self.intensity_new_z is not None and (
                self.intensity_new_z <= 0 or self.intensity_new_ratio <= 0
                or self.intensity_new_mm3 < 0):
            raise InputError(None, "intensity-led new lesions need z > 0, ratio > 0 and a "
                                   f"size >= 0 mm^3, got {self.intensity_new_z}, "
                                   f"{self.intensity_new_ratio}, {self.intensity_new_mm3}")


@dataclass(frozen=True, eq=False)
class PairRegistration:
    """Rigid registration of a baseline to a follow-up.

    ``followup_to_baseline``: (4, 4) RAS mm matrix mapping follow-up world points to baseline
    world points. ``ncc``: normalised cross-correlation of the FLAIRs inside the follow-up brain
    after registration (QC; well-registered same-protocol pairs score above 0.9).
    """

    followup_to_baseline: np.ndarray
    ncc: float


@dataclass(frozen=True, eq=False)
class TrackResult:
    """Outputs of :func:`track_volumes`.

    ``change_mask`` (X, Y, Z) uint8 and ``lesion_ids`` (X, Y, Z) int32 (the table's
    ``lesion_id`` of each voxel of either visit) lie on ``affine``, the follow-up FLAIR's grid;
    ``table`` has :data:`CHANGE_COLUMNS`; ``qc`` holds the registration QC and protocol warnings.
    """

    change_mask: np.ndarray
    affine: np.ndarray
    table: pd.DataFrame
    registration: PairRegistration
    provider: str
    model: dict[str, str] | None
    lesion_ids: np.ndarray
    qc: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: The change-detection network's identity (method ``network``), else None.
    change_model: dict[str, str] | None = None


def register_visits(baseline: Volume, followup: Volume, *, resolution_mm: float = 2.0,
                    seed: int = 0) -> np.ndarray:
    """Rigid registration: (4, 4) matrix mapping follow-up world mm to baseline world mm.

    Both FLAIRs are resampled to ``resolution_mm`` RAS grids first, so voxel size and
    orientation may differ between visits. Deterministic for a given ``seed``, and remembered
    per process (:func:`ms_core.imaging.preprocess.register_visit_pair`); a failure names the
    baseline file.
    """
    try:
        return register_visit_pair(baseline, followup, resolution_mm=resolution_mm, seed=seed)
    except ValueError as e:
        raise InputError(baseline.source, f"cannot register the visits: {e}") from e


def change_zscore(followup: np.ndarray, baseline: np.ndarray, brain: np.ndarray, *,
                  spacing_mm: tuple[float, float, float], highpass_mm: float = 10.0
                  ) -> np.ndarray:
    """Robust z-score of the intensity change ``followup - baseline`` inside ``brain``.

    Both images must be normalised the same way and lie on one grid. Slow differences (bias
    field, global contrast) are removed with a Gaussian high-pass of ``highpass_mm`` computed
    inside the brain; the rest is divided by 1.4826 * MAD inside the brain. Returns (X, Y, Z)
    float32, 0 outside the brain.

    >>> rng = np.random.default_rng(0)
    >>> b = 1 + 0.05 * rng.standard_normal((20, 20, 20))
    >>> f = b + 0.05 * rng.standard_normal(b.shape); f[10, 10, 10] += 2.0
    >>> z = change_zscore(f, b, np.ones(b.shape, bool), spacing_mm=(1.0, 1.0, 1.0))
    >>> bool(z[10, 10, 10] > 10 and np.mean(np.abs(z) > 4) < 0.01)
    True
    """
    if followup.shape != baseline.shape or brain.shape != baseline.shape:
        raise ValueError(f"shapes differ: followup {followup.shape}, baseline {baseline.shape}, "
                         f"brain {brain.shape}; resample onto one grid first")
    w = brain.astype(np.float32)
    d = (followup.astype(np.float32) - baseline.astype(np.float32)) * w
    sigma = [highpass_mm / s for s in spacing_mm]
    slow = ndi.gaussian_filter(d, sigma) / np.maximum(ndi.gaussian_filter(w, sigma), 1e-3)
    hp = (d - slow) * w
    vals = hp[brain]
    if vals.size == 0:
        raise ValueError("the brain mask is empty")
    mad = float(np.median(np.abs(vals - np.median(vals)))) * 1.4826
    scale = mad if mad > 0 else float(vals.std()) or 1.0
    return np.asarray(hp / scale, dtype=np.float32)


def _groups(labels_b: np.ndarray, labels_f: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Connected groups of the bipartite overlap graph: [(baseline ids, follow-up ids)]."""
    n_b, n_f = int(labels_b.max(initial=0)), int(labels_f.max(initial=0))
    parent = list(range(n_b + n_f + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    both = (labels_b > 0) & (labels_f > 0)
    pairs = np.unique(np.stack([labels_b[both], labels_f[both]], axis=1), axis=0)
    for b, f in pairs:
        parent[find(int(b))] = find(n_b + int(f))
    members: dict[int, tuple[list[int], list[int]]] = {}
    for i in range(1, n_b + 1):
        members.setdefault(find(i), ([], []))[0].append(i)
    for j in range(1, n_f + 1):
        members.setdefault(find(n_b + j), ([], []))[1].append(j)
    return list(members.values())


def match_lesions(labels_b: np.ndarray, labels_f: np.ndarray, prob_b: np.ndarray,
                  prob_f: np.ndarray, increase: np.ndarray, decrease: np.ndarray, *,
                  affine: np.ndarray, enlarging_ratio: float = 0.3
                  ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Match the lesions of two visits on one grid and classify each group.

    Parameters
    ----------
    labels_b, labels_f
        (X, Y, Z) int lesion labels of baseline and follow-up on the same grid.
    prob_b, prob_f
        (X, Y, Z) lesion probabilities on that grid (for the confidences).
    increase, decrease
        (X, Y, Z) bool voxels where lesion tissue appeared / went away (the change evidence).
    affine
        (4, 4) voxel -> world mm of the grid.
    enlarging_ratio
        Relative volume growth (0.3 = 30 %) that makes a lesion *enlarging*.

    Returns
    -------
    The table (:data:`CHANGE_COLUMNS`, one row per group, ``lesion_id`` 1..N in scan order of
    the group's first voxel), (X, Y, Z) uint8 change labels (1 = tissue of a new lesion or
    confirmed growth of a persisting one, 2 = tissue of a disappeared lesion or confirmed loss)
    and (X, Y, Z) int32 lesion ids (the union of both visits' voxels of each group).
    """
    shapes = {a.shape for a in (labels_b, labels_f, prob_b, prob_f, increase, decrease)}
    if len(shapes) != 1:
        raise ValueError(f"all maps must share one grid, got shapes {sorted(shapes)}")
    ml = voxel_volume_ml(affine)
    change = np.zeros(labels_f.shape, dtype=np.uint8)
    group_map = np.zeros(labels_f.shape, dtype=np.int32)
    rows: list[dict[str, object]] = []
    groups = _groups(labels_b, labels_f)
    slices_b = ndi.find_objects(labels_b.astype(np.int32))
    slices_f = ndi.find_objects(labels_f.astype(np.int32))
    for ids_b, ids_f in groups:
        box = _union_box([slices_b[i - 1] for i in ids_b] + [slices_f[j - 1] for j in ids_f],
                         labels_f.shape)
        in_b = np.isin(labels_b[box], ids_b)
        in_f = np.isin(labels_f[box], ids_f)
        grown, lost = in_f & ~in_b, in_b & ~in_f
        n_b, n_f = int(in_b.sum()), int(in_f.sum())
        sup_grown = int((grown & increase[box]).sum())
        sup_lost = int((lost & decrease[box]).sum())
        pb, pf = prob_b[box], prob_f[box]
        if not ids_b:
            status = "new" if sup_grown >= _SUPPORT * n_f else "stable"
        elif not ids_f:
            status = "disappeared" if sup_lost >= _SUPPORT * n_b else "stable"
        elif len(ids_b) > 1:
            status = "merged"
        elif len(ids_f) > 1:
            status = "split"
        elif n_f - n_b >= enlarging_ratio * n_b and sup_grown >= _SUPPORT * (n_f - n_b):
            status = "enlarging"
        elif n_b - n_f >= enlarging_ratio * n_b and sup_lost >= _SUPPORT * (n_b - n_f):
            status = "shrinking"
        else:
            status = "stable"
        if status == "new":
            change[box][in_f] = 1
        elif status == "disappeared":
            change[box][in_b] = 2
        else:  # confirmed growth / loss of any persisting lesion, whatever its status
            change[box][grown & increase[box]] = 1
            change[box][lost & decrease[box]] = 2
        if status in ("new", "enlarging"):
            conf = float(np.mean((pf * (1 - pb))[grown]))
        elif status in ("disappeared", "shrinking"):
            conf = float(np.mean((pb * (1 - pf))[lost]))
        else:
            conf = float(np.mean(np.maximum(pb, pf)[in_b | in_f]))
        group_map[box][in_b | in_f] = len(rows) + 1
        where = np.argwhere(in_f if n_f else in_b).mean(axis=0) + [s.start for s in box]
        centroid = affine[:3, :3] @ where + affine[:3, 3]
        rows.append({
            "first_voxel": tuple(np.argwhere(in_b | in_f)[0] + [s.start for s in box]),
            "group": len(rows) + 1,
            "status": status, "volume_baseline_ml": n_b * ml, "volume_followup_ml": n_f * ml,
            "centroid_mm": " ".join(f"{c:.1f}" for c in centroid),
            "confidence": round(conf, 4), "n_baseline_components": len(ids_b),
            "n_followup_components": len(ids_f), "centroid_x_mm": float(centroid[0]),
            "centroid_y_mm": float(centroid[1]), "centroid_z_mm": float(centroid[2]),
            "evidence": EVIDENCE_SEGMENTATION,
        })
    rows.sort(key=lambda r: r.pop("first_voxel"))  # type: ignore[arg-type,return-value]
    new_id = np.zeros(len(rows) + 1, dtype=np.int32)
    for i, r in enumerate(rows, start=1):
        new_id[int(r.pop("group"))] = i  # type: ignore[call-overload]
    table = pd.DataFrame(rows, columns=[c for c in CHANGE_COLUMNS if c != "lesion_id"])
    table.insert(0, "lesion_id", np.arange(1, len(table) + 1, dtype=np.int64))
    return table, change, new_id[group_map]


def _union_box(slices: list[tuple[slice, ...] | None], shape: tuple[int, ...]
               ) -> tuple[slice, slice, slice]:
    present = [s for s in slices if s is not None]
    lo = [min(s[k].start for s in present) for k in range(3)]
    hi = [max(s[k].stop for s in present) for k in range(3)]
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def protocol_warnings(baseline: Volume, followup: Volume) -> list[str]:
    """Acquisition differences between two visits that inflate new lesions and atrophy."""
    import nibabel as nib

    out: list[str] = []
    sb, sf = np.round(baseline.spacing_mm, 2), np.round(followup.spacing_mm, 2)
    if not np.allclose(sorted(sb), sorted(sf), atol=0.05):
        out.append(f"voxel size changed: {tuple(float(v) for v in sb)} mm -> "
                   f"{tuple(float(v) for v in sf)} mm")
    ob = "".join(nib.orientations.aff2axcodes(baseline.affine))
    of = "".join(nib.orientations.aff2axcodes(followup.affine))
    if ob != of:
        out.append(f"orientation changed: {ob} -> {of}")
    return out


def intensity_profile_warnings(b_norm: np.ndarray, f_norm: np.ndarray, brain: np.ndarray, *,
                               tolerance: float = 0.15) -> list[str]:
    """Flag a changed FLAIR intensity profile (sequence, coil or scanner change).

    Both images are median-normalised inside the same ``brain``; the spread between the 5th and
    95th and the 99th percentile (lesions, bright rims) are compared. A relative change above
    ``tolerance`` is reported.
    """
    qb = np.percentile(b_norm[brain], [5, 95, 99])
    qf = np.percentile(f_norm[brain], [5, 95, 99])
    out: list[str] = []
    spread_b, spread_f = qb[1] - qb[0], qf[1] - qf[0]
    if spread_b > 0 and abs(spread_f / spread_b - 1) > tolerance:
        out.append(f"intensity profile changed: brain contrast spread x{spread_f / spread_b:.2f}")
    if qb[2] > 0 and abs(qf[2] / qb[2] - 1) > tolerance:
        out.append(f"intensity profile changed: bright-tail level x{qf[2] / qb[2]:.2f}")
    return out


@dataclass(frozen=True, eq=False)
class PairMaps:
    """Both visits on the follow-up's 1 mm working grid, ready for change detection.

    ``f_norm``/``b_norm`` (X, Y, Z) float32 normalised FLAIRs, ``prob_f``/``prob_b`` lesion
    probabilities, ``brain`` bool, all on ``grid``; ``to_mni`` the follow-up -> MNI matrix when
    the template was registered (None otherwise).
    """

    grid: Grid
    brain: np.ndarray
    f_norm: np.ndarray
    b_norm: np.ndarray
    prob_f: np.ndarray
    prob_b: np.ndarray
    registration: PairRegistration
    provider: str
    model: dict[str, str] | None
    seconds: dict[str, float]
    to_mni: np.ndarray | None = None


def prepare_pair(baseline: Volume, followup: Volume, seg: SegmentParams,
                 model: OnnxModel | None = None,
                 progress: Callable[[float], None] | None = None, *,
                 probs: tuple[Volume, Volume] | None = None) -> PairMaps:
    """Brain mask, rigid registration, normalisation and both probability maps.

    ``probs``: stored (baseline, follow-up) lesion probability maps on each visit's own grid
    (the ``segment`` outputs); they are resampled instead of running the model again.
    """
    timer = StageTimer()
    for name, vol in (("baseline", baseline), ("follow-up", followup)):
        if not np.any(vol.data > 0):
            raise InputError(vol.source, f"the {name} FLAIR is blank (no positive voxels)")
    grid, f_work, brain, to_mni = flair_on_working_grid(followup, seg, model)
    timer.lap("preprocess_brain")
    f_to_b = register_visits(baseline, followup)
    b_in_f = np.linalg.inv(f_to_b) @ baseline.affine  # baseline voxels -> follow-up world
    b_work = resample_to_grid(baseline.data, b_in_f, grid, order=1)
    timer.lap("registration")
    f_norm = normalize_intensity(f_work, brain)
    b_norm = normalize_intensity(b_work, brain)
    registration = PairRegistration(f_to_b, round(ncc(f_norm[brain], b_norm[brain]), 4))

    def half(offset: float) -> Callable[[float], None] | None:
        return None if progress is None else (lambda f: progress(offset + 0.5 * f))

    if probs is None:
        prob_b = probability_on_grid(b_work, None, brain, grid, seg, model, to_mni, half(0.0))
        prob_f = probability_on_grid(f_work, None, brain, grid, seg, model, to_mni, half(0.5))
    else:
        stored_b, stored_f = probs
        prob_b = resample_to_grid(stored_b.data, np.linalg.inv(f_to_b) @ stored_b.affine, grid,
                                  order=1) * brain
        prob_f = resample_to_grid(stored_f.data, stored_f.affine, grid, order=1) * brain
    timer.lap("segmentation")
    provider, info = model_info(seg, model)
    return PairMaps(grid, brain, f_norm, b_norm, prob_f, prob_b, registration, provider, info,
                    timer.seconds, to_mni)


def _interior(maps: PairMaps) -> np.ndarray:
    """(X, Y, Z) bool: more than :data:`_EDGE_MM` inside the brain mask and the baseline's field
    of view, where partial volume with CSF, flow and slab edges do not brighten the
    subtraction."""
    covered = maps.brain & (maps.b_norm > 0)
    spacing = affine_spacing(maps.grid.affine)
    return np.asarray(ndi.distance_transform_edt(covered, sampling=spacing) > _EDGE_MM)


def intensity_new_spots(z: np.ndarray, maps: PairMaps, lesion_either: np.ndarray,
                        params: TrackParams) -> np.ndarray:
    """Follow-up spots that brightened, away from every segmented lesion: (X, Y, Z) bool.

    The voxels more than 3 mm inside the brain mask and the baseline's field of view (where
    partial volume with CSF, flow and slab edges brighten the subtraction), not within one
    voxel (26-neighbourhood) of a lesion of either visit, whose change z is at least
    ``params.intensity_new_z`` and whose normalised FLAIR rose from under
    ``params.intensity_new_ratio`` to at least it (a hyperintensity that appeared, not one
    that was there and brightened); pieces under ``params.intensity_new_mm3`` are dropped.
    """
    assert params.intensity_new_z is not None
    spots = ((z >= params.intensity_new_z) & (maps.f_norm >= params.intensity_new_ratio)
             & (maps.b_norm < params.intensity_new_ratio))
    if not spots.any():  # the voxel tests are cheap; the dilation and distances are not
        return spots
    spots &= _interior(maps)
    spots &= ~ndi.binary_dilation(lesion_either, structure=np.ones((3, 3, 3), bool))
    labels = label_components(spots, affine=maps.grid.affine,
                              min_lesion_mm3=params.intensity_new_mm3)
    return np.asarray(labels > 0)


def change_channels(followup: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """The change network's input (3, ...) float32: follow-up, baseline, follow-up - baseline
    (both harmonised, on one grid); the training pairs are built by this function too."""
    f = np.asarray(followup, np.float32)
    b = np.asarray(baseline, np.float32)
    return np.stack([f, b, f - b]).astype(np.float32)


def harmonise_pair(followup: np.ndarray, baseline: np.ndarray, brain: np.ndarray,
                   wm_prior: np.ndarray, method: str = "white_matter"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Both visits (one grid) made comparable before subtraction; zero outside ``brain``.

    The follow-up is divided by its white-matter level
    (:func:`ms_core.imaging.preprocess.normalize_to_white_matter`); the baseline likewise
    (``white_matter``) or histogram-matched to that follow-up inside the brain
    (``histogram``, :func:`ms_core.imaging.preprocess.match_histogram`).
    """
    if method not in HARMONISATIONS:
        raise ValueError(f"harmonisation must be one of {HARMONISATIONS}, not {method!r}")
    f = normalize_to_white_matter(followup, brain, wm_prior)
    if method == "histogram":
        return f, match_histogram(baseline, f, brain)
    return f, normalize_to_white_matter(baseline, brain, wm_prior)


def change_probabilities(maps: PairMaps, model: OnnxModel, *, to_mni: np.ndarray,
                         harmonisation: str = "white_matter",
                         progress: Callable[[float], None] | None = None) -> np.ndarray:
    """The change network's (2, X, Y, Z) float32 probabilities on ``maps.grid``: lesion tissue
    that appeared or grew, and lesion tissue that shrank or vanished.

    ``to_mni``: the follow-up -> MNI matrix (for the white-matter prior of the
    harmonisation). Zero outside the brain and outside the baseline's field of view.
    """
    box = crop_box(maps.brain, margin=4)
    brain = maps.brain[box]
    f, b = harmonise_pair(maps.f_norm[box], maps.b_norm[box], brain,
                          white_matter_prior(maps.grid, to_mni, box), harmonisation)
    patch = model.card.patch_size
    x, back = pad_to_multiple(change_channels(f, b), model.card.multiple_of, minimum=max(patch))
    probs = sliding_window(x, model.predict, patch=patch, overlap=0.25, progress=progress,
                           out_channels=2)[back]
    covered = brain & (maps.b_norm[box] > 0)  # inside the baseline's field of view
    out = np.zeros((2, *maps.grid.shape), np.float32)
    out[(slice(None), *box)] = probs * covered
    return out


def _network_evidence(maps: PairMaps, baseline: Volume, followup: Volume,
                      params: TrackParams, labels_b: np.ndarray, labels_f: np.ndarray,
                      model: OnnxModel | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                 np.ndarray, dict[str, str]]:
    """Method ``network``: the change network's increase and decrease masks (pieces of at
    least ``params.min_change_mm3``), both visits' lesion labels with that tissue added (what
    appeared to the follow-up's lesions, what vanished to the baseline's), the voxels of the
    change apart from every segmented lesion, the change probabilities and the network's
    identity."""
    seg = params.segmentation
    if model is None:
        model = load_onnx_model(load_model_card(CHANGE_MODEL), seg.device)
    to_mni = (maps.to_mni if maps.to_mni is not None
              else template_to_subject(followup, skull_stripped=seg.skull_stripped))
    probs = change_probabilities(maps, model, to_mni=to_mni,
                                 harmonisation=params.harmonisation)
    affine = maps.grid.affine
    increase = label_components(probs[0] >= params.change_threshold, affine=affine,
                                min_lesion_mm3=params.min_change_mm3) > 0
    decrease = label_components(probs[1] >= params.change_threshold, affine=affine,
                                min_lesion_mm3=params.min_change_mm3) > 0
    near = ndi.binary_dilation((labels_b > 0) | (labels_f > 0), structure=np.ones((3, 3, 3)))
    # Change apart from every segmented lesion must look like a lesion where it is claimed, as
    # intensity-led new lesions must: hyperintense (at least intensity_new_ratio times the brain
    # median) at follow-up for new tissue, at baseline for vanished tissue, and more than
    # _EDGE_MM inside the brain and the baseline's field of view.
    inside = _interior(maps)
    ratio = params.intensity_new_ratio
    for change, image in ((increase, maps.f_norm), (decrease, maps.b_norm)):
        apart = change & ~near
        lesion_like = label_components(apart & inside & (image >= ratio), affine=affine,
                                       min_lesion_mm3=params.min_change_mm3) > 0
        change &= ~apart | lesion_like
    led_new, led_gone = increase & ~near, decrease & ~near
    # Tissue that appeared is lesion at follow-up, tissue that vanished was lesion at baseline,
    # whether or not each visit's segmentation reached that far: the lesion outlines take it in,
    # so growth beyond the follow-up mask (and loss beyond the baseline one) counts.
    if increase.any():
        labels_f = label_components((labels_f > 0) | increase, affine=affine,
                                    min_lesion_mm3=seg.min_lesion_mm3)
    if decrease.any():
        labels_b = label_components((labels_b > 0) | decrease, affine=affine,
                                    min_lesion_mm3=seg.min_lesion_mm3)
    card = model.card
    info = {"name": card.name, "version": card.version, "sha256": card.sha256,
            "harmonisation": params.harmonisation}
    return increase, decrease, labels_b, labels_f, led_new | led_gone, probs, info


def intensity_led_count(table: pd.DataFrame) -> int:
    """How many rows of a change table are intensity-led new lesions (0 for tables stored
    before the ``evidence`` column existed).

    >>> intensity_led_count(pd.DataFrame({"evidence": ["segmentation", "intensity change"]}))
    1
    """
    if "evidence" not in table.columns:
        return 0
    return int((table["evidence"] == EVIDENCE_INTENSITY).sum())


def detect_changes(maps: PairMaps, baseline: Volume, followup: Volume,
                   params: TrackParams = TrackParams(),
                   change_model: OnnxModel | None = None) -> TrackResult:
    """Change evidence, lesion matching and the change mask on the follow-up's own grid.

    ``change_model``: the change network for method ``network`` (default: the shipped
    ``lesion_change`` model on ``params.segmentation.device``).
    """
    timer = StageTimer()
    grid, seg, t = maps.grid, params.segmentation, params.segmentation.threshold
    labels_b = label_components(maps.prob_b >= t, affine=grid.affine,
                                min_lesion_mm3=seg.min_lesion_mm3)
    labels_f = label_components(maps.prob_f >= t, affine=grid.affine,
                                min_lesion_mm3=seg.min_lesion_mm3)
    spots: np.ndarray | None = None
    evidence, network_probs, network_info = EVIDENCE_INTENSITY, None, None
    if params.method == "network":
        (increase, decrease, labels_b, labels_f, spots, network_probs,
         network_info) = _network_evidence(maps, baseline, followup, params, labels_b, labels_f,
                                           change_model)
        evidence = EVIDENCE_NETWORK
    elif params.method == "joint":
        z = change_zscore(maps.f_norm, maps.b_norm, maps.brain, spacing_mm=(1.0, 1.0, 1.0))
        lesion_either = np.maximum(maps.prob_b, maps.prob_f) >= t
        increase = lesion_either & (z >= params.change_z)
        decrease = lesion_either & (z <= -params.change_z)
        if params.intensity_new_z is not None:
            spots = intensity_new_spots(z, maps, lesion_either, params)
            if spots.any():  # apart from every lesion: added as components of their own
                labels_f = label_components((labels_f > 0) | spots, affine=grid.affine,
                                            min_lesion_mm3=seg.min_lesion_mm3)
                increase |= spots
    else:
        increase = (maps.prob_f >= t) & (maps.prob_b < t)
        decrease = (maps.prob_b >= t) & (maps.prob_f < t)
    for mask in (increase, decrease):
        keep = label_components(mask, affine=grid.affine, min_lesion_mm3=params.min_change_mm3)
        mask &= keep > 0
    table, change_work, ids_work = match_lesions(
        labels_b, labels_f, maps.prob_b, maps.prob_f, increase, decrease, affine=grid.affine,
        enlarging_ratio=params.enlarging_ratio)
    if spots is not None and spots.any():  # away from every segmented lesion: groups of their own
        led = np.unique(ids_work[spots])
        led = led[led > 0]
        table.loc[table.lesion_id.isin(led), "evidence"] = evidence
        if network_probs is not None:  # the segmentation has no say on these: the network's
            grew, lost = (ndi.mean(network_probs[c], labels=ids_work, index=led) for c in (0, 1))
            for lesion_id, p_grew, p_lost in zip(led, grew, lost, strict=True):
                row = table.lesion_id == lesion_id
                gone = table.loc[row, "status"].iloc[0] in ("disappeared", "shrinking")
                table.loc[row, "confidence"] = round(float(p_lost if gone else p_grew), 4)
    for value in (1, 2):  # fragments of confirmed change below the size limit are noise
        part = change_work == value
        small = part & (label_components(part, affine=grid.affine,
                                         min_lesion_mm3=params.min_change_mm3) == 0)
        change_work[small] = 0
    native = Grid(followup.shape, followup.affine)
    change = resample_to_grid(change_work.astype(np.float32), grid.affine, native, order=0)
    lesion_ids = resample_to_grid(ids_work.astype(np.float32), grid.affine, native, order=0)
    timer.lap("tracking")
    warnings = [*protocol_warnings(baseline, followup),
                *intensity_profile_warnings(maps.b_norm, maps.f_norm, maps.brain)]
    if maps.registration.ncc < 0.8:
        warnings.append(f"poor registration or intensity change (NCC "
                        f"{maps.registration.ncc:.2f} < 0.80): check the pair")
    qc: dict[str, object] = {"registration_ncc": maps.registration.ncc,
                             "protocol_warnings": warnings}
    return TrackResult(np.rint(change).astype(np.uint8), followup.affine, table,
                       maps.registration, maps.provider, maps.model,
                       np.rint(lesion_ids).astype(np.int32), qc,
                       {**maps.seconds, **timer.seconds}, network_info)


def track_volumes(baseline: Volume, followup: Volume, params: TrackParams = TrackParams(),
                  model: OnnxModel | None = None,
                  progress: Callable[[float], None] | None = None, *,
                  change_model: OnnxModel | None = None) -> TrackResult:
    """Compare two FLAIR visits of one patient; see the module docstring.

    ``model`` is required when ``params.segmentation.method`` is ``network``;
    ``change_model`` is the change network of method ``network`` (default: the shipped one).
    """
    maps = prepare_pair(baseline, followup, params.segmentation, model, progress)
    return detect_changes(maps, baseline, followup, params, change_model)


def write_track_outputs(out_dir: Path, result: TrackResult, params: TrackParams,
                        inputs: dict[str, Path], extra: dict[str, Any] | None = None) -> None:
    """Write the track CLI's files into ``out_dir`` atomically; provenance last.

    ``extra``: more top-level provenance entries (the optional ``atrophy`` block).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROVENANCE).unlink(missing_ok=True)  # never current while half-written
    save_labels(out_dir / "change_mask.nii.gz", result.change_mask, result.affine)
    save_labels(out_dir / "lesion_ids.nii.gz", result.lesion_ids, result.affine)
    atomic_write_text(out_dir / "lesion_changes.csv",
                      result.table.to_csv(index=False, float_format="%.6g"))
    counts = result.table.status.value_counts().to_dict() if len(result.table) else {}
    write_json(out_dir / PROVENANCE, {
        "tool": "ms_core track", "version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parameters": asdict(params), "provider": result.provider, "model": result.model,
        **({"change_model": result.change_model} if result.change_model else {}),
        "inputs": input_record(inputs),
        "registration": {"followup_to_baseline_ras_mm": result.registration.followup_to_baseline,
                         "ncc": result.registration.ncc},
        "qc": {**result.qc,
               "header_warnings": [w for p in inputs.values() for w in header_warnings(p)]},
        "status_counts": {str(k): int(v) for k, v in counts.items()},
        "seconds": result.seconds, **(extra or {}),
    })


@dataclass(frozen=True)
class AtrophyRequest:
    """Optional brain atrophy in a ``track`` run: images of both visits and PBVC settings.

    ``baseline``/``followup``: the same sequence at both visits (``modality``; T1w preferred,
    the FLAIRs otherwise), in the scanner space of that visit's FLAIR (the lesions found by the
    tracking are carried onto them through world coordinates and filled).
    """

    baseline: Path
    followup: Path
    modality: str = "T1w"
    method: Literal["bsi", "jacobian"] = "bsi"
    spacing_mm: float = 1.0

    def __post_init__(self) -> None:
        if self.modality not in ("T1w", "FLAIR", "T2w"):
            raise InputError(None, f"atrophy modality must be T1w, FLAIR or T2w, not "
                                   f"{self.modality!r}")
        if self.method not in ("bsi", "jacobian"):
            raise InputError(None, f"atrophy method must be bsi or jacobian, not "
                                   f"{self.method!r}")
        if not 0.25 <= self.spacing_mm <= 4.0:
            raise InputError(None, f"atrophy spacing must be in [0.25, 4] mm, got "
                                   f"{self.spacing_mm}")


def _atrophy_block(maps: PairMaps, params: TrackParams, request: AtrophyRequest
                   ) -> dict[str, Any]:
    """The ``atrophy`` provenance block: PBVC and both visits' volumes, lesions filled."""
    b_img = load_volume(request.baseline, request.modality)
    f_img = load_volume(request.followup, request.modality)
    t = params.segmentation.threshold
    # The baseline's map lies on the follow-up grid: grid voxel -> follow-up world -> baseline.
    b_les = lesions_on_grid(maps.prob_b >= t,
                            maps.registration.followup_to_baseline @ maps.grid.affine, b_img)
    f_les = lesions_on_grid(maps.prob_f >= t, maps.grid.affine, f_img)
    try:
        block = pair_atrophy(b_img, f_img, baseline_lesions=b_les, followup_lesions=f_les,
                             method=request.method, spacing_mm=request.spacing_mm,
                             skull_stripped=params.segmentation.skull_stripped)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(request.followup, f"atrophy measurement failed: {e}") from e
    block["inputs"] = input_record({"baseline_image": request.baseline,
                                    "followup_image": request.followup})
    return block


def track_files(baseline_path: Path, followup_path: Path, out_dir: Path,
                params: TrackParams = TrackParams(),
                progress: Callable[[float], None] | None = None, *,
                atrophy: AtrophyRequest | None = None) -> TrackResult:
    """Load, compare and write (the ``track`` CLI). Raises :class:`InputError` on bad input.

    With ``atrophy``, ``provenance.json`` also gets an ``atrophy`` block
    (:func:`ms_core.longitudinal.atrophy.pair_atrophy`: PBVC and both visits' tissue volumes, about
    1 min more on 2 cores); the other files are the same.
    """
    baseline = load_volume(baseline_path, "FLAIR")
    followup = load_volume(followup_path, "FLAIR")
    model = None
    if params.segmentation.method == "network":
        model = load_onnx_model(load_segmentation_card(), params.segmentation.device)
    extra: dict[str, Any] | None = None
    try:
        if atrophy is None:
            result = track_volumes(baseline, followup, params, model, progress)
        else:
            maps = prepare_pair(baseline, followup, params.segmentation, model, progress)
            result = detect_changes(maps, baseline, followup, params)
            extra = {"atrophy": _atrophy_block(maps, params, atrophy)}
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(followup_path, str(e)) from e
    write_track_outputs(out_dir, result, params,
                        {"baseline_flair": baseline_path, "followup_flair": followup_path},
                        extra)
    return result


# ----------------------------------------------------------------------------- study visits
def _visit_flair(visit: Visit) -> Path:
    if "FLAIR" not in visit.images:
        raise InputError(None, f"{visit.participant_id} {visit.session_id} has no usable FLAIR")
    return visit.images["FLAIR"]


def tracking_status(root: Path, baseline: Visit, followup: Visit,
                    params: TrackParams = TrackParams()) -> dict[str, object] | None:
    """The stored comparison's provenance when it is current (same inputs and settings)."""
    prov = read_record(tracking_dir(root, baseline, followup) / PROVENANCE)
    if prov is None:
        return None
    try:
        same_inputs = inputs_current(prov, {"baseline_flair": _visit_flair(baseline),
                                            "followup_flair": _visit_flair(followup)})
        stored = {**_TRACK_LEGACY_DEFAULTS, **prov["parameters"]}
        stored["segmentation"] = {**LEGACY_PARAM_DEFAULTS, **stored["segmentation"]}
        same_params = stored == json.loads(json.dumps(asdict(params)))
        if params.method == "network":  # and made by the change network installed now
            same_params &= (prov.get("change_model") or {}).get("sha256") == load_model_card(
                CHANGE_MODEL).sha256
    except (InputError, KeyError, TypeError, AttributeError, ValueError):
        return None
    return dict(prov) if same_inputs and same_params else None


def track_visits(root: Path, baseline: Visit, followup: Visit,
                 params: TrackParams = TrackParams(),
                 progress: Callable[[float], None] | None = None) -> TrackResult:
    """Compare two visits of a study and store the ``track`` files (see :func:`tracking_dir`).

    Current stored segmentations of both visits (same settings) are reused, so a comparison
    then costs registration and matching only; otherwise the model runs on both.
    """
    from ms_core.segmentation.segment import segmentation_status

    b_path, f_path = _visit_flair(baseline), _visit_flair(followup)
    seg = params.segmentation
    b_vol, f_vol = load_volume(b_path, "FLAIR"), load_volume(f_path, "FLAIR")
    probs: tuple[Volume, Volume] | None = None
    if all(segmentation_status(root, v, seg) for v in (baseline, followup)):
        stored = [load_volume(derivatives_dir(root, v.participant_id, v.session_id)
                              / "lesion_prob.nii.gz", "prob") for v in (baseline, followup)]
        probs = (stored[0], stored[1])
    model = None
    if probs is None and seg.method == "network":
        model = load_onnx_model(load_segmentation_card(), seg.device)
    maps = prepare_pair(b_vol, f_vol, seg, model, progress, probs=probs)
    if probs is not None:  # the stored maps: record the model and provider that made them
        provider, stored_model = _stored_model(root, followup)
        maps = replace(maps, provider=f"{provider} (stored segmentation)", model=stored_model)
    result = detect_changes(maps, b_vol, f_vol, params)
    warnings = result.qc.get("protocol_warnings")
    if isinstance(warnings, list):
        warnings.extend(visit_metadata_warnings(baseline, followup))
    out = tracking_dir(root, baseline, followup)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # two runs on the same pair write one after the other
        write_track_outputs(out, result, params,
                            {"baseline_flair": b_path, "followup_flair": f_path})
    return result


def _stored_model(root: Path, visit: Visit) -> tuple[str, dict[str, str] | None]:
    prov = read_json(derivatives_dir(root, visit.participant_id, visit.session_id)
                     / PROVENANCE)
    model = prov.get("model")
    return str(prov.get("provider")), (dict(model) if isinstance(model, dict) else None)
