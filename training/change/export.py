"""Export the change-detection U-Net to ONNX, check parity with torch, write card and manifest.

Usage::

    python -m training.change.export --run training/runs/change_v1 [--weights weights_best.npz]

Writes ``models_onnx/lesion_change/{model.onnx, model.json, weights.npz}`` and updates
``models_onnx/manifest.json``. The export fails (exit 1) unless onnxruntime and torch agree on
fresh synthetic pairs (max |delta p| <= 1e-3, Dice >= 0.999 of the thresholded maps).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort

from ms_core.foundation.io import atomic_write_text, read_json
from training.change.train import pair_sampler
from training.seg.export import (
    _WithSigmoid,
    export_graph,
    install_checked,
    publish,
    run_to_export,
)
from training.seg.model import UNet3D, describe
from training.seg.report import _fmt
from training.seg.train import load_weights

NAME = "lesion_change"
#: The network's input channels, in order (:func:`ms_core.longitudinal.tracking.change_channels`).
CHANNELS = ("FLAIR follow-up", "FLAIR baseline registered to the follow-up",
            "difference (follow-up - baseline)")


def card_markdown(card: dict[str, Any]) -> str:
    """The short human-readable model card (``MODEL_CARD.md``), generated from ``model.json``."""
    ev = card.get("evaluation") or {}
    p12 = (ev.get("patient12") or {}).get("any_change") or {}
    proto, none = ev.get("protocol_change") or {}, ev.get("no_change") or {}
    tr = card["training"]
    rows = "\n".join(f"| {label} | {_fmt(value)} |" for label, value in (
        ("patient12 (real pair) lesion F1 of change", p12.get("f1", "not measured")),
        ("patient12 voxel Dice of change", p12.get("dice", "not measured")),
        ("synthetic 2D protocol-change pairs, new-lesion F1",
         proto.get("new_lesion_f1", "not measured")),
        ("synthetic no-change pairs, false new lesions per interval",
         none.get("false_new_per_interval", "not measured")),
        ("synthetic validation Dice (appeared, vanished)",
         tr.get("val_dice_after_calibration"))))
    return f"""# Model card: {card['name']} {card['version']}

{card['task']}. Opt-in: `python -m ms_core track ... --method network`; the default change rule
is still `joint` (docs/longitudinal.md says why).

- **Input**: {', '.join(card['input']['channels'])}; {card['preprocessing']['normalisation']}.
- **Output**: {card['output']['meaning']}.
- **Architecture**: {card['architecture']}.
- **Training**: `{tr.get('command')}`; {tr.get('data')}.
- **ONNX** sha256 `{card['sha256']}` (checked against the manifest before every use).

| evaluation | value |
|---|---|
{rows}

Evaluation command: `{ev.get('command', 'not run')}`. Research use only: review every change
the network reports.
"""


def main(argv: list[str] | None = None) -> int:
    args, config, metrics = run_to_export(__doc__ or "", argv)
    net = UNet3D(3, tuple(int(w) for w in config["widths"]), norm=str(config["norm"]),
                 out_channels=2)
    load_weights(net, args.run / args.weights)
    model = _WithSigmoid(net).eval()
    out_dir = args.models_dir / NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.onnx.tmp"
    export_graph(model, tmp, 3)
    sampler = pair_sampler({**config, "patch": 64}, seed=424242)
    x = np.stack([sampler.sample()[0] for _ in range(2)]).astype(np.float32)
    installed = install_checked(model, tmp, x, args.run / args.weights)
    if installed is None:
        return 1
    digest, check = installed
    card_path = out_dir / "model.json"
    old = read_json(card_path) if card_path.exists() else {}
    card = {
        "name": NAME, "version": args.version, "sha256": digest,
        "task": "MS lesion change between two visits (new or enlarging, shrinking or "
                "disappearing lesion tissue), research use only",
        "architecture": describe(net),
        "input": {"name": "image", "layout": "NCXYZ (x, y, z in RAS+ voxel order)",
                  "channels": list(CHANNELS), "patch_size": [64, 64, 64], "multiple_of": 8,
                  "dtype": "float32"},
        "output": {"name": "prob", "layout": "N2XYZ",
                   "meaning": "per-voxel sigmoid probabilities: channel 0 lesion tissue that "
                              "appeared or grew (change_mask 1), channel 1 lesion tissue that "
                              "shrank or vanished (change_mask 2)"},
        "label_map": {"0": "no change", "1": "new or enlarging lesion tissue",
                      "2": "shrinking or disappearing lesion tissue"},
        "threshold": 0.5,
        "preprocessing": {"spacing_mm": 1.0, "orientation": "the follow-up's RAS+ 1 mm "
                                                            "working grid",
                          "registration": "baseline rigidly registered to the follow-up "
                                          "(ms_core.longitudinal.tracking.register_visits), linear",
                          "intensity_reference": "white_matter",
                          "normalisation": "each visit divided by its white-matter level (peak "
                                           "of its histogram inside the registered MNI "
                                           "white-matter prior); zero outside the follow-up "
                                           "brain"},
        "training": {"command": config.get("command"), "seed": config.get("seed"),
                     "steps": config.get("steps"), "patch": config.get("patch"),
                     **({"initialised_from": {"weights": config["init"],
                                              "weights_sha256": config.get("init_sha256")}}
                        if config.get("init") else {}),
                     "git_commit_at_launch": config.get("git_commit"),
                     "torch": config.get("torch"), "norm": net.norm,
                     "data": "synthetic visit pairs (training/change/synth_pairs.py) made from "
                             "MNI152 tissue maps and 27 real consensus lesion masks of "
                             "open_ms_data (Lesjak et al. 2018, CC-BY), patient26 excluded; "
                             "patient12's longitudinal pair is validation only",
                     "recipe": {k: config.get(k) for k in (
                         "no_change_fraction", "protocol_change_fraction",
                         "new_lesion_fraction", "registration_error", "lesion_fraction",
                         "lesion_contrast", "lesion_gm_floor", "contrast_power",
                         "gm_contrast")} | {k: config[k] for k in (  # options of later runs
                         "grow_voxels", "new_lesion_mm3", "new_lesion_count", "fate_odds",
                         "channel_weights") if k in config},
                     **{k: metrics.get(k) for k in ("best_synthetic_val_dice_mean",
                                                    "val_dice_after_calibration",
                                                    "bn_calibration_pairs", "train_seconds")}},
        "export": {"opset": 17, "onnxruntime": ort.__version__, "parity": check},
        "evaluation": old.get("evaluation", {}),
    }
    publish(args.models_dir, NAME, card, digest)
    atomic_write_text(args.models_dir / NAME / "MODEL_CARD.md", card_markdown(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
