"""The real app in headless Chromium: every page renders, no errors, NiiVue draws the brain.

Skipped when the ``playwright`` package or a Chromium binary is missing (``make browser-deps``
installs Debian's chromium). Screenshots go to a temporary folder, or to ``docs/screenshots``
when ``MS_DASH_SCREENSHOTS=1`` (``bench/screenshots.py`` makes the README ones).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from ms_core.study.layout import load_study

REPO = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)",
                allow_module_level=True)

from browser_session import (  # noqa: E402
    BLANK_STD,
    capture,
    find_chromium,
    first_look,
    free_port,
    serve,
    visit_label_after_pick,
)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not found (apt-get install -y chromium)")
    return path


def test_pages_render_without_errors_and_viewer_is_not_blank(
        chromium: str, small_study: Path, tmp_path: Path) -> None:
    # ``chromium`` comes first so that a missing browser skips before the study is built.
    keep = os.environ.get("MS_DASH_SCREENSHOTS") == "1"
    out_dir = REPO / "docs" / "screenshots" if keep else tmp_path / "shots"
    log = tmp_path / "streamlit.log"
    with serve(small_study, free_port(), log_path=log) as url:
        # The server's very first run, straight to a page other than the default: Streamlit
        # still treats pages/ as an old-style multipage folder then (see
        # ui.helpers.ensure_routed); the page must come with the router and its sidebar.
        heading, sidebar = first_look(f"{url}/timeline", chromium=chromium)
        patient, timeline, *others = capture(url, chromium=chromium, out_dir=out_dir)
        # Patients share session ids; the Visit picker must show the new patient's dates.
        picked = visit_label_after_pick(url, "sub-02", chromium=chromium)
    first = load_study(small_study).visits["sub-02"][0]
    assert picked == f"{first.session_id} · {first.acq_date.isoformat()}"
    assert first.acq_date != load_study(small_study).visits["sub-01"][0].acq_date
    assert heading == "Timeline of sub-01"
    assert "Study folder" in sidebar and "Patient" in sidebar

    assert [p.name for p in others] == ["prognosis", "cohort", "models", "report",
                                        "how_it_works", "import"]
    for page in (patient, timeline, *others):
        assert page.exceptions == [], page
        assert page.console_errors == [], page
        assert page.screenshot and Path(page.screenshot).stat().st_size > 10_000
    assert "Traceback" not in log.read_text(errors="replace")

    assert patient.url.rstrip("/") == url  # the default page is served at the root URL
    assert patient.title == "Patient sub-01"
    assert patient.canvas_std is not None and patient.canvas_std > BLANK_STD
    assert patient.red_fraction is not None and patient.red_fraction > 0  # lesion overlay

    assert timeline.url == f"{url}/timeline"
    assert timeline.title == "Timeline of sub-01"
    assert timeline.n_plotly_charts == 2
    titles = {p.name: p.title for p in others}
    assert titles["prognosis"] == "Prognosis of sub-01"
    assert {p.name: p.n_plotly_charts for p in others}["prognosis"] >= 2  # waterfall, calibration
    assert {p.name: p.n_plotly_charts for p in others}["cohort"] >= 4
