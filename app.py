"""MS MRI dashboard: the only router. Run with ``streamlit run app.py``.

The sidebar picks the study folder, a patient and a visit and stores them in
``st.session_state`` under the keys of :mod:`ms_core.foundation.state_keys`; the pages read them
from there. The study folder starts as ``$MS_DASH_STUDY`` or ``data/demo`` next to this file. Below
them, every page lists the server's running background jobs (:mod:`ui.jobs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from ms_core.foundation import settings, state_keys
from ms_core.foundation.errors import StudyError
from ms_core.study.layout import Study
from ui import helpers as ui_helpers
from ui import jobs as ui_jobs

__all__ = ["PAGES_DIR", "run"]

PAGES_DIR = Path(__file__).resolve().parent / "pages"


def _keep_valid(key: str, options: list[str]) -> None:
    """Reset a selectbox's stored choice to the first option when it is no longer offered."""
    if options and st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def _copy_choice(widget_key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state[widget_key]


def _mirrored_selectbox(label: str, options: list[str], state_key: str, widget_key: str,
                        format_func: Callable[[str], str]) -> str:
    """A sidebar selectbox whose choice lives in ``state_key``, drawn under ``widget_key``.

    ``state_key`` is the one place pages (and button callbacks that open a patient or a visit)
    read and set the choice; the widget key changes whenever the labels of the same option
    values do (another study, another patient). Streamlit keeps showing a selectbox's old
    label when only ``format_func`` changes (streamlit/streamlit#13788); a new widget does not.
    """
    _keep_valid(state_key, options)
    st.session_state[widget_key] = st.session_state[state_key]
    return str(st.sidebar.selectbox(label, options, key=widget_key, format_func=format_func,
                                    on_change=_copy_choice, args=(widget_key, state_key)))


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

    def patient_label(pid: str) -> str:
        p = participants[pid]
        return f"{pid} · {p.trial_arm or 'no arm'} · {p.ms_type}"

    pid = _mirrored_selectbox("Patient", pids, state_keys.PARTICIPANT,
                              state_keys.patient_picker(str(study.root)), patient_label)
    visits = {v.session_id: v for v in study.visits.get(pid, ())}
    if visits:
        _mirrored_selectbox("Visit", list(visits), state_keys.SESSION,
                            state_keys.visit_picker(str(study.root), pid),
                            lambda sid: f"{sid} · {visits[sid].acq_date.isoformat()}")
    else:
        st.session_state[state_keys.SESSION] = None
        st.sidebar.info(f"{pid} has no visits.")
    _issues(study)


def run() -> None:
    """Configure the page, route to the selected page and draw the shared sidebar."""
    st.set_page_config(page_title="MS MRI dashboard", page_icon="🧠", layout="wide")
    if settings.require_login() and not st.user.is_logged_in:
        st.title("MS MRI dashboard")
        st.button("Sign in", on_click=st.login)  # OIDC, configured in .streamlit/secrets.toml
        st.stop()
    pages = [
        st.Page(PAGES_DIR / "patient.py", title="Patient", icon=":material/neurology:"),
        st.Page(PAGES_DIR / "timeline.py", title="Timeline", icon=":material/timeline:"),
        st.Page(PAGES_DIR / "prognosis.py", title="Prognosis", icon=":material/query_stats:"),
        st.Page(PAGES_DIR / "cohort.py", title="Cohort / trial", icon=":material/groups:"),
        st.Page(PAGES_DIR / "models.py", title="Models & QC", icon=":material/verified:"),
        st.Page(PAGES_DIR / "report.py", title="Report", icon=":material/description:"),
        st.Page(PAGES_DIR / "how_it_works.py", title="How it works",
                icon=":material/account_tree:"),
    ]
    if not settings.read_only():  # the read-only demo mode cannot add visits
        pages.append(st.Page(PAGES_DIR / "import_data.py", title="Import",
                             icon=":material/upload_file:"))
    page = st.navigation(pages)
    if settings.require_login():
        st.sidebar.button("Sign out", on_click=st.logout)
    with ui_helpers.routed_run():
        _sidebar()
        ui_jobs.start_demo_analysis(ui_helpers.current_selection().study)
        ui_jobs.sidebar_jobs()
        page.run()


if __name__ == "__main__":
    run()
