"""Streamlit glue for :mod:`ms_core.foundation.jobs`: buttons that start background jobs, and their
progress.

A long action (segment a visit, compare two visits, analyse a patient) runs in the process-wide
job runner, not on the session's script thread: the page stays usable, other pages open
meanwhile, and leaving the page does not stop the work. While a job is queued or running its
progress bar replaces the button that started it, in a fragment that refreshes about every
``REFRESH_S`` seconds without rerunning the page; when the job ends the whole page reruns once,
so the new results appear (the loaders in :mod:`ui.helpers` are cached on file stamps). The
sidebar lists every queued and running job on every page (:func:`sidebar_jobs`).

The work functions get only plain values (paths, visits) and a progress function, never a
Streamlit object.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import streamlit as st

from ms_core.foundation import jobs, settings, state_keys
from ms_core.foundation.jobs import Job, Work
from ms_core.services import batch
from ms_core.study.layout import Study, is_demo_study
from ui import helpers as ui_helpers

__all__ = ["REFRESH_S", "job_button", "job_key", "job_progress", "sidebar_jobs",
           "start_demo_analysis", "start_job"]

#: Seconds between two refreshes of a progress bar (fragment ``run_every``).
REFRESH_S = 1.0


def start_demo_analysis(study: Study) -> bool:
    """Analyse the demo study in the background once per server process (the first patient
    first), when the app starts on it: ``MS_DASH_DEMO_AUTORUN`` on (the default), not
    read-only, ``root`` the study the app starts with and a study ``ms_core demo`` built.

    The work is :func:`ms_core.services.batch.analyse_study` as the background job ``demo`` of the
    study; the sidebar shows its progress ("analysing the demo: 3 of 12 patients ...") and
    each page shows the measured results as they are stored. Current results are kept, so a
    restarted server goes on where it stopped. Returns whether the job was started now.
    """
    root = study.root
    key = job_key("demo", root)
    if (jobs.get(key) is not None or not settings.demo_autorun() or settings.read_only()
            or Path(root).expanduser().resolve()
            != Path(ui_helpers.default_study_root()).expanduser().resolve()
            or not is_demo_study(root)):
        return False
    visits = {pid: list(vs) for pid, vs in study.visits.items()}
    start_job(key, "analysing the demo", functools.partial(
        batch.analyse_study, Path(root), visits, label="analysing the demo"))
    return True


def job_key(kind: str, root: Path | str, *ids: str) -> str:
    """The job key of one piece of work in one study, e.g. ``"segment/sub-01/ses-02@/data/x"``.

    >>> job_key("analyse", "/data/study", "sub-01")
    'analyse/sub-01@/data/study'
    """
    return f"{kind}/{'/'.join(ids)}@{root}"


def start_job(key: str, label: str, work: Work) -> Job:
    """Start ``work(progress)`` in the background (or return the job of ``key`` already active)."""
    return jobs.start(key, work, label)


def job_button(button: str, key: str, label: str, work: Work, failure: str) -> None:
    """A button that starts ``work`` as the background job ``key``, or that job's progress.

    While the job is queued or running (started here, on another page or by another session)
    its progress bar takes the button's place. When it has failed, the error is shown once to
    each session (``failure`` then the message, which names the file) above the button, so the
    user can try again.
    """
    if job_progress(key):
        return
    job = jobs.get(key)
    if job is not None and job.status == "failed":
        seen: set[int] = st.session_state.setdefault(state_keys.JOBS_SEEN, set())
        if job.job_id not in seen:
            seen.add(job.job_id)
            st.error(f"{failure} {job.error}")
    st.button(button, on_click=_clicked, args=(key, label, work))


def _clicked(key: str, label: str, work: Work) -> None:
    start_job(key, label, work)  # runs before the rerun, which then shows the progress


def job_progress(key: str) -> bool:
    """Show the progress of job ``key`` while it is queued or running; ``False`` when it is not.

    The bar refreshes itself about every :data:`REFRESH_S` seconds; when the job ends the whole
    app reruns.
    """
    job = jobs.get(key)
    if job is None or not job.is_active:
        return False
    _progress_bar(key)
    return True


def _describe(job: Job) -> str:
    if job.status == "queued":
        ahead = sum(j.job_id < job.job_id for j in jobs.active())
        return f"{job.label}: queued behind {ahead} other job(s)…"
    seconds = time.time() - (job.started_s or time.time())
    return f"{job.label}: {job.text} ({seconds:.0f} s)"


@st.fragment(run_every=REFRESH_S)
def _progress_bar(key: str) -> None:
    job = jobs.get(key)
    if job is None or not job.is_active:
        st.rerun()  # the job has ended: rerun the page so its results (or its error) show
    else:
        st.progress(job.fraction, text=_describe(job))


def _line(job: Job) -> str:
    state = "Running" if job.status == "running" else "Queued"
    return f"{state}: {job.label} — {round(job.fraction * 100)} %"


def sidebar_jobs() -> None:
    """List the server's queued and running jobs in the sidebar (call it on every page)."""
    keys = tuple(j.key for j in jobs.active())
    if keys:
        with st.sidebar:
            _job_lines(keys)


@st.fragment(run_every=REFRESH_S)
def _job_lines(keys: tuple[str, ...]) -> None:
    active = jobs.active()
    if not set(keys) <= {j.key for j in active}:
        st.rerun()  # one of them has ended: rerun so the page shows what it made
    for job in active:
        st.caption(_line(job))
