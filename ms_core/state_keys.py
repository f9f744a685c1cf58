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
