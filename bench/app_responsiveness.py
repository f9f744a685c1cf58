"""Benchmark: page rerun time with Streamlit's AppTest and the viewer's message size per visit.

Usage: ``python bench/app_responsiveness.py [--study data/demo] [--reruns 5]
[--patient sub-10 --visit ses-02] [--no-segment]``.

Targets (issue 7): a cached rerun <= 200 ms, the first view of a processed visit <= 2 s, the
largest message to the browser <= 5 MB.

1. **Reruns on the study as shipped** (``--study``, read only). One AppTest session (one
   process, as one browser tab on one server): the Patient page is run once (the first run
   of a new server process: imports of the pages and cold caches), then ``--reruns`` more
   times with nothing changed (a cached rerun, what every widget click costs); then the
   Timeline and the Prognosis page the same way (first view of the page, then reruns).
2. **A processed visit**. A one-patient copy of the study (``--patient``, default sub-10: 3 T
   3D 1 mm images, the largest files of the demo study) whose ``--visit`` is segmented first
   (network, default settings, about a minute; skipped with ``--no-segment``). The app opens on
   the patient's first visit, is rerun, and the sidebar then switches to the processed visit:
   the first view of a processed visit in a running app (its image, overlay, segmentation and
   lesion table not cached yet). Then reruns, the probability overlay (FLAIR, then T1w), and
   the T1w with the previous visit side by side (two images and two overlays: the largest
   message), and the Timeline and Prognosis pages on it.
3. **Message size**. The viewer (``ui_viewer``, our NiiVue component) sends a JSON spec plus
   one binary argument per volume: display copies of the images (cropped, uint8, gzipped,
   ``ms_core.services.viewer.image_viewer_bytes``) and uint8 overlays. Measured two ways: the JSON
   and binary arguments of the component element in AppTest (exact, for the views above), and,
   for every visit of the study and both viewable images, side by side with the previous
   visit: display copy of both images + the larger of the lesion overlay and the uint8
   probability map, for both panes; the largest is reported.

AppTest times the server side only (script run, caches, serialisation); the browser's
decoding and NiiVue's rendering come on top and are not measured here. The runs share one
compiled-script cache, as a server's sessions do (AppTest alone would recompile the scripts
on every run).
Prints JSON and saves ``bench/results/app_responsiveness.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, now_utc, repo_relative, save_result  # noqa: E402
from ms_core.foundation import state_keys  # noqa: E402
from ms_core.foundation.io import (  # noqa: E402
    load_lesion_mask,
    probability_viewer_bytes,
)
from ms_core.lesions.visits import binary_overlay_bytes  # noqa: E402
from ms_core.services.viewer import image_viewer_bytes  # noqa: E402
from ms_core.study.derivatives import derivatives_dir  # noqa: E402
from ms_core.study.layout import lesion_overlay_path, load_study  # noqa: E402
from ui.viewer import MESSAGE_BUDGET as BUDGET  # noqa: E402

APP = REPO / "app.py"
TARGETS = {"rerun_ms": 200, "first_view_processed_visit_ms": 2000, "message_mb": 5.0}


def _timed(run: Any) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1000


def _stats(ms: list[float]) -> dict[str, float]:
    return {"min_ms": round(min(ms), 1), "median_ms": round(float(np.median(ms)), 1),
            "max_ms": round(max(ms), 1)}


def _viewer_message_bytes(at: Any) -> int | None:
    """Bytes of the viewer's JSON and binary arguments in the last run, None when not drawn."""
    for el in at.main:
        proto = getattr(el, "proto", None)
        if getattr(el, "type", "") == "component_instance" and proto is not None \
                and "niivue" in proto.component_name:
            return len(proto.json_args.encode()) + sum(len(a.bytes) for a in proto.special_args)
    return None


def _check(at: Any, what: str) -> None:
    if at.exception:
        raise RuntimeError(f"{what}: the page raised {at.exception[0].message}")


def _page_runs(at: Any, page: str | None, reruns: int) -> dict[str, Any]:
    """First run of ``page`` (switching to it when given) and ``reruns`` cached reruns."""
    first = _timed((lambda: at.switch_page(page).run()) if page else at.run)
    _check(at, page or "app")
    again = [_timed(at.run) for _ in range(reruns)]
    _check(at, page or "app")
    return {"first_ms": round(first, 1), "rerun": _stats(again),
            "viewer_message_bytes": _viewer_message_bytes(at)}


def _share_script_cache() -> None:
    """Give every AppTest run one compiled-script cache, as a Streamlit server has.

    A server compiles ``app.py`` and each page once (``runtime.Runtime`` owns one
    ``ScriptCache``); AppTest builds a new cache on every run, so without this each rerun
    would also pay for parsing and compiling the scripts (about 30 ms here), which no
    browser user ever waits for.
    """
    import streamlit.testing.v1.app_test as app_test
    import streamlit.testing.v1.local_script_runner as local_runner
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    shared = ScriptCache()
    for module in (app_test, local_runner):
        module.ScriptCache = lambda: shared  # type: ignore[attr-defined,assignment]


def _app(study: Path) -> Any:
    from streamlit.testing.v1 import AppTest

    _share_script_cache()
    os.environ["MS_DASH_STUDY"] = str(study)
    return AppTest.from_file(str(APP), default_timeout=300)


def reruns_as_shipped(study: Path, reruns: int) -> dict[str, Any]:
    """Part 1: Patient, Timeline and Prognosis pages on the study as it is."""
    at = _app(study)
    return {"patient": _page_runs(at, None, reruns),
            "timeline": _page_runs(at, "pages/timeline.py", reruns),
            "prognosis": _page_runs(at, "pages/prognosis.py", reruns)}


def _one_patient_copy(study: Path, tmp: Path, pid: str) -> Path:
    root = tmp / "study"
    root.mkdir()
    lines = (study / "participants.tsv").read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[0] == pid]
    (root / "participants.tsv").write_text("\n".join(keep) + "\n")
    if (study / "dataset_description.json").exists():
        shutil.copy(study / "dataset_description.json", root)
    shutil.copytree(study / pid, root / pid)
    truth = study / "derivatives" / "ground_truth" / pid
    if truth.is_dir():
        shutil.copytree(truth, root / "derivatives" / "ground_truth" / pid)
    return root


def processed_visit(study: Path, tmp: Path, reruns: int, pid: str, sid: str
                    ) -> tuple[dict[str, Any], Path]:
    """Part 2: first view of a segmented visit in a running app, reruns, probability map."""
    from ms_core.segmentation.segment import segment_visit

    root = _one_patient_copy(study, tmp, pid)
    visits = load_study(root).visits[pid]
    if sid not in [v.session_id for v in visits] or sid == visits[0].session_id:
        raise ValueError(f"--visit must be a later visit of {pid}, one of "
                         f"{[v.session_id for v in visits[1:]]}; got {sid!r}")
    t0 = time.perf_counter()
    segment_visit(root, load_study(root).visit(pid, sid))
    segment_s = time.perf_counter() - t0
    print(f"segmented {pid} {sid} in {segment_s:.0f} s", file=sys.stderr)
    at = _app(root)
    at.run()
    _check(at, f"app on {visits[0].session_id}")
    at.run()
    picker = at.sidebar.selectbox(key=state_keys.visit_picker(str(root), pid))
    first = _timed(lambda: picker.set_value(sid).run())
    _check(at, "switch to the processed visit")
    shown = [m.label for m in at.metric]
    message = _viewer_message_bytes(at)
    again = [_timed(at.run) for _ in range(reruns)]
    prob_first = _timed(lambda: at.radio(key=state_keys.VIEW_OVERLAY).set_value(
        "Probability").run())
    _check(at, "probability overlay")
    prob_message = _viewer_message_bytes(at)
    prob_again = [_timed(at.run) for _ in range(reruns)]
    t1_prob = _timed(lambda: at.radio(key=state_keys.VIEW_MODALITY).set_value("T1w").run())
    _check(at, "T1w with the probability map")
    t1_prob_message = _viewer_message_bytes(at)
    side_first = _timed(lambda: at.toggle(key=state_keys.VIEW_SIDE_BY_SIDE).set_value(True).run())
    _check(at, "side by side")
    side_message = _viewer_message_bytes(at)
    return {"study": f"one-patient copy of the study, {pid} {sid} segmented",
            "visit": f"{pid}/{sid}",
            "segment_s": round(segment_s, 1),
            "first_view_processed_visit_ms": round(first, 1),
            "metrics_shown": shown, "rerun": _stats(again),
            "viewer_message_bytes": message,
            "probability_toggle_first_ms": round(prob_first, 1),
            "probability_rerun": _stats(prob_again),
            "viewer_message_bytes_with_probability": prob_message,
            "t1w_with_probability_first_ms": round(t1_prob, 1),
            "viewer_message_bytes_t1w_with_probability": t1_prob_message,
            "side_by_side_first_ms": round(side_first, 1),
            "viewer_message_bytes_t1w_side_by_side_with_probability": side_message,
            "timeline": _page_runs(at, "pages/timeline.py", reruns),
            "prognosis": _page_runs(at, "pages/prognosis.py", reruns)}, root


def message_sizes(study: Path) -> dict[str, Any]:
    """Part 3: bytes the viewer sends for every visit and image, side by side with the
    previous visit (both panes with the larger of their lesion and probability overlays)."""
    st = load_study(study, check_images=False)

    def overlay(pid: str, sid: str) -> int:
        found = lesion_overlay_path(study, pid, sid)
        mask = len(binary_overlay_bytes(load_lesion_mask(found[0]))) if found else 0
        prob_path = derivatives_dir(study, pid, sid) / "lesion_prob.nii.gz"
        prob = len(probability_viewer_bytes(prob_path)) if prob_path.exists() else 0
        return max(mask, prob)

    rows = []
    for pid, visits in st.visits.items():
        for i, visit in enumerate(visits):
            previous = visits[i - 1] if i else None
            for modality in ("FLAIR", "T1w"):
                path = visit.images.get(modality)
                if path is None:
                    continue
                image = len(image_viewer_bytes(path, modality))
                before = previous.images.get(modality) if previous else None
                prev_image = len(image_viewer_bytes(before, modality)) if before else 0
                prev_overlay = overlay(pid, previous.session_id) if before and previous else 0
                here = image + overlay(pid, visit.session_id)
                coarse = before is not None and here + prev_image + prev_overlay > BUDGET
                if coarse:  # as ui_viewer does: the previous visit at half resolution
                    prev_image = len(image_viewer_bytes(before, modality, step=2))
                row = {"visit": f"{pid}/{visit.session_id}", "image": modality,
                       "image_bytes": image, "overlay_bytes": here - image,
                       "previous_image_bytes": prev_image,
                       "previous_overlay_bytes": prev_overlay, "previous_half_resolution": coarse}
                row["largest_message"] = sum(int(v) for k, v in row.items()
                                             if k.endswith("_bytes"))
                rows.append(row)
    largest = max(rows, key=lambda r: r["largest_message"])
    sizes = [r["largest_message"] for r in rows]
    return {"views": len(rows), "largest": largest,
            "median_bytes": int(np.median(sizes)),
            "previous_half_resolution": sum(bool(r["previous_half_resolution"]) for r in rows),
            "largest_mb": round(largest["largest_message"] / 1e6, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--reruns", type=int, default=5)
    ap.add_argument("--patient", default="sub-10", help="patient of the processed-visit part")
    ap.add_argument("--visit", default="ses-02", help="its visit to segment (not the first)")
    ap.add_argument("--no-segment", action="store_true",
                    help="skip the processed-visit part (no segmentation run)")
    args = ap.parse_args()
    if not (args.study / "participants.tsv").exists():
        ap.error(f"no participants.tsv in {args.study}; build it with make demo")
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    shipped = reruns_as_shipped(args.study, args.reruns)
    print(json.dumps(shipped), file=sys.stderr)
    processed: dict[str, Any] | None = None
    processed_sizes: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_segment:
            processed, root = processed_visit(args.study, Path(tmp), args.reruns,
                                              args.patient, args.visit)
            processed_sizes = message_sizes(root)
        sizes = message_sizes(args.study)
    reruns_ms = [shipped[p]["rerun"]["median_ms"] for p in shipped]
    if processed is not None:
        reruns_ms += [processed["rerun"]["median_ms"], processed["probability_rerun"]["median_ms"],
                      processed["timeline"]["rerun"]["median_ms"],
                      processed["prognosis"]["rerun"]["median_ms"]]
    measured = [shipped["patient"]["viewer_message_bytes"] or 0]
    if processed is not None:
        measured += [processed[k] or 0 for k in (
            "viewer_message_bytes", "viewer_message_bytes_with_probability",
            "viewer_message_bytes_t1w_with_probability",
            "viewer_message_bytes_t1w_side_by_side_with_probability")]
    largest_mb = round(max(sizes["largest_mb"], max(measured) / 1e6,
                           processed_sizes["largest_mb"] if processed_sizes else 0), 3)
    verdict = {"worst_median_rerun_ms": max(reruns_ms),
               "rerun_met": max(reruns_ms) <= TARGETS["rerun_ms"],
               "first_view_processed_visit_met": None if processed is None else
               processed["first_view_processed_visit_ms"] <= TARGETS[
                   "first_view_processed_visit_ms"],
               "largest_message_mb": largest_mb,
               "message_met": largest_mb <= TARGETS["message_mb"]}
    import streamlit

    result = {
        "benchmark": "app_responsiveness", "study": repo_relative(args.study),
        "reruns": args.reruns,
        "targets": TARGETS, "verdict": verdict, "as_shipped": shipped,
        "processed_visit": processed, "message_sizes": sizes,
        "message_sizes_processed_copy": processed_sizes,
        "streamlit": streamlit.__version__,
        "date_utc": now_utc(), "machine": machine(),
    }
    save_result("app_responsiveness", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
