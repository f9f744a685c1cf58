"""The project's own exception types.

Every problem with user input (a file, a study folder, a CLI argument) is raised as an
:class:`InputError`, whose message names the file and the problem. Callers (the app, the CLI)
catch this one type and show the message; anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "NiftiError", "StudyError"]


class InputError(ValueError):
    """Bad input that the user can fix; the message says which file and why."""

    def __init__(self, path: Path | str | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


class NiftiError(InputError):
    """A NIfTI file that is missing, unreadable, corrupt or not an image we can use."""


class StudyError(InputError):
    """A study folder that cannot be opened at all (missing root, no participants table)."""
