"""Names of the cross-page ``st.session_state`` keys (the only place they are declared)."""

from __future__ import annotations

__all__ = ["STUDY_ROOT", "PARTICIPANT", "SESSION"]

#: Path (str) of the study folder picked in the sidebar.
STUDY_ROOT = "study_root"
#: participant_id picked in the sidebar.
PARTICIPANT = "participant_id"
#: session_id picked in the sidebar.
SESSION = "session_id"
