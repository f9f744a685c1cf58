"""Benchmark: the segmentation network's operating points (threshold, flip TTA) on two sets.

Usage: ``python bench/operating_points.py [--models-dir models_onnx] [--tta 0,1]
[--thresholds 0.05,0.1,0.2,0.3,0.4,0.5,0.6] [--grow 0.4,0.3,0.2,0.1] [--demo data/demo]
[--name operating_points] [--method network|baseline] [--overlap 0.5] [--zone-low 0.3,0.2]``.

With ``--method baseline`` the classical baseline (FLAIR z-score above grey matter, inside white
matter; ``ms_core.segmentation.segment.baseline_probability``) runs instead of the network, without
TTA. Its probability is sigmoid((z - BASELINE_Z) / 0.5), so a threshold t is the z cut
BASELINE_Z + 0.5 logit(t); the summary prints it as ``baseline_z``.

Does a different probability threshold or flip test-time augmentation (TTA) meet the real-data
targets of the segmentation issue (patient26 Dice >= 0.70 *and* lesion F1 >= 0.70) without
costing accuracy elsewhere? The FLAIR-only network (the report's settings: 64^3 windows, the
default sliding-window overlap unless ``--overlap`` is given, lesions >= 10 mm^3) runs once per
TTA setting on

- the **selection set**: the first visits of demo patients 7-12 (synthetic, known ground
  truth; never shown in ``docs/segmentation.md``'s tables), as ``python -m training.seg.selection``
  uses it;
- the **real validation set** (``training.seg.report.REAL_SCANS``): patient26 of open_ms_data
  (Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY) and MSLesSeg P18 and P39 (Guarnera et
  al., Scientific Data 2025, CC BY 4.0), skull-stripped FLAIR against the experts' masks; the
  summary gives their mean Dice and lesion F1, the lowest Dice and each predicted volume;
  skipped when ../shared is absent.

and each probability map is thresholded at every ``--thresholds`` value, and grown: lesions found
at 0.5 and outlined at each lower ``--grow`` value (hysteresis). For patient26 it also
prints how the consensus voxels split by FLAIR intensity (divided by the brain median) and what
share of each band the network finds at 0.5: where the missed lesion volume lies. For every case
it prints the lesions' **edge profile**: the median FLAIR excess over the surrounding tissue
(brain voxels 3-4 voxels outside the outline, mostly white matter) at 1-3 voxels inside and
outside the reference outline, as a share of the core's excess (1 = as bright as the core,
0 = as the surroundings), and the core / surroundings ratio. It
shows how sharp and how bright the reference lesions are, and where the outline was drawn.

With ``--zone-low``, each value t also gives **zone-specific thresholds**: the mask at the
threshold (0.5) plus every lesion found at the lower t whose location class
(``ms_core.lesions.location.classify_lesions``, template registered as ``segment`` does) is
juxtacortical, infratentorial, or either. These are the zones where the network misses most
(docs/segmentation.md, docs/longitudinal.md).

Prints JSON and saves ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, now_utc, repo_relative, save_result  # noqa: E402
from ms_core.foundation.domain import LesionMask  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume  # noqa: E402
from ms_core.imaging.preprocess import template_to_subject  # noqa: E402
from ms_core.lesions.components import label_components, threshold_probability  # noqa: E402
from ms_core.lesions.location import classify_lesions  # noqa: E402
from ms_core.segmentation.evaluate import evaluate_masks  # noqa: E402
from ms_core.segmentation.inference import load_onnx_model  # noqa: E402
from ms_core.segmentation.model_store import MODELS_DIR, load_segmentation_card  # noqa: E402
from ms_core.segmentation.segment import BASELINE_Z, SegmentParams, segment_volumes  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402
from training.seg.report import available_real_scans  # noqa: E402
from training.seg.selection import selection_patients, selection_visits  # noqa: E402

#: Zone sets of ``--zone-low``: lesions found at the lower threshold are added in these zones.
WEAK_ZONES = (("juxtacortical",), ("infratentorial",), ("juxtacortical", "infratentorial"))

#: FLAIR / brain-median bands for the patient26 intensity profile.
BANDS = (0.0, 1.1, 1.2, 1.3, 1.4, 1.5, np.inf)


@dataclasses.dataclass
class Case:
    name: str
    flair: Path
    truth: np.ndarray  # bool, on the FLAIR grid
    skull_stripped: bool
    brain: np.ndarray | None = None  # bool; None: the non-zero voxels (skull-stripped input)


def grown_labels(prob: np.ndarray, affine: np.ndarray, seed: float, grow: float,
                 min_lesion_mm3: float) -> np.ndarray:
    """Hysteresis: the 26-connected regions of ``prob >= grow`` that hold a voxel >= ``seed``.

    Lesions are found at ``seed`` and outlined at the lower ``grow`` (as lesion-growth
    algorithms such as LST's do), then lesions under ``min_lesion_mm3`` are dropped.
    """
    regions = threshold_probability(prob, affine=affine, threshold=grow)
    seeded = np.unique(regions[prob >= seed])
    return label_components(np.isin(regions, seeded[seeded > 0]), affine=affine,
                            min_lesion_mm3=min_lesion_mm3)


def zone_labels(prob: np.ndarray, affine: np.ndarray, threshold: float, low: float,
                zones: tuple[str, ...], to_mni: np.ndarray, min_lesion_mm3: float
                ) -> np.ndarray:
    """Zone-specific thresholds: ``prob >= threshold``, plus each lesion of ``prob >= low``
    whose location class is in ``zones``; lesions under ``min_lesion_mm3`` dropped."""
    low_labels = threshold_probability(prob, affine=affine, threshold=low,
                                       min_lesion_mm3=min_lesion_mm3)
    where = classify_lesions(low_labels, affine, to_mni)
    extra = [i for i, zone in where.items() if zone in zones]
    mask = (prob >= threshold) | np.isin(low_labels, extra)
    return label_components(mask, affine=affine, min_lesion_mm3=min_lesion_mm3)


def score(prob: np.ndarray, truth: np.ndarray, affine: np.ndarray, threshold: float,
          min_lesion_mm3: float, grow: float | None = None,
          labels: np.ndarray | None = None) -> dict[str, float]:
    """Dice and lesion-wise figures (>= 1 voxel overlap) of ``prob`` at ``threshold``
    (with ``grow``: lesions found at ``threshold``, outlined at ``grow``; with ``labels``:
    those lesions, made by the caller)."""
    if labels is None:
        labels = (grown_labels(prob, affine, threshold, grow, min_lesion_mm3)
                  if grow is not None
                  else threshold_probability(prob, affine=affine, threshold=threshold,
                                             min_lesion_mm3=min_lesion_mm3))
    m = evaluate_masks(LesionMask((labels > 0).astype(np.int32), affine),
                       LesionMask(truth.astype(np.int32), affine))
    lw = m["lesion_any_voxel"]
    return {"dice": round(float(m["dice"]), 4), "f1": round(float(lw["f1"] or 0.0), 4),
            "tpr": round(float(lw["tpr"] or 0.0), 4), "fpr": round(float(lw["fpr"] or 0.0), 4),
            "pred_ml": round(float(m["pred_volume_ml"]), 3)}


def intensity_profile(flair: np.ndarray, truth: np.ndarray, prob: np.ndarray,
                      threshold: float) -> list[dict[str, Any]]:
    """Consensus voxels per FLAIR / brain-median band: count and share found at ``threshold``."""
    brain = flair > 0
    ratio = flair / float(np.median(flair[brain]))
    rows = []
    for lo, hi in itertools.pairwise(BANDS):
        band = truth & (ratio >= lo) & (ratio < hi)
        n = int(band.sum())
        rows.append({"band": f"{lo:.1f}-{hi:.1f}" if np.isfinite(hi) else f">={lo:.1f}",
                     "truth_voxels": n,
                     "found": round(float(np.mean(prob[band] >= threshold)), 3) if n else None})
    return rows


def edge_profile(flair: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> dict[str, Any]:
    """Median FLAIR excess at signed distances from the outline, as a share of the core's.

    Distances are Euclidean, rounded to whole voxels: +1 the outline's own voxels, -1 the first
    voxels outside it. The surroundings are brain voxels 3-4 voxels outside; the core, lesion
    voxels at least 2 voxels deep.
    """
    din = ndi.distance_transform_edt(truth)
    dout = ndi.distance_transform_edt(~truth)
    ring = brain & ~truth & (dout > 2) & (dout <= 4)
    core_vox = truth & (din >= 2)
    if not ring.any() or not core_vox.any():
        return {"core_over_surroundings": None, "profile": None}
    base = float(np.median(flair[ring]))
    core = float(np.median(flair[core_vox]))
    prof = {}
    for k in (-3, -2, -1, 1, 2, 3):
        sel = (np.round(din) == k) & truth if k > 0 else (np.round(dout) == -k) & ~truth & brain
        prof[str(k)] = (round((float(np.median(flair[sel])) - base) / (core - base), 3)
                        if sel.any() and core > base else None)
    return {"core_over_surroundings": round(core / base, 3), "profile": prof}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--tta", default="0,1", help="TTA settings to run: 0 (off), 1 (on)")
    ap.add_argument("--thresholds", default="0.05,0.1,0.2,0.3,0.4,0.5,0.6")
    ap.add_argument("--grow", default="0.4,0.3,0.2,0.1",
                    help="outline thresholds for seeded growth from lesions found at 0.5")
    ap.add_argument("--name", default="operating_points", help="results file name")
    ap.add_argument("--real-only", action="store_true",
                    help="the real validation set only, without the demo selection set")
    ap.add_argument("--method", choices=("network", "baseline"), default="network")
    ap.add_argument("--overlap", type=float, default=None,
                    help="sliding-window overlap (default: the segmentation default)")
    ap.add_argument("--zone-low", default="",
                    help="lower thresholds for juxtacortical / infratentorial lesions")
    args = ap.parse_args()
    if args.method == "baseline" and (args.tta != "0" or args.grow):
        ap.error("--method baseline takes --tta 0 --grow ''")
    ttas = [bool(int(v)) for v in args.tta.split(",")]
    thresholds = [float(v) for v in args.thresholds.split(",")]
    grows = [float(v) for v in args.grow.split(",") if v]
    zone_lows = [float(v) for v in args.zone_low.split(",") if v]
    if zone_lows and args.method == "baseline":
        ap.error("--zone-low is for the network")
    card = load_segmentation_card(args.models_dir) if args.method == "network" else None
    model = load_onnx_model(card, "cpu") if card is not None else None
    base = SegmentParams(method=args.method)
    if args.overlap is not None:
        base = dataclasses.replace(base, overlap=args.overlap)

    cases = []
    chosen = [] if args.real_only else selection_visits(
        load_study(args.demo), selection_patients(list(load_study(args.demo).visits), 6, 6))
    for pid, sid in chosen:
        truth = load_lesion_mask(truth_dir(args.demo, pid, sid) / "lesion_labels.nii.gz")
        brain = load_lesion_mask(truth_dir(args.demo, pid, sid) / "brain_mask.nii.gz")
        cases.append(Case(f"{pid}/{sid}", image_path(args.demo, pid, sid, "FLAIR"),
                          truth.labels > 0, False, brain.labels > 0))
    real = available_real_scans()
    for scan in real:
        cases.append(Case(scan.name, scan.flair, load_lesion_mask(scan.mask).labels > 0, True))
    if not real:
        print("no real scan found (../shared absent): selection set only", file=sys.stderr)
    real_names = {scan.name for scan in real}

    table: dict[str, dict[str, Any]] = {}
    threshold_of: dict[str, float] = {}  # setting -> lesion threshold
    profile = None
    edges = {}
    for case in cases:
        flair = load_volume(case.flair, "FLAIR")
        edges[case.name] = edge_profile(flair.data, case.truth,
                                        case.brain if case.brain is not None else flair.data > 0)
        for tta in ttas:
            params = dataclasses.replace(base, tta=tta, skull_stripped=case.skull_stripped)
            res = segment_volumes(flair, None, params, model)
            for th in thresholds:
                key = f"tta={int(tta)} threshold={th}"
                threshold_of[key] = th
                table.setdefault(key, {})[case.name] = score(res.prob, case.truth, res.affine,
                                                             th, base.min_lesion_mm3)
            for grow in grows:
                key = f"tta={int(tta)} threshold={base.threshold} grow={grow}"
                threshold_of[key] = base.threshold
                table.setdefault(key, {})[case.name] = score(
                    res.prob, case.truth, res.affine, base.threshold, base.min_lesion_mm3, grow)
            if zone_lows:  # the template registration segment_volumes made (remembered)
                to_mni = template_to_subject(flair, skull_stripped=case.skull_stripped)
            for low, zones in itertools.product(zone_lows, WEAK_ZONES):
                key = f"tta={int(tta)} threshold={base.threshold} zone_low={low} " \
                      f"zones={'+'.join(zones)}"
                threshold_of[key] = base.threshold
                labels = zone_labels(res.prob, res.affine, base.threshold, low, zones, to_mni,
                                     base.min_lesion_mm3)
                table.setdefault(key, {})[case.name] = score(
                    res.prob, case.truth, res.affine, base.threshold, base.min_lesion_mm3,
                    labels=labels)
            if case.name == "patient26" and not tta:
                profile = intensity_profile(flair.data, case.truth, res.prob, base.threshold)
            print(case.name, "tta" if tta else "no tta", "done", file=sys.stderr, flush=True)

    summary = []
    for key, rows in table.items():
        sel = [r for name, r in rows.items() if name not in real_names]
        p26 = rows.get("patient26")
        reals = [r for name, r in rows.items() if name in real_names]
        th = threshold_of[key]
        summary.append({
            "setting": key,
            **({"baseline_z": round(BASELINE_Z + 0.5 * float(np.log(th / (1 - th))), 3)}
               if args.method == "baseline" else {}),
            "selection_mean_dice": (round(float(np.mean([r["dice"] for r in sel])), 4)
                                    if sel else None),
            "selection_mean_f1": (round(float(np.mean([r["f1"] for r in sel])), 4)
                                  if sel else None),
            **({"real_mean_dice": round(float(np.mean([r["dice"] for r in reals])), 4),
                "real_mean_f1": round(float(np.mean([r["f1"] for r in reals])), 4),
                "real_min_dice": round(min(r["dice"] for r in reals), 4),
                "real_pred_ml": {n: r["pred_ml"] for n, r in rows.items() if n in real_names}}
               if reals else {}),
            "patient26": p26,
            "patient26_meets_targets": (None if p26 is None
                                        else p26["dice"] >= 0.70 and p26["f1"] >= 0.70),
        })
    save_result(args.name, {
        "benchmark": "operating_points", "time_utc": now_utc(), "machine": machine(),
        "model": ({"version": card.version, "sha256": card.sha256,
                   "models_dir": repo_relative(args.models_dir)} if card is not None
                  else {"method": "baseline", "baseline_z": BASELINE_Z}),
        "settings": {"overlap": base.overlap, "min_lesion_mm3": base.min_lesion_mm3,
                     "grow": "lesions found at the threshold, outlined at grow (hysteresis)",
                     "input": "FLAIR only", "zone_low": zone_lows},
        "summary": summary, "per_case": table, "patient26_intensity_profile": profile,
        "edge_profile": edges,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
