"""The shipped models: manifest, model cards and integrity checks (no onnxruntime here).

``models_onnx/manifest.json`` lists each model by name with its ONNX path, card path and sha256::

    {"models": {"lesion_seg": {"onnx": "lesion_seg/model.onnx", "card": "lesion_seg/model.json",
                               "sha256": "..."}}}

A model is usable only when its file exists, its sha256 matches the manifest *and* its card, and
its card has every field the code needs. Anything else is refused with :class:`ModelError`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json, sha256_file, write_json

__all__ = [
    "AXIS_ORDERS",
    "INTENSITY_REFERENCES",
    "MODELS_DIR",
    "MODELS_ENV",
    "ORIENTATIONS",
    "OUTPUT_ACTIVATIONS",
    "SEGMENTATION_MODEL",
    "ModelCard",
    "ModelError",
    "VerifiedModel",
    "active_sha256",
    "card_problem",
    "code_commit",
    "is_shipped_folder",
    "load_model_card",
    "load_segmentation_card",
    "models_dir_for",
    "register_model",
    "segmentation_problem",
    "verify_model",
    "volume_ratio_range",
]

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models_onnx"
#: Card fields every model needs.
_COMMON = ("name", "version", "sha256", "training")
#: Environment variable naming a models folder that replaces the shipped one for the models its
#: manifest lists (a fine-tuned or registered segmentation model, a retrained prognosis model).
MODELS_ENV = "MS_DASH_MODELS"
#: Intensity references a segmentation card may name (``preprocessing.intensity_reference``):
#: divide by the brain median or by the white-matter level; z-score inside the brain (mean 0,
#: standard deviation 1, as nnU-Net normalises MRI); or map the brain's 0.5th-99.5th
#: percentiles to 0-1 (MONAI's ``ScaleIntensityRangePercentiles``). Zero outside the brain.
INTENSITY_REFERENCES = ("brain_median", "white_matter", "zscore", "percentile")
#: What a segmentation network outputs (card field ``output.activation``): probabilities
#: already ("none"), logits for a sigmoid, or logits of classes for a softmax over channels.
OUTPUT_ACTIVATIONS = ("none", "sigmoid", "softmax")
#: Axis order of the network's spatial axes (``input.axis_order``): x, y, z as our RAS+ grid,
#: or z, y, x as a SimpleITK array (nnU-Net).
AXIS_ORDERS = ("xyz", "zyx")
#: Voxel orientations a network may expect (``input.orientation``).
ORIENTATIONS = ("RAS", "LPS")
#: Further card fields of the image segmentation models.
_REQUIRED = (*_COMMON, "input", "output", "preprocessing")


#: The model of the lesion segmentation slot (``segment``, the app, ``batch``, ``track``).
SEGMENTATION_MODEL = "lesion_seg"


class ModelError(InputError):
    """A model that is missing, altered or described inconsistently."""


@dataclass(frozen=True)
class ModelCard:
    """What inference needs to know about a model, read from its ``model.json``."""

    name: str
    version: str
    onnx_path: Path
    sha256: str
    input_name: str
    output_name: str
    channels: tuple[str, ...]
    spacing_mm: float
    patch_size: tuple[int, int, int]
    multiple_of: int
    normalisation: str
    threshold: float
    raw: dict[str, Any]
    #: Intensity reference of the input normalisation: "brain_median" (models up to 3.2.0)
    #: or "white_matter" (:func:`ms_core.imaging.preprocess.white_matter_level`); card field
    #: ``preprocessing.intensity_reference``.
    intensity_reference: str = "brain_median"
    #: Whether the network reads its T1w channel; a card with ``input.t1w: "ignored"`` gets
    #: zeros there even when a T1w is given (the channel did not help on the real scans).
    uses_t1: bool = True
    #: The network's voxel orientation and spatial axis order (``input.orientation``,
    #: ``input.axis_order``): the pipeline works on an RAS+ grid in x, y, z order and turns
    #: each window into this layout before the network, and the output back.
    orientation: str = "RAS"
    axis_order: str = "xyz"
    #: ``output.activation`` (:data:`OUTPUT_ACTIVATIONS`) and the output channel that holds the
    #: lesion class (``output.class_index``; ``None``: every output channel is used, as by our
    #: own networks: one lesion map, or the change network's two).
    activation: str = "none"
    class_index: int | None = None
    #: Sliding-window overlap the model asks for (``input.overlap``); ``None``: the run's own.
    overlap: float | None = None

    def layout_patch(self) -> tuple[int, int, int]:
        """The patch size in the pipeline's x, y, z order (the card gives the network's)."""
        p = self.patch_size
        return (p[2], p[1], p[0]) if self.axis_order == "zyx" else p


@dataclass(frozen=True)
class VerifiedModel:
    """A model file whose sha256 matched the manifest and its card, with the card's fields."""

    name: str
    onnx_path: Path
    card_path: Path
    sha256: str
    card: dict[str, Any]


def verify_model(name: str, models_dir: Path | str = MODELS_DIR,
                 required: tuple[str, ...] = _COMMON) -> VerifiedModel:
    """Find model ``name`` in ``models_dir/manifest.json`` and check its file and card.

    Any kind of model (image or tabular) goes through here before onnxruntime sees it.

    Raises
    ------
    ModelError
        unknown name, missing file, sha256 mismatch (file altered or manifest stale), or a card
        without one of the ``required`` fields.
    """
    root = Path(models_dir)
    manifest_path = root / "manifest.json"
    try:
        manifest = read_json(manifest_path)
    except InputError as e:
        raise ModelError(manifest_path, f"model manifest unreadable: {e.problem}") from e
    entry = manifest.get("models", {}).get(name)
    if entry is None:
        known = sorted(manifest.get("models", {}))
        raise ModelError(manifest_path, f"no model named {name!r}; known: {known}")
    onnx_path = root / entry["onnx"]
    card_path = root / entry["card"]
    if not onnx_path.is_file():
        raise ModelError(onnx_path, "model file not found")
    try:
        card = read_json(card_path)
    except InputError as e:
        raise ModelError(card_path, f"model card unreadable: {e.problem}") from e
    missing = [k for k in required if k not in card]
    if missing:
        raise ModelError(card_path, f"model card lacks {missing}")
    actual = sha256_file(onnx_path)
    if actual != entry["sha256"] or actual != card["sha256"]:
        raise ModelError(onnx_path, (
            f"sha256 {actual[:12]}... does not match the manifest ({entry['sha256'][:12]}...) "
            f"and card ({card['sha256'][:12]}...): the model was altered or not registered; "
            "refusing to load it"))
    return VerifiedModel(name, onnx_path, card_path, actual, card)


def active_sha256(name: str, models_dir: Path | str | None = None) -> str | None:
    """The sha256 that ``models_dir/manifest.json`` (default: :func:`models_dir_for`) lists for
    model ``name``, without reading the model file; ``None`` when the manifest cannot be read
    or does not list it. Stored results record the sha256 of the model that made them, and a
    result of another model is not current."""
    root = _folder(name, models_dir)
    try:
        entry = read_json(root / "manifest.json").get("models", {}).get(name)
    except (InputError, AttributeError):
        return None
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    return str(digest) if digest else None


def load_model_card(name: str, models_dir: Path | str | None = None) -> ModelCard:
    """Read and verify segmentation model ``name`` from ``models_dir`` (default: the folder
    :func:`models_dir_for` names, so ``$MS_DASH_MODELS`` when it holds the model).

    Raises
    ------
    ModelError
        as :func:`verify_model`, or a card without the segmentation fields.
    """
    model = verify_model(name, _folder(name, models_dir), _REQUIRED)
    card, onnx_path, card_path, actual = model.card, model.onnx_path, model.card_path, model.sha256
    inp, pre = card["input"], card["preprocessing"]
    reference = pre.get("intensity_reference", "brain_median")
    if reference not in INTENSITY_REFERENCES:
        raise ModelError(card_path, f"preprocessing.intensity_reference is {reference!r}; "
                                    f"expected one of {INTENSITY_REFERENCES}")
    t1w = inp.get("t1w", "used")
    if t1w not in ("used", "ignored"):
        raise ModelError(card_path, f"input.t1w is {t1w!r}; expected 'used' or 'ignored'")
    try:
        parsed = ModelCard(
            name=card["name"], version=str(card["version"]), onnx_path=onnx_path, sha256=actual,
            input_name=inp["name"], output_name=card["output"]["name"],
            channels=tuple(inp["channels"]), spacing_mm=float(pre["spacing_mm"]),
            patch_size=tuple(int(p) for p in inp["patch_size"]),  # type: ignore[arg-type]
            multiple_of=int(inp["multiple_of"]), normalisation=str(pre["normalisation"]),
            threshold=float(card.get("threshold", 0.5)), raw=card,
            intensity_reference=str(reference), uses_t1=t1w == "used",
            orientation=str(inp.get("orientation", "RAS")),
            axis_order=str(inp.get("axis_order", "xyz")),
            activation=str(card["output"].get("activation", "none")),
            class_index=(None if card["output"].get("class_index") is None
                         else int(card["output"]["class_index"])),
            overlap=None if inp.get("overlap") is None else float(inp["overlap"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelError(card_path, f"model card field missing or malformed: {e}") from e
    problem = card_problem(parsed)
    if problem:
        raise ModelError(card_path, problem)
    return parsed


def card_problem(card: ModelCard) -> str:
    """What makes a parsed image-model card unusable ("" when nothing): no or repeated
    channels, unknown layout, activation or class index, a patch that is not three positive
    sizes, a spacing or overlap out of range. Checks every image model shares; the
    segmentation slot adds :func:`segmentation_problem`."""
    checks = [
        (not card.channels or len(set(card.channels)) != len(card.channels),
         f"input.channels is {list(card.channels)}; expected at least one, each once"),
        (len(card.patch_size) != 3 or min(card.patch_size, default=0) < 1,
         f"input.patch_size is {list(card.patch_size)}; expected three positive sizes"),
        (card.multiple_of < 1, f"input.multiple_of is {card.multiple_of}; expected >= 1"),
        (not 0.25 <= card.spacing_mm <= 4.0,
         f"preprocessing.spacing_mm is {card.spacing_mm}; expected 0.25-4 mm (isotropic)"),
        (card.orientation not in ORIENTATIONS,
         f"input.orientation is {card.orientation!r}; expected one of {ORIENTATIONS}"),
        (card.axis_order not in AXIS_ORDERS,
         f"input.axis_order is {card.axis_order!r}; expected one of {AXIS_ORDERS}"),
        (card.activation not in OUTPUT_ACTIVATIONS,
         f"output.activation is {card.activation!r}; expected one of {OUTPUT_ACTIVATIONS}"),
        ((card.class_index is not None and card.class_index < 0)
         or (card.activation == "softmax" and (card.class_index or 0) < 1),
         f"output.class_index is {card.class_index}; expected >= 0, and >= 1 with a softmax "
         "(class 0 being background)"),
        (card.overlap is not None and not 0.0 <= card.overlap < 1.0,
         f"input.overlap is {card.overlap}; expected 0 <= overlap < 1"),
        (not 0.0 < card.threshold <= 1.0, f"threshold is {card.threshold}; expected (0, 1]"),
    ]
    return "; ".join(message for bad, message in checks if bad)


def segmentation_problem(card: ModelCard) -> str:
    """What keeps a card from the lesion segmentation slot ("" when nothing): the pipeline
    builds its channels by name (:func:`ms_core.segmentation.segment.network_input`), so they
    must be FLAIR and optionally T1w, FLAIR first or second, each once."""
    if "FLAIR" in card.channels and set(card.channels) <= {"FLAIR", "T1w"}:
        return ""
    return f"input.channels is {list(card.channels)}; expected FLAIR, optionally T1w, once each"


def load_segmentation_card(models_dir: Path | str | None = None) -> ModelCard:
    """The lesion segmentation model's card (:data:`SEGMENTATION_MODEL`), verified as
    :func:`load_model_card` does and checked against the segmentation contract.

    Raises
    ------
    ModelError
        as :func:`load_model_card`, or channels the pipeline cannot build.
    """
    card = load_model_card(SEGMENTATION_MODEL, models_dir)
    problem = segmentation_problem(card)
    if problem:
        raise ModelError(card.onnx_path.with_name("model.json"), problem)
    return card


def is_shipped_folder(folder: Path | str) -> bool:
    """Whether ``folder`` is the repository's ``models_onnx`` (the models we ship)."""
    return Path(folder).resolve() == MODELS_DIR.resolve()


def models_dir_for(name: str, default: Path | str = MODELS_DIR) -> Path:
    """The models folder that serves model ``name``: ``$MS_DASH_MODELS`` when that folder's
    manifest lists ``name`` (a fine-tuned, registered or retrained model), else ``default``
    (the shipped models). A folder named by the variable that cannot be read falls back too:
    loading from it would fail for every model it does not hold."""
    override = os.environ.get(MODELS_ENV, "").strip()
    if override:
        try:
            manifest = read_json(Path(override) / "manifest.json")
        except InputError:
            return Path(default)
        if isinstance(manifest.get("models"), dict) and name in manifest["models"]:
            return Path(override)
    return Path(default)


def _folder(name: str, models_dir: Path | str | None) -> Path:
    """``models_dir`` when given, else the folder that serves ``name`` (:func:`models_dir_for`)."""
    return models_dir_for(name) if models_dir is None else Path(models_dir)


def volume_ratio_range(name: str = SEGMENTATION_MODEL, models_dir: Path | str | None = None
                       ) -> tuple[float, float] | None:
    """Lowest and highest predicted / true lesion volume of model ``name`` on the real
    validation set (card field ``evaluation.volume_ratio_range``, written by
    ``python -m training.seg.report``); ``None`` when the card has none or the model is not
    usable (:class:`ModelError`)."""
    try:
        card = verify_model(name, _folder(name, models_dir)).card
    except ModelError:
        return None
    pair = card.get("evaluation", {}).get("volume_ratio_range")
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    lo, hi = float(pair[0]), float(pair[1])
    return (lo, hi) if 0.0 < lo <= hi else None


def register_model(models_dir: Path | str, name: str, entry: dict[str, Any]) -> None:
    """Add or replace ``name`` in ``models_dir/manifest.json`` (atomically), keeping the others.

    ``entry`` holds ``onnx`` and ``card`` (paths relative to ``models_dir``) and ``sha256``.
    """
    path = Path(models_dir) / "manifest.json"
    manifest = read_json(path) if path.exists() else {"models": {}}
    manifest.setdefault("models", {})[name] = entry
    write_json(path, manifest)


def code_commit(paths: tuple[str, ...] = (), repo: Path = REPO) -> dict[str, Any]:
    """The HEAD commit of ``repo`` and whether ``paths`` (relative to it) had uncommitted
    changes, for a model card's training record: ``{"commit", "code_uncommitted"}``.

    ``commit`` is ``"unknown"`` (and the flag ``None``) outside a git checkout.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", *paths)) if paths else None
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "code_uncommitted": None}
    return {"commit": head or "unknown", "code_uncommitted": dirty}
