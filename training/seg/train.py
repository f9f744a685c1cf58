"""Train the lesion-segmentation 3D U-Net on synthetic patches; one seeded command.

Usage (from the repository root, with requirements-train.txt installed)::

    python -m training.seg.train --out training/runs/seg_v1 --steps 2400

Writes to ``--out``: ``train_log.jsonl`` (loss per step, synthetic validation Dice),
``weights_best.npz`` (state dict as plain arrays: no pickle), ``config.json`` (arguments, git
commit, command) and ``metrics.json``. Export to ONNX with :mod:`training.seg.export`.

Real data: lesion masks of open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY),
patient26 excluded (validation only).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ms_core.foundation.io import atomic_write_text, sha256_file, write_json
from ms_core.imaging.anatomy import load_template
from ms_core.lesions.components import label_components
from ms_core.segmentation.model_store import code_commit
from training.seg.model import NORMS, UNet3D
from training.seg.synth_data import (
    CAP_MODELS,
    DEFAULT_GM_CONTRAST,
    DEFAULT_LESION_CONTRAST,
    LESION_MODELS,
    NOISE_MODELS,
    NORMALISATIONS,
    LesionBank,
    PatchSampler,
    load_lesion_bank,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MNI = REPO.parent / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI"


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice over the whole batch (stable with lesion-free patches)."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """1 - soft Tversky index over the whole batch (Salehi et al., MLMI 2017).

    False negatives weigh ``beta`` and false positives ``1 - beta``; ``beta=0.5`` is the soft
    Dice loss, ``beta > 0.5`` favours recall (larger outlines, more faint lesions).
    """
    p = torch.sigmoid(logits)
    tp = (p * target).sum()
    fn = ((1.0 - p) * target).sum()
    fp = (p * (1.0 - target)).sum()
    return 1.0 - (2.0 * tp + 1.0) / (2.0 * (tp + beta * fn + (1.0 - beta) * fp) + 1.0)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Binary cross-entropy plus the overlap loss: soft Dice at ``beta`` 0.5, else Tversky.

    Tversky at 0.5 equals soft Dice up to rounding; the original keeps earlier runs
    reproducible bit for bit."""
    overlap = soft_dice_loss(logits, target) if beta == 0.5 else tversky_loss(logits, target,
                                                                              beta)
    return F.binary_cross_entropy_with_logits(logits, target) + overlap


def lesion_components(target: np.ndarray) -> torch.Tensor:
    """(B, 1, P, P, P) int64 labels of the 26-connected lesions of each patch's binary label."""
    out = np.zeros(target.shape, np.int64)
    for b in range(target.shape[0]):
        out[b, 0] = label_components(target[b, 0] > 0.5, affine=np.eye(4))
    return torch.from_numpy(out)


def blob_loss(logits: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Mean over every lesion of the batch of its own soft Dice loss (Kofler et al. 2023).

    "blob loss" (Kofler et al., IPMI 2023): for lesion *i* the other lesions are masked out of
    the prediction, so its term sees its own voxels and the background (false positives count in
    every term). Each lesion weighs the same whatever its size, so a missed 5-voxel lesion costs
    as much as a missed 2 ml one; a whole-batch Dice barely notices it. ``components`` holds
    :func:`lesion_components` labels; patches without lesions add nothing, and a batch without
    any gives 0.
    """
    p = torch.sigmoid(logits)
    terms = []
    for b in range(components.shape[0]):
        lab = components[b]
        for i in range(1, int(lab.max()) + 1):
            inst = (lab == i).to(p.dtype)
            keep = ((lab == 0) | (lab == i)).to(p.dtype)
            pi = p[b] * keep
            terms.append(1.0 - (2.0 * (pi * inst).sum() + 1.0) / (pi.sum() + inst.sum() + 1.0))
    if not terms:
        return logits.sum() * 0.0
    return torch.stack(terms).mean()


def save_weights(model: torch.nn.Module, path: Path) -> None:
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    with np.load(path, allow_pickle=False) as data:
        state = {k: torch.from_numpy(data[k]) for k in data.files}
    model.load_state_dict(state)


def load_init_weights(model: torch.nn.Module, path: Path, network: str, widths: str,
                      norm: str) -> None:
    """A trainer's ``--init``: :func:`load_weights`, or :class:`ValueError` saying that the
    weights do not fit ``network`` (its name in the message) at ``widths`` and ``norm``."""
    try:
        load_weights(model, path)
    except (OSError, KeyError, RuntimeError) as e:
        raise ValueError(f"--init {path}: cannot load these weights into {network} with "
                         f"--widths {widths} --norm {norm}: {e}") from e


def batch_dice(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xs[i:i + 2]) for i in range(0, len(xs), 2)]) > 0
    model.train()
    t = ys > 0.5
    inter = (pred & t).sum().item()
    return 2.0 * inter / max(pred.sum().item() + t.sum().item(), 1)


def calibrate_batch_norm(model: torch.nn.Module, sampler: PatchSampler, patches: int,
                         batch: int) -> None:
    """Replace the running batch-norm statistics by their plain average over ``patches``.

    The running averages kept during training weight the last few dozen batches, drawn while
    the weights were still moving; a cumulative average over fresh patches with the final
    weights is the statistic inference should use.
    """
    batches = (np.stack([sampler.sample()[0] for _ in range(batch)])
               for _ in range(max(1, patches // batch)))
    calibrate_on_batches(model, batches)


def calibrate_on_batches(model: torch.nn.Module, batches: Iterable[np.ndarray]) -> int:
    """Set every BatchNorm3d's running statistics to their plain average over ``batches``
    (each (N, C, X, Y, Z); the network in training mode, no gradient, weights untouched) and
    leave the network in eval mode; returns the number of batches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    if not norms:
        raise ValueError("the network has no batch-norm layer to calibrate")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    n = 0
    with torch.no_grad():
        for xb in batches:
            model(torch.from_numpy(xb))
            n += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return n


def write_derived_run(out: Path, config: dict[str, Any], metrics: dict[str, Any], module: str,
                      argv: list[str] | None) -> None:
    """Finish a run folder made from other runs' weights (a soup, an adaptation): its
    ``config.json`` (``config`` plus the code commit, torch version and the ``python -m
    module ...`` command) and ``metrics.json``; the metrics are printed too."""
    write_json(out / "config.json", {
        **config,
        "git_commit": code_commit()["commit"], "torch": torch.__version__,
        "command": " ".join([f"python -m {module}", *(argv or sys.argv[1:])]),
    })
    write_json(out / "metrics.json", metrics)
    print(metrics, flush=True)


def recipe_sampler(config: Mapping[str, Any], bank: LesionBank, seed: int) -> PatchSampler:
    """The synthetic patches of a training recipe: this module's arguments, or a run's
    ``config.json`` (options older runs did not have take their default)."""
    lo, hi = (float(v) for v in str(config["lesion_contrast"]).split(","))
    return PatchSampler(bank, int(config["patch"]), seed=seed,
                        lesion_fraction=float(config["lesion_fraction"]),
                        hard_negatives=bool(config["hard_negatives"]), lesion_contrast=(lo, hi),
                        noise=str(config.get("noise", "white")),
                        lesion_model=str(config.get("lesion_model", "uniform")),
                        winsorise=float(config.get("winsorise", 0.0)),
                        lesion_gm_floor=float(config.get("lesion_gm_floor", 0.0)),
                        contrast_power=float(config.get("contrast_power", 1.0)),
                        focus_fraction=float(config.get("focus_fraction", 0.0)),
                        lesionwise_fraction=float(config.get("lesionwise_fraction", 0.0)),
                        caps=str(config.get("caps", "ring")),
                        gm_contrast=_pair(config.get("gm_contrast", DEFAULT_GM_CONTRAST)),
                        gm_field=float(config.get("gm_field", 0.0)),
                        healthy_fraction=float(config.get("healthy_fraction", 0.0)),
                        confluent_fraction=float(config.get("confluent_fraction", 0.0)),
                        small_fraction=float(config.get("small_fraction", 0.0)),
                        ghosting=float(config.get("ghosting", 0.0)),
                        normalisation=str(config.get("normalisation", "median")),
                        t1_dropout=float(config.get("t1_dropout", 0.5)),
                        fossa_gain=_pair(config.get("fossa_gain", "1.0,1.0")),
                        focus_balanced=bool(config.get("focus_balanced", False)))


def numbers(value: object, count: int) -> tuple[float, ...]:
    """A comma-separated option (or a stored list) as ``count`` floats."""
    parts = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    if len(parts) != count:
        raise ValueError(f"expected {count} comma-separated numbers, got {value!r}")
    return tuple(float(v) for v in parts)


def _pair(value: object) -> tuple[float, float]:
    """A 'lo,hi' option (or a stored pair) as two floats."""
    lo, hi = numbers(value, 2)
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    """The command line of a training run (also read back by :func:`recipe_from_command`)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mni-dir", type=Path, default=DEFAULT_MNI)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--widths", type=str, default="12,24,48,96")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--val-patches", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="also keep the weights every N steps (weights_stepN.npz), to judge "
                         "them on real scans; 0 (default) keeps only the best and the last")
    ap.add_argument("--hard-negatives", action="store_true",
                    help="add lesion-like non-lesion structures (brain-mask rim, dots, caps)")
    ap.add_argument("--lesion-fraction", type=float, default=0.7,
                    help="share of patches centred on a lesion voxel")
    ap.add_argument("--norm", choices=NORMS, default="instance",
                    help="feature normalisation: instance (per window) or batch (statistics "
                         "learned in training, fixed at inference)")
    ap.add_argument("--lesion-contrast", type=str,
                    default=",".join(str(v) for v in DEFAULT_LESION_CONTRAST),
                    help="range of FLAIR lesion / white-matter intensity ratios, 'lo,hi'")
    ap.add_argument("--bn-calibration", type=int, default=96,
                    help="with --norm batch: training patches used to re-estimate the "
                         "normalisation statistics of the best weights at the end")
    ap.add_argument("--noise", choices=NOISE_MODELS, default="white",
                    help="image noise of the synthetic patches: white (independent per voxel, "
                         "models up to 3.0.0) or mixed (stronger, often spatially correlated, "
                         "with fine tissue texture)")
    ap.add_argument("--lesion-model", choices=LESION_MODELS, default="uniform",
                    help="FLAIR lesion appearance: uniform (one contrast per patch, models up to "
                         "3.1.0), varied (a contrast per lesion, skewed faint, fainter border) or "
                         "mixed (one of the two per patch)")
    ap.add_argument("--winsorise", type=float, default=0.0,
                    help="share of FLAIR patches clipped at 1.3-2.0 times white matter, as "
                         "intensity-winsorising pipelines leave them (0 up to model 3.1.0)")
    ap.add_argument("--contrast-power", type=float, default=1.0,
                    help="draw the lesion contrast as lo + (hi - lo) * u**power: above 1, faint "
                         "lesions are common and bright ones stay (1, uniform, up to model 3.1.0)")
    ap.add_argument("--lesion-gm-floor", type=float, default=0.0,
                    help="no FLAIR lesion fainter than this multiple of the patch's grey matter "
                         "(real lesions are brighter than cortex); 0 (default, models up to "
                         "3.1.0) leaves it out")
    ap.add_argument("--focus-fraction", type=float, default=0.0,
                    help="share of lesion-centred patches centred on a juxtacortical or "
                         "infratentorial lesion voxel instead of any lesion voxel (where the "
                         "mask has one); 0 (default, models up to 3.2.0) leaves it out")
    ap.add_argument("--focus-balanced", action="store_true",
                    help="focused patches draw the zone first (juxtacortical or "
                         "infratentorial, equal odds), then a lesion voxel of it; off (default, "
                         "models up to 3.3.0): any voxel of either zone")
    ap.add_argument("--fossa-gain", type=str, default="1.0,1.0",
                    help="range of the FLAIR brightness factor of the posterior fossa against "
                         "the cerebrum, 'lo,hi'; 1.0,1.0 (default, models up to 3.3.0) leaves it "
                         "out")
    ap.add_argument("--lesionwise-fraction", type=float, default=0.0,
                    help="share of lesion-centred patches centred on a lesion drawn uniformly "
                         "among the mask's lesions (then any of its voxels) instead of on any "
                         "lesion voxel, so small lesions are centred as often as large ones; 0 "
                         "(default, models up to 3.2.0) leaves it out")
    ap.add_argument("--caps", choices=CAP_MODELS, default="ring",
                    help="periventricular cap hard negatives: ring (lining the whole lateral "
                         "ventricles, models up to 3.2.0) or horns (only within 15 mm of their "
                         "front and back, where caps are a normal finding)")
    ap.add_argument("--gm-contrast", type=str,
                    default=",".join(str(v) for v in DEFAULT_GM_CONTRAST),
                    help="range of FLAIR grey / white matter intensity ratios, 'lo,hi' "
                         "(1.02,1.45 up to model 3.2.0)")
    ap.add_argument("--gm-field", type=float, default=0.0,
                    help="largest amplitude (log intensity) of the smooth regional variation of "
                         "FLAIR grey matter brightness; 0 (models up to 3.2.0) leaves it out")
    ap.add_argument("--healthy-fraction", type=float, default=0.0,
                    help="share of patches with no lesion at all (0 up to model 3.2.0)")
    ap.add_argument("--confluent-fraction", type=float, default=0.0,
                    help="share of patches whose mask is two patients' masks united and grown "
                         "1-3 voxels into white matter (0 up to model 3.2.0)")
    ap.add_argument("--small-fraction", type=float, default=0.0,
                    help="share of patches with 1-15 extra small (3-30 mm3) white-matter "
                         "lesions (0 up to model 3.2.0)")
    ap.add_argument("--ghosting", type=float, default=0.0,
                    help="share of images with a faint shifted copy (0 up to model 3.2.0)")
    ap.add_argument("--normalisation", choices=NORMALISATIONS, default="median",
                    help="intensity normalisation: median (brain median, models up to 3.2.0) "
                         "or wm (white-matter level, "
                         "ms_core.imaging.preprocess.white_matter_level)")
    ap.add_argument("--t1-dropout", type=float, default=0.5,
                    help="share of patches whose T1w channel is zeros; 1 trains a FLAIR-only "
                         "network (0.5 up to model 3.2.0)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights (a run's weights_best.npz) instead of a "
                         "random initialisation: fine-tuning")
    ap.add_argument("--blob-weight", type=float, default=0.0,
                    help="weight of the per-lesion blob loss (Kofler et al. 2023) added to the "
                         "whole-batch loss; 0 (default) leaves it out")
    ap.add_argument("--tversky-beta", type=float, default=0.5,
                    help="weight of false negatives in the overlap loss (false positives get "
                         "1 - beta); 0.5 is soft Dice (models up to 3.1.0), above 0.5 favours "
                         "recall")
    return ap


def recipe_from_command(command: str) -> dict[str, Any]:
    """A run's recipe (what its ``config.json`` holds of the arguments) rebuilt from its
    recorded ``python -m training.seg.train ...`` command, with the defaults of this code for
    options the command leaves out."""
    words = command.split()
    head = ["python", "-m", "training.seg.train"]
    if words[:3] != head:
        raise ValueError(f"not a training command: {command!r}")
    try:
        args = build_parser().parse_args(words[3:])
    except SystemExit as e:  # argparse has printed why
        raise ValueError(f"cannot read the training command {command!r}") from e
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    recipe["widths"] = [int(w) for w in args.widths.split(",")]
    recipe["command"] = command
    return recipe


def recipe_from_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """The synthetic-data recipe of a model card: its ``training.command`` when that is a
    training run, else the last training run among the commands its weights came from
    (``training.initialised_from.commands_before``: a model whose final step was
    ``adapt_bn`` or a soup)."""
    training = card.get("training") or {}
    before = (training.get("initialised_from") or {}).get("commands_before") or []
    for command in [training.get("command"), *reversed(before)]:
        if isinstance(command, str) and command.startswith("python -m training.seg.train "):
            return recipe_from_command(command)
    raise ValueError("the model card names no training.seg.train command")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not 0.0 < args.tversky_beta < 1.0:
        ap.error(f"--tversky-beta must be between 0 and 1, got {args.tversky_beta}")
    if args.blob_weight < 0:
        ap.error(f"--blob-weight must be >= 0, got {args.blob_weight}")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    widths = tuple(int(w) for w in args.widths.split(","))
    write_json(args.out / "config.json", {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "widths": widths,
        "init_sha256": sha256_file(args.init) if args.init is not None else None,
        "git_commit": code_commit()["commit"], "torch": torch.__version__,
        "command": " ".join(["python -m training.seg.train", *(argv or sys.argv[1:])]),
    })

    t0 = time.perf_counter()
    tpl = load_template()
    bank = load_lesion_bank(args.mni_dir, tpl)
    contrast = tuple(float(v) for v in args.lesion_contrast.split(","))
    if len(contrast) != 2 or not 1.0 < contrast[0] < contrast[1]:
        ap.error(f"--lesion-contrast needs 'lo,hi' with 1 < lo < hi, got {args.lesion_contrast!r}")
    make_sampler = functools.partial(recipe_sampler, vars(args), bank)
    try:
        sampler = make_sampler(seed=args.seed)
    except ValueError as e:  # the sampler checks its options (e.g. --winsorise outside 0-1)
        ap.error(str(e))
    val_sampler = make_sampler(seed=args.seed + 10_000)
    val = [val_sampler.sample() for _ in range(args.val_patches)]
    val_x = torch.from_numpy(np.stack([v[0] for v in val]))
    val_y = torch.from_numpy(np.stack([v[1] for v in val]))
    print(f"data ready in {time.perf_counter() - t0:.1f} s: {len(bank.names)} lesion masks",
          flush=True)

    model = UNet3D(2, widths, norm=args.norm)
    if args.init is not None:
        try:
            load_init_weights(model, args.init, "a U-Net", args.widths, args.norm)
        except ValueError as e:
            ap.error(str(e))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    log_path = args.out / "train_log.jsonl"
    log_lines: list[str] = []
    best = -1.0
    t_train = time.perf_counter()
    for step in range(1, args.steps + 1):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [sampler.sample() for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        logits = model(x)
        loss = segmentation_loss(logits, y, args.tversky_beta)
        if args.blob_weight > 0:
            loss = loss + args.blob_weight * blob_loss(logits, lesion_components(y.numpy()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        entry: dict[str, float | int] = {"step": step, "loss": round(loss.item(), 5),
                                         "lr": round(lr, 6),
                                         "seconds": round(time.perf_counter() - t_train, 1)}
        if step % args.val_every == 0 or step == args.steps:
            d = batch_dice(model, val_x, val_y)
            entry["val_dice"] = round(d, 4)
            if d > best:
                best = d
                save_weights(model, args.out / "weights_best.npz")
                entry["saved"] = 1
            print(json.dumps(entry), flush=True)
        if args.checkpoint_every > 0 and step % args.checkpoint_every == 0:
            save_weights(model, args.out / f"weights_step{step}.npz")
        log_lines.append(json.dumps(entry))
        if step % 50 == 0:
            atomic_write_text(log_path, "\n".join(log_lines) + "\n")
    atomic_write_text(log_path, "\n".join(log_lines) + "\n")
    save_weights(model, args.out / "weights_last.npz")
    train_seconds = round(time.perf_counter() - t_train, 1)
    calibrated: dict[str, float] = {}
    if args.norm == "batch" and args.bn_calibration > 0:
        load_weights(model, args.out / "weights_best.npz")
        calibrate_batch_norm(model, sampler, args.bn_calibration, args.batch)
        calibrated = {"bn_calibration_patches": args.bn_calibration,
                      "best_synthetic_val_dice_before_calibration": best}
        best = batch_dice(model, val_x, val_y)
        save_weights(model, args.out / "weights_best.npz")
        print(json.dumps({"calibrated_val_dice": round(best, 4)}), flush=True)
    write_json(args.out / "metrics.json", {
        "best_synthetic_val_dice": best, "steps": args.steps,
        "train_seconds": train_seconds, **calibrated,
        "lesion_masks": list(bank.names),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
