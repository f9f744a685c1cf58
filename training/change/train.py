"""Train the change-detection 3D U-Net on synthetic visit pairs; one seeded command.

Usage (from the repository root, with requirements-train.txt installed)::

    python -m training.change.train --out training/runs/change_v1 --steps 3000

Input (N, 3, P, P, P): follow-up FLAIR, baseline FLAIR registered to it, their difference, each
divided by its white-matter level (:mod:`training.change.synth_pairs`); output (N, 2, P, P, P)
logits: lesion tissue that appeared or grew, lesion tissue that shrank or vanished. Loss: binary
cross-entropy plus a batch-wide soft Dice per channel. Pairs are drawn by one background worker
process while the network trains (deterministic for a given ``--seed``).

Writes to ``--out``: ``config.json`` (arguments, git commit, command), ``train_log.jsonl``,
``weights_best.npz`` (plain arrays: no pickle; best synthetic validation Dice, batch-norm
statistics re-estimated on fresh pairs), ``weights_last.npz`` and ``metrics.json``. Export with
:mod:`training.change.export`.

Real data: lesion masks of open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY),
patient26 excluded; the longitudinal patient12 is validation only (``bench/track_eval.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ms_core.foundation.io import atomic_write_text, sha256_file, write_json
from ms_core.imaging.anatomy import load_template
from ms_core.segmentation.model_store import code_commit
from training.change.synth_pairs import FATE_ODDS, PairSampler
from training.seg.model import NORMS, UNet3D
from training.seg.synth_data import load_lesion_bank
from training.seg.train import (
    DEFAULT_MNI,
    calibrate_on_batches,
    load_init_weights,
    load_weights,
    numbers,
    save_weights,
    soft_dice_loss,
)

__all__ = ["build_parser", "change_loss", "channel_dice", "main", "pair_sampler"]


def pair_sampler(config: dict[str, Any], seed: int) -> PairSampler:
    """The synthetic pairs of a recipe (this module's arguments or a run's ``config.json``)."""
    bank = load_lesion_bank(Path(config["mni_dir"]), load_template())
    lo, hi = (float(v) for v in str(config["lesion_contrast"]).split(","))
    glo, ghi = (float(v) for v in str(config["gm_contrast"]).split(","))
    return PairSampler(bank, int(config["patch"]), seed,
                       no_change_fraction=float(config["no_change_fraction"]),
                       protocol_change_fraction=float(config["protocol_change_fraction"]),
                       new_lesion_fraction=float(config["new_lesion_fraction"]),
                       registration_error=float(config["registration_error"]),
                       lesion_fraction=float(config["lesion_fraction"]), hard_negatives=True,
                       lesion_contrast=(lo, hi), lesion_model="mixed",
                       lesion_gm_floor=float(config["lesion_gm_floor"]),
                       contrast_power=float(config["contrast_power"]),
                       gm_contrast=(glo, ghi), normalisation="wm",
                       grow_voxels=numbers(config.get("grow_voxels", "1.0,2.5"), 2),
                       new_lesion_mm3=numbers(config.get("new_lesion_mm3", "5,110"), 2),
                       new_lesion_count=tuple(int(v) for v in numbers(  # type: ignore[arg-type]
                           config.get("new_lesion_count", "1,4"), 2)),
                       fate_odds=numbers(config.get("fate_odds", ",".join(
                           str(v) for v in FATE_ODDS)), len(FATE_ODDS)))



class _Pairs(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Endless batches from one :class:`PairSampler` (run in a worker process)."""

    def __init__(self, config: dict[str, Any], seed: int, batch: int) -> None:
        self.config, self.seed, self.batch = config, seed, batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.set_num_threads(1)
        sampler = pair_sampler(self.config, self.seed)
        while True:
            pairs = [sampler.sample() for _ in range(self.batch)]
            yield (torch.from_numpy(np.stack([p[0] for p in pairs])),
                   torch.from_numpy(np.stack([p[1] for p in pairs])))


def change_loss(logits: torch.Tensor, target: torch.Tensor,
                weights: tuple[float, ...] = (1.0, 1.0)) -> torch.Tensor:
    """Binary cross-entropy plus the mean over channels of a batch-wide soft Dice loss; with
    ``weights`` other than equal, each channel's two terms weighted (a stronger shrinking
    channel, say)."""
    dice_terms = torch.stack([soft_dice_loss(logits[:, c], target[:, c])
                              for c in range(logits.shape[1])])
    if all(w == weights[0] for w in weights):
        return F.binary_cross_entropy_with_logits(logits, target) + dice_terms.mean()
    w = torch.tensor(weights, dtype=logits.dtype)
    bce = torch.stack([F.binary_cross_entropy_with_logits(logits[:, c], target[:, c])
                       for c in range(logits.shape[1])])
    return ((bce + dice_terms) * w).sum() / w.sum()


def channel_dice(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> list[float]:
    """Voxel Dice per output channel over a whole validation set (logit > 0)."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xs[i:i + 2]) for i in range(0, len(xs), 2)]) > 0
    model.train()
    t = ys > 0.5
    out = []
    for c in range(pred.shape[1]):
        inter = (pred[:, c] & t[:, c]).sum().item()
        out.append(2.0 * inter / max(pred[:, c].sum().item() + t[:, c].sum().item(), 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mni-dir", type=Path, default=DEFAULT_MNI)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--widths", default="12,24,48,96")
    ap.add_argument("--norm", choices=NORMS, default="batch")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer "
                                                          "(one more process draws the pairs)")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-pairs", type=int, default=32)
    ap.add_argument("--bn-calibration", type=int, default=96,
                    help="fresh pairs whose batch-norm statistics replace the running ones")
    ap.add_argument("--no-change-fraction", type=float, default=0.2)
    ap.add_argument("--protocol-change-fraction", type=float, default=0.3)
    ap.add_argument("--new-lesion-fraction", type=float, default=0.5)
    ap.add_argument("--registration-error", type=float, default=1.0)
    ap.add_argument("--lesion-fraction", type=float, default=0.7)
    ap.add_argument("--lesion-contrast", default="1.15,2.4")
    ap.add_argument("--lesion-gm-floor", type=float, default=1.05)
    ap.add_argument("--contrast-power", type=float, default=1.5)
    ap.add_argument("--gm-contrast", default="0.95,1.6")
    ap.add_argument("--grow-voxels", default="1.0,2.5",
                    help="how far a lesion grows or shrinks, voxels ('lo,hi'; 0.6 gives "
                         "one-voxel rims)")
    ap.add_argument("--new-lesion-mm3", default="5,110",
                    help="volume range of the small new lesions ('lo,hi')")
    ap.add_argument("--new-lesion-count", default="1,4",
                    help="how many small new lesions a pair with them gets ('lo,hi')")
    ap.add_argument("--fate-odds", default=",".join(str(v) for v in FATE_ODDS),
                    help="odds of stable, grow, shrink, appear, vanish per lesion")
    ap.add_argument("--channel-weights", default="1,1",
                    help="loss weight of the appeared and the vanished channel")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights (a run's weights_best.npz, same --widths "
                         "and --norm) instead of a random initialisation")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    widths = tuple(int(w) for w in args.widths.split(","))
    write_json(args.out / "config.json", {
        **config, "widths": widths,
        "init_sha256": sha256_file(args.init) if args.init is not None else None,
        "git_commit": code_commit()["commit"],
        "torch": torch.__version__,
        "command": " ".join(["python -m training.change.train", *(argv or sys.argv[1:])]),
    })
    val_sampler = pair_sampler(config, args.seed + 10_000)
    val = [val_sampler.sample() for _ in range(args.val_pairs)]
    val_x = torch.from_numpy(np.stack([v[0] for v in val]))
    val_y = torch.from_numpy(np.stack([v[1] for v in val]))
    loader = torch.utils.data.DataLoader(_Pairs(config, args.seed, args.batch), batch_size=None,
                                         num_workers=1, prefetch_factor=4)
    weights = numbers(args.channel_weights, 2)
    model = UNet3D(3, widths, norm=args.norm, out_channels=2)
    if args.init is not None:
        try:
            load_init_weights(model, args.init, "a change U-Net", args.widths, args.norm)
        except ValueError as e:
            raise SystemExit(str(e)) from e
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    log_lines: list[str] = []
    best, t0 = -1.0, time.perf_counter()
    batches = iter(loader)
    for step in range(1, args.steps + 1):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = change_loss(model(x), y, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        entry: dict[str, Any] = {"step": step, "loss": round(loss.item(), 5), "lr": round(lr, 6),
                                 "seconds": round(time.perf_counter() - t0, 1)}
        if step % args.val_every == 0 or step == args.steps:
            dice = channel_dice(model, val_x, val_y)
            entry["val_dice"] = [round(d, 4) for d in dice]
            if float(np.mean(dice)) > best:
                best = float(np.mean(dice))
                save_weights(model, args.out / "weights_best.npz")
                entry["saved"] = 1
            print(json.dumps(entry), flush=True)
        log_lines.append(json.dumps(entry))
        if step % 50 == 0 or step == args.steps:
            atomic_write_text(args.out / "train_log.jsonl", "\n".join(log_lines) + "\n")
    save_weights(model, args.out / "weights_last.npz")
    train_seconds = round(time.perf_counter() - t0, 1)
    metrics: dict[str, Any] = {"best_synthetic_val_dice_mean": best, "steps": args.steps,
                               "train_seconds": train_seconds}
    if args.norm == "batch" and args.bn_calibration > 0:
        load_weights(model, args.out / "weights_best.npz")
        calibrate_on_batches(model, (next(batches)[0].numpy()
                                     for _ in range(max(1, args.bn_calibration // args.batch))))
        dice = channel_dice(model, val_x, val_y)
        metrics.update(bn_calibration_pairs=args.bn_calibration,
                       val_dice_after_calibration=[round(d, 4) for d in dice])
        save_weights(model, args.out / "weights_best.npz")
    write_json(args.out / "metrics.json", metrics)
    print(json.dumps(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
