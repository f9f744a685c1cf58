"""Benchmark: window overlap, flip TTA, patch size, threads and quantisation vs time and Dice.

Usage: ``python bench/overlap_tta.py [--cases patient26,demo] [--variants all]
[--no-quant] [--device cpu] [--t1]``.

Cases: **patient26** of open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY;
skull-stripped, against the consensus mask) and **demo** sub-01 ses-01 (skull on, against its
stored ground truth). The network gets FLAIR alone, as the app and ``batch`` give it since
model 3.2.0; ``--t1`` adds the T1w channel (the inputs of the runs before 3.2.0). For each
case the preprocessing (working grid, brain mask) runs once; each variant then runs
:func:`ms_core.segmentation.segment.probability_on_grid` (crop to the brain, normalisation, sliding
window) and the post-processing of :func:`ms_core.segmentation.segment.segment_volumes` (back to the
FLAIR grid, threshold 0.5, lesions >= 10 mm^3), and is scored with
:func:`ms_core.segmentation.evaluate.evaluate_masks`. ``inference_s`` is the sliding-window stage
alone (``StageTimer`` ``inference``), one run each.

Variants (``--variants`` takes a comma-separated subset of the names):

* ``default``: 64^3 windows, 50 % overlap, no TTA, float32, 2 threads (the app's settings
  until 2026-12-03, the reference of the comparison columns);
* ``overlap_0.25``; ``tta`` (4 passes: none, flip x, flip y, flip z) and ``tta_overlap_0.25``;
* ``patch_96``: 96^3 windows, 50 % overlap (the network is fully convolutional; trained on 64^3);
* ``threads_1``: the default with one intra-op thread;
* ``int8``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights, MinMax
  calibration on windows of three demo visits, never patient26);
* ``float16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` (float32 inputs and
  outputs kept).

Every variant also reports Dice and max |delta p| against the ``default`` run of the same case
(the acceptance rule for a faster default: Dice >= 0.999 against float32 on patient26), and the
brain crop: working-grid shape, cropped and padded network input, windows with and without the
crop. Prints JSON and saves ``bench/results/overlap_tta.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, now_utc, save_result  # noqa: E402
from ms_core.foundation.domain import LesionMask  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume  # noqa: E402
from ms_core.imaging.preprocess import (  # noqa: E402
    Grid,
    crop_box,
    pad_to_multiple,
    resample_to_grid,
)
from ms_core.lesions.components import threshold_probability  # noqa: E402
from ms_core.segmentation.evaluate import dice, evaluate_masks  # noqa: E402
from ms_core.segmentation.inference import (  # noqa: E402
    OnnxModel,
    load_onnx_model,
    window_corners,
    window_starts,
)
from ms_core.segmentation.model_store import ModelCard, load_segmentation_card  # noqa: E402
from ms_core.segmentation.segment import (  # noqa: E402
    SegmentParams,
    StageTimer,
    flair_on_working_grid,
    network_input,
    probability_on_grid,
)

OPEN_MS = REPO.parent / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI"
P26 = OPEN_MS / "patient26"
P26_FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_MASK = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
DEMO = REPO / "data" / "demo"
CALIBRATION_VISITS = (("sub-02", "ses-01"), ("sub-03", "ses-01"), ("sub-04", "ses-01"))
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "overlap_0.25": {"overlap": 0.25},
    "tta": {"tta": True},
    "tta_overlap_0.25": {"tta": True, "overlap": 0.25},
    "patch_96": {"patch": 96},
    "threads_1": {"threads": 1},
    "int8": {"model": "int8"},
    "float16": {"model": "float16"},
}


@dataclasses.dataclass
class Case:
    """A case's images on the working grid, its brain mask and its reference mask."""

    name: str
    flair: Any
    grid: Grid
    f_work: np.ndarray
    t_work: np.ndarray | None
    brain: np.ndarray
    to_mni: np.ndarray | None
    params: SegmentParams
    truth: LesionMask
    preprocess_s: float


def _paths(case: str) -> tuple[Path, Path, Path, SegmentParams]:
    if case == "patient26":
        return P26 / P26_FLAIR, P26 / P26_T1, P26 / P26_MASK, SegmentParams(skull_stripped=True)
    anat = DEMO / "sub-01" / "ses-01" / "anat"
    return (anat / "sub-01_ses-01_FLAIR.nii.gz", anat / "sub-01_ses-01_T1w.nii.gz",
            DEMO / "derivatives" / "ground_truth" / "sub-01" / "ses-01" / "lesion_labels.nii.gz",
            SegmentParams())


def _t1_on_grid(path: Path, grid: Grid) -> np.ndarray:
    t1 = load_volume(path, "T1w")
    return resample_to_grid(t1.data, t1.affine, grid, order=1)


def prepare(case: str, with_t1: bool) -> Case:
    """Load and preprocess a case once (as ``segment_volumes`` does before inference)."""
    flair_path, t1_path, truth_path, params = _paths(case)
    t0 = time.perf_counter()
    flair = load_volume(flair_path, "FLAIR")
    grid, f_work, brain, to_mni = flair_on_working_grid(flair, params)
    t_work = _t1_on_grid(t1_path, grid) if with_t1 else None
    truth = load_lesion_mask(truth_path)
    return Case(case, flair, grid, f_work, t_work, brain, to_mni, params,
                LesionMask(truth.labels, flair.affine), round(time.perf_counter() - t0, 2))


def crop_report(case: Case, card: ModelCard) -> dict[str, Any]:
    """How much the brain crop of ``probability_on_grid`` saves, in windows of the card's patch."""
    patch = int(card.patch_size[0])
    box = crop_box(case.brain, margin=4)
    cropped = tuple(b.stop - b.start for b in box)

    def padded(shape: tuple[int, ...]) -> tuple[int, ...]:
        x, _ = pad_to_multiple(np.zeros((1, *shape), np.float32), card.multiple_of,
                               minimum=patch)
        return tuple(int(s) for s in x.shape[1:])

    def windows(shape: tuple[int, ...]) -> int:
        return int(np.prod([len(window_starts(s, patch, 0.5)) for s in shape]))

    full, crop = padded(case.grid.shape), padded(cropped)
    return {"working_grid": list(case.grid.shape), "brain_box": list(cropped),
            "network_input_cropped": list(crop), "network_input_uncropped": list(full),
            "windows_cropped": windows(crop), "windows_uncropped": windows(full),
            "voxel_fraction": round(float(np.prod(crop) / np.prod(full)), 3)}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _calibration(card: ModelCard, with_t1: bool, n_per_visit: int = 8) -> list[np.ndarray]:
    """(1, 2, p, p, p) windows of three demo visits (never patient26) for int8 calibration,
    with the T1w channel zero (FLAIR only, as ``probability_on_grid`` feeds it) unless
    ``with_t1``."""

    patch = int(card.patch_size[0])
    out: list[np.ndarray] = []
    for pid, sid in CALIBRATION_VISITS:
        anat = DEMO / pid / sid / "anat"
        flair = load_volume(anat / f"{pid}_{sid}_FLAIR.nii.gz", "FLAIR")
        grid, f_work, brain, _ = flair_on_working_grid(flair, SegmentParams())
        box = crop_box(brain, margin=4)
        t_box = (_t1_on_grid(anat / f"{pid}_{sid}_T1w.nii.gz", grid)[box] if with_t1 else None)
        x, _ = network_input(f_work[box], t_box, brain[box], card.multiple_of, patch)
        corners = window_corners(x.shape[1:], (patch,) * 3, 0.5)
        for i in np.linspace(0, len(corners) - 1, n_per_visit).round().astype(int):
            a, b, c = corners[i]
            out.append(np.ascontiguousarray(x[None, :, a:a + patch, b:b + patch, c:c + patch]))
    return out


def quantised_models(card: ModelCard, tmp: Path, threads: int, wanted: set[str],
                     with_t1: bool) -> dict[str, OnnxModel | str]:
    """int8 (static QDQ) and float16 versions of the model; a string says why one failed."""
    models: dict[str, OnnxModel | str] = {}
    if "int8" in wanted:
        try:
            from onnxruntime.quantization import (
                CalibrationDataReader,
                QuantFormat,
                QuantType,
                quantize_static,
            )

            windows = _calibration(card, with_t1)

            class Reader(CalibrationDataReader):  # type: ignore[misc]
                def __init__(self) -> None:
                    self._it = iter(windows)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    w = next(self._it, None)
                    return None if w is None else {card.input_name: w}

            t0 = time.perf_counter()
            path = tmp / "int8.onnx"
            quantize_static(str(card.onnx_path), str(path), Reader(),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            print(f"int8 quantised in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            models["int8"] = OnnxModel(card, _session(path, threads), "CPUExecutionProvider")
        except Exception as e:  # report any quantisation failure instead of stopping
            models["int8"] = f"failed: {type(e).__name__}: {e}"
    if "float16" in wanted:
        try:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            path = tmp / "float16.onnx"
            onnx.save(convert_float_to_float16(onnx.load(str(card.onnx_path)),
                                               keep_io_types=True), str(path))
            models["float16"] = OnnxModel(card, _session(path, threads), "CPUExecutionProvider")
        except Exception as e:  # onnxruntime raises its own types for unsupported kernels
            models["float16"] = f"failed: {type(e).__name__}: {e}"
    return models


def run_variant(case: Case, model: OnnxModel, overlap: float, tta: bool
                ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One segmentation with ``model``; metrics, the FLAIR-grid probability and mask."""
    params = dataclasses.replace(case.params, overlap=overlap, tta=tta)
    timer = StageTimer()
    prob_work = probability_on_grid(case.f_work, case.t_work, case.brain, case.grid, params,
                                    model, case.to_mni, timer=timer)
    t0 = time.perf_counter()
    native = Grid(case.flair.shape, case.flair.affine)
    prob = np.clip(resample_to_grid(prob_work, case.grid.affine, native, order=1), 0.0, 1.0)
    labels = threshold_probability(prob, affine=case.flair.affine, threshold=params.threshold,
                                   min_lesion_mm3=params.min_lesion_mm3)
    post_s = time.perf_counter() - t0
    mask = labels > 0
    m = evaluate_masks(LesionMask(mask.astype(np.int32), case.flair.affine), case.truth)
    any_: dict[str, Any] = m["lesion_any_voxel"]  # type: ignore[assignment]
    metrics = {"inference_s": timer.seconds["inference"],
               "normalise_s": timer.seconds.get("preprocess_normalise"),
               "postprocess_s": round(post_s, 2), "dice": round(float(m["dice"]), 4),
               "lesion_f1": None if any_["f1"] is None else round(float(any_["f1"]), 4),
               "pred_ml": round(float(m["pred_volume_ml"]), 3),
               "truth_ml": round(float(m["truth_volume_ml"]), 3)}
    return metrics, prob.astype(np.float32), mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="patient26,demo")
    ap.add_argument("--variants", default="all", help=f"all or some of {list(VARIANTS)}")
    ap.add_argument("--no-quant", action="store_true", help="skip int8 and float16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="device of the float32 variants (cuda: see docs/performance.md)")
    ap.add_argument("--t1", action="store_true",
                    help="give the network T1w as well (FLAIR alone by default, as the app)")
    args = ap.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.no_quant:
        names = [n for n in names if n not in ("int8", "float16")]
    if "default" not in names:
        names.insert(0, "default")
    cases = [c for c in args.cases.split(",") if c]
    if "patient26" in cases and not (P26 / P26_FLAIR).exists():
        print(f"patient26 not found at {P26}: case skipped", file=sys.stderr)
        cases.remove("patient26")
    card = load_segmentation_card()
    base = load_onnx_model(card, args.device, threads=args.threads)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        extra = quantised_models(card, Path(tmp_s), args.threads, set(names), args.t1)
        for case_name in cases:
            case = prepare(case_name, args.t1)
            print(f"{case_name}: preprocessing {case.preprocess_s} s", file=sys.stderr)
            rows: dict[str, Any] = {}
            ref_prob = ref_mask = None
            for name in names:
                spec = VARIANTS[name]
                model: OnnxModel | str = base
                if "model" in spec:
                    model = extra[spec["model"]]
                elif "patch" in spec:
                    p = int(spec["patch"])
                    model = OnnxModel(dataclasses.replace(card, patch_size=(p, p, p)),
                                      base.session, base.provider)
                elif "threads" in spec:
                    model = load_onnx_model(card, "cpu", threads=int(spec["threads"]))
                if isinstance(model, str):
                    rows[name] = {"error": model}
                    print(case_name, name, model, file=sys.stderr)
                    continue
                overlap, tta = float(spec.get("overlap", 0.5)), bool(spec.get("tta", False))
                metrics, prob, mask = run_variant(case, model, overlap, tta)
                if ref_prob is None or ref_mask is None:
                    ref_prob, ref_mask = prob, mask
                metrics["dice_vs_default"] = round(dice(mask, ref_mask), 5)
                metrics["max_abs_dp_vs_default"] = float(np.abs(prob - ref_prob).max())
                rows[name] = {"overlap": overlap, "tta": tta,
                              "patch": int(spec.get("patch", card.patch_size[0])),
                              "threads": int(spec.get("threads", args.threads)),
                              "model": spec.get("model", "float32"), **metrics}
                print(case_name, name, json.dumps(rows[name]), file=sys.stderr)
            results[case_name] = {"preprocess_s": case.preprocess_s,
                                  "brain_crop": crop_report(case, card), "variants": rows}
    import onnxruntime as ort

    result = {
        "benchmark": "overlap_tta", "device": args.device, "provider": base.provider,
        "inputs": "FLAIR + T1w" if args.t1 else "FLAIR only",
        "cases": results, "model": f"{card.name} {card.version}",
        "onnxruntime": ort.__version__,
        "note": "inference_s: sliding-window stage only, one run per variant",
        "date_utc": now_utc(), "machine": machine(),
    }
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    save_result(f"overlap_tta{suffix}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
