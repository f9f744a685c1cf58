"""Evaluation report of the lesion segmentation: writes docs/segmentation.md.

Usage (after export)::

    python -m training.seg.report [--demo data/demo] [--visits 12]

Evaluates the network (FLAIR only, and FLAIR + T1w) and the classical baseline on

- **patient26** of open_ms_data (real FLAIR/T1 in MNI space with the consensus mask; Lesjak et al.
  2018, Neuroinformatics 16:51-63, CC-BY), never used in training, skull-stripped input;
- a **synthetic validation set**: the first visit of each demo-study patient (a different
  generator from the training data: thick-slice 2D and 3D FLAIR, skull on, per-visit pose),
  against its stored ground truth.

Prints JSON, saves ``bench/results/segmentation_eval.json`` and writes the markdown report and
the patient26 figures into the model card's ``evaluation`` field.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ms_core.domain import LesionMask
from ms_core.evaluate import evaluate_masks
from ms_core.inference import OnnxModel, load_onnx_model
from ms_core.io import atomic_write_text, load_lesion_mask, load_volume, read_json, write_json
from ms_core.models import MODELS_DIR, ModelCard, load_model_card
from ms_core.segment import SegmentParams, segment_volumes
from ms_core.study import image_path, load_study, truth_dir

REPO = Path(__file__).resolve().parents[2]
P26 = REPO.parent / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI" / "patient26"
P26_FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
P26_MASK = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


def _run(flair: Path, t1: Path | None, truth: LesionMask, params: SegmentParams,
         model: OnnxModel | None, *, keep_mask: bool = False) -> dict[str, Any]:
    """Segment ``flair`` (and ``t1``) and score it against ``truth``; with ``keep_mask`` the
    predicted mask and the probability map come back too (``"pred_mask"``, bool, and
    ``"prob"``, on the truth grid)."""
    t0 = time.perf_counter()
    f = load_volume(flair, "FLAIR")
    t = load_volume(t1, "T1w") if t1 is not None else None
    res = segment_volumes(f, t, params, model)
    seconds = time.perf_counter() - t0
    pred = LesionMask((res.labels > 0).astype(np.int32), res.affine)
    if pred.labels.shape != truth.labels.shape:
        raise ValueError(f"{flair}: truth grid differs")
    m = evaluate_masks(pred, LesionMask(truth.labels, res.affine))
    return {"dice": m["dice"], "f1_any": m["lesion_any_voxel"]["f1"],
            "tpr_any": m["lesion_any_voxel"]["tpr"], "fpr_any": m["lesion_any_voxel"]["fpr"],
            "f1_10pct": m["lesion_10pct"]["f1"],
            "f1_any_min_size": m["lesion_any_voxel_min_size"]["f1"],
            "lesion_by_size": m["lesion_by_size"], "pred_ml": m["pred_volume_ml"],
            "truth_ml": m["truth_volume_ml"], "abs_volume_diff_ml": m["abs_volume_diff_ml"],
            "seconds": round(seconds, 1), "stage_seconds": res.seconds,
            **({"pred_mask": pred.labels > 0, "prob": res.prob} if keep_mask else {})}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


METHOD_LABELS = {"network_flair": "network, FLAIR", "network_flair_t1": "network, FLAIR + T1w",
                 "baseline": "baseline"}


def _table(headers: list[str], cells: dict[str, list[str]]) -> list[str]:
    """Markdown rows: one per method (in METHOD_LABELS order) with the given cells."""
    out = ["| method | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for key, label in METHOD_LABELS.items():
        out.append(f"| {label} | " + " | ".join(cells[key]) + " |")
    return out


def _verdict(p: dict[str, Any]) -> str:
    """One bullet comparing the patient26 results with the issue's targets."""
    net, base = p["network_flair"], p["baseline"]
    met = net["dice"] >= 0.70 and (net["f1_any"] or 0) >= 0.70
    beats = net["dice"] > base["dice"] and (net["f1_any"] or 0) > (base["f1_any"] or 0)
    return (f"- Targets of the issue: patient26 Dice ≥ 0.70 and lesion F1 ≥ 0.70, network better "
            f"than the baseline. Network (FLAIR): Dice {net['dice']:.3f}, F1 "
            f"{_fmt(net['f1_any'])}; baseline: Dice {base['dice']:.3f}, F1 "
            f"{_fmt(base['f1_any'])}. Real-data targets "
            f"{'met' if met else '**not met**'}; the network "
            f"{'beats' if beats else '**does not beat**'} the baseline on both Dice and F1.")


def _evaluate(card: ModelCard, demo_root: Path, visits: int) -> dict[str, Any]:
    """Run every method on patient26 and the demo visits; saves and returns the results."""
    model = load_onnx_model(card, "cpu")
    net = SegmentParams(method="network")
    net_ss = SegmentParams(method="network", skull_stripped=True)
    base = SegmentParams(method="baseline")
    base_ss = SegmentParams(method="baseline", skull_stripped=True)
    results: dict[str, Any] = {"model_sha256": card.sha256, "provider": model.provider}

    truth26 = load_lesion_mask(P26 / P26_MASK)
    results["patient26"] = {
        "network_flair": _run(P26 / P26_FLAIR, None, truth26, net_ss, model),
        "network_flair_t1": _run(P26 / P26_FLAIR, P26 / P26_T1, truth26, net_ss, model),
        "baseline": _run(P26 / P26_FLAIR, None, truth26, base_ss, None),
    }
    print(json.dumps(results["patient26"], indent=1), flush=True)

    study = load_study(demo_root)
    demo: dict[str, list[dict[str, Any]]] = {"network_flair_t1": [], "network_flair": [],
                                             "baseline": []}
    for pid in list(study.visits)[: visits]:
        sid = study.visits[pid][0].session_id
        truth = load_lesion_mask(truth_dir(demo_root, pid, sid) / "lesion_labels.nii.gz")
        flair = image_path(demo_root, pid, sid, "FLAIR")
        t1 = image_path(demo_root, pid, sid, "T1w")
        demo["network_flair_t1"].append(_run(flair, t1, truth, net, model))
        demo["network_flair"].append(_run(flair, None, truth, net, model))
        demo["baseline"].append(_run(flair, None, truth, base, None))
        print(pid, {k: round(v[-1]["dice"], 3) for k, v in demo.items()}, flush=True)
    summary = {k: {m: float(np.mean([r[m] for r in rows if r[m] is not None]))
                   for m in ("dice", "f1_any", "f1_10pct", "abs_volume_diff_ml", "seconds")}
               for k, rows in demo.items()}
    results["demo_first_visits"] = {"n": len(demo["baseline"]), "mean": summary, "cases": demo}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    results["machine"] = {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                          "commit": commit}
    write_json(REPO / "bench" / "results" / "segmentation_eval.json", results)

    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--visits", type=int, default=12, help="demo patients to evaluate")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the report from bench/results/segmentation_eval.json")
    args = ap.parse_args(argv)
    card = load_model_card("lesion_seg")
    if args.render_only:
        results = read_json(REPO / "bench" / "results" / "segmentation_eval.json")
        if results.get("model_sha256") != card.sha256:
            print("stored results are for another model: run without --render-only",
                  file=sys.stderr)
            return 1
    else:
        results = _evaluate(card, args.demo, args.visits)
    summary = results["demo_first_visits"]["mean"]
    demo = results["demo_first_visits"]["cases"]
    commit = results["machine"]["commit"]
    p = results["patient26"]
    rows = _table(["Dice", "lesion F1 (≥1 voxel)", "lesion F1 (≥10 %)", "TPR", "FPR",
                   "predicted / true ml", "seconds"],
                  {k: [_fmt(r["dice"]), _fmt(r["f1_any"]), _fmt(r["f1_10pct"]),
                       _fmt(r["tpr_any"]), _fmt(r["fpr_any"]),
                       f"{r['pred_ml']:.2f} / {r['truth_ml']:.2f}", str(r["seconds"])]
                   for k, r in p.items()})
    demo_rows = _table(["mean Dice", "mean lesion F1 (≥1 voxel)", "mean F1 (≥10 %)",
                        "mean abs volume diff (ml)", "mean seconds"],
                       {k: [f"{s['dice']:.3f}", f"{s['f1_any']:.3f}", f"{s['f1_10pct']:.3f}",
                            f"{s['abs_volume_diff_ml']:.2f}", f"{s['seconds']:.1f}"]
                        for k, s in summary.items()})
    c = card.raw
    text = f"""# Lesion segmentation: evaluation

Produced by `python -m training.seg.report --visits {len(demo['baseline'])}` (commit
`{commit}`) on {results['machine']['cpus']}
CPU cores ({results['machine']['platform']}), onnxruntime provider `{results['provider']}`.
Model `lesion_seg` version {card.version}, sha256 `{card.sha256[:16]}…`; training command
`{c['training'].get('command')}`; best synthetic validation Dice during training
{_fmt(c['training'].get('best_synthetic_val_dice'))}.

Settings (the defaults of `segment` and the app since 2026-12-03): threshold 0.5, minimum lesion
10 mm³, sliding window 64³ with 25 % overlap and flip test-time augmentation (each window also
run flipped in x, y and z, the four averaged); until then 50 % overlap without flips, the
settings of every candidate figure in the Notes dated before 2026-12-03. Lesion F1 counts a
lesion found when prediction and truth overlap by at least one voxel (or by ≥ 10 % of the
lesion's voxels); FPR is the share of predicted lesions that overlap no true lesion. Seconds are
wall time of the whole pipeline (load, preprocessing, inference, post-processing), single run.

## Real data: patient26 (open_ms_data, never trained on)

FLAIR and T1w as distributed (N4-corrected, skull-stripped, registered to MNI space), run with
`--skull-stripped`; reference: the multi-rater consensus mask (Lesjak et al. 2018).

{chr(10).join(rows)}

## Synthetic validation: first visit of each demo patient

{len(demo['baseline'])} visits from `data/demo` (1.5 T 2D FLAIR 0.9 × 0.9 × 3 mm and 3 T 3D FLAIR
1 mm; skull on, so brain extraction runs), against the stored ground truth. The demo generator
is not the training generator (different lesion shapes, contrasts and artefacts); its FLAIR
lesions are as bright and as graded as patient26's (docs/demo_generative_model.md). But it is
synthetic: read these numbers as a consistency check, not as clinical accuracy.

{chr(10).join(demo_rows)}

## Notes

{_verdict(p)}
- **The demo's lesions were made realistic on 2026-12-02.** Before, its FLAIR lesions were
  uniform at 2.0 (1.5 T) and 2.3 (3 T) times white matter with a 1 mm edge, and its 3 T grey
  matter 1.43 times white matter. patient26's lesions are 1.33 times white matter (median;
  per lesion 1.19–1.44) with a graded edge (`python bench/flair_appearance.py`,
  docs/demo_generative_model.md). Now the demo's lesion medians are 1.24–1.50, and
  `bench/operating_points.py`'s edge profile matches too. Demo cores are 1.42–1.67 times their
  surroundings, outline voxels 0.67–0.89 and first voxels outside 0.12–0.24 of the core's excess;
  patient26 gives 1.40, 0.73 and 0.18.
  Every demo and selection-set number in the bullets on `seg_v5` to `seg_v13` below was
  measured on the old demo. That selection set rewarded networks that outline bright, sharp
  lesions tightly, which patient26 does not: the two kept disagreeing. On the realistic
  demo they agree. The shipped-before model v3.1.0 (`seg_v4`) falls from selection-set mean Dice
  0.893 to 0.779, finding 65 % of the true volume (patient26: 53 %). Since then the
  selection set is the realistic demo. A candidate ships if it loses no more than 0.01
  selection-set Dice against the shipped model and is not worse on patient26 (Dice and lesion
  F1, FLAIR only). While the two sets disagreed, a candidate also had to meet both patient26
  targets; that condition is dropped now that they agree. The baseline's threshold was
  tuned on the old bright lesions, so its demo Dice also fell (6 report visits: 0.876 → 0.617).
  Tuned again on the realistic selection set, k = 2 is still its best cut: mean Dice 0.145,
  0.399, 0.575, **0.664**, 0.662 and 0.520 at k = 0.5, 1, 1.5, 2, 2.5 and 3 (patient26,
  printed alongside: 0.149, 0.284, 0.473, 0.473, 0.326, 0.004; `python
  bench/operating_points.py --method baseline --tta 0 --grow "" --thresholds
  0.0474,0.1192,0.2689,0.5,0.7311,0.8808 --name operating_points_baseline`, thresholds on
  the baseline's probability that are those z cuts). Its weakest selection visit is sub-10
  (3 T, 0.34 ml of lesions): Dice 0.259, 7 of 8 predicted lesions false.
- Model history. v1.0.0 (`seg_v1`, 2000 steps, seed 1): patient26 FLAIR Dice 0.505, lesion F1
  0.300. Its patient26 errors were mostly small false-positive components, about half within
  3 mm of the brain-mask edge. v2.0.0 (`seg_v2`) adds **hard negatives** to the synthetic
  training data (bright rim at the brain-mask edge, vessel-like dots, periventricular caps) and
  centres half of the patches on a lesion instead of 70 % (`--hard-negatives --lesion-fraction
  0.5`).
  That design was chosen *after* looking at patient26's errors, so patient26 is no longer a fully
  independent test for v2: read its improvement with that in mind. On the synthetic demo
  visits v1 scored mean Dice 0.905 and lesion F1 0.991, so v2 trades a little synthetic accuracy
  for real-data accuracy. v2 scored patient26 FLAIR Dice 0.556, lesion F1 0.394; demo mean
  Dice 0.893, lesion F1 0.931.
- v3.0.0 (`seg_v3`) replaces instance normalisation by **batch normalisation** (`--norm batch`,
  statistics re-estimated on 96 fresh training patches with the best weights). With instance
  norm every window was normalised by its own statistics, so a voxel's probability moved by up
  to 0.94 when the sliding windows shifted (`bench/overlap_tta.py`: the 50 % and 25 % overlap
  masks of patient26 agreed only at Dice 0.74, and 96³ windows dropped its Dice to 0.35). With
  batch norm the network is one fixed convolution at inference (`tests/test_training.py`);
  only the zero padding at the window edges still depends on the placement. The same
  benchmark with v3: the two overlaps' masks agree at Dice 0.92, and 96³ windows score 0.571
  against 0.575 with 64³ (FLAIR + T1w). v3 also widens the synthetic FLAIR lesion/white-matter
  contrast from 1.25–2.6 to 1.15–2.6 (`--lesion-contrast 1.15,2.6`), so faint lesions are seen in
  training; that range was set from first principles, not fitted to patient26. The
  window-placement problem itself was found on patient26 runs, so the same caveat applies.
  v3.0.0 scored patient26 FLAIR Dice 0.557, lesion F1 0.634; demo mean Dice 0.912, lesion F1
  0.983.
- v3.1.0 (`seg_v4`) **fine-tunes** the v3.0.0 weights for 1500 steps (`--init
  training/runs/seg_v3/weights_best.npz --noise mixed --lr 1e-3 --seed 4`, other flags as v3)
  on patches with **realistic image noise**: 2–20 % of the white-matter intensity instead of
  0.5–11 %, spatially correlated in 60 % of patches (Gaussian kernel of 0.4–1.2 voxels, as
  after k-space filtering and resampling onto the 1 mm grid), plus fine tissue texture
  (vessels, perivascular spaces). Why: smoothing patient26's FLAIR (Gaussian, σ 0.8 mm) before
  v3.0.0 raised its Dice from 0.557 to 0.661 while adding false positives, so v3 was thrown by
  noise; patient26's high-pass noise (0.09–0.10 of white matter, neighbour correlation 0.55)
  was above the 90th percentile of v3's training patches (0.07). The new range has it near
  the middle (10th–90th percentile 0.04–0.13). This diagnosis, too, was made on patient26.
  The run was launched from commit `f708cec` plus the uncommitted noise model, committed
  unchanged as `544f647`; the white-noise patches of earlier runs are bit-identical.
- Tried and not shipped: `seg_v5`, a further 1000 steps from the v3.1.0 weights with a
  recall-weighted **Tversky loss** (`--tversky-beta 0.7`, Salehi et al. 2017) against the
  remaining under-segmentation. Synthetic validation Dice rose (0.693 vs 0.647), but on the
  selection set, first visits of demo patients 7–12 (never in this report's tables;
  `python -m training.seg.selection models_onnx CANDIDATE_DIR` prints it), mean Dice
  was 0.888 against 0.893 for `seg_v4` (v3.0.0: 0.870), and patient26 FLAIR Dice fell to 0.588
  (lesion F1 unchanged, 0.690). The shipped model was chosen on that demo selection set;
  patient26 pointed the same way.
- Tried and not shipped: `seg_v6`, 1500 steps from the v3.1.0 weights with **varied lesion
  appearance** (`--lesion-model varied --winsorise 0.5 --seed 6`, other flags as `seg_v4`): a
  FLAIR contrast per lesion skewed towards faint ones, each lesion fainter at its border than in
  its core (patient26's consensus lesions: border voxels 1.34, core 1.47 times white matter),
  and half of the FLAIR patches clipped at 1.3–2.0 times white matter as winsorising pipelines
  leave them. On the demo selection set it over-segmented (mean Dice 0.826 against 0.893; sub-10
  0.638 with 0.61 ml predicted for 0.34 ml true), and patient26 FLAIR fell to Dice 0.624, lesion
  F1 0.669 (4.36 ml predicted). Its last, uncalibrated weights reached patient26 Dice 0.710 but
  lesion F1 0.589 (40 % false-positive lesions) and demo mean Dice 0.738. So patient26's
  under-segmentation is not explained by lesion contrast alone. `seg_v7` isolated the lesion
  model (800 steps from v3.1.0, `--lesion-model varied` without `--winsorise`, `--seed 7`):
  selection-set mean Dice 0.713 (sub-10 0.182), patient26 FLAIR Dice 0.657, lesion F1 0.676,
  18.8 % false-positive lesions; so the over-segmentation comes from the varied lesions, not the
  clipping. Both options stay in `training/seg/synth_data.py`, off by default (earlier patches
  bit-identical).
- Tried and not shipped: `seg_v8`, 1200 steps from the v3.1.0 weights with `--lesion-model
  mixed` (each patch uniform or varied, even odds) and `--winsorise 0.5 --seed 8`, other flags
  as `seg_v4`, to keep the demo's behaviour while learning faint lesions. Selection-set mean
  Dice 0.875 (against 0.893), patient26 FLAIR Dice 0.632, lesion F1 0.593 (8 of 19 lesions
  found, none false). Worse on both sets.
- Tried and not shipped: `seg_v9`, 1500 steps from the v3.1.0 weights with the per-lesion
  **blob loss** added (`--blob-weight 1.0 --seed 9`, other flags as `seg_v4`; Kofler et al.,
  IPMI 2023): every lesion of a batch gets its own Dice term, so a missed 5-voxel lesion costs
  as much as a missed 2 ml one, where the whole-batch Dice barely sees it. Aimed at the small
  missed lesions. Selection-set mean Dice 0.881 (against 0.893), patient26 FLAIR Dice 0.529,
  lesion F1 0.625 (9 of 19 found, one false; 3.10 ml predicted). Worse on both sets. (Run
  from commit `47f2d74` plus the uncommitted option, committed unchanged as `82ab54d`.)
- Tried and not shipped: `seg_v10`, 1200 steps from the v3.1.0 weights with fainter uniform
  lesions (`--lesion-contrast 1.15,1.9 --seed 10`, other flags as `seg_v4`): the lesion-model
  runs `seg_v6`/`seg_v7` changed contrast and edge together; this one changes only the contrast.
  patient26 FLAIR Dice 0.685, lesion F1 **0.712** (11 of 19 found, one false; 5.49 ml
  predicted): the first network to pass the F1 target, and the best Dice at 0.5. But the
  selection set fell to mean Dice 0.730: sub-10 (3 T, 0.34 ml of lesions) got 3.21 ml
  predicted, Dice 0.163. Its false-positive voxels are not at the brain edge (7 % within
  3 voxels of it) and lie at 1.16–1.35 times the brain median (10th–90th percentile), most
  likely the demo's 3 T grey matter (1.43 times white matter). So a network that sees faint
  lesions often finds patient26's, and takes bright grey matter for lesion.
- `seg_v11`, as `seg_v10` with `--lesion-gm-floor 1.05 --seed 11`: no
  synthetic lesion fainter than 1.05 times its patch's grey matter. Why: a closer look at
  `seg_v10`'s largest false positive on sub-10 (1.9 ml) shows cortex cut along its surface, a
  thick sheet of grey matter with dots of sulcal CSF, at grey-matter brightness. With lesions at
  1.15–1.9 and grey matter at 1.02–1.45 times white matter, 14 % of `seg_v10`'s patches drew
  lesions darker than their cortex, which real FLAIR does not show (patient26: grey matter 1.14,
  lesions 1.2–1.6 times white matter). patient26 FLAIR Dice **0.712**, lesion F1 **0.712**
  (11 of 19 found, one false; 6.26 ml predicted for 8.23 ml): both real-data targets met, the
  first network to do so. sub-10 recovered (Dice 0.163 → 0.606; 0.64 ml for 0.34 ml), but the
  selection set's mean Dice is 0.820 against 0.893: the 3 mm 1.5 T visits are over-outlined
  (sub-07: 5.93 ml for 4.36 ml, Dice 0.838 against `seg_v4`'s 0.897; sub-11: 5.85 ml for
  4.20 ml, 0.828 against 0.894), as are sub-09's small lesions (0.72 ml for 0.46 ml). The 1 mm
  3 T visits with larger lesions hold (sub-08 0.942, sub-12 0.942 against 0.950, 0.946). The
  demo's lesions are 2.0–2.3 times white matter, brighter than anything this run trained on.
  Its patient26 result holds across thresholds (0.3: Dice 0.720, F1 0.672; 0.6: 0.709 / 0.712;
  0.7: 0.701 / 0.712; 0.8: 0.689 / 0.712), and a higher threshold wins back part of the
  selection set (mean Dice 0.845 at 0.6, 0.863 at 0.7, 0.871 at 0.8; sub-07 0.883 and sub-11
  0.886 at 0.7), but sub-10 stays low (0.676 at 0.7 against 0.817) and no threshold comes within
  0.01 of `seg_v4`'s 0.893 while meeting both patient26 targets
  (`python bench/operating_points.py --models-dir CANDIDATE_DIR --tta 0 --thresholds
  0.5,0.6,0.7,0.8 --grow "" --name operating_points_seg_v11`,
  `bench/results/operating_points_seg_v11.json`).
- Tried and not shipped: `seg_v12`, as `seg_v11` with the wide contrast range back and skewed
  to faint lesions (`--lesion-contrast 1.15,2.6 --contrast-power 2 --seed 12`: contrast drawn as
  1.15 + 1.45 u², 72 % of patches below 1.9), to keep bright lesions in training. Selection-set
  mean Dice 0.866 (sub-07 0.874 with 5.28 ml for 4.36 ml; sub-10 0.825), patient26 FLAIR Dice
  0.696, lesion F1 0.647 (11 of 19 found, four false). Between `seg_v4` and `seg_v11` on the
  selection set, below both targets on patient26.
- Tried and not shipped: `seg_v13`, 600 further steps from `seg_v11`'s weights at half the
  learning rate with a few bright lesions (`--lr 5e-4 --lesion-contrast 1.15,2.6
  --contrast-power 3 --lesion-gm-floor 1.05 --seed 13`, 80 % of patches below 1.9). Worse than
  `seg_v11` on both sets: selection-set mean Dice 0.787 (sub-07 6.23 ml for 4.36 ml, sub-10
  0.504), patient26 FLAIR Dice 0.686, lesion F1 0.691.
- **v3.2.0 (`seg_v11`, rerun) is the first model chosen on the realistic demo.** The
  `seg_v11` command above, run again on 2026-12-02 from v3.1.0's weights (shipped as
  `models_onnx/lesion_seg/weights.npz`, sha256 `a827051e…`) on another machine of the same
  kind, gave different weights: float sums on the CPU are not bit-identical across machines.
  Candidates on the realistic selection set (`python -m training.seg.selection
  models_onnx CANDIDATE_DIR`), FLAIR only, threshold 0.5:

  | model | selection-set mean Dice | patient26 Dice | patient26 lesion F1 |
  |---|---|---|---|
  | v3.1.0 (`seg_v4`) | 0.779 | 0.647 | 0.690 |
  | `seg_v11` rerun, shipped as v3.2.0 | **0.791** | 0.701 | 0.691 |
  | `seg_v14`: +600 steps, `--lesion-model mixed --lr 5e-4 --seed 14` | 0.771 | 0.719 | 0.537 |
  | `seg_v15`: the `seg_v11` command with `--seed 15` | 0.783 | 0.640 | 0.654 |

  v3.2.0 has the best selection-set Dice and the rule above holds. It outlines the demo's
  lesions at their true size: sub-07 4.37 ml for 4.36 ml, where v3.1.0 found 2.85 ml. On
  patient26 it is better than v3.1.0: Dice 0.701 against 0.647, 6.21 ml against 4.34 ml of
  8.23 ml. Its lesion F1 of 0.691 is still below the 0.70 target: 11 of 19 lesions found, two
  false. The first `seg_v11` run reached F1 0.712, but its weights were lost with that machine.
  Across three runs of the recipe patient26 Dice spans 0.640–0.712, so the target sits inside
  the seed-to-seed spread of one real scan. `seg_v14`'s varied lesions
  raised patient26's Dice, but half of its predicted lesions there were false.
  **With T1w as the second channel** v3.2.0 does worse on patient26's lesion count. Its Dice is
  0.711 and its volume 7.65 ml, but 63 % of its predicted lesions are false: lesion F1 0.432,
  against 0.596 for v3.1.0 with T1w. On the demo T1w helps a little (0.811 against 0.797).
  Real data decides: since v3.2.0 the app and `batch` segment a study visit
  from its FLAIR alone (`ms_core/segment.py::_visit_inputs`). `segment --t1` still uses the T1w
  channel when asked. The shipping rule is judged on FLAIR only.
  Commands: `python -m training.seg.train --out training/runs/seg_v14 --steps 600 --lr 5e-4
  --seed 14 --hard-negatives --lesion-fraction 0.5 --norm batch --lesion-contrast 1.15,1.9
  --noise mixed --lesion-gm-floor 1.05 --lesion-model mixed --init
  training/runs/seg_v11/weights_best.npz` (15 min) and the `seg_v11` command with `--out
  training/runs/seg_v15 --seed 15` (25 min). At every threshold from 0.5 to 0.7 the `seg_v11`
  rerun keeps the best selection-set Dice: 0.791, 0.799, 0.798
  (`python bench/operating_points.py --models-dir CANDIDATE_DIR --tta 0 --thresholds
  0.5,0.6,0.7 --grow ""`; for v3.2.0 in `bench/results/operating_points_3.2.0.json`).
- Tried and not shipped (2026-12-02, fifth session): combining the recipe's two runs,
  `seg_v11` (v3.2.0) and `seg_v15`, both fine-tuned from v3.1.0. A **weight average** ("model
  soup", Wortsman et al., ICML 2022: one network's cost) with its batch-norm statistics
  re-estimated on 96 synthetic patches (`python -m training.seg.soup --out
  training/runs/soup_a training/runs/seg_v11/weights_best.npz
  training/runs/seg_v15/weights_best.npz`, 1 min): selection-set mean Dice 0.782, patient26
  Dice 0.683, lesion F1 0.636. A **probability-average ensemble** of the two networks (twice
  the inference time; a one-off ONNX graph, not kept): 0.790, patient26 0.685 / 0.691 (11 of 19
  found, two false). Neither beats v3.2.0 alone (0.791; 0.701 / 0.691).
- Which lesions v3.2.0 misses (`python -m training.seg.selection models_onnx`, which prints
  them): on patient26, 8 of 19. Seven have 3–15 voxels; the eighth, 81 voxels, lies in the
  midbrain (MNI 10, −16, −11: infratentorial), 1.21 times the brain median with its
  surroundings at 1.0, and the network gives it a probability under 0.01. On the selection set
  (known locations) it finds 45 of 48 periventricular, 22 of 22 deep white-matter, 12 of 21
  juxtacortical and 3 of 6 infratentorial lesions. Small juxtacortical and infratentorial
  lesions are where it is weakest.
- Tried and not shipped (2026-12-02, sixth session): `seg_v17`, v3.2.0 fine-tuned for 600 steps
  with `--focus-fraction 0.3` (30 % of the lesion patches centred on a juxtacortical or
  infratentorial lesion; `--lr 5e-4 --seed 17 --init training/runs/seg_v11/weights_best.npz`,
  other flags as `seg_v11`; 14 min). It did not find more lesions in those zones: selection set
  10 of 21 juxtacortical and 1 of 6 infratentorial (v3.2.0: 12 and 3), mean Dice 0.783;
  patient26 Dice 0.671, lesion F1 0.690 (10 of 19 found, none false).
  `seg_v18`: the same fine-tune with `--lesionwise-fraction 0.5` instead (half of the lesion
  patches centred on a lesion drawn uniformly among the mask's lesions, then any of its
  voxels: 88 % of the 2961 training lesions are under 100 voxels, but they hold 13 % of the
  lesion voxels that plain centring draws from; `--seed 18`, 20 min). Selection set 0.771
  (10 of 21 juxtacortical, 1 of 6 infratentorial), patient26 Dice 0.628, lesion F1 0.690 (10 of
  19 found, none false). Both fine-tunes outline patient26 smaller (5.04 and 4.41 ml against
  6.21 ml) and lose its 16-voxel lesion: they still give it a probability of 0.84–0.88, but
  fewer than the 10 voxels (10 mm³) the pipeline reports as a lesion.
  `seg_v19`: the whole `seg_v11` recipe (1200 steps from v3.1.0) with `--lesionwise-fraction
  0.3 --seed 19` (30 min). Selection set 0.760 (12 of 21 juxtacortical, 1 of 6
  infratentorial), patient26 Dice 0.693, lesion F1 0.691 (11 of 19 found, two false). All three
  runs miss the same patient26 lesions as v3.2.0, each with a probability under 0.2: centring
  more patches on small or hard-zone lesions does not teach the network to see them. Averaging
  `seg_v19`'s and v3.2.0's probabilities (checked on patient26 only) gives Dice 0.699, F1 0.672:
  one of v3.2.0's two false lesions is in both networks, and one more appears.
- Tried and not shipped: `seg_v20`, the `seg_v11` command with `--caps horns` (same seed 11,
  so the patches differ only in their periventricular caps; 32 min). The cap hard negatives
  used to line the whole lateral ventricles, which also covers small lesions on the ventricle
  wall (two of the patient26 lesions v3.2.0 misses lie there); real caps sit at the front and
  back of the ventricles, and `horns` keeps them only within 15 mm of those ends. The
  selection set gains much: mean Dice **0.834** against 0.791 (sub-10 0.819 against 0.676;
  16 of 21 juxtacortical, 3 of 6 infratentorial, 45 of 48 periventricular). patient26 loses
  much: Dice 0.669, lesion F1 0.545 (9 of 19 found, five false). It still misses the two
  wall lesions (probability ≤ 0.001) and now also a 616-voxel and a 118-voxel lesion (highest
  probabilities 0.63 and 0.88, but under 10 mm³ above 0.5). The two sets disagree again, so the
  rule keeps v3.2.0. `--caps` stays in `training/seg/synth_data.py` (default `ring`, patches
  bit-identical).
- Tried and not shipped: `seg_v21`, `seg_v20`'s command (`--caps horns`) with `--seed 21`
  (2026-12-02; 60 min on a slower 2-core machine). **`seg_v20`'s gain was the seed, not the
  caps**: selection-set mean Dice 0.785 (against 0.834 for `seg_v20` and 0.791 for v3.2.0;
  sub-10 0.718, 12 of 21 juxtacortical, 4 of 6 infratentorial, 46 of 48 periventricular).
  patient26: Dice 0.679, lesion F1 0.595 (11 of 19 found, seven false). It misses the same
  lesions as v3.2.0, again with probabilities ≤ 0.004 for all but two 3-voxel ones. Same recipe,
  two seeds, 0.05 apart on the selection set: differences between candidates smaller than that
  are not evidence for a recipe. Commands: `python -m training.seg.train --out
  training/runs/seg_v21 --seed 21 --caps horns`, other flags as `seg_v11`; then
  `python -m training.seg.export --run training/runs/seg_v21 --models-dir /tmp/m_seg_v21
  --version 0.0.0` and `python -m training.seg.selection /tmp/m_seg_v21`.
- **Flip TTA with 25 % overlap became the default on 2026-12-03**, with the same weights
  (v3.2.0). Judged by the shipping rule against the old default (50 %, no TTA): selection set
  0.798 against 0.791 (lesion F1 0.914 against 0.903), patient26 0.710 / 0.712 against 0.701 /
  0.691 (11 of 19 found both times, one false lesion instead of two). This report is the first
  with the new default, so **both patient26 targets are met, by one false lesion**. Read that
  margin with care: the setting was one of eight rows of `python bench/overlap_tta.py`
  (docs/performance.md, section 3) and its patient26 row was seen before the selection set
  confirmed it, the rule's order reversed; with the same weights the rows span lesion F1
  0.630–0.712. Its cost is 1.9× the inference time (144 window passes instead of 80). The
  seconds in the tables above come from a 2-core machine about twice as slow as the one of
  earlier reports (v3.2.0 with the old settings took 28.0 s on patient26 there).
- **Which patient26 lesions the F1 counts** (2026-12-03). `python -m ms_core segment --flair
  <patient26 FLAIR> --skull-stripped --out /tmp/p26`, then `python -m ms_core evaluate --pred
  /tmp/p26/lesion_mask.nii.gz --truth <patient26 consensus>`; `evaluate` now also prints
  detection per reference-lesion size band and the one-voxel rule with lesions under
  `--min-lesion-mm3` (default 10) left out of both masks. Five of the 19 consensus lesions in
  MNI space are smaller than 10 mm³ (3, 3, 4, 6 and 8 voxels), the smallest lesion the pipeline
  reports; four of them have their centre within 7 mm of a larger lesion's. The native-space
  consensus (`cross_sectional/coregistered/patient26/consensus_gt.nii.gz`) has 8 of its 21
  lesions under 10 mm³ (0.2–8.8 mm³). v3.2.0 finds all 10 lesions of 100 mm³ or more, 1 of
  the 4 of 10–100 mm³ and none of the 5 under 10 mm³; with lesions under 10 mm³ left out of
  both masks its lesion F1 is 0.820 (11 of 14 found, two false). The issue's target counts
  all 19 lesions (0.691 with those settings, 50 % overlap without TTA): the size view is printed
  beside it, never instead. With the new default (previous bullet): 0.712 on all 19, 0.849
  without the lesions under 10 mm³.
  The same weights with the sliding windows placed differently (25 % overlap instead of 50 %)
  give 0.630 (10 found, three false; docs/performance.md): on one 19-lesion scan a lesion
  crossing the detection line moves F1 by about 0.03–0.06.
- Tried and not shipped: `seg_v16`, the `seg_v11` recipe trained twice as long (`--steps 2400
  --seed 16`, other flags as `seg_v11`; 65 min): longer training does not help. Selection-set
  mean Dice 0.778 against 0.791 (more than the 0.01 the rule allows), patient26 Dice 0.702,
  lesion F1 0.688 (11 of 19 found, two false). It misses the same eight patient26 lesions as
  v3.2.0.
- **Operating points** (`python bench/operating_points.py`,
  `bench/results/operating_points.json`; measured with v3.1.0 on the demo as it was before
  2026-12-02, so its selection-set figures are the old bright lesions'; v3.2.0 on the realistic
  demo at 0.5–0.7 is above): no threshold and no flip TTA met both patient26
  targets with that model. Lowering the threshold trades lesion F1 for Dice on patient26
  (0.1: Dice 0.703, F1 0.630 with 21 % false-positive lesions) and costs the selection set more
  (mean Dice 0.768 at 0.1, 0.893 at 0.5); flip TTA at 0.5 gives patient26 Dice 0.620, F1 0.690.
  **Seeded growth** (hysteresis: lesions found at 0.5, outlined at a lower threshold, as
  lesion-growth tools do) gives the same figures as the lower threshold alone (outlined at 0.1:
  patient26 Dice 0.704, F1 0.649; selection set 0.772): the false-positive lesions that appear
  below 0.5 are not new faint spots but seeds under 10 mm³ at 0.5 that grow past it. Growth
  costs the selection set most where its outlines are already generous, the 3 mm 1.5 T visits
  (sub-07: 4.93 ml predicted for 4.36 ml true at 0.5, Dice 0.897 → 0.744 at 0.1) and the small
  lesions of sub-10 (0.817 → 0.605), and little on the 1 mm 3 T visits with larger lesions
  (sub-08: 0.950 → 0.915).
  The network finds 87–97 % of the consensus voxels brighter than 1.4 times the brain median but
  21 % of those at 1.2–1.3 and 5 % at 1.1–1.2, and those two bands hold 39 % of the reference
  volume. The lesions themselves differ: the same benchmark's **edge profile** (FLAIR excess
  over the surrounding tissue, 3–4 voxels outside the outline, as a share of the core's) puts
  the demo's lesion cores at 1.8–2.2 times their surroundings, their outline voxels at 0.82–0.96
  and the first voxels outside at 0.02–0.08: bright lesions with sharp edges. patient26's cores
  are 1.40 times their surroundings, the outline voxels 0.73 and the first voxels outside 0.17:
  faint lesions with a graded edge, outlined by the raters well into the gradient. So the demo
  selection set and patient26 ask for different outlines: a lower threshold, and `seg_v6`'s last
  weights, raised patient26's Dice while the selection set fell. Of the 9 missed patient26
  lesions, 8 have 3–16 voxels (five are under the 10 mm³ that the pipeline reports as a lesion)
  and one has 81; all but one stay below probability 0.01 (the exception, 16 voxels, reaches
  0.52 in one voxel).
- Tried and not shipped (2026-12-03): **zone-specific thresholds**. The network's misses on
  the demo and in tracking are mostly juxtacortical and infratentorial (docs/longitudinal.md),
  so `python bench/operating_points.py --tta 1 --thresholds 0.5 --grow "" --zone-low
  0.4,0.3,0.2 --name operating_points_zones` (v3.2.0, default settings, 2-core CPU) keeps the
  mask at 0.5 and adds every lesion found at the lower threshold whose location class is
  juxtacortical, infratentorial or either. The unchanged setting reproduces this report
  (patient26 Dice 0.710, F1 0.712; selection set 0.798). Juxtacortical additions raise the
  selection set (0.812 at 0.3, 0.832 at 0.2 with both zones; most on sub-10: 0.684 → 0.870)
  but every lesion they add on patient26 is false: F1 0.620 at 0.3 (false-positive share 0.08
  → 0.33), 0.549 at 0.2, with no true lesion gained. Infratentorial additions alone change
  nothing on patient26 and add 0.001–0.005 to the selection set. So the synthetic demo's
  juxtacortical lesions are fainter to the network than anything real near the cortex that is
  a lesion; a lower threshold there would tune the pipeline to the generator. The default
  stays one threshold for all zones.
- Tried and not shipped (2026-12-03): **batch-norm statistics from real scans** (AdaBN, Li et
  al. 2018, Pattern Recognition 80:109-117): `python -m training.seg.adapt_bn --weights
  models_onnx/lesion_seg/weights.npz --config models_onnx/lesion_seg/model.json --out DIR
  --real <patient12 study1_FLAIR> <patient12 study2_FLAIR> [--real-fraction 0.5]`. It
  re-estimates v3.2.0's batch-norm statistics on the 384 windows (64³, 25 % overlap, each also
  flipped) that the default inference feeds the network for the two unlabelled raw FLAIR scans
  of open_ms_data's longitudinal patient12 (2D, 0.72 × 0.72 × 3 mm); no label is used and no
  weight changes. Real windows only: selection set 0.746 (v3.2.0 with the same default
  settings: 0.798), patient26 Dice 0.583, lesion F1 0.643 (9 of 19 found, none false; 3.72 ml
  predicted for 8.23 ml). Half real windows, half synthetic patches: 0.766, patient26 0.661 /
  0.643 (4.75 ml). Both outline smaller and find fewer lesions on both sets, so the normalisation
  of real windows moves the network towards "not lesion"; the lost patient26 lesion is the
  616-voxel one (probability 0.07 and 0.48). Not shipped. Had it helped, the real pair of
  docs/longitudinal.md (patient12) would also have become a scan the model had seen. The
  statistics moved most in the first layer (median shift 0.5 standard deviations, variance 0.62
  times v3.2.0's; 0.12-0.14 in the next two, at most 0.07 in the rest), and the real windows are
  54 % zero voxels (outside the brain and padding) against 25 % in the training patches. So this
  run mixes "real against synthetic" with "whole-brain tiles against brain-centred patches"; a
  cleaner test draws the real patches as training does, which without labels cannot centre half
  of them on a lesion. The same re-estimation on 960 synthetic training patches instead of
  training's 96 (`--real-fraction 0 --batches 480 --seed 2`, no real scan): selection set 0.796,
  patient26 Dice 0.692, lesion F1 0.712 (5.53 ml). So the sampling of the batch-norm statistics
  alone moves patient26's Dice by 0.02: one more measure of how thin the margin over 0.70 is.
  The cleaner test (`--real-sampling brain --real-fraction 0.5`: 192 patches per real scan
  centred on brain voxels as training centres its lesion-free patches, half of the batches'
  patches synthetic) behaves differently: selection set 0.786 (sub-12 over-outlined, 2.12 ml for
  1.56 ml), patient26 Dice 0.723 but lesion F1 0.653 (11 of 19 found as before, but a quarter of
  the predicted lesions false; 6.28 ml). So without the tiles' background the real statistics
  outline more instead of less, and the extra outline brings false lesions: the Dice-against-F1
  trade of the lower thresholds again. Not shipped (selection set more than 0.01 below,
  patient26 F1 worse).
- Seconds here are single runs, not a benchmark: `python bench/stage_timings.py` (5 fresh
  processes, nothing else running) and `bench/segment_speed.py` give the timing.
- Export: batch norm exports as a plain ONNX BatchNormalization. (Instance norm, up to v2, was
  exported as per-axis means, `training/seg/model.py::StableInstanceNorm3d`: onnxruntime's own
  InstanceNormalization accumulated float32 sums over whole patches and missed the 1e-3 parity
  gate.)
- The baseline's parameters (k = 2 above grey matter, WM prior > 0.3) were chosen on demo visits
  only (k checked again on the realistic demo's selection set, see above).
- N4 bias correction and denoising are optional (`--n4`, `--denoise`, off by default); their
  measured cost and benefit are in `docs/preprocessing.md`.
- Raw numbers: `bench/results/segmentation_eval.json`.
"""
    atomic_write_text(REPO / "docs" / "segmentation.md", text)
    card_path = MODELS_DIR / "lesion_seg" / "model.json"
    card_json = read_json(card_path)
    card_json["evaluation"] = {"patient26": {k: {m: v[m] for m in ("dice", "f1_any", "f1_10pct")}
                                             for k, v in p.items()},
                               "demo_first_visits_mean": summary, "report": "docs/segmentation.md"}
    write_json(card_path, card_json)
    atomic_write_text(card_path.with_name("MODEL_CARD.md"), model_card_markdown(card_json))
    return 0


def model_card_markdown(card: dict[str, Any]) -> str:
    """The short human-readable model card, generated from ``model.json``."""
    ev = card.get("evaluation", {})
    p26 = ev.get("patient26", {})
    demo = ev.get("demo_first_visits_mean", {})
    rows = "\n".join(
        f"| {k.replace('_', ' ')} | {_fmt(p26.get(k, {}).get('dice'))} | "
        f"{_fmt(p26.get(k, {}).get('f1_any'))} | {_fmt(demo.get(k, {}).get('dice'))} | "
        f"{_fmt(demo.get(k, {}).get('f1_any'))} |" for k in ("network_flair", "network_flair_t1",
                                                           "baseline"))
    tr, pre = card["training"], card["preprocessing"]
    net26 = p26.get("network_flair", {})
    met = (net26.get("dice") or 0) >= 0.70 and (net26.get("f1_any") or 0) >= 0.70
    target_line = ("Real-data accuracy meets the target (patient26 Dice and lesion F1 ≥ 0.70) on "
                   "one scan only: expect missed\n  small lesions and false-positive dots; review "
                   "every mask." if met else
                   "Real-data accuracy is below the target (patient26 Dice and lesion F1 ≥ 0.70): "
                   "expect missed\n  small lesions and false-positive dots; review every mask.")
    init = tr.get("initialised_from")
    fine_tuned = "" if not init else (
        "\n- **Fine-tuned from** weights sha256 `" + str(init.get("weights_sha256"))[:16]
        + "…`, made by: " + "; then ".join(f"`{c}`" for c in init.get("commands_before", [])))
    return f"""# Model card: {card['name']} {card['version']}

sha256 `{card['sha256']}` (checked before every load; see `models_onnx/manifest.json`).

- **Task**: {card['task']}.
- **Intended use**: research and demonstration — lesion load, counts and locations to support,
  never replace, a radiologist's reading. Not a medical device.
- **Architecture**: {card['architecture']}.
- **Input**: FLAIR (+ optional T1w, zeros when absent), {pre['spacing_mm']} mm
  {pre['orientation']}; {pre['normalisation']}; brain extraction: {pre['brain_extraction']}.
- **Output**: lesion probability; mask at threshold {card['threshold']}.
- **Training data**: {tr['data']}. Nothing else; no real scan of patient26 was used.
- **Training command**: `{tr['command']}` (seed {tr['seed']}, {tr['steps']} steps,
  {_fmt(tr.get('train_seconds'))} s on a 2-core CPU; best synthetic validation Dice
  {_fmt(tr.get('best_synthetic_val_dice'))}).{fine_tuned}
- **Export**: ONNX opset {card['export']['opset']}, onnxruntime {card['export']['onnxruntime']};
  parity with torch: max |Δp| {card['export']['parity']['max_abs_prob_diff']:.1e}, mask Dice
  {card['export']['parity']['mask_dice']:.4f}.

## Evaluation (`python -m training.seg.report`, details in `{ev.get('report', 'docs')}`)

| method | patient26 Dice | patient26 lesion F1 | demo mean Dice | demo mean lesion F1 |
|---|---|---|---|---|
{rows}

## Limits

- {target_line}
- Validated on one real scan (patient26, 3 T, MNI space) and synthetic data only; the hard-
  negative training design (v2), the switch to batch norm (v3), the noise model (v3.1) and the
  fainter lesions with a grey-matter floor (v3.2) were informed by patient26 runs, so patient26
  is not a fully independent test. Three training runs of v3.2's recipe that differ only in
  seed or machine scored patient26 Dice 0.640-0.712: one run's figure is uncertain by a few
  hundredths.
- Under-segments real lesions: on patient26 it misses some lesions and outlines the ones it
  finds too small (predicted lesion volume well below the reference); lesion volumes are lower
  bounds.
- Small, juxtacortical and infratentorial lesions are its weak spots (v3.2.0: on patient26 the
  eight missed lesions are seven of 3-15 voxels and one of 81 in the midbrain; on the synthetic
  selection set it finds 12 of 21 juxtacortical and 3 of 6 infratentorial lesions, against 45
  of 48 periventricular and 22 of 22 deep white-matter ones; `python -m training.seg.selection
  models_onnx`). Read the brainstem, cerebellum and cortical border by eye: the McDonald
  juxtacortical and infratentorial counts are lower bounds.
- Give it FLAIR only. A real T1w as the second channel adds false lesions (patient26, v3.2.0:
  63 % of predicted lesions false, against 14 % from FLAIR alone), so the app and `batch`
  segment study visits from FLAIR; `segment --t1` is for experiments.
- No cortical, spinal-cord or gadolinium-enhancing lesion detection; white-matter T2/FLAIR
  hyperintensities only.
"""


if __name__ == "__main__":
    sys.exit(main())
