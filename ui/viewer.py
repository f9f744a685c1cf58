"""The Patient page's image viewer: our own Streamlit component around NiiVue.

``components/ms_viewer/index.html`` runs one or two NiiVue panes in the browser (the vendored
UMD build, no network). This module builds its spec:

- each pane: the image (gzipped NIfTI bytes, sent as raw bytes, not base64), its overlays
  (plain colour maps or a label colour map for lesion status), a title, and the world
  transforms ``to_ref``/``from_ref`` between the pane and the reference pane (the first one),
  which link the crosshairs of a baseline and a follow-up through the stored registration;
- ``crosshair``: a world point (reference mm) to move every crosshair to, applied once per
  ``token`` (choosing a lesion in the table);
- ``legend``: colour chips under the panes.

It returns the last click: ``{"event": "click", "count", "pane", "mm", "ref_mm"}`` (``mm``
in that pane's world, ``ref_mm`` in the reference pane's), or ``None``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from ms_core.foundation import state_keys
from ms_core.foundation.domain import Visit
from ms_core.foundation.errors import InputError
from ms_core.foundation.io import load_lesion_mask, load_volume, read_json, read_nifti_header
from ms_core.imaging.preprocess import Grid
from ms_core.lesions.visits import overlay_caption
from ms_core.services.viewer import (
    LESION_COLOUR,
    STATUS_STYLES,
    LabelStyle,
    Preview,
    image_viewer_bytes,
    label_lut,
    labels_viewer_bytes,
    lesion_at,
    link_transforms,
    preview_lesions,
    status_labels,
    status_labels_at_baseline,
)
from ms_core.study.derivatives import derivatives_dir, tracking_dir
from ui import helpers as ui_helpers
from ui.helpers import file_stamp

NIIVUE_VERSION = "0.69.0"
FRONTEND = Path(__file__).resolve().parents[1] / "components" / "ms_viewer"
# "niivue" in the name: tests and the benchmark find the viewer by it.
_component = components.declare_component("niivue_ms_viewer", path=str(FRONTEND))


@dataclass(frozen=True)
class Layer:
    """One overlay: gzipped NIfTI ``data``; ``labels`` (a label colour map) or ``colormap``."""

    data: bytes
    name: str
    colormap: str = "red"
    opacity: float = 0.7
    labels: tuple[LabelStyle, ...] | None = None
    cal_min: float | None = None
    cal_max: float | None = None


@dataclass(frozen=True)
class Pane:
    """One viewer pane: ``image`` (gzipped NIfTI bytes) with its ``layers``.

    ``to_ref``: 4x4 world matrix from this pane's scanner space to the reference pane's
    (identity for the reference itself).
    """

    image: bytes
    name: str
    title: str
    layers: Sequence[Layer] = ()
    to_ref: np.ndarray = field(default_factory=lambda: np.eye(4))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def viewer_spec(panes: Sequence[Pane], *, crosshair_mm: Sequence[float] | None = None,
                crosshair_token: str | None = None, height: int = 520,
                view_mode: str = "multiplanar",
                legend: Sequence[LabelStyle] = ()) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The component's JSON spec and its byte arguments (one top-level argument per volume:
    Streamlit sends top-level ``bytes`` arguments as binary)."""
    if not panes:
        raise ValueError("the viewer needs at least one pane")
    blobs: dict[str, bytes] = {}
    pane_specs = []
    for i, pane in enumerate(panes):
        to_ref = np.asarray(pane.to_ref, np.float64)
        blobs[f"p{i}_image"] = pane.image
        overlays = []
        for j, layer in enumerate(pane.layers):
            arg = f"p{i}_layer{j}"
            blobs[arg] = layer.data
            overlays.append({
                "arg": arg, "id": f"{_digest(layer.data)}-{layer.name}-{layer.colormap}",
                "name": layer.name, "colormap": layer.colormap, "opacity": layer.opacity,
                "label_lut": label_lut(layer.labels) if layer.labels else None,
                "cal_min": layer.cal_min, "cal_max": layer.cal_max,
            })
        pane_specs.append({
            "title": pane.title, "image_arg": f"p{i}_image", "image_name": pane.name,
            "image_id": _digest(pane.image), "overlays": overlays,
            "to_ref": to_ref.ravel().tolist(),
            "from_ref": np.linalg.inv(to_ref).ravel().tolist(),
        })
    spec = {
        "panes": pane_specs, "height": height, "view_mode": view_mode,
        "crosshair": ({"mm": [float(v) for v in crosshair_mm], "token": crosshair_token}
                      if crosshair_mm is not None else None),
        "legend": [{"label": s.name, "colour": s.hex} for s in legend],
    }
    return spec, blobs


def ms_viewer(panes: Sequence[Pane], *, key: str, crosshair_mm: Sequence[float] | None = None,
              crosshair_token: str | None = None, height: int = 520,
              view_mode: str = "multiplanar",
              legend: Sequence[LabelStyle] = ()) -> dict[str, Any] | None:
    """Draw the viewer; return its last click event (see the module docstring) or ``None``."""
    spec, blobs = viewer_spec(panes, crosshair_mm=crosshair_mm, crosshair_token=crosshair_token,
                              height=height, view_mode=view_mode, legend=legend)
    value = _component(spec=json.dumps(spec), **blobs, key=key, default=None)
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- page glue
@dataclass
class Selection:
    """The Patient page's selected lesion and where the selection came from.

    ``rows``: the lesion table's last selection (to see when it changes); ``click``: the last
    viewer click handled (its session nonce and count); ``token``: the crosshair request sent
    to the viewer (a new token moves the crosshairs once).
    """

    lesion: int | None = None
    rows: tuple[int, ...] = ()
    click: tuple[str, int] | None = None
    token: str | None = None
    moves: int = 0


def selection_state(pid: str, sid: str) -> Selection:
    """The selection of one visit, kept in ``st.session_state``."""
    key = f"{state_keys.SELECTED_LESION}-{pid}-{sid}"
    found = st.session_state.get(key)
    if not isinstance(found, Selection):
        found = Selection()
        st.session_state[key] = found
    return found


def table_key(pid: str, sid: str) -> str:
    """Key of the visit's selectable lesion table."""
    return f"{state_keys.LESION_TABLE}-{pid}-{sid}"


def follow_table_selection(state: Selection, shown: pd.DataFrame, pid: str, sid: str) -> None:
    """Select the lesion chosen in the table (read before the table is drawn: Streamlit keeps
    a widget's state from the previous run) and ask the viewer to move its crosshairs."""
    widget = st.session_state.get(table_key(pid, sid))
    rows = tuple(int(r) for r in (widget or {}).get("selection", {}).get("rows", []))
    if rows == state.rows:
        return
    state.rows = rows
    if rows and rows[0] < len(shown):
        state.lesion = int(shown["lesion_id"].iloc[rows[0]])
        state.moves += 1
        state.token = f"table-{state.lesion}-{state.moves}"


def follow_click(state: Selection, click: dict[str, Any] | None, labels: np.ndarray | None,
                 affine: np.ndarray | None) -> bool:
    """Select the lesion under a new viewer click (``None`` for a click on background);
    True when the selection changed."""
    if click is None or click.get("event") != "click" or labels is None or affine is None:
        return False
    stamp = (str(click.get("session", "")), int(click.get("count", 0)))
    if stamp == state.click:
        return False
    state.click = stamp
    before = state.lesion
    state.lesion = lesion_at(labels, affine, click["ref_mm"])
    return state.lesion != before


def crosshair_for(state: Selection, table: pd.DataFrame) -> list[float] | None:
    """World point (mm) of the selected lesion's centroid when the table asked for a move."""
    if state.token is None or state.lesion is None:
        return None
    row = table[table["lesion_id"] == state.lesion]
    if row.empty:
        return None
    return [float(row[c].iloc[0]) for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")]


def highlight_selected(table: pd.DataFrame, lesion: int | None) -> Any:
    """The table, with the selected lesion's row highlighted (a pandas Styler)."""
    def colour(row: pd.Series) -> list[str]:
        on = lesion is not None and int(row["lesion_id"]) == lesion
        return ["background-color: rgba(255, 200, 0, 0.35)" if on else ""] * len(row)
    return table.style.apply(colour, axis=1)


# ----------------------------------------------------------------------------- cached data
@st.cache_data(max_entries=16, show_spinner=False)
def _display_image(path: str, modality: str, stamp: tuple[int, int], step: int) -> bytes:
    return image_viewer_bytes(path, modality, step=step)


def display_image(path: Path, modality: str, step: int = 1) -> bytes:
    """A compact display copy of a scan (cropped, uint8, gzipped; every ``step``-th voxel),
    cached on the file."""
    return _display_image(str(path), modality, file_stamp(path), step)


#: Bytes of volumes one viewer message may carry (the target is 5 MB; the JSON spec is small).
MESSAGE_BUDGET = 4_500_000


def message_bytes(panes: Sequence[Pane]) -> int:
    """Bytes of the volumes the panes send (images and overlays)."""
    return sum(len(p.image) + sum(len(layer.data) for layer in p.layers) for p in panes)


def _segmentation_files(root: Path, visit: Visit) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The visit's segmentation folder and the stamps of the files a preview reads (its cache
    key: a new segmentation makes a new preview)."""
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    return str(folder), tuple(file_stamp(folder / f) for f in
                              ("lesion_prob.nii.gz", "lesion_mask.nii.gz", "lesions.csv"))


@st.cache_resource(max_entries=8, show_spinner=False)
def _preview(folder: str, threshold: float, min_mm3: float,
             stamps: tuple[tuple[int, int], ...]) -> Preview:
    base = Path(folder)
    prob = load_volume(base / "lesion_prob.nii.gz", "prob")
    mask = load_lesion_mask(base / "lesion_mask.nii.gz")
    stored = pd.read_csv(base / "lesions.csv")
    return preview_lesions(prob.data, prob.affine, threshold=threshold, min_lesion_mm3=min_mm3,
                           stored_mask=mask.labels, stored_table=stored)


def preview(root: Path, visit: Visit, threshold: float, min_mm3: float) -> Preview:
    """Lesions of the stored segmentation at the viewer's threshold and minimum size (a cached
    resource shared across sessions: read-only)."""
    folder, stamps = _segmentation_files(root, visit)
    return _preview(folder, round(threshold, 4), round(min_mm3, 4), stamps)


@st.cache_data(max_entries=32, show_spinner=False)
def _preview_bytes(folder: str, threshold: float, min_mm3: float,
                   stamps: tuple[tuple[int, int], ...], ids: tuple[int, ...] | None) -> bytes:
    found = _preview(folder, threshold, min_mm3, stamps)
    labels = found.labels > 0 if ids is None else np.isin(found.labels, ids)
    return labels_viewer_bytes(labels.astype(np.uint8), found.affine)


def preview_overlay(root: Path, visit: Visit, threshold: float, min_mm3: float,
                    ids: Sequence[int] | None = None) -> bytes:
    """The previewed lesions (or only ``ids``) as a compact uint8 overlay."""
    folder, stamps = _segmentation_files(root, visit)
    return _preview_bytes(folder, round(threshold, 4), round(min_mm3, 4), stamps,
                          tuple(int(i) for i in ids) if ids is not None else None)


@st.cache_data(max_entries=16, show_spinner=False)
def _status_overlay(folder: str, stamps: tuple[tuple[int, int], ...]) -> bytes:
    ids = load_lesion_mask(Path(folder) / "lesion_ids.nii.gz")
    changes = pd.read_csv(Path(folder) / "lesion_changes.csv")
    return labels_viewer_bytes(status_labels(ids.labels, changes), ids.affine)


_STATUS_FILES = ("lesion_ids.nii.gz", "lesion_changes.csv", "provenance.json")


def status_overlay(root: Path, baseline: Visit, followup: Visit) -> bytes | None:
    """The stored comparison's lesions coloured by status (codes of
    :data:`ms_core.services.viewer.STATUS_STYLES`), or ``None`` without a comparison."""
    folder = tracking_dir(root, baseline, followup)
    if not all((folder / f).exists() for f in _STATUS_FILES):
        return None
    return _status_overlay(str(folder), tuple(file_stamp(folder / f) for f in _STATUS_FILES))


@st.cache_data(max_entries=16, show_spinner=False)
def _baseline_status_overlay(folder: str, stamps: tuple[tuple[int, int], ...], flair: str,
                             flair_stamp: tuple[int, int]) -> bytes:
    ids = load_lesion_mask(Path(folder) / "lesion_ids.nii.gz")
    changes = pd.read_csv(Path(folder) / "lesion_changes.csv")
    change = load_lesion_mask(Path(folder) / "change_mask.nii.gz")
    f2b = read_json(Path(folder) / "provenance.json")["registration"]["followup_to_baseline_ras_mm"]
    header = read_nifti_header(flair)
    x, y, z = (int(n) for n in header.shape[:3])
    grid = Grid((x, y, z), header.affine)
    labels = status_labels_at_baseline(status_labels(ids.labels, changes), change.labels,
                                       ids.affine, np.asarray(f2b, np.float64), grid)
    return labels_viewer_bytes(labels, grid.affine)


def baseline_status_overlay(root: Path, baseline: Visit, followup: Visit) -> bytes | None:
    """The stored comparison's status colours on the baseline visit's FLAIR grid, as its lesions
    were then (:func:`ms_core.services.viewer.status_labels_at_baseline`), or ``None`` without a
    comparison or a baseline FLAIR."""
    folder = tracking_dir(root, baseline, followup)
    files = (*_STATUS_FILES, "change_mask.nii.gz")
    flair = baseline.images.get("FLAIR")
    if flair is None or not flair.exists() or not all((folder / f).exists() for f in files):
        return None
    return _baseline_status_overlay(str(folder), tuple(file_stamp(folder / f) for f in files),
                                    str(flair), file_stamp(flair))


# ----------------------------------------------------------------------------- the viewer block
LESIONS = "Lesions"
STATUS = "Lesion status"
CHANGES = "Changed voxels"
PROBABILITY = "Probability"
NO_OVERLAY = "None"


@dataclass
class ViewerState:
    """What the viewer block leaves for the rest of the page: the live lesion ``preview`` when
    the visit is segmented, and the ``selection``."""

    selection: Selection
    preview: Preview | None = None


def _stored_setting(prov: dict[str, Any], name: str, default: float) -> float:
    value = prov.get("parameters", {}).get(name, default)
    return float(value) if value is not None else default


def _select(key: str, options: Sequence[str]) -> None:
    """Reset a radio's stored value that is no longer one of its options (before drawing it)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def preview_controls(prov: dict[str, Any]) -> tuple[float, float]:
    """Threshold and minimum-size sliders, starting at the stored segmentation's settings."""
    stored_t = _stored_setting(prov, "threshold", 0.5)
    stored_m = _stored_setting(prov, "min_lesion_mm3", 0.0)
    st.session_state.setdefault(state_keys.PREVIEW_THRESHOLD, stored_t)
    st.session_state.setdefault(state_keys.PREVIEW_MIN_SIZE, stored_m)
    t_col, m_col = st.columns(2)
    threshold = t_col.slider("Probability threshold", 0.05, 0.95, step=0.05,
                             key=state_keys.PREVIEW_THRESHOLD,
                             help=f"Stored segmentation: {stored_t:g}. Changes the mask and the "
                                  "lesion table below at once (a preview: stored results keep "
                                  "their settings).")
    min_mm3 = m_col.slider("Minimum lesion size (mm³)", 0.0, 100.0, step=1.0,
                           key=state_keys.PREVIEW_MIN_SIZE,
                           help=f"Stored segmentation: {stored_m:g} mm³.")
    return float(threshold), float(min_mm3)


def patient_viewer(root: Path, visit: Visit, previous: Visit | None,
                   files: dict[str, Path], geometries: dict[str, Any],
                   problems: dict[str, str], *,
                   segmentation: tuple[dict[str, Any], pd.DataFrame] | None,
                   tracking: tuple[dict[str, Any], pd.DataFrame] | None,
                   location: str | None) -> ViewerState:
    """The Patient page's viewer with its controls (see the module docstring)."""
    pid, sid = visit.participant_id, visit.session_id
    state = ViewerState(selection_state(pid, sid))
    modality = st.radio("Image", ui_helpers.VIEW_MODALITIES, horizontal=True,
                        key=state_keys.VIEW_MODALITY)
    truth_overlay = None
    try:
        truth_overlay = ui_helpers.lesion_overlay(root, visit) if segmentation is None else None
    except InputError as e:
        st.error(f"Lesion overlay not shown. {e}")
    changes = (ui_helpers.change_overlay(root, previous, visit)
               if previous is not None and tracking else None)
    options = [o for o, ok in ((LESIONS, segmentation is not None or truth_overlay is not None),
                               (STATUS, tracking is not None), (CHANGES, changes is not None),
                               (PROBABILITY, segmentation is not None), (NO_OVERLAY, True)) if ok]
    _select(state_keys.VIEW_OVERLAY, options)
    over_col, side_col = st.columns([3, 2])
    overlay = over_col.radio("Overlay", options, horizontal=True, key=state_keys.VIEW_OVERLAY)
    prev_image = (previous.images.get(modality) if previous is not None else None)
    side = prev_image is not None and side_col.toggle(
        f"Side by side with {previous.session_id if previous else ''}",
        key=state_keys.VIEW_SIDE_BY_SIDE,
        help="The previous visit beside this one; the crosshairs follow each other through the "
             "stored registration.")
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.7, 0.05, key=state_keys.VIEW_OPACITY)
    if segmentation is not None:
        state.preview = preview(root, visit, *preview_controls(segmentation[0]))

    layers: list[Layer] = []
    legend: tuple[LabelStyle, ...] = ()
    location_ids = None
    if state.preview is not None and location:
        table = state.preview.table
        location_ids = table.lesion_id[table.location == location].tolist()
    if overlay == LESIONS and state.preview is not None:
        name = "lesions_location.nii.gz" if location_ids is not None else "lesions.nii.gz"
        layers = [Layer(preview_overlay(root, visit, state.preview.threshold,
                                        state.preview.min_lesion_mm3,
                                        location_ids), name, opacity=opacity,
                        labels=(LESION_COLOUR,))]
        legend = (LESION_COLOUR,)
    elif overlay == LESIONS and truth_overlay is not None:
        layers = [Layer(truth_overlay.data, "lesions.nii.gz", "red", opacity)]
    elif overlay == STATUS and previous is not None:
        data = status_overlay(root, previous, visit)
        if data is not None:
            layers = [Layer(data, "lesion_status.nii.gz", opacity=opacity, labels=STATUS_STYLES)]
            present = set(tracking[1]["status"]) if tracking else set()
            legend = tuple(s for s in STATUS_STYLES if s.name in present)
    elif overlay == CHANGES and changes is not None:
        layers = [Layer(changes, "change_mask.nii.gz", "warm", opacity)]
    elif overlay == PROBABILITY:
        prob = ui_helpers.probability_overlay(root, visit)
        if prob is not None:
            layers = [Layer(prob, "lesion_prob.nii.gz", "warm", opacity)]

    if geometries.get(modality) is None:
        if modality in problems:
            st.info(f"The {modality} image cannot be shown: see the error above.")
        else:
            st.info(f"This visit has no {modality} image.")
        return state
    panes = [Pane(display_image(files[modality], modality), files[modality].name,
                  f"{sid} · {modality}", layers)]
    linked_by = None
    if side and previous is not None and prev_image is not None:
        registration = (tracking[0].get("registration", {}).get("followup_to_baseline_ras_mm")
                        if tracking else None)
        b2f, _ = link_transforms(np.asarray(registration) if registration is not None else None)
        linked_by = "the stored rigid registration" if registration is not None else \
            "scanner coordinates only (compare the visits to register them)"
        side_pane = Pane(display_image(prev_image, modality), prev_image.name,
                         f"{previous.session_id} · {modality} (previous)",
                         _previous_layers(root, previous, visit, overlay, opacity), to_ref=b2f)
        if message_bytes([*panes, side_pane]) > MESSAGE_BUDGET:
            side_pane = replace(side_pane, image=display_image(prev_image, modality, step=2),
                                title=f"{side_pane.title}, half resolution")
            linked_by += "; the previous visit is sent at half resolution (message size)"
        panes.append(side_pane)
    if state.preview is not None:
        follow_table_selection(state.selection, shown_lesions(state.preview.table, location),
                               pid, sid)
    crosshair = crosshair_for(state.selection, state.preview.table) \
        if state.preview is not None else None
    click = ms_viewer(panes, key=f"{state_keys.PATIENT_VIEWER}-{pid}-{sid}-{modality}",
                      crosshair_mm=crosshair, crosshair_token=state.selection.token,
                      height=460 if len(panes) > 1 else 520, legend=legend)
    if state.preview is not None:
        follow_click(state.selection, click, state.preview.labels, state.preview.affine)
    st.caption(_caption(overlay, location, truth_overlay, state, linked_by))
    return state


def shown_lesions(table: pd.DataFrame, location: str | None) -> pd.DataFrame:
    """The lesion table rows shown (only one location's when the Prognosis page asked)."""
    # A copy: the preview's table is a cached resource shared by every session.
    return (table[table["location"] == location].reset_index(drop=True) if location
            else table.copy())


def _previous_layers(root: Path, previous: Visit, visit: Visit, overlay: str,
                     opacity: float) -> list[Layer]:
    if overlay == PROBABILITY:
        prob = ui_helpers.probability_overlay(root, previous)
        return [Layer(prob, "lesion_prob.nii.gz", "warm", opacity)] if prob else []
    if overlay == STATUS:  # the same colours as the follow-up, as the lesions were then
        then = baseline_status_overlay(root, previous, visit)
        if then is not None:
            return [Layer(then, "lesion_status_baseline.nii.gz", opacity=opacity,
                          labels=STATUS_STYLES)]
    if overlay in (LESIONS, STATUS):
        try:
            found = ui_helpers.lesion_overlay(root, previous)
        except InputError:
            return []
        return [Layer(found.data, "lesions.nii.gz", "red", opacity)] if found else []
    return []


def _caption(overlay: str, location: str | None, truth: Any, state: ViewerState,
             linked_by: str | None) -> str:
    parts = []
    if overlay == LESIONS and location and state.preview is not None:
        parts.append(f"Showing the network's {location.replace('_', ' ')} lesions.")
    elif overlay == LESIONS and state.preview is not None:
        parts.append(f"Network lesions at threshold {state.preview.threshold:g}, at least "
                     f"{state.preview.min_lesion_mm3:g} mm³. Click a lesion to select it in the "
                     "table; choose a row to move the crosshair to it.")
    elif overlay == LESIONS and truth is not None:
        parts.append(overlay_caption(truth.source, truth.path))
    elif overlay == STATUS:
        parts.append("Lesions coloured by their status since the previous visit (stored "
                     "comparison).")
        if linked_by:
            parts.append("The previous visit shows its lesions in the same colours, as they "
                         "were then: new lesions and new lesion tissue are not there yet.")
    elif overlay == CHANGES:
        parts.append("Changed voxels: bright = new or enlarging lesion tissue, dark red = "
                     "shrinking or disappeared.")
    elif overlay == PROBABILITY:
        parts.append("Lesion probability (0-1 shown as 0-255).")
    if linked_by:
        parts.append(f"Crosshairs linked through {linked_by}.")
    parts.append("Images are display copies (cropped, 8-bit).")
    return " ".join(parts)
