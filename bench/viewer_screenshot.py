"""Screenshot of the Patient page viewer on a segmented and compared visit, for the docs.

Copies one patient of a study to a temporary folder, segments its first two visits and
compares them (the app's defaults, about 1.5 min on 2 cores), starts the app, picks the second
visit, shows the lesions coloured by status with the previous visit side by side, chooses the
first lesion in the table (the crosshairs move to it) and saves the page as
``patient_viewer.png``. Prints JSON (console errors, the lesion chosen, both crosshairs).

Usage::

    python bench/viewer_screenshot.py --study data/demo --patient sub-01 --out docs/screenshots
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from browser_session import (  # noqa: E402
    CHROMIUM_ARGS,
    find_chromium,
    free_port,
    pick,
    serve,
    stable_box,
    wait_idle,
)

from ms_core.longitudinal.tracking import track_visits  # noqa: E402
from ms_core.segmentation.segment import segment_visit  # noqa: E402
from ms_core.study.layout import load_study  # noqa: E402


def _one_patient(study: Path, pid: str, dst: Path) -> Path:
    root = dst / "study"
    root.mkdir()
    for name in ("dataset_description.json", "participants.tsv"):
        shutil.copy2(study / name, root / name)
    shutil.copytree(study / pid, root / pid)
    truth = study / "derivatives" / "ground_truth" / pid
    if truth.is_dir():
        shutil.copytree(truth, root / "derivatives" / "ground_truth" / pid)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--patient", default="sub-01")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print(json.dumps({"error": "chromium not found; apt-get install -y chromium"}))
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = _one_patient(args.study.resolve(), args.patient, Path(tmp))
        first, second = load_study(root).visits[args.patient][:2]
        segment_visit(root, first)
        segment_visit(root, second)
        track_visits(root, first, second)
        errors: list[str] = []
        report: dict[str, Any] = {"visit": f"{args.patient}/{second.session_id}"}
        with serve(root, free_port(), log_path=Path(tmp) / "log") as url, \
                sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1250})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            wait_idle(page)
            pick(page, "Visit", second.session_id, f"Visit {second.session_id}")
            page.get_by_text("Lesion status", exact=True).click()
            wait_idle(page)
            page.get_by_text(f"Side by side with {first.session_id}").click()
            wait_idle(page)
            page.locator('iframe[title*="niivue"]').scroll_into_view_if_needed()
            page.wait_for_function("() => [...document.querySelectorAll('iframe')].some("
                                   "f => f.contentDocument && f.contentDocument.body && "
                                   "f.contentDocument.body.dataset.ready === '1')",
                                   timeout=60_000)
            grid = page.locator('[data-testid="stDataFrame"]').first
            box = stable_box(page, grid)
            page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)
            page.get_by_text("Selected lesion").first.wait_for(timeout=60_000)
            report["selected"] = page.get_by_text("Selected lesion").first.inner_text()
            report["sliders"] = [page.locator('[data-testid="stSlider"]').nth(i).inner_text()
                                 .split("\n")[:2] for i in range(3)]
            if page.get_by_text("Preview at threshold").count():
                raise RuntimeError(f"a slider was moved: {report['sliders']}")
            wait_idle(page)
            page.wait_for_timeout(3000)
            frame = next(f for f in page.frames if "niivue_ms_viewer" in f.url)
            report["crosshairs_mm"] = [frame.evaluate(f"window.msViewer.crosshairMm({i})")
                                       for i in range(2)]
            page.locator('iframe[title*="niivue"]').scroll_into_view_if_needed()
            args.out.mkdir(parents=True, exist_ok=True)
            shot = args.out / "patient_viewer.png"
            page.screenshot(path=str(shot))
            report["screenshot"] = str(shot)
            browser.close()
        report["console_errors"] = errors
    print(json.dumps(report, indent=2))
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
