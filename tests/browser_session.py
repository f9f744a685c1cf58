"""Drive the real app in headless Chromium: start ``streamlit run``, visit pages, check, screenshot.

Shared by ``tests/test_browser.py`` and ``bench/screenshots.py``. Needs the ``playwright``
package and a Chromium binary (Debian's ``chromium``: Playwright cannot download its own
browser here). Chromium runs WebGL2 on the CPU through ANGLE + SwiftShader, so NiiVue draws
without a GPU.

What a page must pass: no Streamlit exception box, no console error from the app's own origin
(requests to other hosts are reported apart: the machine may be offline, e.g. Google's icon
font), and, on the Patient page, a NiiVue canvas that is not blank.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "CHROMIUM_ARGS",
    "PageReport",
    "capture",
    "find_chromium",
    "first_look",
    "free_port",
    "pick",
    "serve",
    "stable_box",
    "wait_idle",
]

REPO = Path(__file__).resolve().parents[1]
#: WebGL2 on the CPU (NiiVue needs WebGL2; there is no GPU in CI).
CHROMIUM_ARGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
VIEWPORT_PX = (1440, 1300)
#: Grey-level standard deviation below which a canvas counts as blank (a uniform fill is 0).
BLANK_STD = 8.0
_TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    """Path of a Chromium binary, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(study: Path, port: int, *, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``streamlit run app.py`` on ``study``; yield its base URL once healthy.

    The server's output goes to ``log_path``; it is stopped (SIGTERM, then SIGKILL) on exit.

    Raises
    ------
    RuntimeError
        when the server exits or is not healthy within ``timeout_s``; quotes the log tail.
    """
    env = dict(os.environ, MS_DASH_STUDY=str(study))
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}: "
                                       f"{log_path.read_text(errors='replace')[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit not healthy after {timeout_s} s: "
                                       f"{log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.25)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class PageReport:
    """What one page showed."""

    name: str
    url: str = ""
    title: str = ""
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    external_failures: list[str] = field(default_factory=list)
    canvas_std: float | None = None
    red_fraction: float | None = None
    n_plotly_charts: int = 0
    screenshot: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _image_stats(png: bytes) -> tuple[float, float]:
    """(grey-level std, fraction of lesion-red pixels) of a PNG screenshot of the viewer.

    Red-dominant pixels count as lesion overlay unless they lie on NiiVue's red crosshair: rows
    and columns with more than 40 red pixels (straight lines; a lesion blob is far narrower)
    are dropped with two pixels either side.
    """
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > g + 60) & (r > b + 60)
    for i in np.nonzero(red.sum(axis=1) > 40)[0]:
        red[max(0, i - 2):i + 3, :] = False
    for j in np.nonzero(red.sum(axis=0) > 40)[0]:
        red[:, max(0, j - 2):j + 3] = False
    return float(rgb.mean(axis=2).std()), float(red.mean())


def wait_idle(page: Any) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=_TIMEOUT_MS)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=_TIMEOUT_MS)


def stable_box(page: Any, locator: Any, settle_s: float = 1.0,
               timeout_s: float = 60.0) -> dict[str, float]:
    """``locator``'s bounding box once the page has stopped moving it (the same box twice,
    ``settle_s`` apart): a click at computed coordinates must not land on a widget that the
    layout is still sliding past."""
    locator.scroll_into_view_if_needed()
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        wait_idle(page)
        box = locator.bounding_box()
        if box is not None and box == last:
            return dict(box)
        last = box
        page.wait_for_timeout(int(settle_s * 1000))
    raise AssertionError(f"{locator} kept moving for {timeout_s} s")


def pick(page: Any, label: str, option_prefix: str, expect_heading: str) -> None:
    """Choose the option starting with ``option_prefix`` in the sidebar selectbox ``label``,
    then wait for a heading containing ``expect_heading`` (the rerun has drawn the page)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(
        has_text=label).first
    box.click()
    page.get_by_role("option").filter(has_text=option_prefix).first.click()
    page.locator("h1, h2, h3").filter(has_text=expect_heading).first.wait_for(
        timeout=_TIMEOUT_MS)
    wait_idle(page)


def _canvas_png(page: Any) -> bytes:
    """Screenshot of the NiiVue canvas; looks the iframe up again if a rerun replaced it."""
    from playwright.sync_api import Error

    for attempt in range(5):
        canvas = page.frame_locator('iframe[title*="niivue"]').locator("canvas").first
        try:
            canvas.wait_for(state="visible", timeout=_TIMEOUT_MS)
            return bytes(canvas.screenshot())
        except Error as e:
            if "detached" not in str(e) or attempt == 4:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _canvas_stats(page: Any, timeout_s: float = 45.0) -> tuple[float, float]:
    """Stats of the NiiVue canvas inside the component iframe, once it has drawn something."""
    deadline = time.monotonic() + timeout_s
    std, red = _image_stats(_canvas_png(page))
    while std <= BLANK_STD and time.monotonic() < deadline:
        time.sleep(0.5)
        std, red = _image_stats(_canvas_png(page))
    # The overlay and the 3D render may come a moment after the first slices.
    settle = time.monotonic() + 5.0
    while red == 0.0 and std > BLANK_STD and time.monotonic() < settle:
        time.sleep(0.5)
        std, red = _image_stats(_canvas_png(page))
    time.sleep(1.0)
    return _image_stats(_canvas_png(page))


#: Pages after Patient and Timeline: (report name, sidebar label, URL path).
OTHER_PAGES = (("prognosis", "Prognosis", "prognosis"), ("cohort", "Cohort / trial", "cohort"),
               ("models", "Models & QC", "models"), ("report", "Report", "report"),
               ("how_it_works", "How it works", "how_it_works"),
               ("import", "Import", "import_data"))


def capture(base_url: str, *, chromium: str, out_dir: Path | None = None,
            participant: str | None = None, visit: str | None = None) -> list[PageReport]:
    """Visit the Patient, the Timeline and then every other page; return one report per page.

    Parameters
    ----------
    base_url
        The app, e.g. ``http://127.0.0.1:8501``.
    chromium
        Path of the Chromium binary.
    out_dir
        Where to write ``<page>.png`` for every page; ``None`` takes no screenshots.
    participant, visit
        Sidebar choices to make first (ids such as ``"sub-07"``, ``"ses-02"``).
    """
    from playwright.sync_api import sync_playwright

    origin = urlsplit(base_url).netloc
    reports: list[PageReport] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": VIEWPORT_PX[0], "height": VIEWPORT_PX[1]})
            current: list[PageReport] = []

            def on_console(msg: Any) -> None:
                if msg.type != "error" or not current:
                    return
                where = msg.location.get("url", "") if msg.location else ""
                text = f"{msg.text} ({where})" if where else msg.text
                if where and urlsplit(where).netloc not in ("", origin):
                    current[-1].external_failures.append(text)
                else:
                    current[-1].console_errors.append(text)

            def on_failed(request: Any) -> None:
                if current and urlsplit(request.url).netloc != origin:
                    current[-1].external_failures.append(f"{request.url}: {request.failure}")

            def on_page_error(error: Any) -> None:
                if current:
                    current[-1].console_errors.append(f"uncaught: {error}")

            page.on("console", on_console)
            page.on("requestfailed", on_failed)
            page.on("pageerror", on_page_error)

            # Patient page (the default page, at the root URL).
            t0 = time.perf_counter()
            current.append(PageReport("patient"))
            page.goto(base_url + "/", wait_until="domcontentloaded")
            wait_idle(page)
            if participant:
                pick(page, "Patient", participant, f"Patient {participant}")
            if visit:
                pick(page, "Visit", visit, f"Visit {visit}")
            page.wait_for_selector("h1", timeout=_TIMEOUT_MS)
            report = current[-1]
            report.canvas_std, report.red_fraction = _canvas_stats(page)
            _finish(page, report, out_dir, t0)

            # Timeline page, through the sidebar navigation so the selection is kept.
            t0 = time.perf_counter()
            current.append(PageReport("timeline"))
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Timeline").click()
            page.wait_for_url("**/timeline", timeout=_TIMEOUT_MS)
            wait_idle(page)
            page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(
                timeout=_TIMEOUT_MS)
            time.sleep(1.0)
            report = current[-1]
            report.n_plotly_charts = page.locator('[data-testid="stPlotlyChart"]').count()
            _finish(page, report, out_dir, t0)

            # Every other page, through the sidebar navigation.
            for name, label, path in OTHER_PAGES:
                t0 = time.perf_counter()
                current.append(PageReport(name))
                page.locator('[data-testid="stSidebarNav"] a').filter(has_text=label).click()
                page.wait_for_url(f"**/{path}", timeout=_TIMEOUT_MS)
                wait_idle(page)
                page.wait_for_selector("h1", timeout=_TIMEOUT_MS)
                time.sleep(1.5)  # charts and iframes settle
                # The title is drawn first; on a slow machine the run may still be building
                # the page below it (the Report's preview), its status widget shown by now.
                wait_idle(page)
                for frame in page.frames[1:]:  # embedded documents (the Report's preview)
                    frame.wait_for_load_state("load", timeout=_TIMEOUT_MS)
                time.sleep(0.5)
                report = current[-1]
                report.n_plotly_charts = page.locator('[data-testid="stPlotlyChart"]').count()
                _finish(page, report, out_dir, t0)
            reports = current
        finally:
            browser.close()
    return reports


@contextlib.contextmanager
def _fresh_page(url: str, chromium: str) -> Iterator[Any]:
    """A new headless browser with ``url`` loaded and the app idle; closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": VIEWPORT_PX[0], "height": VIEWPORT_PX[1]})
            page.goto(url, wait_until="domcontentloaded")
            wait_idle(page)
            yield page
        finally:
            browser.close()


def first_look(url: str, *, chromium: str) -> tuple[str, str]:
    """Open ``url`` in a fresh browser; return the page's first heading and the sidebar text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with _fresh_page(url, chromium) as page:
        heading = page.locator("h1").first
        heading.wait_for(timeout=_TIMEOUT_MS)
        sidebar = page.locator('[data-testid="stSidebar"]')
        with contextlib.suppress(PlaywrightTimeout):  # a page without the router has none
            sidebar.locator('[data-testid="stTextInput"]').wait_for(timeout=10_000)
        return heading.inner_text(), sidebar.inner_text()


def visit_label_after_pick(url: str, participant: str, *, chromium: str) -> str:
    """Open ``url``, pick ``participant`` in the sidebar; return the Visit selectbox's text as
    the browser shows it (e.g. ``"ses-01 · 2018-08-18"``)."""
    with _fresh_page(url, chromium) as page:
        pick(page, "Patient", participant, f"Patient {participant}")
        boxes = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(
            has_text="Visit")
        deadline = time.monotonic() + _TIMEOUT_MS / 1000
        while boxes.count() != 1 and time.monotonic() < deadline:  # the old one goes stale
            page.wait_for_timeout(250)
        return str(boxes.first.locator("input").get_attribute("value"))


def _finish(page: Any, report: PageReport, out_dir: Path | None, t0: float) -> None:
    report.url = page.url
    report.title = page.locator("h1").first.inner_text()
    report.exceptions = page.locator('[data-testid="stException"]').all_inner_texts()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{report.name}.png"
        page.screenshot(path=str(path))
        report.screenshot = str(path)
    report.seconds = round(time.perf_counter() - t0, 2)
