"""Names of the ``st.session_state`` keys (the only place they are declared)."""

from __future__ import annotations

__all__ = [
    "LESION_LOCATION",
    "PARTICIPANT",
    "PATIENT_VIEWER",
    "SESSION",
    "SHOW_CHANGES",
    "SHOW_PROBABILITY",
    "STUDY_ROOT",
    "VIEW_MODALITY",
    "WHAT_IF_PREFIX",
]

#: Path (str) of the study folder picked in the sidebar.
STUDY_ROOT = "study_root"
#: participant_id picked in the sidebar.
PARTICIPANT = "participant_id"
#: session_id picked in the sidebar.
SESSION = "session_id"
#: Image shown by the Patient page viewer ("FLAIR" or "T1w").
VIEW_MODALITY = "view_modality"
#: Prefix of the Patient page viewer's component key (one key per image shown).
PATIENT_VIEWER = "patient_viewer"
#: Patient page: overlay the segmentation's probability map instead of the binary mask.
SHOW_PROBABILITY = "show_probability"
#: Patient page: overlay the lesion changes since the previous visit (takes precedence).
SHOW_CHANGES = "show_changes"
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
