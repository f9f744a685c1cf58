"""Tests for ms_core.segmentation.model_store and the shipped model: integrity checks and provider
reporting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ms_core.foundation.errors import InputError
from ms_core.foundation.io import sha256_file
from ms_core.segmentation.inference import load_onnx_model
from ms_core.segmentation.model_store import (
    MODELS_DIR,
    ModelError,
    load_model_card,
    load_segmentation_card,
    segmentation_problem,
)

SHIPPED = MODELS_DIR / "manifest.json"


def _fake_models(root: Path) -> Path:
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"not really onnx")
    digest = sha256_file(root / "m" / "model.onnx")
    card = {"name": "m", "version": "1", "sha256": digest, "threshold": 0.5,
            "input": {"name": "image", "channels": ["FLAIR"], "patch_size": [8, 8, 8],
                      "multiple_of": 8},
            "output": {"name": "prob"}, "preprocessing": {"spacing_mm": 1.0,
                                                          "normalisation": "median"},
            "training": {}}
    (root / "m" / "model.json").write_text(json.dumps(card))
    manifest = {"models": {"m": {"onnx": "m/model.onnx", "card": "m/model.json",
                                 "sha256": digest}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_card_loads_when_consistent(tmp_path: Path) -> None:
    card = load_model_card("m", _fake_models(tmp_path))
    assert card.patch_size == (8, 8, 8) and card.channels == ("FLAIR",)


def test_card_names_its_intensity_reference_and_t1w_use(tmp_path: Path) -> None:
    root = _fake_models(tmp_path)
    old = load_model_card("m", root)  # a card from before the fields: median, T1w read
    assert old.intensity_reference == "brain_median" and old.uses_t1
    path = root / "m" / "model.json"
    card = json.loads(path.read_text())
    card["preprocessing"]["intensity_reference"] = "white_matter"
    card["input"]["t1w"] = "ignored"
    path.write_text(json.dumps(card))
    new = load_model_card("m", root)
    assert new.intensity_reference == "white_matter" and not new.uses_t1
    for field, key, value, match in (("preprocessing", "intensity_reference", "minmax",
                                      "intensity_reference"),
                                     ("input", "t1w", "sometimes", "input.t1w"),
                                     ("input", "orientation", "LAS", "input.orientation"),
                                     ("input", "axis_order", "yxz", "input.axis_order"),
                                     ("input", "overlap", 1.0, "input.overlap"),
                                     ("output", "activation", "relu", "output.activation")):
        bad = json.loads(json.dumps(card))
        bad[field][key] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(ModelError, match=match):
            load_model_card("m", root)
    # Other image models (the change network) name their channels in words; the segmentation
    # slot's channels are built by name, so only FLAIR and T1w are accepted there.
    named = json.loads(json.dumps(card))
    named["input"]["channels"] = ["FLAIR follow-up", "difference"]
    path.write_text(json.dumps(named))
    loaded = load_model_card("m", root)
    assert loaded.channels == ("FLAIR follow-up", "difference")
    assert "input.channels" in segmentation_problem(loaded)
    softmax = json.loads(json.dumps(card))
    softmax["output"].update(activation="softmax", class_index=0)  # class 0 is background
    path.write_text(json.dumps(softmax))
    with pytest.raises(ModelError, match=r"output\.class_index is 0"):
        load_model_card("m", root)


def test_volume_ratio_range_comes_from_a_verified_card(tmp_path: Path) -> None:
    from ms_core.segmentation.model_store import volume_ratio_range

    root = _fake_models(tmp_path)
    assert volume_ratio_range("m", root) is None  # no evaluation on the card
    path = root / "m" / "model.json"
    card = json.loads(path.read_text())
    card["evaluation"] = {"volume_ratio_range": [0.82, 1.21]}
    path.write_text(json.dumps(card))
    assert volume_ratio_range("m", root) == (0.82, 1.21)
    card["evaluation"] = {"volume_ratio_range": [1.3, 0.9]}  # inconsistent
    path.write_text(json.dumps(card))
    assert volume_ratio_range("m", root) is None
    assert volume_ratio_range("m", tmp_path / "nowhere") is None


def test_altered_model_is_refused(tmp_path: Path) -> None:
    root = _fake_models(tmp_path)
    (root / "m" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="altered or not registered"):
        load_model_card("m", root)


def test_unknown_missing_and_incomplete_models_are_refused(tmp_path: Path) -> None:
    root = _fake_models(tmp_path)
    with pytest.raises(ModelError, match="no model named 'x'"):
        load_model_card("x", root)
    card = json.loads((root / "m" / "model.json").read_text())
    del card["preprocessing"]
    (root / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="lacks \\['preprocessing'\\]"):
        load_model_card("m", root)
    (root / "m" / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model file not found"):
        load_model_card("m", root)
    with pytest.raises(ModelError, match="manifest unreadable"):
        load_model_card("m", tmp_path / "nowhere")


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped models yet")
def test_shipped_segmentation_model_runs_on_cpu(tmp_path: Path) -> None:
    card = load_segmentation_card()
    model = load_onnx_model(card, "cpu", threads=1)
    assert model.provider == "CPUExecutionProvider"
    x = np.zeros((1, 2, 16, 16, 16), np.float32)
    out = model.predict(x)
    assert out.shape == (1, 1, 16, 16, 16) and np.all((out >= 0) & (out <= 1))
    with pytest.raises(InputError, match="device must be"):
        load_onnx_model(card, "tpu")
    # A copy with one byte changed is refused before onnxruntime ever sees it.
    copy = tmp_path / "models"
    shutil.copytree(MODELS_DIR, copy)
    raw = bytearray((copy / "lesion_seg" / "model.onnx").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "lesion_seg" / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="altered"):
        load_segmentation_card(copy)


@pytest.mark.parametrize("name", ["lesion_seg", "lesion_change"])
def test_every_shipped_image_model_card_loads(name: str) -> None:
    card = load_model_card(name)  # sha256 against manifest and card, every field checked
    assert card.name == name and card.onnx_path.is_file() and len(card.patch_size) == 3


def test_only_the_segmentation_slot_needs_flair_channels() -> None:
    """Every image model needs named, distinct channels; only the segmentation slot needs
    them to be FLAIR (and optionally T1w), since the pipeline builds them by name."""
    import dataclasses

    from ms_core.segmentation.model_store import card_problem

    shipped = load_segmentation_card()
    assert card_problem(shipped) == "" and segmentation_problem(shipped) == ""
    change = load_model_card("lesion_change")  # three channels described in words
    assert card_problem(change) == "" and "expected FLAIR" in segmentation_problem(change)
    t1_only = dataclasses.replace(shipped, channels=("T1w",))
    assert card_problem(t1_only) == "" and "expected FLAIR" in segmentation_problem(t1_only)
    twice = dataclasses.replace(shipped, channels=("FLAIR", "FLAIR"))
    assert "each once" in card_problem(twice)
    assert segmentation_problem(dataclasses.replace(shipped, channels=("T1w", "FLAIR"))) == ""
