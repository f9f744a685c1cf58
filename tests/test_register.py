"""Running a segmentation model trained elsewhere: the ONNX contract, ``register-model`` and
``MS_DASH_MODELS`` (issue 33).

The registered network is a real ONNX graph built here with another layout than ours (z, y, x
axes of an LPS volume, FLAIR only, z-scored, two-class softmax logits): a 1x1x1 convolution
that calls a voxel lesion when its z-scored FLAIR is high.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from ms_core.foundation.errors import InputError
from ms_core.segmentation.inference import OnnxModel, from_network_layout, to_network_layout
from ms_core.segmentation.model_store import (
    MODELS_DIR,
    ModelError,
    active_sha256,
    load_segmentation_card,
    models_dir_for,
)
from ms_core.services.register import register_segmentation_model, smoke_phantom

REPO = Path(__file__).resolve().parents[1]
#: z-score above which the stand-in network calls lesion (the phantom's lesions lie near 3.3).
Z_CUT = 2.2


def _conv_model(path: Path, *, in_channels: int = 1, classes: int = 2,
                spatial: tuple[int | str, ...] = ("z", "y", "x"), opset: int = 17,
                input_name: str = "input", output_name: str = "logits") -> Path:
    """A 1x1x1 convolution: class 0 logit 0, class 1 logit 8 * (FLAIR z-score - Z_CUT)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((classes, in_channels, 1, 1, 1), np.float32)
    b = np.zeros(classes, np.float32)
    w[classes - 1, 0] = 8.0
    b[classes - 1] = -8.0 * Z_CUT
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w", "b"], [output_name])], "stand_in",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       ["n", in_channels, *spatial])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                       ["n", classes, *spatial])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _contract(path: Path, **changes: Any) -> Path:
    contract: dict[str, Any] = {
        "version": "2.0.0-site", "task": "MS lesion segmentation (stand-in nnU-Net)",
        "input": {"name": "input", "channels": ["FLAIR"], "patch_size": [32, 48, 40],
                  "orientation": "LPS", "axis_order": "zyx", "overlap": 0.1},
        "preprocessing": {"spacing_mm": 1.0, "intensity_reference": "zscore"},
        "output": {"name": "logits", "activation": "softmax", "class_index": 1},
        "threshold": 0.5,
        "source": {"framework": "test stand-in", "licence": "CC0"},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            contract[section][field] = value
        else:
            contract[section] = value
    path.write_text(json.dumps(contract))
    return path


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("register")
    onnx_path = _conv_model(work / "site.onnx")
    card = register_segmentation_model(onnx_path, _contract(work / "contract.json"),
                                       work / "models", command="test")
    return work / "models", card


def test_layout_round_trip_puts_each_voxel_where_the_network_expects_it() -> None:
    # A marker at RAS voxel (i, j, k) of an (X, Y, Z) window sits at (k, Y-1-j, X-1-i) of the
    # network's LPS z, y, x array, and the output comes back to (i, j, k).
    card = load_segmentation_card()
    import dataclasses
    lps = dataclasses.replace(card, orientation="LPS", axis_order="zyx")
    x = np.zeros((1, 1, 5, 6, 7), np.float32)
    x[0, 0, 1, 2, 3] = 1.0
    net = to_network_layout(x, lps)
    assert net.shape == (1, 1, 7, 6, 5)
    assert net[0, 0, 3, 6 - 1 - 2, 5 - 1 - 1] == 1.0
    assert np.array_equal(from_network_layout(net, lps), x)
    assert to_network_layout(x, card) is x  # our own models: as it is

    seen: list[np.ndarray] = []

    def run(_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen.append(feeds["image"])
        logits = np.stack([np.zeros_like(feeds["image"][:, 0]), 50 * feeds["image"][:, 0]], 1)
        return [logits]

    model = OnnxModel(dataclasses.replace(lps, activation="softmax", class_index=1),
                      SimpleNamespace(run=run), "CPUExecutionProvider")
    prob = model.predict(x)
    assert seen[0].shape == (1, 1, 7, 6, 5) and seen[0][0, 0, 3, 3, 3] == 1.0
    assert prob.shape == (1, 1, 5, 6, 7)
    assert prob[0, 0, 1, 2, 3] > 0.99 and prob[0, 0, 0, 0, 0] == pytest.approx(0.5)


def test_register_writes_a_verified_model_with_its_contract_and_checks(
        registered: tuple[Path, dict[str, Any]]) -> None:
    models, card = registered
    manifest = json.loads((models / "manifest.json").read_text())
    entry = manifest["models"]["lesion_seg"]
    loaded = load_segmentation_card(models)  # verifies the sha256 three ways
    assert loaded.sha256 == entry["sha256"] == card["sha256"]
    assert (loaded.axis_order, loaded.orientation, loaded.activation, loaded.class_index,
            loaded.intensity_reference, loaded.channels, loaded.overlap) == (
        "zyx", "LPS", "softmax", 1, "zscore", ("FLAIR",), 0.1)
    assert loaded.layout_patch() == (40, 48, 32)
    smoke = card["registration"]["smoke"]
    _, true_ml = smoke_phantom()
    assert smoke["synthetic_true_ml"] == pytest.approx(true_ml, abs=1e-3)
    # The stand-in finds the phantom's four lesions and not much else.
    assert smoke["synthetic_lesions_found"] >= 4
    assert 0.5 * true_ml < smoke["synthetic_predicted_ml"] < 10 * true_ml
    assert smoke["warnings"] == []
    text = (models / "lesion_seg" / "MODEL_CARD.md").read_text()
    assert "registered model" in text and card["sha256"] in text
    assert not list(models.glob(".register-*"))  # no staging left behind


def test_segment_runs_the_registered_model_through_ms_dash_models(
        registered: tuple[Path, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    models, card = registered
    phantom, true_ml = smoke_phantom()
    flair = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(phantom.data, phantom.affine), flair)
    env = {**os.environ, "MS_DASH_MODELS": str(models)}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ms_core", "segment", "--flair", str(flair),
                           "--skull-stripped", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["model"]["sha256"] == card["sha256"] and prov["model"]["version"] == "2.0.0-site"
    assert 0.5 * true_ml < prov["lesion_volume_ml"] < 10 * true_ml
    # The folder serves lesion_seg only: every other model still comes from the shipped one,
    # and results of the shipped segmentation model are no longer current.
    monkeypatch.setenv("MS_DASH_MODELS", str(models))
    assert models_dir_for("lesion_seg") == models
    assert models_dir_for("prognosis") == MODELS_DIR
    assert active_sha256("lesion_seg") == card["sha256"] != active_sha256("lesion_seg",
                                                                            MODELS_DIR)
    from ms_core.services.workflow import model_card_ref

    assert model_card_ref("lesion_seg") == (f"`{models / 'lesion_seg' / 'MODEL_CARD.md'}` "
                                            f"(version 2.0.0-site, sha256 {card['sha256'][:12]}…)")
    assert model_card_ref("prognosis").startswith("`models_onnx/prognosis/")


def test_results_of_another_segmentation_model_are_stale(
        segmented_study: Path, registered: tuple[Path, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ms_core.segmentation.segment import segmentation_status
    from ms_core.study.layout import load_study

    visit = load_study(segmented_study).visits["sub-01"][0]
    monkeypatch.delenv("MS_DASH_MODELS", raising=False)
    assert segmentation_status(segmented_study, visit) is not None
    monkeypatch.setenv("MS_DASH_MODELS", str(registered[0]))
    assert segmentation_status(segmented_study, visit) is None


@pytest.mark.parametrize(("changes", "graph", "expected"), [
    ({"input__name": "image"}, {}, "input 'image' is not a graph input"),
    ({"output__name": "prob"}, {}, "output 'prob' is not a graph output"),
    ({"input__channels": ["FLAIR", "T1w"]}, {}, "has 1 channels; the contract lists 2"),
    ({}, {"spatial": (32, 48, 41)}, "spatial axis 2 is fixed at 41; input.patch_size says 40"),
    ({"output__class_index": 3}, {}, "output.class_index is 3 but output 'logits' has 2"),
    ({"output__class_index": None, "output__activation": "sigmoid"}, {},
     "has 2 channels: name the lesion channel"),
    ({}, {"opset": 6}, "opset 6"),
])
def test_a_contract_that_does_not_match_the_graph_is_refused_by_name(
        tmp_path: Path, changes: dict[str, Any], graph: dict[str, Any], expected: str) -> None:
    onnx_path = _conv_model(tmp_path / "m.onnx", **graph)
    out = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        register_segmentation_model(onnx_path, _contract(tmp_path / "c.json", **changes), out)
    assert expected in str(err.value) and "m.onnx" in str(err.value)
    assert not (out / "manifest.json").exists() and not (out / "lesion_seg").exists()


def test_contract_errors_name_the_file_and_field(tmp_path: Path) -> None:
    onnx_path = _conv_model(tmp_path / "m.onnx")
    bad = _contract(tmp_path / "c.json", preprocessing={"spacing_mm": 1.0,
                                                       "intensity_reference": "minmax"})
    with pytest.raises(InputError, match=r"c\.json.*intensity_reference is 'minmax'"):
        register_segmentation_model(onnx_path, bad, tmp_path / "models")
    no_output = _contract(tmp_path / "d.json", output="logits")
    with pytest.raises(InputError, match=r"d\.json.*no 'output' object"):
        register_segmentation_model(onnx_path, no_output, tmp_path / "models")
    with pytest.raises(InputError, match="shipped models folder"):
        register_segmentation_model(onnx_path, _contract(tmp_path / "e.json"), MODELS_DIR)
    # An output that is not a probability after the stated activation is refused.
    raw = _contract(tmp_path / "f.json", output={"name": "logits", "activation": "none",
                                                 "class_index": 1})
    with pytest.raises(ModelError, match=r"not a probability.*output\.activation"):
        register_segmentation_model(onnx_path, raw, tmp_path / "models")
    assert not (tmp_path / "models" / "lesion_seg").exists()


def test_register_model_cli(tmp_path: Path) -> None:
    onnx_path = _conv_model(tmp_path / "m.onnx", input_name="x")
    done = subprocess.run([sys.executable, "-m", "ms_core", "register-model", "--onnx",
                           str(onnx_path), "--contract", str(_contract(tmp_path / "c.json")),
                           "--out", str(tmp_path / "models")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2
    assert "input 'input' is not a graph input; the graph's inputs are ['x']" in done.stderr


def test_the_app_names_the_active_model_and_the_stale_segmentation(
        segmented_study: Path, registered: tuple[Path, dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from ms_core.study.layout import load_study

    models, card = registered
    first = load_study(segmented_study).visits["sub-01"][0]
    monkeypatch.setenv("MS_DASH_STUDY", str(segmented_study))
    monkeypatch.setenv("MS_DASH_MODELS", str(models))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.sidebar.selectbox[1].set_value(first.session_id).run()
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    shipped = load_segmentation_card(MODELS_DIR).version
    assert f"made by lesion_seg v{shipped}" in warning and "v2.0.0-site" in warning
    assert str(models) in warning
    assert any(b.label == "Segment this visit" for b in at.button)
    at.switch_page("pages/models.py").run()
    assert not at.exception
    served = [i.value for i in at.info if "MS_DASH_MODELS" in i.value]
    assert len(served) == 1 and str(models) in served[0]  # lesion_seg only
    assert any(card["sha256"] in s.value for s in at.success)
