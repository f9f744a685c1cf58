"""What the benchmark scripts end with: the machine they ran on and their saved JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ms_core.foundation.io import atomic_write_text  # noqa: E402

RESULTS = REPO / "bench" / "results"


def machine() -> dict[str, Any]:
    """Cores, platform, Python and the load average as the benchmark ends."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]}


def now_utc() -> str:
    """The current UTC time, to the second, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (results then read the same
    on every clone), else as an absolute path."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def print_result(result: dict[str, Any], out: Path | None = None) -> None:
    """Print ``result`` as JSON and, when ``out`` is given, save it there atomically."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        atomic_write_text(out, text + "\n")


def save_result(name: str, result: dict[str, Any]) -> None:
    """Print ``result`` as JSON and save it atomically as ``bench/results/<name>.json``."""
    print_result(result, RESULTS / f"{name}.json")
