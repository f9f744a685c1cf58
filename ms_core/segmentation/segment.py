"""Lesion segmentation of one visit: preprocessing, network or baseline, lesion table, outputs.

Two methods share one interface:

- ``network``: our 3D U-Net (``models_onnx/lesion_seg``) run with onnxruntime by sliding window
  on a 1 mm RAS working grid, FLAIR plus optional T1w;
- ``baseline``: a classical FLAIR-hyperintensity rule inside white matter (FLAIR brighter than
  grey matter by 2 robust standard deviations, inside the registered MNI white-matter prior), so
  every report can show what the network adds.

Both return a probability map on the *input FLAIR's own grid and affine*, and a lesion table
whose ``location`` column is the McDonald/MAGNIMS topography (:mod:`ms_core.lesions.location`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ms_core import __version__
from ms_core.foundation.domain import Visit, Volume
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import (
    atomic_write_text,
    header_warnings,
    load_volume,
    remove_stale_temp_files,
    save_labels,
    save_volume,
    write_json,
)
from ms_core.imaging.anatomy import load_template
from ms_core.imaging.preprocess import (
    Grid,
    brain_mask_from_transform,
    crop_box,
    denoise,
    n4_bias_correct,
    normalize_intensity,
    normalize_percentile,
    normalize_to_white_matter,
    normalize_zscore,
    pad_to_multiple,
    resample_to_grid,
    template_to_subject,
    warp_from_template,
    working_grid,
)
from ms_core.lesions.components import lesion_table, threshold_probability
from ms_core.lesions.location import classify_lesions
from ms_core.segmentation.inference import OnnxModel, load_onnx_model, sliding_window
from ms_core.segmentation.model_store import (
    SEGMENTATION_MODEL,
    active_sha256,
    load_segmentation_card,
)
from ms_core.study.derivatives import (
    PROVENANCE,
    derivatives_dir,
    input_record,
    inputs_current,
    output_record,
    outputs_intact,
    read_record,
)
from ms_core.study.locks import folder_lock

__all__ = [
    "LEGACY_PARAM_DEFAULTS",
    "OUTPUT_FILES",
    "TTA_FLIPS",
    "SegmentParams",
    "SegmentationResult",
    "StageTimer",
    "brain_on_grid",
    "flair_on_working_grid",
    "model_info",
    "model_input",
    "needs_white_matter",
    "network_input",
    "other_model_segmentation",
    "probability_on_grid",
    "reads_t1",
    "segment_files",
    "segment_visit",
    "segment_volumes",
    "segmentation_status",
    "white_matter_prior",
    "working_spacing",
    "write_outputs",
]

log = logging.getLogger(__name__)
Method = Literal["network", "baseline"]
#: Flip test-time augmentation: the window as is, then flipped in x, in y and in z.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))
BASELINE_Z = 2.0


@dataclass(frozen=True)
class SegmentParams:
    """User-facing settings of a segmentation run (recorded in the provenance)."""

    method: Method = "network"
    threshold: float = 0.5
    #: Lesions under about 3 mm in diameter are not counted in MS imaging guidelines (MAGNIMS,
    #: Filippi et al., Lancet Neurol 2016); 10 mm^3 is a 2.7 mm ball.
    min_lesion_mm3: float = 10.0
    skull_stripped: bool = False
    device: str = "auto"
    #: Sliding-window overlap and flip test-time augmentation (flips in x, y and z averaged):
    #: 25 % overlap with flips costs 1.8x the network passes of 50 % without, and was chosen
    #: by the shipping rule of docs/segmentation.md (selection set, patient26 guarding) over
    #: 50 % without flips, with flips alone and 25 % alone (docs/performance.md section 3).
    overlap: float = 0.25
    tta: bool = True
    #: N4 bias-field correction of the images inside the brain before normalisation
    #: (:func:`ms_core.imaging.preprocess.n4_bias_correct`); off by default, see
    #: docs/preprocessing.md.
    bias_correction: bool = False
    #: Curvature-flow denoising inside the brain before normalisation, after N4 when both are on
    #: (:func:`ms_core.imaging.preprocess.denoise`); off by default, see docs/preprocessing.md.
    denoise: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("network", "baseline"):
            raise InputError(None, f"method must be network or baseline, not {self.method!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(None, f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_lesion_mm3 < 0:
            raise InputError(None, f"min-lesion-mm3 must be >= 0, got {self.min_lesion_mm3}")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(None, f"overlap must be in [0, 1), got {self.overlap}")


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """Outputs on the FLAIR grid: ``prob`` (X, Y, Z) float32, ``labels`` (X, Y, Z) int32."""

    prob: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    table: pd.DataFrame
    provider: str
    model: dict[str, str] | None
    seconds: dict[str, float] = field(default_factory=dict)


class StageTimer:
    """Wall-clock seconds per named pipeline stage (recorded in provenance)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Add the seconds since the previous lap to ``stage`` (a stage may lap twice)."""
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._t, 3)
        self._t = now


def _stripped_brain(data: np.ndarray) -> np.ndarray:
    """Brain of an already skull-stripped image: non-background voxels, holes filled."""
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError("the image is blank (no positive voxels)")
    mask = data > 0.01 * float(np.percentile(positive, 99))
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (int(np.argmax(sizes)) + 1)
    return np.asarray(ndi.binary_fill_holes(mask))


def baseline_probability(flair: np.ndarray, brain: np.ndarray, gm_prior: np.ndarray,
                         wm_prior: np.ndarray) -> np.ndarray:
    """Classical lesion probability: FLAIR brighter than grey matter, inside white matter.

    On FLAIR, lesions are brighter than GM, which is brighter than WM. With the GM intensity
    estimated on voxels whose registered GM prior exceeds 0.7, a voxel scores
    z = (I - median_GM) / (1.4826 MAD_GM) and p = sigmoid((z - 2) / 0.5) where the WM prior
    exceeds 0.3, else 0. (k = 2 and the 0.3 prior were chosen on demo-study visits, never on the
    real validation scan.) Returns (X, Y, Z) float32.
    """
    core = (gm_prior > 0.7) & brain
    vals = flair[core] if core.sum() > 100 else flair[brain]
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * 1.4826
    if mad <= 0:
        raise ValueError("FLAIR has no intensity spread inside the brain")
    z = (flair - med) / mad
    wm = (wm_prior > 0.3) & brain
    p = 1.0 / (1.0 + np.exp(-(z - BASELINE_Z) / 0.5))
    return np.asarray(np.where(wm, p, 0.0), dtype=np.float32)


def needs_white_matter(params: SegmentParams, model: OnnxModel | None) -> bool:
    """Whether the run normalises by white matter, which needs the registered template."""
    return (params.method == "network" and model is not None
            and model.card.intensity_reference == "white_matter")


def reads_t1(params: SegmentParams, model: OnnxModel | None) -> bool:
    """Whether the run feeds a T1w to the network: the network method with a model whose card
    does not say ``input.t1w: ignored`` and has a T1w channel (or with no model yet)."""
    return params.method == "network" and (
        model is None or (model.card.uses_t1 and "T1w" in model.card.channels))


def brain_on_grid(flair: Volume, grid: Grid, f_work: np.ndarray, params: SegmentParams,
                  model: OnnxModel | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Brain mask of ``flair`` on ``grid`` and the subject -> MNI matrix (when registered).

    ``f_work`` is the FLAIR already resampled onto ``grid``. Registration to the template runs
    for raw scans, for the baseline method (which needs the tissue priors) and for a ``model``
    that normalises by white matter (which needs the white-matter prior).
    """
    need_registration = (not params.skull_stripped or params.method == "baseline"
                         or needs_white_matter(params, model))
    to_mni = (template_to_subject(flair, skull_stripped=params.skull_stripped)
              if need_registration else None)
    if params.skull_stripped:
        brain = _stripped_brain(f_work)
    else:
        assert to_mni is not None
        brain = brain_mask_from_transform(to_mni, grid)
    if not brain.any():
        raise InputError(flair.source, "brain extraction found no brain in this FLAIR")
    return brain, to_mni


def working_spacing(params: SegmentParams, model: OnnxModel | None) -> float:
    """Voxel size (mm) of the working grid: the network's (``preprocessing.spacing_mm``, 1 mm
    for our models), 1 mm for the baseline method."""
    return model.card.spacing_mm if params.method == "network" and model is not None else 1.0


def flair_on_working_grid(flair: Volume, params: SegmentParams, model: OnnxModel | None = None
                          ) -> tuple[Grid, np.ndarray, np.ndarray, np.ndarray | None]:
    """The 1 mm working grid of ``flair``, the FLAIR resampled onto it, its brain mask there
    and the subject -> MNI matrix (when registered; see :func:`brain_on_grid`)."""
    grid = working_grid(flair, working_spacing(params, model))
    f_work = resample_to_grid(flair.data, flair.affine, grid, order=1)
    brain, to_mni = brain_on_grid(flair, grid, f_work, params, model)
    return grid, f_work, brain, to_mni


def white_matter_prior(grid: Grid, to_mni: np.ndarray | None,
                       box: tuple[slice, ...]) -> np.ndarray:
    """The MNI152 white-matter prior on ``grid[box]`` through the subject -> MNI matrix."""
    if to_mni is None:
        raise ValueError("this model normalises by white matter and needs the subject -> MNI "
                         "transform (flair_on_working_grid with the model)")
    return warp_from_template(load_template().wm, to_mni, grid)[box]


def network_input(flair: np.ndarray, t1: np.ndarray | None, brain: np.ndarray,
                  multiple_of: int, patch: int, *, wm_prior: np.ndarray | None = None,
                  reference: str = "brain_median",
                  channels: tuple[str, ...] = ("FLAIR", "T1w"),
                  ) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The network's (C, X, Y, Z) float32 input from (X, Y, Z) images cropped to the brain,
    in the card's ``channels`` order (FLAIR, then T1w for our models; a T1w channel is zeros
    without a T1w), each normalised inside ``brain`` by the card's intensity ``reference``
    (:data:`ms_core.segmentation.model_store.INTENSITY_REFERENCES`: divided by the median; by the
    white-matter level (:func:`ms_core.imaging.preprocess.white_matter_level`), which needs
    ``wm_prior``, the registered white-matter prior on the same box, and is used whenever one is
    given; z-scored; or scaled by percentiles); zero-padded to a multiple of ``multiple_of`` and at
    least ``patch``; and the slices that cut the unpadded box back out
    (:func:`ms_core.imaging.preprocess.pad_to_multiple`)."""
    def norm(image: np.ndarray) -> np.ndarray:
        if wm_prior is not None or reference == "white_matter":
            if wm_prior is None:
                raise ValueError("white-matter normalisation needs the registered prior")
            return normalize_to_white_matter(image, brain, wm_prior)
        if reference == "zscore":
            return normalize_zscore(image, brain)
        if reference == "percentile":
            return normalize_percentile(image, brain)
        return normalize_intensity(image, brain)

    f_norm = norm(flair)
    by_name = {"FLAIR": f_norm, "T1w": np.zeros_like(f_norm) if t1 is None else norm(t1)}
    return pad_to_multiple(np.stack([by_name[c] for c in channels]).astype(np.float32),
                           multiple_of, minimum=patch)


def model_input(flair: np.ndarray, t1: np.ndarray | None, brain: np.ndarray, grid: Grid,
                box: tuple[slice, ...], params: SegmentParams, model: OnnxModel,
                to_mni: np.ndarray | None) -> tuple[np.ndarray, tuple[slice, ...]]:
    """:func:`network_input` of images already cut to ``box`` of ``grid``, as ``model``'s card
    asks: its channels, intensity reference (with the registered white-matter prior when it
    needs one), padding multiple and patch."""
    card = model.card
    wm_prior = (white_matter_prior(grid, to_mni, box) if needs_white_matter(params, model)
                else None)
    return network_input(flair, t1, brain, card.multiple_of, max(card.layout_patch()),
                         wm_prior=wm_prior, reference=card.intensity_reference,
                         channels=card.channels)


def _corrected_images(images: list[np.ndarray], brain: np.ndarray, affine: np.ndarray,
                      params: SegmentParams, timer: StageTimer) -> list[np.ndarray]:
    """``images`` (X, Y, Z) after the optional N4 and denoising of ``params``, each timed."""
    if not (params.bias_correction or params.denoise):
        return images
    timer.lap("preprocess_normalise")  # cropping so far; normalisation adds to it later
    if params.bias_correction:
        images = [n4_bias_correct(im, affine, brain) for im in images]
        timer.lap("preprocess_n4")
    if params.denoise:
        images = [denoise(im, brain, method="curvature") for im in images]
        timer.lap("preprocess_denoise")
    return images


def probability_on_grid(f_work: np.ndarray, t1_work: np.ndarray | None, brain: np.ndarray,
                        grid: Grid, params: SegmentParams, model: OnnxModel | None,
                        to_mni: np.ndarray | None,
                        progress: Callable[[float], None] | None = None,
                        timer: StageTimer | None = None) -> np.ndarray:
    """Lesion probability (X, Y, Z) float32 on ``grid`` from images already on it.

    ``brain`` is the (X, Y, Z) bool brain mask on ``grid``; ``to_mni`` the subject -> MNI
    matrix, needed by the baseline method only; ``model`` by the network method only. With
    ``params.bias_correction`` / ``params.denoise`` the images are N4-corrected / denoised
    inside the brain first (stages ``preprocess_n4`` / ``preprocess_denoise`` of ``timer``).
    """
    timer = timer or StageTimer()
    box = crop_box(brain, margin=4)
    shift = np.eye(4)
    shift[:3, 3] = [float(b.start) for b in box]
    t1_box = t1_work[box] if t1_work is not None and reads_t1(params, model) else None
    images = _corrected_images([f_work[box]] + ([] if t1_box is None else [t1_box]), brain[box],
                               grid.affine @ shift, params, timer)
    prob_box: np.ndarray
    if params.method == "network":
        if model is None:
            raise ValueError("the network method needs a model (load_onnx_model)")
        card = model.card
        x_pad, back = model_input(images[0], images[1] if t1_box is not None else None,
                                  brain[box], grid, box, params, model, to_mni)
        timer.lap("preprocess_normalise")
        flips = TTA_FLIPS if params.tta else ((),)
        overlap = params.overlap if card.overlap is None else card.overlap
        prob_pad = sliding_window(x_pad, model.predict, patch=card.layout_patch(),
                                  overlap=overlap,
                                  flips=flips, progress=progress)
        prob_box = prob_pad[back[1:]]
    else:
        if to_mni is None:
            raise ValueError("the baseline method needs the subject -> MNI transform")
        f_norm = normalize_intensity(images[0], brain[box])
        tpl = load_template()
        gm = warp_from_template(tpl.gm, to_mni, grid)[box]
        wm = warp_from_template(tpl.wm, to_mni, grid)[box]
        timer.lap("preprocess_normalise")
        prob_box = baseline_probability(f_norm, brain[box], gm, wm)
    timer.lap("inference")
    prob_work = np.zeros(grid.shape, dtype=np.float32)
    prob_work[box] = prob_box
    return prob_work


def model_info(params: SegmentParams, model: OnnxModel | None
               ) -> tuple[str, dict[str, str] | None]:
    """Provider and model identity recorded in provenance for ``params.method``."""
    if params.method == "network" and model is not None:
        return model.provider, {"name": model.card.name, "version": model.card.version,
                                "sha256": model.card.sha256,
                                "intensity_reference": model.card.intensity_reference,
                                "t1w": "used" if model.card.uses_t1 else "ignored"}
    return "numpy", None


def segment_volumes(flair: Volume, t1: Volume | None, params: SegmentParams,
                    model: OnnxModel | None = None,
                    progress: Callable[[float], None] | None = None) -> SegmentationResult:
    """Segment lesions in ``flair`` (and ``t1`` when given); see the module docstring.

    ``model`` is required for the network method (see :func:`load_onnx_model`).
    """
    timer = StageTimer()
    if not np.any(flair.data > 0):
        raise ValueError("the FLAIR image is blank (no positive voxels)")
    grid, f_work, brain, to_mni = flair_on_working_grid(flair, params, model)
    timer.lap("preprocess_brain")
    if t1 is not None and params.method == "network" and not reads_t1(params, model):
        log.warning("%s: the model reads FLAIR only (its card: input.t1w ignored); the T1w "
                    "is not used", t1.source)
    t1_work = (resample_to_grid(t1.data, t1.affine, grid, order=1)
               if t1 is not None and reads_t1(params, model) else None)
    prob_work = probability_on_grid(f_work, t1_work, brain, grid, params, model, to_mni,
                                    progress, timer)
    provider, info = model_info(params, model)
    native = Grid(flair.shape, flair.affine)
    prob = np.clip(resample_to_grid(prob_work, grid.affine, native, order=1), 0.0, 1.0)
    labels = threshold_probability(prob, affine=flair.affine, threshold=params.threshold,
                                   min_lesion_mm3=params.min_lesion_mm3)
    table = lesion_table(labels, affine=flair.affine, prob=prob)
    timer.lap("postprocess")
    if len(table):
        if to_mni is None:  # skull-stripped network run: register the template for the zones
            to_mni = template_to_subject(flair, skull_stripped=True)
        where = classify_lesions(labels, flair.affine, to_mni)
        table["location"] = [where[int(i)] for i in table.lesion_id]
    else:
        table["location"] = pd.Series(dtype="object")
    timer.lap("location")
    return SegmentationResult(prob.astype(np.float32), labels, flair.affine, table, provider,
                              info, timer.seconds)


#: The result files of a segmentation, in the order written; ``provenance.json`` comes last.
OUTPUT_FILES = ("lesion_prob.nii.gz", "lesion_mask.nii.gz", "lesions.csv")


def write_outputs(out_dir: Path, result: SegmentationResult, params: SegmentParams,
                  inputs: dict[str, Path]) -> None:
    """Write the segment CLI's files into ``out_dir`` atomically; provenance last.

    Under the folder's lock (:func:`ms_core.study.locks.folder_lock`), the old ``provenance.json``
    is removed first, so from then on the folder holds no result that counts as current; each file
    is written to a temporary name and renamed; ``provenance.json`` is written last and records
    the sha256 of every output. A run killed at any point therefore leaves either the previous
    complete result or one without provenance, which :func:`segmentation_status` reports as not
    current, never a mix taken as current.
    """
    with folder_lock(out_dir):
        (out_dir / PROVENANCE).unlink(missing_ok=True)
        remove_stale_temp_files(out_dir, (*OUTPUT_FILES, PROVENANCE))
        t0 = time.perf_counter()
        save_volume(out_dir / "lesion_prob.nii.gz", result.prob, result.affine, np.float32)
        save_labels(out_dir / "lesion_mask.nii.gz", (result.labels > 0).astype(np.uint8),
                    result.affine)
        atomic_write_text(out_dir / "lesions.csv", result.table.to_csv(index=False,
                                                                        float_format="%.6g"))
        seconds = {**result.seconds, "write": round(time.perf_counter() - t0, 3)}
        write_json(out_dir / PROVENANCE, {
            "tool": "ms_core segment", "version": __version__,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "parameters": asdict(params), "provider": result.provider, "model": result.model,
            "inputs": input_record(inputs), "outputs": output_record(out_dir, OUTPUT_FILES),
            "n_lesions": len(result.table),
            "lesion_volume_ml": float(result.table.volume_ml.sum()),
            "seconds": seconds,
            "qc": {"header_warnings": [w for p in inputs.values() for w in header_warnings(p)]},
        })


def segment_files(flair_path: Path, t1_path: Path | None, out_dir: Path,
                  params: SegmentParams,
                  progress: Callable[[float], None] | None = None) -> SegmentationResult:
    """Load, segment and write (the ``segment`` CLI). Raises :class:`InputError` on bad input."""
    t0 = time.perf_counter()
    flair = load_volume(flair_path, "FLAIR")
    t1 = load_volume(t1_path, "T1w") if t1_path is not None else None
    load_s = round(time.perf_counter() - t0, 3)
    model = None
    if params.method == "network":
        model = load_onnx_model(load_segmentation_card(), params.device)
    try:
        result = segment_volumes(flair, t1, params, model, progress)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(flair_path, str(e)) from e
    result.seconds["load"] = load_s
    inputs = {"flair": flair_path} | ({"t1": t1_path} if t1_path is not None else {})
    write_outputs(out_dir, result, params, inputs)
    return result


def _visit_inputs(visit: Visit) -> dict[str, Path]:
    """The images a study visit is segmented from: its FLAIR alone.

    The network takes an optional T1w channel (``segment --t1``), but on real data it adds false
    lesions: on patient26, model 3.2.0 gives lesion F1 0.432 with T1w against 0.691 without
    (3.1.0: 0.596 against 0.690; docs/segmentation.md). So visits are segmented from FLAIR only.
    """
    if "FLAIR" not in visit.images:
        raise InputError(None, f"{visit.participant_id} {visit.session_id} has no usable FLAIR")
    return {"flair": visit.images["FLAIR"]}


#: Settings added after results were first stored, with the value those results were made with.
LEGACY_PARAM_DEFAULTS = {"bias_correction": False, "denoise": False}


def segmentation_status(root: Path, visit: Visit, params: SegmentParams = SegmentParams(),
                        model_sha256: str | None = None) -> dict[str, object] | None:
    """The stored segmentation's provenance if it is current, else ``None``.

    Current means: ``provenance.json`` exists in ``derivatives/ms_dash`` and is complete, was
    made with ``params`` (and, for the network method, with the model ``model_sha256``,
    default the active ``lesion_seg``: :func:`ms_core.segmentation.model_store.active_sha256`) from
    inputs whose sha256 still match the visit's files, and every output file it lists is present
    with the sha256 it records. A missing, malformed or partial provenance, or a missing or
    altered output file, is not current. This is the cache of the on-demand segmentation,
    keyed by input hash.
    """
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    prov = read_record(folder / PROVENANCE)
    if prov is None:
        return None
    try:
        same_inputs = inputs_current(prov, _visit_inputs(visit))
        # Runs stored before the N4/denoise options existed were made without them.
        same_params = {**LEGACY_PARAM_DEFAULTS, **prov["parameters"]} == asdict(params)
        if model_sha256 is None and params.method == "network":
            model_sha256 = active_sha256(SEGMENTATION_MODEL)
        same_model = model_sha256 is None or (prov.get("model") or {}).get(
            "sha256") == model_sha256
        current = (same_inputs and same_params and same_model
                   and outputs_intact(folder, prov, OUTPUT_FILES))
    except (InputError, KeyError, TypeError, AttributeError, OSError):
        return None
    return dict(prov) if current else None


def other_model_segmentation(root: Path, visit: Visit) -> dict[str, object] | None:
    """The model entry of the visit's stored network segmentation when another model than the
    active ``lesion_seg`` made it (so it is not current), else ``None``."""
    record = read_record(derivatives_dir(root, visit.participant_id, visit.session_id)
                         / PROVENANCE)
    stored = record.get("model") if record is not None else None
    active = active_sha256(SEGMENTATION_MODEL)
    if not isinstance(stored, dict) or active is None or stored.get("sha256") == active:
        return None
    return dict(stored)


def segment_visit(root: Path, visit: Visit, params: SegmentParams = SegmentParams(),
                  progress: Callable[[float], None] | None = None) -> SegmentationResult:
    """Segment a study visit into ``derivatives/ms_dash/sub-X/ses-Y`` (the segment CLI files).

    The whole run holds the visit folder's lock, so two runs on the same visit (two browser
    sessions, the app and a batch job) run one after the other and never interleave their
    files; a second run waits up to ``MS_DASH_LOCK_TIMEOUT_S`` and then raises
    :class:`ms_core.study.locks.LockTimeout` naming the folder.
    """
    inputs = _visit_inputs(visit)
    out = derivatives_dir(root, visit.participant_id, visit.session_id)
    with folder_lock(out):
        return segment_files(inputs["flair"], inputs.get("t1"), out, params, progress)
