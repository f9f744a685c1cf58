"""Screenshots of every page for the README, with render checks.

Starts ``streamlit run app.py`` on a study, opens both pages in headless Chromium (Debian's
``chromium``; WebGL2 through SwiftShader) and writes ``patient.png`` and ``timeline.png``.
Prints one JSON object: per page its URL, exceptions, console errors, NiiVue canvas contrast
and screenshot path. Exit status 1 when a page shows an exception or a console error or the
viewer stays blank.

Usage::

    python bench/screenshots.py --study data/demo --out docs/screenshots --patient sub-07
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser_session import BLANK_STD, capture, find_chromium, free_port, serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--patient", help="participant to pick in the sidebar, e.g. sub-07")
    parser.add_argument("--visit", help="visit to pick in the sidebar, e.g. ses-02")
    args = parser.parse_args(argv)

    chromium = find_chromium()
    if chromium is None:
        print(json.dumps({"error": "chromium not found; apt-get install -y chromium"}))
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, serve(
        args.study.resolve(), free_port(), log_path=Path(tmp) / "streamlit.log"
    ) as url:
        reports = capture(url, chromium=chromium, out_dir=args.out.resolve(),
                          participant=args.patient, visit=args.visit)
    ok = all(not r.exceptions and not r.console_errors for r in reports) and all(
        (r.canvas_std or 0.0) > BLANK_STD for r in reports if r.name == "patient")
    print(json.dumps({
        "study": str(args.study), "ok": ok, "seconds": round(time.perf_counter() - t0, 1),
        "pages": [r.as_dict() for r in reports],
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
