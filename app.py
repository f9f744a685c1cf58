"""MS MRI dashboard: the only router. Run with ``streamlit run app.py``.

The sidebar picks the study folder, a patient and a visit and stores them in
``st.session_state`` under the keys of :mod:`ms_core.state_keys`; the pages read them from there.
The study folder starts as ``$MS_DASH_STUDY`` or ``data/demo`` next to this file. Below them,
every page lists the server's running background jobs (:mod:`ui_jobs`).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import ui_helpers
import ui_jobs
from ms_core import settings, state_keys
from ms_core.errors import StudyError
from ms_core.study import Study

__all__ = ["PAGES_DIR", "run"]

PAGES_DIR = Path(__file__).resolve().parent / "pages"


def _keep_valid(key: str, options: list[str]) -> None:
    """Reset a selectbox's stored choice to the first option when it is no longer offered."""
    if options and st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def _picked_visit(picker: str) -> None:
    """The Visit selectbox changed: make its choice the visit every page shows."""
    st.session_state[state_keys.SESSION] = st.session_state[picker]


def _study_picker() -> Study:
    """Study folder input; shows the error and stops the run when the folder cannot be loaded."""
    if state_keys.STUDY_ROOT not in st.session_state:
        st.session_state[state_keys.STUDY_ROOT] = ui_helpers.default_study_root()
    root = st.sidebar.text_input(
        "Study folder", key=state_keys.STUDY_ROOT,
        help="Folder with participants.tsv and one sub-XX folder per patient.",
    )
    try:
        return ui_helpers.cached_study(root)
    except StudyError as e:
        st.error(f"Cannot open the study. {e}")
        st.stop()


def _issues(study: Study) -> None:
    with st.sidebar.expander(f"Study issues ({len(study.issues)})", expanded=False):
        if not study.issues:
            st.write("None found.")
        for issue in study.issues:
            st.markdown(f"- **{issue.severity}**: `{issue.path}`: {issue.message}")


def _sidebar() -> None:
    study = _study_picker()
    participants = study.participants
    pids = list(participants)
    if not pids:
        st.warning(f"Study {study.root} has no usable participants; see the study issues.")
        _issues(study)
        st.stop()
    _keep_valid(state_keys.PARTICIPANT, pids)

    def patient_label(pid: str) -> str:
        p = participants[pid]
        return f"{pid} · {p.trial_arm or 'no arm'} · {p.ms_type}"

    pid = st.sidebar.selectbox("Patient", pids, key=state_keys.PARTICIPANT,
                               format_func=patient_label)
    visits = {v.session_id: v for v in study.visits.get(pid, ())}
    if visits:
        _keep_valid(state_keys.SESSION, list(visits))
        # The widget is the patient's own (see state_keys.visit_picker); SESSION stays the one
        # place pages read the visit from, and a callback may set it before this runs.
        picker = state_keys.visit_picker(pid)
        st.session_state[picker] = st.session_state[state_keys.SESSION]
        st.sidebar.selectbox("Visit", list(visits), key=picker, on_change=_picked_visit,
                             args=(picker,),
                             format_func=lambda sid: f"{sid} · {visits[sid].acq_date.isoformat()}")
    else:
        st.session_state[state_keys.SESSION] = None
        st.sidebar.info(f"{pid} has no visits.")
    _issues(study)


def run() -> None:
    """Configure the page, route to the selected page and draw the shared sidebar."""
    st.set_page_config(page_title="MS MRI dashboard", layout="wide")
    if settings.require_login() and not st.user.is_logged_in:
        st.title("MS MRI dashboard")
        st.button("Sign in", on_click=st.login)  # OIDC, configured in .streamlit/secrets.toml
        st.stop()
    pages = [
        st.Page(PAGES_DIR / "patient.py", title="Patient", icon="🧠"),
        st.Page(PAGES_DIR / "timeline.py", title="Timeline", icon="📈"),
        st.Page(PAGES_DIR / "prognosis.py", title="Prognosis", icon="🔮"),
        st.Page(PAGES_DIR / "cohort.py", title="Cohort / trial", icon="👥"),
        st.Page(PAGES_DIR / "models.py", title="Models & QC", icon="🧪"),
        st.Page(PAGES_DIR / "report.py", title="Report", icon="📄"),
        st.Page(PAGES_DIR / "how_it_works.py", title="How it works", icon="🧭"),
    ]
    if not settings.read_only():  # the read-only demo mode cannot add visits
        pages.append(st.Page(PAGES_DIR / "import_data.py", title="Import", icon="📥"))
    page = st.navigation(pages)
    if settings.require_login():
        st.sidebar.button("Sign out", on_click=st.logout)
    with ui_helpers.routed_run():
        _sidebar()
        ui_jobs.sidebar_jobs()
        page.run()


if __name__ == "__main__":
    run()
