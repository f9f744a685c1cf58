"""Re-estimate a trained network's batch-norm statistics on unlabelled real FLAIR (AdaBN).

Usage (from the repository root, with requirements-train.txt installed)::

    python -m training.seg.adapt_bn --weights models_onnx/lesion_seg/weights.npz \\
        --config models_onnx/lesion_seg/model.json --out training/runs/seg_adabn \\
        --real ../shared/data/open_ms_data/longitudinal/raw/patient12/study1_FLAIR.nii.gz \\
               ../shared/data/open_ms_data/longitudinal/raw/patient12/study2_FLAIR.nii.gz

The network is trained on synthetic patches, and its batch-norm layers keep the mean and
variance of their inputs over those patches. Replacing these statistics by the ones the same
layers see on real scans is a cheap form of domain adaptation (Li et al. 2018, "Adaptive batch
normalization for practical domain adaptation", Pattern Recognition 80:109-117). No label is
used and no weight changes; only the normalisation moves.

The real scans go through the inference pipeline (``ms_core.segmentation.segment``): 1 mm grid,
brain extraction (template registration, or ``--skull-stripped``), crop to the brain, intensity
normalisation, padding, and the sliding windows of the default settings (64³, 25 % overlap,
each window also flipped in x, y and z), FLAIR alone (the T1w channel zero) as the app
segments a visit. So the statistics are those of the very windows the network sees at
inference. ``--real-fraction`` mixes in synthetic patches of the run's recipe (its
``config.json``): 1.0 is real windows only, 0.0 the plain re-estimation that training ends with.

Never pass patient26 of open_ms_data: it is the issue's held-out test scan.

Writes to ``--out`` what :mod:`training.seg.export` reads: ``weights_best.npz``,
``config.json`` (the recipe, this command, the real scans with their sha256) and
``metrics.json``.

Real data: open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63; Lesjak et al. 2016,
Neuroinformatics 14:403-420; CC-BY).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ms_core.foundation.io import load_volume, read_json, sha256_file
from ms_core.imaging.anatomy import load_template
from ms_core.imaging.preprocess import crop_box
from ms_core.segmentation.inference import window_corners
from ms_core.segmentation.segment import (
    TTA_FLIPS,
    SegmentParams,
    flair_on_working_grid,
    network_input,
)
from training.seg.model import UNet3D
from training.seg.synth_data import PatchSampler, load_lesion_bank
from training.seg.train import (
    DEFAULT_MNI,
    batch_dice,
    calibrate_on_batches,
    recipe_from_card,
    recipe_sampler,
    save_weights,
    write_derived_run,
)


def scan_network_input(flair_path: Path, *, skull_stripped: bool, multiple_of: int, patch: int
                       ) -> np.ndarray:
    """(2, X, Y, Z) float32 network input of a FLAIR scan, as ``segment`` builds it without a
    T1w (:func:`ms_core.segmentation.segment.network_input` on the brain's box of the working
    grid)."""
    flair = load_volume(flair_path, "FLAIR")
    _, f_work, brain, _ = flair_on_working_grid(
        flair, SegmentParams(method="network", skull_stripped=skull_stripped))
    box = crop_box(brain, margin=4)
    x_pad, _ = network_input(f_work[box], None, brain[box], multiple_of, patch)
    return x_pad


def inference_windows(x: np.ndarray, patch: int, overlap: float,
                      flips: Sequence[tuple[int, ...]] = TTA_FLIPS) -> list[np.ndarray]:
    """Every (C, p, p, p) window the sliding-window inference feeds the network for ``x``
    (C, X, Y, Z), each in all ``flips``."""
    out = []
    for i, j, k in window_corners(x.shape[1:], (patch,) * 3, overlap):
        w = x[:, i:i + patch, j:j + patch, k:k + patch]
        for axes in flips:
            flipped = np.flip(w, tuple(a + 1 for a in axes)) if axes else w
            out.append(np.ascontiguousarray(flipped))
    return out


def brain_patches(x: np.ndarray, patch: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` (C, p, p, p) patches of ``x`` (C, X, Y, Z) centred as training centres its
    patches without a lesion: on a random brain voxel (FLAIR channel above zero), moved by up
    to a quarter patch in each axis; zeros beyond the image."""
    rng = np.random.default_rng(seed)
    brain = np.argwhere(x[0] > 0)
    if not len(brain):
        raise ValueError("the image has no brain voxel to centre a patch on")
    half = patch // 2
    padded = np.pad(x, [(0, 0)] + [(half, half)] * 3)
    out = []
    for _ in range(count):
        centre = brain[rng.integers(len(brain))] + rng.uniform(-patch / 4, patch / 4, 3)
        lo = np.clip(np.round(centre).astype(int), 0, np.array(x.shape[1:]) - 1)
        out.append(np.ascontiguousarray(
            padded[:, lo[0]:lo[0] + patch, lo[1]:lo[1] + patch, lo[2]:lo[2] + patch]))
    return out


def mixed_batches(real: list[np.ndarray], synthetic: PatchSampler | None, *, batches: int,
                  batch: int, real_fraction: float, seed: int) -> Iterator[np.ndarray]:
    """``batches`` batches of ``batch`` patches, each drawn from ``real`` with probability
    ``real_fraction`` (shuffled, without repeats until all are used), else from ``synthetic``."""
    if not 0.0 <= real_fraction <= 1.0:
        raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
    if real_fraction > 0 and not real:
        raise ValueError("real_fraction > 0 needs real windows")
    if real_fraction < 1 and synthetic is None:
        raise ValueError("real_fraction < 1 needs a synthetic sampler")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(batches):
        items = []
        for _ in range(batch):
            if rng.random() < real_fraction:
                if not order:
                    order = list(rng.permutation(len(real)))
                items.append(real[order.pop()])
            else:
                assert synthetic is not None
                items.append(synthetic.sample()[0])
        yield np.stack(items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="trained weights (.npz)")
    ap.add_argument("--config", type=Path, required=True,
                    help="the recipe of the synthetic patches: the training run's config.json, "
                         "or a model card (model.json) whose training command is read back")
    ap.add_argument("--real", type=Path, nargs="*", default=[],
                    help="unlabelled real FLAIR scans (NIfTI); never patient26")
    ap.add_argument("--skull-stripped", action="store_true",
                    help="the real scans are already skull-stripped")
    ap.add_argument("--real-fraction", type=float, default=1.0)
    ap.add_argument("--batches", type=int, default=0,
                    help="calibration batches (default: enough for every real window once)")
    ap.add_argument("--overlap", type=float, default=SegmentParams().overlap)
    ap.add_argument("--real-sampling", choices=("tiles", "brain"), default="tiles",
                    help="real patches: the sliding-window tiles of inference (with flips), or "
                         "patches centred on brain voxels as training draws its lesion-free ones")
    ap.add_argument("--real-patches", type=int, default=192,
                    help="with --real-sampling brain: patches per real scan")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--val-patches", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not 0.0 <= args.real_fraction <= 1.0:
        ap.error(f"--real-fraction must be between 0 and 1, got {args.real_fraction}")
    if args.real_fraction > 0 and not args.real:
        ap.error("--real-fraction above 0 needs --real scans")
    if args.real_fraction == 0 and args.batches <= 0:
        ap.error("with synthetic patches only (--real-fraction 0), give the number of --batches")
    for p in (args.weights, args.config, *args.real):
        if not p.is_file():
            ap.error(f"{p}: no such file")
    if any("patient26" in str(p) for p in args.real):
        ap.error("patient26 is the held-out test scan; it must not adapt the network")
    recipe = read_json(args.config)
    if isinstance(recipe.get("training"), dict):  # a model card: its recorded command
        try:
            recipe = recipe_from_card(recipe)
        except ValueError as e:
            ap.error(f"{args.config}: {e}")
    if recipe.get("norm") != "batch":
        ap.error(f"{args.config}: the recipe's network has no batch norm "
                 f"(norm={recipe.get('norm')})")
    patch = int(recipe["patch"])

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = UNet3D(2, tuple(int(w) for w in recipe["widths"]), norm="batch")
    with np.load(args.weights, allow_pickle=False) as data:
        model.load_state_dict({k: torch.from_numpy(data[k]) for k in data.files})
    model.eval()

    real: list[np.ndarray] = []
    for p in args.real if args.real_fraction > 0 else []:
        x = scan_network_input(p, skull_stripped=args.skull_stripped, multiple_of=8, patch=patch)
        if args.real_sampling == "tiles":
            real.extend(inference_windows(x, patch, args.overlap))
        else:
            real.extend(brain_patches(x, patch, args.real_patches, args.seed + len(real)))
    bank = load_lesion_bank(Path(str(recipe.get("mni_dir", DEFAULT_MNI))), load_template())
    val_sampler = recipe_sampler(recipe, bank, args.seed + 10_000)
    val = [val_sampler.sample() for _ in range(args.val_patches)]
    val_x = torch.from_numpy(np.stack([v[0] for v in val]))
    val_y = torch.from_numpy(np.stack([v[1] for v in val]))
    batch = int(recipe["batch"])
    n_batches = args.batches or max(1, round(len(real) / batch / args.real_fraction))
    metrics: dict[str, object] = {
        "synthetic_val_dice_before": batch_dice(model, val_x, val_y),
        "real_windows": len(real), "real_fraction": args.real_fraction,
    }
    synthetic = recipe_sampler(recipe, bank, args.seed) if args.real_fraction < 1 else None
    metrics["calibration_batches"] = calibrate_on_batches(
        model, mixed_batches(real, synthetic, batches=n_batches, batch=batch,
                             real_fraction=args.real_fraction, seed=args.seed))
    metrics["best_synthetic_val_dice"] = batch_dice(model, val_x, val_y)
    args.out.mkdir(parents=True, exist_ok=True)
    save_weights(model, args.out / "weights_best.npz")
    write_derived_run(args.out, {
        **{k: v for k, v in recipe.items() if k not in ("command", "out", "git_commit")},
        "out": str(args.out),
        "init": str(args.weights), "init_sha256": sha256_file(args.weights),
        "init_command": recipe.get("command"),
        "adapted_bn": {"real": [{"path": str(p), "sha256": sha256_file(p)} for p in args.real],
                       "real_fraction": args.real_fraction, "overlap": args.overlap,
                       "real_sampling": args.real_sampling,
                       "real_patches": (args.real_patches if args.real_sampling == "brain"
                                        else None),
                       "batches": metrics["calibration_batches"]},
    }, metrics, "training.seg.adapt_bn", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
