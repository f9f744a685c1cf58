"""The Patient page's viewer on a segmented and compared visit: live threshold and size
sliders, lesion status colours, side by side with linked crosshairs (AppTest), and in a real
browser: choosing a table row moves the crosshairs, clicking a lesion selects its row.

One study is segmented and compared once for this module (about 1.5 min on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from streamlit.testing.v1 import AppTest

from ms_core.foundation import state_keys
from ms_core.foundation.io import load_lesion_mask, load_volume
from ms_core.lesions.components import label_components
from ms_core.longitudinal.tracking import track_visits
from ms_core.services.viewer import STATUS_STYLES
from ms_core.study.derivatives import derivatives_dir, tracking_dir
from ms_core.study.layout import load_study
from tests.conftest import copy_study

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
PID = "sub-01"


@pytest.fixture(scope="module")
def processed(segmented_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the small study with sub-01's first two visits segmented and compared."""
    root = copy_study(segmented_study, tmp_path_factory.mktemp("viewer") / "study")
    first, second = load_study(root).visits[PID][:2]
    track_visits(root, first, second)
    return root


def _visit_ids(root: Path) -> tuple[str, str]:
    first, second = load_study(root).visits[PID][:2]
    return first.session_id, second.session_id


def _spec(at: AppTest) -> dict[str, Any]:
    for el in at.main:
        proto = getattr(el, "proto", None)
        if getattr(el, "type", "") == "component_instance" and proto is not None \
                and "niivue" in proto.component_name:
            spec: dict[str, Any] = json.loads(json.loads(proto.json_args)["spec"])
            return spec
    raise AssertionError("no viewer on the page")


def _lesion_table(at: AppTest) -> pd.DataFrame:
    key = f"{state_keys.LESION_TABLE}-{PID}-"
    frame = next(d for d in at.dataframe if str(d.proto.id).find(key) >= 0 or
                 "lesion_id" in d.value.columns)
    return frame.value


@pytest.fixture()
def page(processed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    monkeypatch.setenv("MS_DASH_STUDY", str(processed))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.sidebar.selectbox[1].set_value(_visit_ids(processed)[1]).run()
    assert not at.exception, at.exception
    yield at


def test_sliders_update_mask_and_table_live(page: AppTest, processed: Path) -> None:
    at = page
    sid = _visit_ids(processed)[1]
    stored = pd.read_csv(derivatives_dir(processed, PID, sid) / "lesions.csv")
    table = _lesion_table(at)
    assert table["lesion_id"].tolist() == stored["lesion_id"].tolist()  # stored settings
    assert np.allclose(table["volume_ml"], stored["volume_ml"])
    overlay = _spec(at)["panes"][0]["overlays"][0]
    assert overlay["name"] == "lesions.nii.gz" and overlay["label_lut"] is not None

    at.slider(key=state_keys.PREVIEW_THRESHOLD).set_value(0.2).run()
    assert not at.exception
    lower = _lesion_table(at)
    assert lower["volume_ml"].sum() > stored["volume_ml"].sum()
    assert _spec(at)["panes"][0]["overlays"][0]["id"] != overlay["id"]  # a new mask was sent
    assert any("Preview at threshold 0.2" in str(i.value) for i in at.info)

    at.slider(key=state_keys.PREVIEW_THRESHOLD).set_value(0.5).run()
    at.slider(key=state_keys.PREVIEW_MIN_SIZE).set_value(100.0).run()
    bigger = _lesion_table(at)
    assert len(bigger) == int((stored["volume_ml"] * 1000 >= 100.0 - 1e-6).sum())


def test_status_overlay_and_side_by_side(page: AppTest, processed: Path) -> None:
    at = page
    first, second = load_study(processed).visits[PID][:2]
    at.radio(key=state_keys.VIEW_OVERLAY).set_value("Lesion status").run()
    spec = _spec(at)
    overlay = spec["panes"][0]["overlays"][0]
    assert overlay["name"] == "lesion_status.nii.gz"
    assert overlay["label_lut"]["labels"][1:] == [s.name for s in STATUS_STYLES]
    changes = pd.read_csv(tracking_dir(processed, first, second) / "lesion_changes.csv")
    assert {c["label"] for c in spec["legend"]} == set(changes["status"])

    at.toggle(key=state_keys.VIEW_SIDE_BY_SIDE).set_value(True).run()
    spec = _spec(at)
    assert len(spec["panes"]) == 2
    prov = json.loads((tracking_dir(processed, first, second) / "provenance.json").read_text())
    f2b = np.asarray(prov["registration"]["followup_to_baseline_ras_mm"])
    to_ref = np.asarray(spec["panes"][1]["to_ref"]).reshape(4, 4)
    assert np.allclose(to_ref @ f2b, np.eye(4), atol=1e-9)   # baseline -> follow-up
    assert spec["panes"][1]["title"].startswith(first.session_id)
    # the previous visit: the same status colours, as its lesions were then
    previous = spec["panes"][1]["overlays"]
    assert [o["name"] for o in previous] == ["lesion_status_baseline.nii.gz"]
    assert previous[0]["label_lut"] == overlay["label_lut"]
    captions = " ".join(c.value for c in at.caption)
    assert "stored rigid registration" in captions and "as they were then" in captions

    at.radio(key=state_keys.VIEW_OVERLAY).set_value("Lesions").run()
    assert [o["name"] for o in _spec(at)["panes"][1]["overlays"]] == ["lesions.nii.gz"]


def test_side_by_side_sends_the_previous_visit_coarser_over_the_budget(
        page: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import viewer as ui_viewer

    at = page
    at.toggle(key=state_keys.VIEW_SIDE_BY_SIDE).set_value(True).run()
    full = _message(at)
    monkeypatch.setattr(ui_viewer, "MESSAGE_BUDGET", 1)
    at.run()
    spec = _spec(at)
    assert spec["panes"][1]["title"].endswith("half resolution")
    assert not spec["panes"][0]["title"].endswith("half resolution")
    assert _message(at) < full
    assert "half resolution" in " ".join(c.value for c in at.caption)


def _message(at: AppTest) -> int:
    """Bytes of the viewer's binary arguments."""
    el = next(e for e in at.main if getattr(e, "type", "") == "component_instance")
    return sum(len(a.bytes) for a in el.proto.special_args)


# ----------------------------------------------------------------------------- real browser
def _chromium() -> str:
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed")
    from browser_session import find_chromium
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not found (apt-get install -y chromium)")
    return path


def _wait(page: Any, predicate: Any, what: str, timeout_s: float = 120.0) -> Any:
    """Poll ``predicate`` until truthy; Playwright's own wait lets the page's events in (a
    plain sleep would not: the sync API handles them only inside its calls)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(300)
    raise AssertionError(f"timed out waiting for {what}")


def _inside_voxel(root: Path, sid: str, lesion_id: int, z_mm: float) -> list[float]:
    """World point of a voxel of ``lesion_id`` on the axial slice at ``z_mm``, near its
    centre (the stored mask's components are the lesion ids)."""
    mask = load_lesion_mask(derivatives_dir(root, PID, sid) / "lesion_mask.nii.gz")
    labels = label_components(mask.labels, affine=mask.affine)
    vox = np.argwhere(labels == lesion_id).astype(float)
    world = vox @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    on_slice = world[np.abs(world[:, 2] - z_mm) < 0.5 * abs(mask.affine[2, 2]) + 1e-3]
    assert len(on_slice), "no voxel of the lesion on the crosshair's axial slice"
    centre = on_slice.mean(axis=0)
    return [float(v) for v in on_slice[np.argmin(((on_slice - centre) ** 2).sum(1))]]


def _background_point(root: Path, sid: str, crosshair_mm: list[float]) -> list[float]:
    """World point of a bright (brain) voxel on the crosshair's axial slice that lies more
    than 8 mm from every lesion (a click there selects nothing)."""
    visit = load_study(root).visit(PID, sid)
    flair = load_volume(visit.images["FLAIR"], "FLAIR")
    mask = load_lesion_mask(derivatives_dir(root, PID, sid) / "lesion_mask.nii.gz")
    k = int(np.rint((np.linalg.inv(flair.affine) @ np.array([*crosshair_mm, 1.0]))[2]))
    zooms = np.sqrt((flair.affine[:3, :3] ** 2).sum(axis=0))
    far = ndi.distance_transform_edt(mask.labels == 0, sampling=zooms)[:, :, k] > 8.0
    bright = flair.data[:, :, k] > np.percentile(flair.data[:, :, k], 80)
    ij = np.argwhere(far & bright)
    i, j = ij[len(ij) // 2]
    world = flair.affine @ np.array([i, j, k, 1.0])
    return [float(v) for v in world[:3]]


def test_table_moves_crosshairs_and_a_click_selects_the_lesion(processed: Path,
                                                               tmp_path: Path) -> None:
    chromium = _chromium()
    from browser_session import CHROMIUM_ARGS, free_port, pick, serve, stable_box, wait_idle
    from playwright.sync_api import sync_playwright

    sid = _visit_ids(processed)[1]
    stored = pd.read_csv(derivatives_dir(processed, PID, sid) / "lesions.csv")
    assert len(stored) >= 1
    with serve(processed, free_port(), log_path=tmp_path / "log") as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        wait_idle(page)
        pick(page, "Visit", sid, f"Visit {sid}")

        def viewer() -> Any:
            return next((f for f in page.frames if "niivue_ms_viewer" in f.url), None)

        def in_viewer(script: str) -> Any:
            """``script``'s value in the viewer's frame, looked up afresh; ``None`` while there
            is none or while Streamlit replaces it (a rerun can mount the component anew, and
            a frame found a moment ago is then detached)."""
            from playwright.sync_api import Error

            frame = viewer()
            if frame is None:
                return None
            try:
                return frame.evaluate(script)
            except Error as e:
                if "detached" in str(e) or "context was destroyed" in str(e):
                    return None
                raise

        _wait(page, lambda: in_viewer("document.body.dataset.ready === '1'"),
              "the viewer to load")
        # 1. Choosing a table row moves the crosshair to that lesion.
        grid = page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first
        text = None
        for attempt in range(3):  # a click while the grid still initialises can be lost
            box = stable_box(page, grid)
            page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # first row's selection box
            try:
                text = _wait(page, lambda: page.get_by_text("Selected lesion").count() and
                             page.get_by_text("Selected lesion").first.inner_text(),
                             "the selected lesion", timeout_s=40)
                break
            except AssertionError:
                page.screenshot(path=str(tmp_path / f"table_click_{attempt}.png"))
        assert text, f"no lesion selected after 3 clicks; screenshots in {tmp_path}"
        lesion = int(text.strip().removeprefix("Selected lesion "))
        row = stored[stored.lesion_id == lesion].iloc[0]
        centroid = [row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm]
        def at_centroid() -> Any:
            m = in_viewer("window.msViewer.crosshairMm(0)")
            return m if m and np.allclose(m, centroid, atol=1e-3) else None

        mm = _wait(page, at_centroid, "the crosshair move")

        # 2. A click on background clears the selection; a click on the lesion selects it.
        canvas = page.frame_locator('iframe[title*="niivue"]').locator("canvas").first
        cbox = stable_box(page, canvas)
        away = _background_point(processed, sid, mm)
        point = _wait(page, lambda: in_viewer(f"window.msViewer.cssPointOf(0, {json.dumps(away)})"),
                      "the background point on the canvas", timeout_s=30)
        page.mouse.click(cbox["x"] + point[0], cbox["y"] + point[1])
        _wait(page, lambda: page.get_by_text("Selected lesion").count() == 0,
              "the selection to clear")
        target = _inside_voxel(processed, sid, lesion, float(mm[2]))
        point = _wait(page, lambda: in_viewer(
            f"window.msViewer.cssPointOf(0, {json.dumps(target)})"),
            "the lesion's point on the canvas", timeout_s=30)
        page.mouse.click(cbox["x"] + point[0], cbox["y"] + point[1])
        text = _wait(page, lambda: page.get_by_text("Selected lesion").count() and
                     page.get_by_text("Selected lesion").first.inner_text(),
                     "the clicked lesion to be selected")
        assert text.strip() == f"Selected lesion {lesion}", text

        # 3. Side by side: the baseline's crosshair follows through the stored registration.
        first, second = load_study(processed).visits[PID][:2]
        prov = json.loads((tracking_dir(processed, first, second) / "provenance.json")
                          .read_text())
        f2b = np.asarray(prov["registration"]["followup_to_baseline_ras_mm"])
        page.get_by_text(f"Side by side with {first.session_id}").click()
        _wait(page, lambda: in_viewer(
            "window.msViewer.nPanes() === 2 && window.msViewer.loaded(1) && "
            "document.body.dataset.ready === '1'"), "the second pane to load")
        cbox = stable_box(page, canvas)
        point = _wait(page, lambda: in_viewer(
            f"window.msViewer.cssPointOf(0, {json.dumps(target)})"),
            "the lesion's point on the side-by-side canvas", timeout_s=30)
        page.mouse.click(cbox["x"] + point[0], cbox["y"] + point[1])

        def linked() -> Any:
            # Pane 1 may report its own load position first: wait for the click's link.
            here = in_viewer("window.msViewer.crosshairMm(0)")
            there = in_viewer("window.msViewer.crosshairMm(1)")
            if here is None or there is None:
                return None
            expected = (f2b @ np.array([*here, 1.0]))[:3]
            return (there, expected) if np.allclose(there, expected, atol=0.5) else None

        there, expected = _wait(page, linked, "the baseline crosshair at the registered point",
                                timeout_s=30)
        assert np.allclose(there, expected, atol=0.5)
        browser.close()
    assert errors == []
