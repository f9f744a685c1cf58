"""Benchmark: onnxruntime vs torch on the lesion network, same windows, same process, same threads.

Usage: ``python bench/ort_vs_torch.py [--case patient26] [--windows 12] [--repeats 3]
[--threads 1,2]``.

The input windows are real: the case's FLAIR + T1w go through the app's preprocessing (1 mm
working grid, brain mask, crop to the brain, normalisation, padding; ``ms_core.imaging.preprocess``)
and ``--windows`` of the 64^3 sliding-window positions (50 % overlap) are taken evenly spaced
over all positions, so some are mostly background, as in a real run.

Three predictors get the identical (1, 2, 64, 64, 64) float32 arrays:

* ``onnxruntime``: ``ms_core.segmentation.inference.load_onnx_model(card, "cpu", threads=t)``
  (what the app runs: ``ORT_ENABLE_ALL``, sha256-checked ``models_onnx/lesion_seg/model.onnx``);
* ``torch``: ``training.seg.model.UNet3D`` with ``models_onnx/lesion_seg/weights.npz`` loaded as
  ``training.seg.export`` does, plus the sigmoid, ``torch.inference_mode``,
  ``torch.set_num_threads(t)``: the trained network as it ran in training;
* ``torch_stable_norm``: the same with ``use_stable_instance_norm`` (instance norm as per-axis
  means): the graph that was exported to ONNX.

For each thread count, every backend runs all windows in a block, ``--repeats`` passes in
alternating order (A B C, C B A, ...) after one warm-up window each; the per-window time is the
median over passes. (Interleaving backends window by window was tried first and is unfair: each
library's worker threads spin after a call and slow the other library's next call.)
Reported: median and total milliseconds per window, the ratio torch / onnxruntime, and max
|delta p| and mask Dice (p >= 0.5) of each torch variant against onnxruntime.

Then onnxruntime session settings on the same windows (threads as ``--tune-threads``): graph
optimisation level (disabled, basic, extended, all), intra-op thread spinning on / off, and
windows batched 1, 2 or 4 per ``session.run`` call (total time of all windows).

Prints JSON and saves ``bench/results/ort_vs_torch.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, now_utc, save_result  # noqa: E402
from ms_core.foundation.io import load_volume  # noqa: E402
from ms_core.imaging.preprocess import (  # noqa: E402
    crop_box,
    resample_to_grid,
)
from ms_core.segmentation.evaluate import dice  # noqa: E402
from ms_core.segmentation.inference import load_onnx_model, window_corners  # noqa: E402
from ms_core.segmentation.model_store import load_segmentation_card  # noqa: E402
from ms_core.segmentation.segment import SegmentParams, flair_on_working_grid, network_input  # noqa: E402

P26 = REPO.parent / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI" / "patient26"
P26_FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
DEMO = REPO / "data" / "demo" / "sub-01" / "ses-01" / "anat"
Predictor = Callable[[np.ndarray], np.ndarray]


def case_inputs(case: str) -> tuple[Path, Path, SegmentParams]:
    """FLAIR, T1w and the segmentation settings of a benchmark case."""
    if case == "patient26":
        return P26 / P26_FLAIR, P26 / P26_T1, SegmentParams(skull_stripped=True)
    if case == "demo":
        return (DEMO / "sub-01_ses-01_FLAIR.nii.gz", DEMO / "sub-01_ses-01_T1w.nii.gz",
                SegmentParams())
    raise ValueError(f"case must be patient26 or demo, not {case!r}")


def case_network_input(case: str, multiple_of: int, patch: int) -> np.ndarray:
    """(2, X, Y, Z) float32 network input of the case, as ``probability_on_grid`` builds it."""
    flair_path, t1_path, params = case_inputs(case)
    flair, t1 = load_volume(flair_path, "FLAIR"), load_volume(t1_path, "T1w")
    grid, f_work, brain, _ = flair_on_working_grid(flair, params)
    t_work = resample_to_grid(t1.data, t1.affine, grid, order=1)
    box = crop_box(brain, margin=4)
    x_pad, _ = network_input(f_work[box], t_work[box], brain[box], multiple_of, patch)
    return x_pad


def pick_windows(x: np.ndarray, patch: int, n: int) -> np.ndarray:
    """(n, 2, p, p, p): ``n`` evenly spaced sliding-window positions (50 % overlap) of ``x``."""
    corners = window_corners(x.shape[1:], (patch,) * 3, 0.5)
    idx = np.unique(np.linspace(0, len(corners) - 1, min(n, len(corners))).round().astype(int))
    return np.stack([x[:, a:a + patch, b:b + patch, c:c + patch] for a, b, c in
                     (corners[i] for i in idx)]).astype(np.float32)


def torch_predictors(threads: int) -> dict[str, Predictor]:
    """The trained torch network (native and stable instance norm) with a sigmoid."""
    import copy

    import torch

    from training.seg.model import UNet3D, architecture_of, use_stable_instance_norm
    from training.seg.train import load_weights

    torch.set_num_threads(threads)
    weights = REPO / "models_onnx" / "lesion_seg" / "weights.npz"
    with np.load(weights, allow_pickle=False) as data:
        widths, norm = architecture_of({k: data[k].shape for k in data.files})
    net = UNet3D(2, widths, norm=norm)
    load_weights(net, weights)
    net.eval()
    stable = copy.deepcopy(net)
    use_stable_instance_norm(stable)
    stable.eval()

    def wrap(model: torch.nn.Module) -> Predictor:
        def predict(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return torch.sigmoid(model(torch.from_numpy(batch))).numpy()
        return predict

    return {"torch": wrap(net), "torch_stable_norm": wrap(stable)}


def time_predictors(predictors: dict[str, Predictor], windows: np.ndarray, repeats: int
                    ) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Per-window median ms of each predictor over ``repeats`` passes, and its outputs.

    Each pass runs every predictor on all windows in a block, in alternating order from pass
    to pass (A B C, C B A, ...), so no predictor always runs first or last. Blocks, not
    window-by-window interleaving: onnxruntime's and torch's worker threads spin for a while
    after each call and would steal the cores from the other backend's next call.
    """
    for predict in predictors.values():
        predict(windows[:1])  # warm-up: allocations, thread pool, graph caches
    names = list(predictors)
    per_pass: dict[str, list[list[float]]] = {k: [] for k in names}
    outs: dict[str, np.ndarray] = {}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            times, preds = [], []
            for w in windows:
                batch = np.ascontiguousarray(w[None])
                t0 = time.perf_counter()
                preds.append(predictors[name](batch))
                times.append((time.perf_counter() - t0) * 1000)
            per_pass[name].append(times)
            outs[name] = np.concatenate(preds).astype(np.float32)
            time.sleep(0.2)  # let the finished block's spinning threads go idle
    ms = {k: [float(v) for v in np.median(np.asarray(per_pass[k]), axis=0)] for k in names}
    return ms, outs


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms_per_window": round(float(np.median(ms)), 1),
            "total_ms": round(float(np.sum(ms)), 1)}


def compare(windows: np.ndarray, threads: int, repeats: int) -> dict[str, Any]:
    """onnxruntime vs both torch variants at ``threads`` intra-op threads."""
    ort_model = load_onnx_model(load_segmentation_card(), "cpu", threads=threads)
    predictors: dict[str, Predictor] = {"onnxruntime": ort_model.predict,
                                        **torch_predictors(threads)}
    ms, outs = time_predictors(predictors, windows, repeats)
    ref = outs["onnxruntime"]
    result: dict[str, Any] = {"threads": threads,
                              "onnxruntime": _summary(ms["onnxruntime"])}
    for name in ("torch", "torch_stable_norm"):
        result[name] = {**_summary(ms[name]),
                        "ratio_torch_over_ort": round(float(np.sum(ms[name]) /
                                                            np.sum(ms["onnxruntime"])), 2),
                        "max_abs_dp_vs_ort": float(np.abs(outs[name] - ref).max()),
                        "mask_dice_vs_ort": round(dice(outs[name] >= 0.5, ref >= 0.5), 6)}
    return result


def ort_settings(windows: np.ndarray, threads: int, repeats: int) -> dict[str, Any]:
    """onnxruntime session options on the same windows: optimisation level and spinning."""
    import onnxruntime as ort

    card = load_segmentation_card()
    levels = {"disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    predictors: dict[str, Predictor] = {}
    for spin in ("1", "0"):
        for name, level in levels.items():
            if spin == "0" and name != "all":
                continue
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.graph_optimization_level = level
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
            sess = ort.InferenceSession(str(card.onnx_path), opts,
                                        providers=["CPUExecutionProvider"])
            key = f"opt_{name}" + ("" if spin == "1" else "_no_spinning")

            def predict(batch: np.ndarray, s: Any = sess) -> np.ndarray:
                return np.asarray(s.run([card.output_name], {card.input_name: batch})[0])
            predictors[key] = predict
    ms, outs = time_predictors(predictors, windows, repeats)
    ref = outs["opt_all"]
    result: dict[str, Any] = {
        "threads": threads,
        **{k: {**_summary(v), "max_abs_dp_vs_all": float(np.abs(outs[k] - ref).max())}
           for k, v in ms.items()}}
    result["batching"] = batching(predictors["opt_all"], windows, repeats, ref)
    return result


def batching(predict: Predictor, windows: np.ndarray, repeats: int, ref: np.ndarray
             ) -> dict[str, Any]:
    """Total ms for all windows run one per call vs 2 and 4 per call (same session)."""
    out: dict[str, Any] = {}
    for size in (1, 2, 4):
        totals, preds = [], []
        for _ in range(repeats):
            preds = []
            t0 = time.perf_counter()
            for i in range(0, len(windows), size):
                preds.append(predict(np.ascontiguousarray(windows[i:i + size])))
            totals.append((time.perf_counter() - t0) * 1000)
        pred = np.concatenate(preds)
        out[f"batch_{size}"] = {"total_ms": round(float(np.median(totals)), 1),
                                "max_abs_dp_vs_batch_1": float(np.abs(pred - ref).max())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="patient26", choices=("patient26", "demo"))
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    ap.add_argument("--tune-threads", type=int, default=2,
                    help="threads for the onnxruntime settings part (0 skips it)")
    args = ap.parse_args()
    case = args.case
    if case == "patient26" and not (P26 / P26_FLAIR).exists():
        print(f"patient26 not found at {P26}; using the demo visit", file=sys.stderr)
        case = "demo"
    card = load_segmentation_card()
    patch = int(card.patch_size[0])
    x = case_network_input(case, card.multiple_of, patch)
    windows = pick_windows(x, patch, args.windows)
    runs = []
    for t in (int(s) for s in args.threads.split(",") if s):
        runs.append(compare(windows, t, args.repeats))
        print(json.dumps(runs[-1]), file=sys.stderr)
    settings = (ort_settings(windows, args.tune_threads, args.repeats)
                if args.tune_threads > 0 else None)
    import onnxruntime as ort
    import torch

    result = {
        "benchmark": "ort_vs_torch", "case": case, "network_input_shape": list(x.shape),
        "windows": int(windows.shape[0]), "window_shape": list(windows.shape[1:]),
        "repeats": args.repeats, "runs": runs, "ort_settings": settings,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
        "date_utc": now_utc(), "machine": machine(),
    }
    save_result("ort_vs_torch", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
