"""Names of the ``st.session_state`` keys (the only place they are declared)."""

from __future__ import annotations

__all__ = [
    "LESION_LOCATION",
    "LESION_TABLE",
    "PARTICIPANT",
    "PATIENT_VIEWER",
    "PREVIEW_MIN_SIZE",
    "PREVIEW_THRESHOLD",
    "SELECTED_LESION",
    "SESSION",
    "STUDY_ROOT",
    "VIEW_MODALITY",
    "VIEW_OPACITY",
    "VIEW_OVERLAY",
    "VIEW_SIDE_BY_SIDE",
    "VISIT_PICKER_PREFIX",
    "WHAT_IF_PREFIX",
    "visit_picker",
]

#: Path (str) of the study folder picked in the sidebar.
STUDY_ROOT = "study_root"
#: participant_id picked in the sidebar.
PARTICIPANT = "participant_id"
#: session_id picked in the sidebar.
SESSION = "session_id"
#: Prefix of the sidebar's Visit selectbox key (see :func:`visit_picker`).
VISIT_PICKER_PREFIX = "visit_picker"
#: Image shown by the Patient page viewer ("FLAIR" or "T1w").
VIEW_MODALITY = "view_modality"
#: Prefix of the Patient page viewer's component key (one key per image shown).
PATIENT_VIEWER = "patient_viewer"
#: Patient page viewer: the overlay shown (a label of ``ui_viewer.OVERLAYS``).
VIEW_OVERLAY = "view_overlay"
#: Patient page viewer: show the previous visit side by side with linked crosshairs.
VIEW_SIDE_BY_SIDE = "view_side_by_side"
#: Patient page viewer: overlay opacity (0-1).
VIEW_OPACITY = "view_opacity"
#: Patient page: probability threshold of the live lesion preview.
PREVIEW_THRESHOLD = "preview_threshold"
#: Patient page: minimum lesion size (mm^3) of the live lesion preview.
PREVIEW_MIN_SIZE = "preview_min_size"
#: Prefix of the Patient page's selected-lesion state (one per visit).
SELECTED_LESION = "selected_lesion"
#: Prefix of the Patient page's selectable lesion table key (one per visit).
LESION_TABLE = "lesion_table"
#: Patient page: show only the segmented lesions of this location (set from the Prognosis page).
LESION_LOCATION = "lesion_location"
#: Prefix of the Prognosis page's what-if slider keys (one per modifiable feature).
WHAT_IF_PREFIX = "what_if_"

# Cohort / trial page and Models & QC page.
__all__ += [
    "COHORT_ARMS",
    "COHORT_MS_TYPES",
    "COHORT_SEXES",
    "COHORT_SOURCE",
    "COHORT_TABLE",
    "QC_FLAGGED_ONLY",
]

#: Cohort page filter: trial arms shown (list of str).
COHORT_ARMS = "cohort_arms"
#: Cohort page filter: MS types shown (list of str).
COHORT_MS_TYPES = "cohort_ms_types"
#: Cohort page filter: sexes shown (list of str).
COHORT_SEXES = "cohort_sexes"
#: Cohort page: source of the lesion and brain-volume end points (one of ms_core.trial.SOURCES).
COHORT_SOURCE = "cohort_source"
#: Cohort page: the per-patient table (its row selection opens a patient).
COHORT_TABLE = "cohort_table"
#: Models & QC page: show only the visits with a QC flag.
QC_FLAGGED_ONLY = "qc_flagged_only"

# Import page.
__all__ += ["IMPORTED_VISIT"]

#: Import page: (participant_id, session_id) of the visit just imported (offers to open it).
IMPORTED_VISIT = "import_data_imported_visit"

# Background jobs (ui_jobs).
__all__ += ["JOBS_SEEN"]

#: ids (set of int) of the finished background jobs whose failure this session has shown.
JOBS_SEEN = "jobs_seen"


def visit_picker(participant_id: str) -> str:
    """Key of the sidebar's Visit selectbox for ``participant_id``; it mirrors :data:`SESSION`.

    One widget per participant: patients share session ids (``ses-01``...), and a selectbox
    whose options keep their values while ``format_func`` changes (the visit dates) keeps
    showing the previous patient's label in the browser (streamlit/streamlit#13788).
    """
    return f"{VISIT_PICKER_PREFIX}:{participant_id}"
