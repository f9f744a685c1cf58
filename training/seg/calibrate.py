"""Probability calibration of a trained lesion network on synthetic patches (Platt scaling).

Usage::

    python -m training.seg.calibrate --run training/runs/seg_v14 [--weights weights_best.npz]

The probability the network gives should mean the same on every scanner. The logits ``z`` are
mapped to ``sigmoid(scale * z + shift)`` (Platt 1999; with ``shift = 0`` this is temperature
scaling, Guo et al., ICML 2017), with ``scale`` and ``shift`` chosen to minimise the voxel-wise
binary cross-entropy inside the brain on fresh synthetic patches of the run's own recipe (its
``config.json``; seed ``seed + 20000``, never seen in training or its validation). A shift moves
the mask at threshold 0.5 to where the synthetic patches say a voxel is more likely lesion than
not. Writes ``calibration.json`` into the run folder, which :mod:`training.seg.export` folds into
the ONNX graph; the real scans' calibration is reported by :mod:`training.seg.report` (ECE per
scan).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ms_core.foundation.io import read_json, write_json
from ms_core.imaging.anatomy import load_template
from ms_core.segmentation.evaluate import calibration_error
from training.seg.model import UNet3D
from training.seg.synth_data import load_lesion_bank
from training.seg.train import DEFAULT_MNI, load_weights, recipe_sampler

CALIBRATION_FILE = "calibration.json"


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, *, lo: float = 0.25,
                    hi: float = 4.0, steps: int = 40) -> float:
    """The temperature in [``lo``, ``hi``] that minimises the mean binary cross-entropy of
    ``sigmoid(logits / T)`` against ``target`` (golden-section search on log T)."""
    def nll(log_t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(logits / math.exp(log_t), target))

    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return round(math.exp((a + b) / 2.0), 4)


def fit_platt(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """``(scale, shift)`` minimising the mean binary cross-entropy of
    ``sigmoid(scale * logits + shift)`` against ``target`` (L-BFGS from the temperature fit)."""
    scale = torch.tensor(1.0 / fit_temperature(logits, target), dtype=torch.float64,
                         requires_grad=True)
    shift = torch.zeros((), dtype=torch.float64, requires_grad=True)
    z, t = logits.to(torch.float64), target.to(torch.float64)
    opt = torch.optim.LBFGS([scale, shift], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(scale * z + shift, t)
        loss.backward()
        return loss

    opt.step(closure)
    return round(scale.item(), 4), round(shift.item(), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="training run folder")
    ap.add_argument("--weights", default="weights_best.npz")
    ap.add_argument("--patches", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--operating-point", type=float, default=None,
                    help="no fit: shift the logits so that the exported probability 0.5 is "
                         "this raw probability (a threshold chosen on the validation sets, "
                         "folded into the graph so that every consumer's 0.5 uses it)")
    args = ap.parse_args(argv)
    command = " ".join(["python -m training.seg.calibrate", *(argv or sys.argv[1:])])
    if args.operating_point is not None:
        t = args.operating_point
        if not 0.0 < t < 1.0:
            ap.error(f"--operating-point must be in (0, 1), got {t}")
        result = {"scale": 1.0, "shift": -math.log(t / (1.0 - t)), "weights": args.weights,
                  "operating_point": t, "command": command}
        write_json(args.run / CALIBRATION_FILE, result)
        print(result, flush=True)
        return 0
    torch.set_num_threads(args.threads)
    config = read_json(args.run / "config.json")
    net = UNet3D(2, tuple(int(w) for w in config["widths"]), norm=config.get("norm", "instance"))
    load_weights(net, args.run / args.weights)
    net.eval()
    bank = load_lesion_bank(Path(config.get("mni_dir", DEFAULT_MNI)), load_template())
    sampler = recipe_sampler(config, bank, seed=int(config["seed"]) + 20_000)
    logits, targets, inside = [], [], []
    with torch.no_grad():
        for _ in range(args.patches):
            x, y = sampler.sample()
            logits.append(net(torch.from_numpy(x[None]))[0, 0])
            targets.append(torch.from_numpy(y[0]))
            inside.append(x[0] > 0)
    z = torch.stack(logits)
    t = torch.stack(targets)
    brain = torch.from_numpy(np.stack(inside))
    scale, shift = fit_platt(z[brain], t[brain])
    truth, region = t.numpy(), brain.numpy()

    def ece(a: float, b: float) -> float | None:
        return calibration_error(torch.sigmoid(a * z + b).numpy(), truth, region, min_prob=0.05)

    result = {"scale": scale, "shift": shift, "weights": args.weights, "patches": args.patches,
              "seed": int(config["seed"]) + 20_000,
              "ece_uncertain_before": ece(1.0, 0.0), "ece_uncertain_after": ece(scale, shift),
              "command": command}
    write_json(args.run / CALIBRATION_FILE, result)
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
