"""Average the weights of several fine-tuned runs into one network (a "model soup").

Usage (from the repository root, with requirements-train.txt installed)::

    python -m training.seg.soup --out training/runs/seg_soup1 \\
        training/runs/seg_v11/weights_best.npz training/runs/seg_v15/weights_best.npz

Runs fine-tuned from the same starting weights stay in one basin of the loss, so the plain
mean of their weights is itself a good network, usually better than each run (Wortsman et al.
2022, "Model soups", ICML). It costs one network at inference, unlike an ensemble. Batch-norm
statistics do not average like weights: they are re-estimated for the averaged weights on
synthetic patches of the first ingredient's recipe (its run's ``config.json``).

Writes to ``--out`` what :mod:`training.seg.export` reads: ``weights_best.npz``,
``config.json`` (the first ingredient's recipe, this command and each ingredient's weights,
sha256 and training command) and ``metrics.json``.

Real data: lesion masks of open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY),
patient26 excluded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ms_core.foundation.io import read_json, sha256_file
from ms_core.imaging.anatomy import load_template
from training.seg.model import UNet3D
from training.seg.synth_data import load_lesion_bank
from training.seg.train import (
    DEFAULT_MNI,
    batch_dice,
    calibrate_batch_norm,
    recipe_sampler,
    save_weights,
    write_derived_run,
)


def average_weights(paths: list[Path]) -> dict[str, np.ndarray]:
    """Element-wise mean of the state dicts in ``paths`` (all the same architecture).

    Integer entries (batch-norm step counters) are taken from the first file; they do not
    enter inference.
    """
    states = []
    for p in paths:
        with np.load(p, allow_pickle=False) as data:
            states.append({k: data[k] for k in data.files})
    keys = set(states[0])
    for p, s in zip(paths[1:], states[1:], strict=True):
        if set(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"{p}: not the same network as {paths[0]} (different tensors)")
    out = {}
    for k in states[0]:
        if np.issubdtype(states[0][k].dtype, np.floating):
            out[k] = np.mean([s[k].astype(np.float64) for s in states], axis=0).astype(
                states[0][k].dtype)
        else:
            out[k] = states[0][k]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ingredients", type=Path, nargs="+",
                    help="weights files (a run's weights_best.npz or weights_last.npz), each "
                         "in its run folder with config.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bn-calibration", type=int, default=96,
                    help="synthetic patches used to re-estimate the batch-norm statistics")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--val-patches", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if len(args.ingredients) < 2:
        ap.error("a soup needs at least two weights files")
    configs = []
    for p in args.ingredients:
        cfg = p.parent / "config.json"
        if not p.is_file() or not cfg.is_file():
            ap.error(f"{p}: no such weights file with a config.json beside it")
        configs.append(read_json(cfg))
    recipe = configs[0]
    for p, cfg in zip(args.ingredients[1:], configs[1:], strict=True):
        if (tuple(cfg["widths"]), cfg.get("norm")) != (tuple(recipe["widths"]), recipe.get("norm")):
            ap.error(f"{p}: widths/norm {cfg['widths']}/{cfg.get('norm')} differ from "
                     f"{args.ingredients[0]}")
    try:
        state = average_weights(args.ingredients)
    except ValueError as e:
        ap.error(str(e))

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = UNet3D(2, tuple(int(w) for w in recipe["widths"]), norm=str(recipe.get("norm")))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    bank = load_lesion_bank(Path(str(recipe.get("mni_dir", DEFAULT_MNI))), load_template())
    val_sampler = recipe_sampler(recipe, bank, args.seed + 10_000)
    val = [val_sampler.sample() for _ in range(args.val_patches)]
    val_x = torch.from_numpy(np.stack([v[0] for v in val]))
    val_y = torch.from_numpy(np.stack([v[1] for v in val]))
    metrics: dict[str, object] = {"ingredients": len(args.ingredients)}
    if recipe.get("norm") == "batch" and args.bn_calibration > 0:
        metrics["synthetic_val_dice_before_calibration"] = batch_dice(model, val_x, val_y)
        calibrate_batch_norm(model, recipe_sampler(recipe, bank, args.seed), args.bn_calibration,
                             int(recipe["batch"]))
        metrics["bn_calibration_patches"] = args.bn_calibration
    metrics["best_synthetic_val_dice"] = batch_dice(model, val_x, val_y)
    save_weights(model, args.out / "weights_best.npz")

    write_derived_run(args.out, {
        **{k: v for k, v in recipe.items() if k not in ("command", "out", "init", "init_sha256",
                                                         "git_commit", "seed", "steps")},
        "out": str(args.out), "seed": args.seed, "steps": None, "init": None,
        "bn_calibration": args.bn_calibration,
        "ingredients": [{"weights": str(p), "weights_sha256": sha256_file(p),
                         "command": cfg.get("command")}
                        for p, cfg in zip(args.ingredients, configs, strict=True)],
    }, metrics, "training.seg.soup", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
