"""Fine-tune the segmentation network on a study's own expert lesion masks.

Usage (from the repository root, with requirements-train.txt installed)::

    python -m training.seg.finetune --study STUDY --out DIR [--masks derivatives/manual_masks] \\
        [--init models_onnx/lesion_seg] [--steps 500] [--seed 0] [--val-participants sub-03]

Expert masks live beside the study's derivatives, one per visit, BIDS-derivatives style::

    STUDY/derivatives/manual_masks/sub-01/ses-01/anat/sub-01_ses-01_desc-lesion_mask.nii.gz

Each mask lies on its visit's FLAIR grid (same shape and affine), non-zero = lesion. A visit
without a mask is left out; a mask on another grid, no mask at all, or masks of fewer than two
patients stop the run with a message naming the file or the study.

What it does:

1. splits by patient (``--val-participants``, else a seeded quarter, at least one): no patient
   is in both the training and the validation set;
2. prepares every labelled visit as ``segment`` does (working grid, brain mask, crop,
   the model card's intensity normalisation);
3. trains from the ``--init`` model's weights on 64³ patches: each patch is the study's (half of
   them centred on a lesion voxel, flipped at random) or, with ``--synthetic-fraction``, a
   synthetic patch of the init model's own training recipe, so that the network keeps what
   it knew; the init recipe's loss (BCE plus soft Dice or Tversky) and a cosine learning rate;
4. re-estimates the batch-norm statistics on the same mix;
5. exports with :mod:`training.seg.export` (parity-checked ONNX, card, manifest, sha256) into
   ``DIR`` (use it with ``MS_DASH_MODELS=DIR``);
6. segments every validation visit through the pipeline with the init model and with the new
   one, and reports Dice, lesion F1 and volumes per patient before and after (printed,
   ``DIR/finetune_report.json`` and the card's ``evaluation.site_validation``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ms_core.foundation.domain import LesionMask
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import load_lesion_mask, load_volume, read_json, sha256_file, write_json
from ms_core.imaging.anatomy import load_template
from ms_core.imaging.preprocess import crop_box, pad_to_multiple, resample_to_grid
from ms_core.segmentation.inference import OnnxModel, load_onnx_model
from ms_core.segmentation.model_store import MODELS_DIR, load_segmentation_card
from ms_core.segmentation.segment import SegmentParams, flair_on_working_grid, model_input
from ms_core.study.layout import load_study
from training.seg.model import UNet3D, architecture_of
from training.seg.report import _run
from training.seg.synth_data import PatchSampler, load_lesion_bank
from training.seg.train import (
    DEFAULT_MNI,
    calibrate_on_batches,
    load_weights,
    recipe_from_card,
    recipe_sampler,
    save_weights,
    segmentation_loss,
)

#: Where expert masks are looked for, relative to the study folder.
DEFAULT_MASKS = Path("derivatives") / "manual_masks"
MASK_SUFFIX = "desc-lesion_mask.nii.gz"
PATCH = 64


def mask_path(masks_root: Path, participant_id: str, session_id: str) -> Path:
    """The expert mask of one visit under ``masks_root``."""
    return (masks_root / participant_id / session_id / "anat"
            / f"{participant_id}_{session_id}_{MASK_SUFFIX}")


@dataclass(frozen=True)
class LabelledVisit:
    """A study visit with its FLAIR and expert mask."""

    participant_id: str
    session_id: str
    flair: Path
    mask: Path


def labelled_visits(study_root: Path, masks_root: Path) -> list[LabelledVisit]:
    """Every visit of the study that has a FLAIR and an expert mask on the FLAIR's grid.

    Raises
    ------
    InputError
        no mask at all (naming the folder and the expected file name), a mask not on its
        FLAIR's grid (naming the mask), masks of fewer than two patients (naming the study).
    """
    study = load_study(study_root)
    found: list[LabelledVisit] = []
    for pid, visits in study.visits.items():
        for visit in visits:
            path = mask_path(masks_root, pid, visit.session_id)
            if not path.is_file() or "FLAIR" not in visit.images:
                continue
            flair = load_volume(visit.images["FLAIR"], "FLAIR")
            mask = load_lesion_mask(path)
            if mask.labels.shape != flair.shape:
                raise InputError(path, f"is not on its FLAIR's grid: shape "
                                       f"{mask.labels.shape}, the FLAIR {visit.images['FLAIR']} "
                                       f"has {flair.shape}")
            shift = float(np.abs(mask.affine - flair.affine).max())
            if shift > 1e-3:
                raise InputError(path, f"is not on its FLAIR's grid: its affine differs from "
                                       f"{visit.images['FLAIR']}'s by up to {shift:.3g} mm; "
                                       "resample the mask onto the FLAIR")
            found.append(LabelledVisit(pid, visit.session_id, visit.images["FLAIR"], path))
    if not found:
        example = mask_path(masks_root, "sub-01", "ses-01").relative_to(masks_root)
        raise InputError(masks_root, f"no expert mask found for any visit of {study_root}; "
                                     f"expected files like {example}")
    patients = sorted({v.participant_id for v in found})
    if len(patients) < 2:
        raise InputError(study_root, f"expert masks of {len(patients)} patient(s) "
                                     f"({', '.join(patients)}); fine-tuning needs at least two, "
                                     "one of them to validate on")
    return found


def split_patients(patients: Sequence[str], seed: int, val_fraction: float = 0.25,
                   val: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(training, validation) patients: ``val`` when given, else a seeded ``val_fraction``
    (at least one, at most all but one). No patient is in both.

    >>> split_patients(["a", "b", "c", "d"], seed=0, val=["c"])
    (['a', 'b', 'd'], ['c'])
    """
    pool = sorted(set(patients))
    if val:
        unknown = sorted(set(val) - set(pool))
        if unknown:
            raise ValueError(f"validation participants {unknown} have no expert mask")
        chosen = sorted(set(val))
    else:
        n_val = min(len(pool) - 1, max(1, round(val_fraction * len(pool))))
        order = np.random.default_rng(seed).permutation(len(pool))
        chosen = sorted(pool[i] for i in order[:n_val])
    train = [p for p in pool if p not in chosen]
    if not train:
        raise ValueError("every labelled patient is in the validation set; keep one to train on")
    return train, chosen


@dataclass(frozen=True)
class Prepared:
    """A visit as the network sees it: (C, X, Y, Z) input and (X, Y, Z) lesion labels."""

    x: np.ndarray
    y: np.ndarray
    lesion_voxels: np.ndarray


def prepare(visit: LabelledVisit, model: OnnxModel, params: SegmentParams) -> Prepared:
    """The visit's network input, made as :func:`ms_core.segmentation.segment.probability_on_grid`
    makes it (working grid, brain, crop, the card's normalisation and channels; no T1w), and its
    expert mask on the same voxels."""
    card = model.card
    flair = load_volume(visit.flair, "FLAIR")
    mask = load_lesion_mask(visit.mask)
    grid, f_work, brain, to_mni = flair_on_working_grid(flair, params, model)
    box = crop_box(brain, margin=4)
    x, back = model_input(f_work[box], None, brain[box], grid, box, params, model, to_mni)
    y_work = resample_to_grid((mask.labels > 0).astype(np.float32), mask.affine, grid,
                              order=1)[box] > 0.5
    y, _ = pad_to_multiple(y_work.astype(np.float32), card.multiple_of,
                           minimum=max(card.layout_patch()))
    if y.shape != x.shape[1:] or back[1:] != tuple(slice(0, s) for s in y_work.shape):
        raise AssertionError("input and mask padded differently")
    return Prepared(x.astype(np.float32), y, np.argwhere(y > 0.5))


class StudyPatches:
    """Random 64³ patches of prepared visits: ``lesion_fraction`` of them centred on a lesion
    voxel, the rest anywhere; each flipped at random along x, y and z."""

    def __init__(self, visits: Sequence[Prepared], seed: int, patch: int = PATCH,
                 lesion_fraction: float = 0.5) -> None:
        self.visits, self.patch = list(visits), patch
        self.lesion_fraction = lesion_fraction
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        v = self.visits[int(self.rng.integers(len(self.visits)))]
        shape = np.array(v.y.shape)
        p = self.patch
        if len(v.lesion_voxels) and self.rng.random() < self.lesion_fraction:
            centre = v.lesion_voxels[int(self.rng.integers(len(v.lesion_voxels)))]
            corner = np.clip(centre - p // 2 + self.rng.integers(-p // 4, p // 4 + 1, 3),
                             0, shape - p)
        else:
            corner = np.array([int(self.rng.integers(0, s - p + 1)) for s in shape])
        box = tuple(slice(int(c), int(c) + p) for c in corner)
        x, y = v.x[(slice(None), *box)], v.y[box][None]
        for axis in range(3):
            if self.rng.random() < 0.5:
                x, y = np.flip(x, axis + 1), np.flip(y, axis + 1)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


class MixedPatches:
    """A study patch, or with probability ``synthetic_fraction`` a synthetic one."""

    def __init__(self, study: StudyPatches, synthetic: PatchSampler | None,
                 synthetic_fraction: float, seed: int) -> None:
        self.study, self.synthetic = study, synthetic
        self.fraction = synthetic_fraction if synthetic is not None else 0.0
        self.rng = np.random.default_rng(seed + 1)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        items = [self.synthetic.sample() if self.synthetic is not None
                 and self.rng.random() < self.fraction else self.study.sample()
                 for _ in range(size)]
        return (np.stack([i[0] for i in items]).astype(np.float32),
                np.stack([i[1] for i in items]).astype(np.float32))


def score(visits: Sequence[LabelledVisit], model: OnnxModel, params: SegmentParams
          ) -> dict[str, dict[str, float]]:
    """Each visit segmented through the pipeline and scored against its expert mask (as the
    report scores the real scans, :func:`training.seg.report._run`)."""
    out = {}
    for v in visits:
        truth = load_lesion_mask(v.mask)
        m = _run(v.flair, None, LesionMask((truth.labels > 0).astype(np.int32), truth.affine),
                 params, model)
        out[f"{v.participant_id}/{v.session_id}"] = {
            "dice": round(m["dice"], 4), "lesion_f1": round(m["f1_any"], 4),
            "pred_ml": round(m["pred_ml"], 3), "true_ml": round(m["truth_ml"], 3)}
    return out


def _init_weights(init: Path) -> tuple[Path, dict[str, Any]]:
    """The ``weights.npz`` and card of an ``--init`` models folder, or of a model folder."""
    folder = init / "lesion_seg" if (init / "manifest.json").is_file() else init
    weights, card = folder / "weights.npz", folder / "model.json"
    if not weights.is_file() or not card.is_file():
        raise InputError(init, "needs weights.npz and model.json (a model exported by "
                               "training.seg.export); a registered ONNX model cannot be "
                               "fine-tuned here")
    return weights, read_json(card)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, required=True)
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS,
                    help="expert masks folder, relative to the study (default "
                         "derivatives/manual_masks) or absolute")
    ap.add_argument("--out", type=Path, required=True, help="models folder to write")
    ap.add_argument("--init", type=Path, default=MODELS_DIR,
                    help="models folder (or model folder) to start from (default: shipped)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--synthetic-fraction", type=float, default=0.5,
                    help="share of synthetic patches of the init model's recipe (default 0.5)")
    ap.add_argument("--val-participants", default="",
                    help="comma-separated validation participants (default: a seeded quarter)")
    ap.add_argument("--skull-stripped", action="store_true",
                    help="the FLAIRs are skull-stripped (as segment --skull-stripped)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bn-batches", type=int, default=24,
                    help="batches for the batch-norm statistics after training")
    ap.add_argument("--version", default="",
                    help="version of the exported model (default: INIT-ft.SEED)")
    ap.add_argument("--mni-dir", type=Path, default=DEFAULT_MNI,
                    help="open_ms_data MNI masks for the synthetic patches")
    return ap


def before_after_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                       label: str = "visit", seconds: dict[str, float] | None = None) -> str:
    """Dice, lesion F1 and volume before and after fine-tuning, a row per validation scan
    (``seconds``: training seconds per row, an extra column)."""
    head = (f"{label:24} {'Dice before':>12} {'after':>7} {'F1 before':>10} {'after':>7} "
            f"{'ml before':>10} {'after':>7} {'true':>7}" + (f" {'train s':>8}" if seconds else ""))
    rows = [head]
    for key in before:
        b, a = before[key], after[key]
        rows.append(f"{key:24} {b['dice']:12.3f} {a['dice']:7.3f} {b['lesion_f1']:10.3f} "
                    f"{a['lesion_f1']:7.3f} {b['pred_ml']:10.2f} {a['pred_ml']:7.2f} "
                    f"{a['true_ml']:7.2f}" + (f" {seconds[key]:8.0f}" if seconds else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not 0.0 <= args.synthetic_fraction < 1.0:
        ap.error(f"--synthetic-fraction must be in [0, 1), got {args.synthetic_fraction}")
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    masks_root = args.masks if args.masks.is_absolute() else args.study / args.masks
    try:
        visits = labelled_visits(args.study, masks_root)
        train_ids, val_ids = split_patients(
            [v.participant_id for v in visits], args.seed,
            val=[p for p in args.val_participants.split(",") if p])
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    weights, init_card = _init_weights(args.init)
    init_dir = weights.parent.parent
    params = SegmentParams(skull_stripped=args.skull_stripped)
    init_model = load_onnx_model(load_segmentation_card(init_dir), "cpu", args.threads)
    train_visits = [v for v in visits if v.participant_id in train_ids]
    val_visits = [v for v in visits if v.participant_id in val_ids]
    prepared = [prepare(v, init_model, params) for v in train_visits]
    study_patches = StudyPatches(prepared, args.seed)
    recipe = recipe_from_card(init_card)
    if init_card["input"].get("t1w") == "ignored":  # FLAIR only, as the init model runs
        recipe["t1_dropout"] = 1.0
    synthetic = None
    if args.synthetic_fraction > 0:
        bank = load_lesion_bank(args.mni_dir, load_template())
        synthetic = recipe_sampler(recipe, bank, seed=args.seed + 77)
    mix = MixedPatches(study_patches, synthetic, args.synthetic_fraction, args.seed)
    print(f"{len(train_visits)} training visits of {train_ids}, {len(val_visits)} validation "
          f"visits of {val_ids}; prepared in {time.perf_counter() - t0:.1f} s", flush=True)

    with np.load(weights, allow_pickle=False) as data:
        widths, norm = architecture_of({k: data[k].shape for k in data.files})
    net = UNet3D(2, widths, norm=norm)
    load_weights(net, weights)
    beta = float(recipe.get("tversky_beta", 0.5))
    held = StudyPatches(prepared, args.seed + 5).sample  # fixed study patches to watch
    held_x, held_y = (np.stack(a).astype(np.float32) for a in zip(*[held() for _ in range(4)],
                                                                     strict=True))

    def held_loss() -> float:
        """The loss on the fixed study patches, the network in inference mode."""
        net.eval()
        with torch.no_grad():
            value = segmentation_loss(net(torch.from_numpy(held_x)),
                                      torch.from_numpy(held_y), beta).item()
        net.train()
        return round(float(value), 5)

    loss_before = held_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    run = args.out / "run"
    run.mkdir(parents=True, exist_ok=True)
    losses = []
    t_train = time.perf_counter()
    for step in range(1, args.steps + 1):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        xb, yb = mix.batch(args.batch)
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        loss = segmentation_loss(net(x), y, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        if step % 50 == 0 or step == args.steps:
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} "
                  f"({time.perf_counter() - t_train:.0f} s)", flush=True)
    train_seconds = round(time.perf_counter() - t_train, 1)
    if norm == "batch" and args.bn_batches > 0:
        calibrate_on_batches(net, (mix.batch(args.batch)[0] for _ in range(args.bn_batches)))
    save_weights(net, run / "weights_best.npz")
    loss_after = held_loss()
    print(f"loss on 4 fixed study patches: {loss_before:.4f} before, {loss_after:.4f} after",
          flush=True)

    version = args.version or f"{init_card['version']}-ft.{args.seed}"
    command = " ".join(["python -m training.seg.finetune", *(argv or sys.argv[1:])])
    finetune = {
        "study": str(args.study), "masks": str(masks_root),
        "train_participants": train_ids, "val_participants": val_ids,
        "train_visits": len(train_visits), "val_visits": len(val_visits),
        "synthetic_fraction": args.synthetic_fraction, "steps": args.steps,
        "init": {"version": init_card["version"], "sha256": init_card["sha256"],
                 "weights_sha256": sha256_file(weights)},
        "command": command,
    }
    write_json(run / "config.json", {**recipe, "widths": list(widths), "norm": norm,
                                     "seed": args.seed, "steps": args.steps, "command": command,
                                     "init": str(weights), "init_sha256": sha256_file(weights),
                                     "finetune": finetune, "mni_dir": str(args.mni_dir)})
    write_json(run / "metrics.json", {"train_seconds": train_seconds,
                                      "bn_calibration_patches": args.bn_batches * args.batch,
                                      "final_loss_mean_50": float(np.mean(losses[-50:])),
                                      "held_loss_before": loss_before,
                                      "held_loss_after": loss_after})
    from training.seg import export

    if export.main(["--run", str(run), "--models-dir", str(args.out),
                    "--version", version]) != 0:
        return 1
    tuned = load_onnx_model(load_segmentation_card(args.out), "cpu", args.threads)
    before, after = score(val_visits, init_model, params), score(val_visits, tuned, params)
    report = {"before": before, "after": after, "train_seconds": train_seconds,
              "held_loss_before": loss_before, "held_loss_after": loss_after,
              "seconds": round(time.perf_counter() - t0, 1), **finetune}
    write_json(args.out / "finetune_report.json", report)
    card_path = args.out / "lesion_seg" / "model.json"
    card = read_json(card_path)
    card.setdefault("evaluation", {})["site_validation"] = {"before": before, "after": after}
    export.publish(args.out, "lesion_seg", card, card["sha256"])
    print(before_after_table(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
