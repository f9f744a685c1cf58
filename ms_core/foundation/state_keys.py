"""Names of the ``st.session_state`` keys (the only place they are declared)."""

from __future__ import annotations

__all__ = [
    "AUDIT_OPENED",
    "LESION_LOCATION",
    "LESION_TABLE",
    "PARTICIPANT",
    "PATIENT_VIEWER",
    "PICKER_PREFIX",
    "PREVIEW_MIN_SIZE",
    "PREVIEW_THRESHOLD",
    "SELECTED_LESION",
    "SESSION",
    "STUDY_ROOT",
    "VIEW_MODALITY",
    "VIEW_OPACITY",
    "VIEW_OVERLAY",
    "VIEW_SIDE_BY_SIDE",
    "WHAT_IF_PREFIX",
    "patient_picker",
    "visit_picker",
]

#: Path (str) of the study folder picked in the sidebar.
STUDY_ROOT = "study_root"
#: participant_id picked in the sidebar.
PARTICIPANT = "participant_id"
#: session_id picked in the sidebar.
SESSION = "session_id"
#: Prefix of the sidebar's Patient and Visit selectbox keys (:func:`patient_picker`,
#: :func:`visit_picker`).
PICKER_PREFIX = "sidebar_picker"
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
#: Cohort page: source of the lesion and brain-volume end points (one of
#: ms_core.clinical.trial.SOURCES).
COHORT_SOURCE = "cohort_source"
#: Cohort page: the per-patient table (its row selection opens a patient).
COHORT_TABLE = "cohort_table"
#: Models & QC page: show only the visits with a QC flag.
QC_FLAGGED_ONLY = "qc_flagged_only"
#: Visits this session has opened and the audit trail recorded: set of (study, pid, session).
AUDIT_OPENED = "audit_opened"

# Import page.
__all__ += ["IMPORTED_VISIT"]

#: Import page: (participant_id, session_id) of the visit just imported (offers to open it).
IMPORTED_VISIT = "import_data_imported_visit"

# Background jobs (ui_jobs).
__all__ += ["JOBS_SEEN"]

#: ids (set of int) of the finished background jobs whose failure this session has shown.
JOBS_SEEN = "jobs_seen"


def patient_picker(study_root: str) -> str:
    """Key of the sidebar's Patient selectbox for the study at ``study_root``; it mirrors
    :data:`PARTICIPANT` (see :func:`visit_picker` for why each study gets its own widget)."""
    return f"{PICKER_PREFIX}:patient:{study_root}"


def visit_picker(study_root: str, participant_id: str) -> str:
    """Key of the sidebar's Visit selectbox for one patient; it mirrors :data:`SESSION`.

    One widget per patient (and per study): patients share session ids (``ses-01``...), and a
    selectbox whose option values stay while ``format_func`` changes (the visit dates) keeps
    showing the previous patient's label in the browser (streamlit/streamlit#13788).
    """
    return f"{PICKER_PREFIX}:visit:{study_root}:{participant_id}"
