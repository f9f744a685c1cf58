"""Export trained U-Net weights to ONNX, check parity with torch, write the card and manifest.

Usage::

    python -m training.seg.export --run training/runs/seg_v1 [--weights weights_best.npz]

Writes ``models_onnx/lesion_seg/{model.onnx, model.json, weights.npz}`` and updates
``models_onnx/manifest.json``. The export fails (exit 1) unless onnxruntime and torch agree:
Dice >= 0.999 between thresholded masks and max |delta p| <= 1e-3 on a test volume.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ms_core.foundation.io import read_json, sha256_file, write_json
from ms_core.imaging.anatomy import load_template
from ms_core.segmentation.evaluate import dice
from ms_core.segmentation.model_store import MODELS_DIR, register_model
from training.seg.calibrate import CALIBRATION_FILE
from training.seg.model import UNet3D, describe, use_stable_instance_norm
from training.seg.synth_data import PatchSampler, load_lesion_bank
from training.seg.train import DEFAULT_MNI, load_weights

NAME = "lesion_seg"


class _WithSigmoid(torch.nn.Module):
    """The network's probability: ``sigmoid(scale * logits + shift)`` (Platt calibration;
    identity without it)."""

    def __init__(self, net: torch.nn.Module, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.scale, self.shift = float(scale), float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if (self.scale, self.shift) != (1.0, 0.0):
            logits = logits * self.scale + self.shift
        return torch.sigmoid(logits)


def parity(model: torch.nn.Module, onnx_path: Path, x: np.ndarray) -> dict[str, float]:
    """Compare torch and onnxruntime (CPU) outputs on ``x`` (N, C, X, Y, Z)."""
    with torch.no_grad():
        p_torch = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p_onnx = sess.run(None, {"image": x})[0]
    return {"max_abs_prob_diff": float(np.abs(p_torch - p_onnx).max()),
            "mask_dice": dice(p_torch >= 0.5, p_onnx >= 0.5)}


def export_graph(model: torch.nn.Module, tmp: Path, channels: int) -> None:
    """``model`` as ONNX (opset 17) at ``tmp``: input ``image`` (N, ``channels``, X, Y, Z) and
    output ``prob``, batch and spatial axes dynamic."""
    axes = {0: "n", 2: "x", 3: "y", 4: "z"}
    torch.onnx.export(model, (torch.zeros(1, channels, 64, 64, 64),), str(tmp),
                      input_names=["image"], output_names=["prob"], opset_version=17,
                      dynamo=False, dynamic_axes={"image": axes, "prob": axes})


def publish(models_dir: Path, name: str, card: dict[str, object], digest: str) -> None:
    """Write ``models_dir/name/model.json`` and register the model in the manifest."""
    write_json(models_dir / name / "model.json", card)
    register_model(models_dir, name, {"onnx": f"{name}/model.onnx",
                                      "card": f"{name}/model.json", "sha256": digest})
    print(f"exported {models_dir / name / 'model.onnx'} sha256 {digest}")


def install_checked(reference: torch.nn.Module, tmp: Path, x: np.ndarray, weights: Path
                    ) -> tuple[str, dict[str, float]] | None:
    """Install an exported ``tmp`` (``<dir>/model.onnx.tmp``) as ``<dir>/model.onnx``, with
    ``weights`` copied beside it as ``weights.npz``, when onnxruntime agrees with the torch
    ``reference`` on ``x`` (max |delta p| <= 1e-3, Dice >= 0.999 of the thresholded maps).

    Returns the model's sha256 and the parity figures; None (``tmp`` removed, the reason on
    stderr) when they disagree.
    """
    check = parity(reference, tmp, x)
    print(check, flush=True)
    if check["max_abs_prob_diff"] > 1e-3 or check["mask_dice"] < 0.999:
        tmp.unlink()
        print("parity check failed: model not exported", file=sys.stderr)
        return None
    tmp.replace(tmp.with_name("model.onnx"))
    shutil.copyfile(weights, tmp.with_name("weights.npz"))
    return sha256_file(tmp.with_name("model.onnx")), check


def _initialised_from(config: dict[str, object]) -> dict[str, object] | None:
    """Where a fine-tuning run's starting weights came from (``--init``), else ``None``.

    Follows the chain back through each parent run's ``config.json`` where it is on disk, so
    the card lists every command needed to reproduce the weights, oldest first.
    """
    if not config.get("init"):
        return None
    commands: list[object] = []
    cur: dict[str, object] | None = config
    while cur is not None and cur.get("init"):
        parent = Path(str(cur["init"])).parent
        if (parent / "config.json").exists():
            cur = read_json(parent / "config.json")
        elif (parent / "model.json").exists():  # a shipped model's weights.npz: its card
            training = read_json(parent / "model.json").get("training", {})
            commands.insert(0, training.get("command"))
            before = (training.get("initialised_from") or {}).get("commands_before", [])
            commands[:0] = list(before)
            break
        else:
            cur = None
        commands.insert(0, cur.get("command") if cur else None)
    return {"weights": config["init"], "weights_sha256": config.get("init_sha256"),
            "commands_before": commands}


#: Training options that change the synthetic data or the loss, with the value runs made
#: before the option existed used.
_RECORDED_OPTIONS = {"noise": "white", "lesion_model": "uniform", "winsorise": 0.0,
                     "tversky_beta": 0.5, "blob_weight": 0.0, "lesion_gm_floor": 0.0,
                     "contrast_power": 1.0, "focus_fraction": 0.0,
                     "lesionwise_fraction": 0.0, "caps": "ring", "gm_contrast": "1.02,1.45",
                     "gm_field": 0.0, "healthy_fraction": 0.0, "confluent_fraction": 0.0,
                     "small_fraction": 0.0, "ghosting": 0.0, "normalisation": "median",
                     "t1_dropout": 0.5, "fossa_gain": "1.0,1.0", "focus_balanced": False}


_SYNTHETIC_DATA = ("synthetic MNI152 volumes with 27 real consensus lesion masks of open_ms_data "
                   "(Lesjak et al. 2018, CC-BY), patient26 excluded")


def _training_data(config: dict[str, object]) -> str:
    """What the weights were trained on, for the card."""
    finetune = config.get("finetune")
    if isinstance(finetune, dict):
        return (f"fine-tuned on the expert masks of {finetune['study']} (patients "
                f"{', '.join(finetune['train_participants'])}; validated on "
                f"{', '.join(finetune['val_participants'])}), mixed with "
                f"{finetune['synthetic_fraction']:.0%} {_SYNTHETIC_DATA}")
    return (f"{_SYNTHETIC_DATA}; no image of the real validation set (patient26, MSLesSeg P18, "
            "P39)")


def _recorded_options(config: dict[str, object]) -> dict[str, object]:
    """The run's data and loss options for the card (older runs: the value they trained with)."""
    return {k: config.get(k, default) for k, default in _RECORDED_OPTIONS.items()}


def run_to_export(description: str, argv: list[str] | None
                  ) -> tuple[argparse.Namespace, dict[str, Any], dict[str, Any]]:
    """An export command's arguments (``--run``, ``--weights``, ``--models-dir``,
    ``--version``) and the run's ``config.json`` and ``metrics.json``."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="training run folder")
    ap.add_argument("--weights", default="weights_best.npz")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--version", default="1.0.0")
    args = ap.parse_args(argv)
    return args, read_json(args.run / "config.json"), read_json(args.run / "metrics.json")


def main(argv: list[str] | None = None) -> int:
    args, config, metrics = run_to_export(__doc__ or "", argv)
    widths = tuple(int(w) for w in config["widths"])
    net = UNet3D(2, widths, norm=config.get("norm", "instance"))
    load_weights(net, args.run / args.weights)
    net.eval()
    calibration_path = args.run / CALIBRATION_FILE
    calibration = read_json(calibration_path) if calibration_path.exists() else None
    if calibration is not None and calibration.get("weights") != args.weights:
        print(f"{calibration_path} was fitted for {calibration.get('weights')}, not "
              f"{args.weights}: run training.seg.calibrate again", file=sys.stderr)
        return 1
    scale, shift = ((float(calibration["scale"]), float(calibration["shift"])) if calibration
                    else (1.0, 0.0))
    reference = _WithSigmoid(net, scale, shift).eval()  # the trained torch model
    export_net = copy.deepcopy(net)
    use_stable_instance_norm(export_net)  # same maths; keeps onnxruntime close to torch
    model = _WithSigmoid(export_net, scale, shift).eval()

    out_dir = args.models_dir / NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.onnx.tmp"
    export_graph(model, tmp, 2)
    # Parity on realistic synthetic patches (one lesion-rich batch, larger than training size).
    bank = load_lesion_bank(Path(config.get("mni_dir", DEFAULT_MNI)), load_template())
    sampler = PatchSampler(bank, 96, seed=424242)
    x = np.stack([sampler.sample()[0] for _ in range(2)]).astype(np.float32)
    installed = install_checked(reference, tmp, x, args.run / args.weights)
    if installed is None:
        return 1
    digest, check = installed
    card_path = out_dir / "model.json"
    old = read_json(card_path) if card_path.exists() else {}
    white_matter = config.get("normalisation", "median") == "wm"
    t1_ignored = float(str(config.get("t1_dropout", 0.5))) >= 1.0
    card = {
        "name": NAME, "version": args.version, "sha256": digest,
        "task": "MS white-matter lesion segmentation (binary), research use only",
        "architecture": describe(net),
        "input": {"name": "image", "layout": "NCXYZ (x, y, z in RAS+ voxel order)",
                  "channels": ["FLAIR", "T1w"],
                  "t1w": "ignored" if t1_ignored else "used",
                  "missing_channel": ("zeros (trained without T1w: the channel is always zeros)"
                                      if t1_ignored else "zeros (T1w optional)"),
                  "patch_size": [64, 64, 64], "multiple_of": 8, "dtype": "float32"},
        "output": {"name": "prob", "layout": "N1XYZ",
                   "meaning": "lesion probability: sigmoid(scale * logits + shift)",
                   "scale": scale, "shift": shift, "calibration": calibration},
        "label_map": {"0": "background", "1": "lesion"},
        "threshold": 0.5,
        "preprocessing": {"spacing_mm": 1.0, "orientation": "RAS+ axis-aligned working grid",
                          "intensity_reference": ("white_matter" if white_matter
                                                  else "brain_median"),
                          "normalisation": (
                              "divide by the white-matter level (peak of the histogram inside "
                              "the registered MNI white-matter prior); zero outside the brain"
                              if white_matter else
                              "divide by the median intensity inside the brain mask; zero "
                              "outside"),
                          "brain_extraction": "MNI152 brain mask registered to the FLAIR "
                                              "(skipped with --skull-stripped)"},
        "training": {"command": config.get("command"), "seed": config.get("seed"),
                     "steps": config.get("steps"),
                     **_recorded_options(config),
                     "initialised_from": _initialised_from(config),
                     # training.seg.soup: the runs whose weights were averaged
                     **({"soup_of": config["ingredients"]} if config.get("ingredients") else {}),
                     "git_commit_at_launch": config.get(
                         "git_commit"), "torch": config.get("torch"),
                     "data": _training_data(config),
                     # training.seg.finetune: the study, its split and the starting model
                     **({"finetune": config["finetune"]} if config.get("finetune") else {}),
                     "norm": net.norm,
                     "bn_calibration_patches": metrics.get("bn_calibration_patches"),
                     "best_synthetic_val_dice": metrics.get("best_synthetic_val_dice"),
                     "train_seconds": metrics.get("train_seconds")},
        "export": {"opset": 17, "onnxruntime": ort.__version__, "parity": check},
        "evaluation": old.get("evaluation", {}),
    }
    publish(args.models_dir, NAME, card, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
