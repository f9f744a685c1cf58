"""Shared fixtures: a small demo study built once per test session, and the real data path."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ms_core.synthetic.demo import DemoConfig, build_demo

REPO = Path(__file__).resolve().parents[1]
#: Real MS data (Lesjak et al. 2018, Neuroinformatics 16:51-63; CC-BY), beside the checkout.
OPEN_MS_DATA = REPO.parent / "shared" / "data" / "open_ms_data"

#: Two patients (control arm on the 1.5 T 2D-FLAIR site, treatment arm on the 3 T 3D site).
SMALL_CONFIG = DemoConfig(n_patients=2, visits=(3, 3), workers=2)


def _run_shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A folder shared by every pytest-xdist worker of this run (the base temp of one run)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def derived_map_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A derived-map cache (``MS_DASH_CACHE_DIR``) of this run only, shared by its workers and
    inherited by the processes the tests start: the suite neither reads nor fills the user's
    cache, and the template maps are derived once per run instead of once per process."""
    folder = _run_shared_dir(tmp_path_factory) / "derived_map_cache"
    os.environ["MS_DASH_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit log (``MS_DASH_AUDIT_LOG``) of this run only: the suite never writes into the
    user's; and no demo autorun (``MS_DASH_DEMO_AUTORUN=0``) unless a test turns it on."""
    path = _run_shared_dir(tmp_path_factory) / "audit.jsonl"
    os.environ["MS_DASH_AUDIT_LOG"] = str(path)
    # The app analyses a demo study it starts on in the background; the suite's apps run on
    # demo studies too, and only tests that ask for it (MS_DASH_DEMO_AUTORUN=1) want that.
    os.environ["MS_DASH_DEMO_AUTORUN"] = "0"
    # The shipped models, whatever folder the user's shell points the app at.
    os.environ.pop("MS_DASH_MODELS", None)
    return path


def _build_once(shared: Path, name: str, build: Callable[[Path], object]) -> Path:
    """``shared / name``, made by ``build(folder)`` in the first worker that asks for it while
    the others wait on a file lock; a build that fails leaves no folder behind."""
    final = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            work = shared / f"{name}.partial-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            build(work)
            work.rename(final)
    return final


@pytest.fixture(scope="session")
def pristine_small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small study as built, once per test run for all workers (two processes render it):
    never write into it; tests get their own copy through :func:`small_study`."""
    return _build_once(_run_shared_dir(tmp_path_factory), "small_study",
                       lambda work: build_demo(work, SMALL_CONFIG))


@pytest.fixture(scope="session")
def small_study(pristine_small_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-patient, 3-visit demo study: this worker's copy of :func:`pristine_small_study`."""
    return copy_study(pristine_small_study, tmp_path_factory.mktemp("studies") / "small")


@pytest.fixture(scope="session")
def segmented_study(pristine_small_study: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Path:
    """The small study with sub-01's first two visits segmented by the network (default
    settings), made once per test run and shared by the pytest-xdist workers: copy it before
    changing anything (:func:`copy_study`). Removing a visit's derivatives folder from a copy
    leaves that visit unprocessed."""
    from ms_core.segmentation.segment import segment_visit
    from ms_core.study.layout import load_study

    def build(work: Path) -> None:
        shutil.copytree(pristine_small_study, work)
        for visit in load_study(work).visits["sub-01"][:2]:
            segment_visit(work, visit)

    return _build_once(_run_shared_dir(tmp_path_factory), "segmented_study", build)


def copy_study(source: Path, dest: Path, *, drop: tuple[tuple[str, str], ...] = ()) -> Path:
    """Copy a study to ``dest``; each (participant, session) of ``drop`` loses its stored
    segmentation (as if never processed)."""
    from ms_core.study.derivatives import derivatives_dir

    shutil.copytree(source, dest)
    for pid, sid in drop:
        shutil.rmtree(derivatives_dir(dest, pid, sid))
    return dest


@pytest.fixture(scope="session")
def open_ms_data() -> Path:
    """The real open_ms_data folder; tests using it are skipped when ../shared is absent."""
    if not OPEN_MS_DATA.is_dir():
        pytest.skip(f"real data not found at {OPEN_MS_DATA}")
    return OPEN_MS_DATA
