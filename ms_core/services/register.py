"""Register a segmentation network trained elsewhere (nnU-Net, MONAI, ...) as ONNX.

``python -m ms_core register-model --onnx M.onnx --contract contract.json --out DIR`` checks
the graph against the contract (input and output names, ranks, fixed sizes, dynamic axes,
opset), runs it once on one window and once through the whole segmentation pipeline on a
synthetic skull-stripped FLAIR made from the MNI152 template with known lesions, and writes
``DIR/lesion_seg/model.onnx``, its card ``model.json`` (the contract plus sha256 and the
checks' results), ``MODEL_CARD.md`` and ``DIR/manifest.json``. ``MS_DASH_MODELS=DIR`` then
makes ``segment``, ``batch`` and the app use it
(:func:`ms_core.segmentation.model_store.models_dir_for`).

The contract is the card's segmentation part (docs/models.md)::

    {"version": "1.0.0", "task": "...",
     "input": {"name": "input", "channels": ["FLAIR"], "patch_size": [128, 128, 128],
               "orientation": "RAS", "axis_order": "xyz", "overlap": 0.5, "multiple_of": 1},
     "preprocessing": {"spacing_mm": 1.0, "intensity_reference": "zscore"},
     "output": {"name": "logits", "activation": "softmax", "class_index": 1},
     "threshold": 0.5,
     "source": {"framework": "nnU-Net v2", "trained_on": "...", "licence": "..."}}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ms_core.foundation.domain import Volume
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json, sha256_file, write_json
from ms_core.imaging.anatomy import load_template, synthetic_head
from ms_core.segmentation.inference import OnnxModel, load_onnx_model
from ms_core.segmentation.model_store import (
    INTENSITY_REFERENCES,
    SEGMENTATION_MODEL,
    ModelError,
    is_shipped_folder,
    load_segmentation_card,
    register_model,
)
from ms_core.segmentation.segment import SegmentParams, segment_volumes
from ms_core.synthetic.synth import sphere_labels

__all__ = [
    "MIN_OPSET",
    "contract_card",
    "graph_problems",
    "register_segmentation_model",
    "smoke_phantom",
    "smoke_test",
]

#: Oldest ONNX opset accepted (onnxruntime runs opset 7 and later).
MIN_OPSET = 7
#: How each intensity reference is described in the card's free-text ``normalisation``.
_REFERENCE_TEXT = {
    "brain_median": "divide by the median intensity inside the brain mask; zero outside",
    "white_matter": "divide by the white-matter level (histogram peak inside the registered "
                    "MNI white-matter prior); zero outside the brain",
    "zscore": "subtract the mean and divide by the standard deviation inside the brain mask; "
              "zero outside",
    "percentile": "map the 0.5th-99.5th percentiles inside the brain mask to 0-1, clipped; "
                  "zero outside",
}
#: Synthetic lesions of the smoke test: centre (MNI mm) and radius (mm), in white matter.
_SMOKE_LESIONS = (((-26.0, -10.0, 24.0), 5.0), ((28.0, -24.0, 22.0), 4.0),
                  ((-20.0, 20.0, 18.0), 3.5), ((22.0, 10.0, 28.0), 3.0))


def contract_card(contract: dict[str, Any], contract_path: Path) -> dict[str, Any]:
    """The card fields of a contract, with defaults filled in; raises :class:`InputError`
    naming ``contract_path`` for a missing section or field."""
    def section(name: str) -> dict[str, Any]:
        value = contract.get(name)
        if not isinstance(value, dict):
            raise InputError(contract_path, f"the contract has no {name!r} object")
        return dict(value)

    inp, pre, out = section("input"), section("preprocessing"), section("output")
    for where, block, keys in (("input", inp, ("name", "channels", "patch_size")),
                               ("preprocessing", pre, ("spacing_mm", "intensity_reference")),
                               ("output", out, ("name", "activation"))):
        missing = [k for k in keys if k not in block]
        if missing:
            raise InputError(contract_path, f"the contract's {where} lacks {missing}")
    reference = pre["intensity_reference"]
    if reference not in INTENSITY_REFERENCES:
        raise InputError(contract_path, f"preprocessing.intensity_reference is {reference!r}; "
                                        f"expected one of {INTENSITY_REFERENCES}")
    inp.setdefault("multiple_of", 1)
    inp.setdefault("orientation", "RAS")
    inp.setdefault("axis_order", "xyz")
    inp.setdefault("dtype", "float32")
    pre.setdefault("normalisation", _REFERENCE_TEXT[reference])
    pre.setdefault("orientation", "RAS+ axis-aligned working grid")
    pre.setdefault("brain_extraction",
                   "MNI152 brain mask registered to the FLAIR (skipped with --skull-stripped)")
    out.setdefault("layout", "NKXYZ" if inp["axis_order"] == "xyz" else "NKZYX")
    out.setdefault("meaning", {"none": "lesion probability", "sigmoid": "lesion logits",
                               "softmax": "class logits"}.get(out["activation"], "unknown"))
    return {
        "name": SEGMENTATION_MODEL,
        "version": str(contract.get("version", "0.0.0")),
        "task": str(contract.get("task", "MS lesion segmentation (registered model)")),
        "input": inp, "preprocessing": pre, "output": out,
        "threshold": float(contract.get("threshold", 0.5)),
        "label_map": contract.get("label_map", {"0": "background", "1": "lesion"}),
        "source": dict(contract.get("source", {})),
    }


def _dims(value_info: Any) -> list[int | str]:
    """Each dimension of an ONNX value: its fixed size, or its symbolic name ("" if none)."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim]


def _opset(model: Any) -> int | None:
    """The default-domain opset an ONNX model imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def graph_problems(onnx_path: Path, card: dict[str, Any]) -> tuple[list[str], int | None]:
    """What in the ONNX graph does not match the card (empty when it matches): the input and
    output names, rank 5, element type float32, fixed sizes (batch 1 or dynamic; channels the
    card's count; spatial sizes the patch, in the network's axis order), the output's channel
    count against ``output.class_index`` and the opset; and the opset."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        return [f"not a readable ONNX model ({type(e).__name__}: {e})"], None
    graph, inp, out = model.graph, card["input"], card["output"]
    problems: list[str] = []
    initialisers = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initialisers}
    outputs = {o.name: o for o in graph.output}
    if inp["name"] not in inputs:
        problems.append(f"input {inp['name']!r} is not a graph input; the graph's inputs are "
                        f"{sorted(inputs)}")
    elif len(inputs) > 1:
        problems.append(f"the graph has {len(inputs)} inputs {sorted(inputs)}; the pipeline "
                        "feeds one")
    if out["name"] not in outputs:
        problems.append(f"output {out['name']!r} is not a graph output; the graph's outputs "
                        f"are {sorted(outputs)}")
    patch = [int(p) for p in inp["patch_size"]]
    if inp["name"] in inputs:
        vi = inputs[inp["name"]]
        dims = _dims(vi)
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"input {inp['name']!r} is not float32 (ONNX element type "
                            f"{vi.type.tensor_type.elem_type})")
        if len(dims) != 5:
            problems.append(f"input {inp['name']!r} has rank {len(dims)}; expected 5 "
                            "(batch, channels and three spatial axes)")
        else:
            problems += _fixed_problems("input", inp["name"], dims, len(inp["channels"]), patch)
    if out["name"] in outputs:
        dims = _dims(outputs[out["name"]])
        if len(dims) != 5:
            problems.append(f"output {out['name']!r} has rank {len(dims)}; expected 5")
        else:
            problems += _fixed_problems("output", out["name"], dims, None, patch)
            k = dims[1]
            index = out.get("class_index")
            if isinstance(k, int) and k > 0:
                if index is None and k != 1:
                    problems.append(f"output {out['name']!r} has {k} channels: name the lesion "
                                    "channel with output.class_index")
                if index is not None and int(index) >= k:
                    problems.append(f"output.class_index is {index} but output "
                                    f"{out['name']!r} has {k} channels")
    opset = _opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset is None or not MIN_OPSET <= opset <= newest:
        problems.append(f"opset {opset}; this onnx/onnxruntime reads {MIN_OPSET}-{newest}")
    return problems, opset


def _fixed_problems(kind: str, name: str, dims: list[int | str], channels: int | None,
                    patch: list[int]) -> list[str]:
    """Fixed sizes of a rank-5 ``dims`` that the pipeline cannot feed or read."""
    problems = []
    if isinstance(dims[0], int) and dims[0] not in (0, 1):
        problems.append(f"{kind} {name!r} has a fixed batch of {dims[0]}; expected 1 or dynamic")
    if channels is not None and isinstance(dims[1], int) and dims[1] not in (0, channels):
        problems.append(f"{kind} {name!r} has {dims[1]} channels; the contract lists "
                        f"{channels}")
    for axis, (d, p) in enumerate(zip(dims[2:], patch, strict=True)):
        if isinstance(d, int) and d not in (0, p):
            problems.append(f"{kind} {name!r} spatial axis {axis} is fixed at {d}; "
                            f"input.patch_size says {p}")
    return problems


def smoke_phantom() -> tuple[Volume, float]:
    """A skull-stripped FLAIR of the MNI152 template with four white-matter lesions, and the
    lesions' true volume (ml)."""
    tpl = load_template()
    flair = synthetic_head("FLAIR", with_skull=False).copy()
    lesions = sphere_labels(flair.shape, tpl.affine, list(_SMOKE_LESIONS)) > 0
    brain_level = float(np.median(flair[tpl.brain > 0.5]))
    flair[lesions] = 1.8 * brain_level
    flair[tpl.brain <= 0.5] = 0.0
    voxel_ml = float(abs(np.linalg.det(tpl.affine[:3, :3]))) / 1000.0
    volume = Volume(flair, tpl.affine, "FLAIR", Path("synthetic_phantom_FLAIR"))
    return volume, float(lesions.sum()) * voxel_ml


def smoke_test(model: OnnxModel) -> dict[str, Any]:
    """One window of zeros and one of noise through the model, then the whole pipeline
    (skull-stripped, no flips, the card's overlap) on :func:`smoke_phantom`. Raises
    :class:`ModelError` when the output is not a probability (shape, NaN, outside [0, 1])."""
    card = model.card
    patch = card.layout_patch()
    rng = np.random.default_rng(0)
    for x in (np.zeros((1, len(card.channels), *patch), np.float32),
              rng.normal(size=(1, len(card.channels), *patch)).astype(np.float32)):
        try:
            y = model.predict(x)
        except InputError:
            raise
        except Exception as e:
            raise ModelError(card.onnx_path, f"onnxruntime could not run the model on a "
                                             f"{x.shape} window: {e}") from e
        if y.shape != (1, 1, *patch):
            raise ModelError(card.onnx_path, f"a {x.shape} window gave an output of shape "
                                             f"{y.shape}; expected {(1, 1, *patch)}")
        if not np.isfinite(y).all() or y.min() < -1e-4 or y.max() > 1 + 1e-4:
            raise ModelError(card.onnx_path, (
                f"the output is not a probability (range {float(np.nanmin(y)):.3g} to "
                f"{float(np.nanmax(y)):.3g}): check output.activation"))
    phantom, true_ml = smoke_phantom()
    t0 = time.perf_counter()
    result = segment_volumes(phantom, None, SegmentParams(skull_stripped=True, tta=False,
                                                          threshold=card.threshold), model)
    predicted = float(result.table.volume_ml.sum()) if len(result.table) else 0.0
    warnings = []
    if predicted == 0.0:
        warnings.append("no lesion found in the synthetic FLAIR")
    elif predicted > 10 * true_ml:
        warnings.append("far more lesion than the synthetic FLAIR holds")
    if warnings:
        warnings.append("check intensity_reference, orientation, axis_order and activation "
                        "against how the network was trained")
    return {"synthetic_true_ml": round(true_ml, 3), "synthetic_predicted_ml": round(predicted, 3),
            "synthetic_lesions_found": len(result.table), "provider": result.provider,
            "seconds": round(time.perf_counter() - t0, 1), "warnings": warnings}


def _card_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md of a registered model: where it came from, its contract and its checks."""
    source = card.get("source") or {}
    reg = card["registration"]
    lines = [f"# {card['name']} {card['version']} (registered model)", "",
             f"{card['task']}. Trained elsewhere and registered with `{reg['command']}` on "
             f"{reg['date_utc']}; this project did not train it and has not validated it on "
             "its real validation scans.", "", "## Source", ""]
    lines += [f"- {k}: {v}" for k, v in source.items()] or ["- not stated in the contract"]
    lines += ["", "## Contract", "", "```json",
              json.dumps({k: card[k] for k in ("input", "preprocessing", "output", "threshold")},
                         indent=2), "```", "", "## Checks at registration", "",
              f"- ONNX graph against the contract: passed (opset {reg['opset']})",
              f"- sha256 `{card['sha256']}`",
              f"- synthetic FLAIR: {reg['smoke']['synthetic_lesions_found']} lesions, "
              f"{reg['smoke']['synthetic_predicted_ml']} ml predicted for "
              f"{reg['smoke']['synthetic_true_ml']} ml true ({reg['smoke']['seconds']} s on "
              f"{reg['smoke']['provider']})"]
    lines += [f"- warning: {w}" for w in reg["smoke"]["warnings"]]
    return "\n".join(lines) + "\n"


def register_segmentation_model(onnx_path: Path, contract_path: Path, out_dir: Path, *,
                                command: str = "") -> dict[str, Any]:
    """Check ``onnx_path`` against ``contract_path`` and install it as ``lesion_seg`` in
    ``out_dir`` (model, card, MODEL_CARD.md, manifest). Returns the card.

    Nothing is written unless every check passes; the files are written to temporary names
    and renamed, so a failed run leaves an earlier registration in ``out_dir`` as it was.

    Raises
    ------
    InputError
        an unreadable file, a contract without a needed field, ``out_dir`` being the shipped
        models folder; :class:`ModelError` for a graph that does not match the contract or an
        output that is not a probability (the message lists every mismatch).
    """
    onnx_path, contract_path, out_dir = Path(onnx_path), Path(contract_path), Path(out_dir)
    if not onnx_path.is_file():
        raise InputError(onnx_path, "ONNX file not found")
    if is_shipped_folder(out_dir):
        raise InputError(out_dir, "this is the shipped models folder; register into another "
                                  "folder and point MS_DASH_MODELS at it")
    card = contract_card(read_json(contract_path), contract_path)
    problems, opset = graph_problems(onnx_path, card)
    if problems:
        raise ModelError(onnx_path, "does not match the contract " + str(contract_path) + ": "
                         + "; ".join(problems))
    digest = sha256_file(onnx_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".register-", dir=out_dir))
    try:
        folder = staging / SEGMENTATION_MODEL
        folder.mkdir()
        (folder / "model.onnx").write_bytes(onnx_path.read_bytes())
        card["sha256"] = digest
        card["training"] = {"source": "registered (trained elsewhere)",
                            "command": card["source"].get("training_command", "not recorded")}
        write_json(folder / "model.json", card)
        write_json(staging / "manifest.json", {"models": {SEGMENTATION_MODEL: {
            "onnx": f"{SEGMENTATION_MODEL}/model.onnx", "card": f"{SEGMENTATION_MODEL}/model.json",
            "sha256": digest}}})
        parsed = load_segmentation_card(staging)
        smoke = smoke_test(load_onnx_model(parsed, "cpu"))
        card["registration"] = {
            "command": command or "ms_core.services.register.register_segmentation_model",
            "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "onnx_file": str(onnx_path), "contract_file": str(contract_path),
            "contract_sha256": sha256_file(contract_path), "opset": opset, "smoke": smoke}
        write_json(folder / "model.json", card)
        (folder / "MODEL_CARD.md").write_text(_card_markdown(card), encoding="utf-8")
        _install(folder, out_dir / SEGMENTATION_MODEL)
        register_model(out_dir, SEGMENTATION_MODEL, {
            "onnx": f"{SEGMENTATION_MODEL}/model.onnx", "card": f"{SEGMENTATION_MODEL}/model.json",
            "sha256": digest})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card


def _install(staged: Path, target: Path) -> None:
    """Replace ``target`` by the folder ``staged`` (same file system) by renames: the old
    folder moves aside first and is removed after the new one is in place."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)
