"""Import page: add a visit (FLAIR required, T1w optional; NIfTI or a DICOM zip) to the study."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import streamlit as st

from ms_core.foundation import settings, state_keys
from ms_core.foundation.domain import MS_TYPES, Participant
from ms_core.foundation.errors import InputError
from ms_core.imaging.dicom import SeriesInfo, list_series, match_series
from ms_core.services.importer import (
    NIFTI_SUFFIXES,
    check_visit,
    next_session_id,
    staged_uploads,
    write_visit,
)
from ui import helpers as ui_helpers

IMPORTED = state_keys.IMPORTED_VISIT
UPLOADS = {"FLAIR": "FLAIR (required)", "T1w": "T1w (optional)"}


def _describe(error: InputError, files: dict[str, Path]) -> str:
    """The message of ``error``, naming an upload by its own file name (not the temp path)."""
    for modality, path in files.items():
        if error.path == path:
            return f"{modality} ({path.name}): {error.problem}"
    return str(error)


def _open_visit(participant_id: str, session_id: str) -> None:
    # A button callback runs before the sidebar's widgets exist, so it may set their keys.
    st.session_state[state_keys.PARTICIPANT] = participant_id
    st.session_state[state_keys.SESSION] = session_id


def _series_picker(modality: str, upload: tuple[str, bytes]) -> str | None:
    """A series selectbox when a DICOM upload holds several series; the chosen series' UID."""
    if upload[0].lower().endswith(NIFTI_SUFFIXES):
        return None
    with staged_uploads({modality: upload}) as staged:
        try:
            series = list_series(staged[modality])
        except InputError:
            return None  # the check reports it
    if len(series) < 2:
        return None
    default = match_series(series, modality)
    chosen: SeriesInfo | None = st.selectbox(
        f"{modality} series", series, format_func=lambda s: s.label,
        index=series.index(default) if default else None, placeholder="Choose a series")
    return chosen.uid if chosen else None


ui_helpers.ensure_routed()
selection = ui_helpers.current_selection()
study = selection.study

st.title("Import a visit")
try:
    read_only = settings.read_only()
except InputError as e:
    st.error(str(e))
    st.stop()
if read_only:
    st.info("This app runs read-only (MS_DASH_READ_ONLY): importing is switched off.")
    st.stop()
if not ui_helpers.can_write(study.root):
    st.info("You may read this study but not change it (MS_DASH_ACCESS_FILE): importing is "
            "switched off.")
    st.stop()
st.caption(f"Into study `{study.root}`. Each image is a NIfTI file (.nii, .nii.gz) or a zip of "
           "DICOM files; identifying DICOM fields (patient name, ID, birth date, ...) are never "
           "written. Details: docs/import.md.")

uploads: dict[str, tuple[str, bytes]] = {}
series_uids: dict[str, str] = {}
for column, (modality, label) in zip(st.columns(len(UPLOADS)), UPLOADS.items(), strict=True):
    with column:
        file = st.file_uploader(label, type=["nii", "gz", "zip", "dcm"])
        if file is not None:
            uploads[modality] = (file.name, file.getvalue())
            uid = _series_picker(modality, uploads[modality])
            if uid:
                series_uids[modality] = uid

with st.form("import_visit"):
    left, middle, right = st.columns(3)
    pid = left.text_input("Participant id", value=selection.participant_id)
    sid = middle.text_input("Session id",
                            value=next_session_id(study, selection.participant_id))
    acq_date = right.date_input("Visit date", value=dt.date.today(), max_value=dt.date.today())
    edss = left.number_input("EDSS", min_value=0.0, max_value=10.0, step=0.5, value=None)
    relapses = middle.number_input("Relapses since the last visit", min_value=0, max_value=100,
                                   step=1, value=None)
    dmt = right.text_input("Therapy (DMT)")
    replace = st.checkbox("Replace this visit if it exists (its images and results are removed)")
    with st.expander("New patient details (used only if the participant is not in the study)"):
        left, middle, right = st.columns(3)
        sex = left.selectbox("Sex", ["n/a", "F", "M", "O"])
        ms_type = middle.selectbox("MS type", MS_TYPES, index=MS_TYPES.index("other"))
        arm = right.text_input("Trial arm")
        birth_year = left.number_input("Birth year", min_value=1900,
                                       max_value=dt.date.today().year, step=1, value=None)
        onset_year = middle.number_input("Onset year", min_value=1900,
                                         max_value=dt.date.today().year, step=1, value=None)
    validate_col, import_col = st.columns(2)
    validate = validate_col.form_submit_button("Validate")
    do_import = import_col.form_submit_button("Import", type="primary")

if validate or do_import:
    participant = Participant(pid.strip(), sex, None if birth_year is None else int(birth_year),
                              ms_type, None if onset_year is None else int(onset_year),
                              arm.strip() or None)
    with staged_uploads(uploads) as files:
        check = check_visit(study.root, pid.strip(), sid.strip(), files, acq_date=acq_date,
                            edss=edss, dmt=dmt.strip() or None, participant=participant,
                            relapses_since_last=None if relapses is None else int(relapses),
                            replace=replace, series=series_uids)
        for problem in check.problems:
            st.error(_describe(problem, files))
    if check.images:
        st.dataframe(check.summary(), hide_index=True)
    info = check.dicom_series()
    if info and info.acq_date and info.acq_date != acq_date:
        st.warning(f"The DICOM series was acquired on {info.acq_date.isoformat()}, not on the "
                   f"visit date entered ({acq_date.isoformat()}).")
    if check.ok and do_import:
        bar = st.progress(0.0, text="Importing…")
        try:
            visit = write_visit(check, progress=lambda f, text: bar.progress(f, text=text))
        except InputError as e:
            st.error(f"Import failed; the study is unchanged. {e}")
        else:
            ui_helpers.audit_event("imported", study.root, visit.participant_id,
                                   visit.session_id, ", ".join(sorted(visit.images)))
            st.session_state[IMPORTED] = (visit.participant_id, visit.session_id)
    elif check.ok:
        st.success("No problems found: press Import to add the visit.")

if IMPORTED in st.session_state:
    imported = st.session_state[IMPORTED]
    st.success(f"Imported {imported[0]} {imported[1]}.")
    if st.button("Open the visit", on_click=_open_visit, args=imported):
        del st.session_state[IMPORTED]
        st.switch_page("pages/patient.py")
