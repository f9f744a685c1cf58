"""Append-only audit trail: who opened, segmented, compared, exported or imported what, and when.

One JSON object per line in the file :func:`audit_log_path` names (``MS_DASH_AUDIT_LOG``;
default ``$XDG_STATE_HOME/ms-dash/audit.jsonl``, else ``~/.local/state/ms-dash/audit.jsonl``),
with the fields :data:`FIELDS`: the time (UTC), the user (the identity token's e-mail or subject
when sign-in is on, else ``local:<OS user>``), the action (:data:`ACTIONS`), the study folder,
the participant and session ids and a short detail (which comparison, which files). Never image
data, never names: the study's ids are the only link to a person.

Each record is written by one ``write`` to a file opened for appending, under an exclusive
``flock``, and synced; a line left without its newline by a killed writer is closed before the
next record, and :func:`read_log` reads back only whole lines that parse as records, so a
truncated line is never taken for one. What the log does not do: stop anyone with write access
to the file from editing it (keep it on a volume the app's users cannot reach), or record what
happens outside the app and the CLI.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ms_core.foundation.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "AUDIT_LOG_ENV", "FIELDS", "audit_log_path", "local_user", "read_log",
           "record", "record_or_log"]

AUDIT_LOG_ENV = "MS_DASH_AUDIT_LOG"
ACTIONS = ("opened", "segmented", "compared", "exported", "imported")
FIELDS = ("time_utc", "user", "action", "study", "participant_id", "session_id", "detail")
#: Longest detail kept (a comparison's sessions, a file list): no room for image data.
MAX_DETAIL = 200


def audit_log_path() -> Path:
    """``$MS_DASH_AUDIT_LOG``, else ``$XDG_STATE_HOME/ms-dash/audit.jsonl``, else
    ``~/.local/state/ms-dash/audit.jsonl``."""
    explicit = os.environ.get(AUDIT_LOG_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(state).expanduser() if state else Path.home() / ".local" / "state"
    return base / "ms-dash" / "audit.jsonl"


def local_user() -> str:
    """``local:<OS user>``: who runs the CLI, or the app without sign-in."""
    try:
        return f"local:{getpass.getuser()}"
    except (OSError, KeyError):
        return "local:unknown"


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: appends are still single writes
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def record(action: str, *, user: str, study: Path | str, participant_id: str | None = None,
           session_id: str | None = None, detail: str = "",
           path: Path | None = None) -> dict[str, Any]:
    """Append one record to the audit log (``path``, default :func:`audit_log_path`) and
    return it. Raises :class:`InputError` for an unknown action or an overlong detail."""
    if action not in ACTIONS:
        raise InputError(None, f"audit action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if len(detail) > MAX_DETAIL:
        raise InputError(None, f"audit detail is {len(detail)} characters; at most {MAX_DETAIL}")
    rec = {"time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "user": user,
           "action": action, "study": str(Path(study).expanduser().resolve()),
           "participant_id": participant_id, "session_id": session_id, "detail": detail}
    line = (json.dumps(rec, ensure_ascii=True) + "\n").encode("ascii")
    target = path or audit_log_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        _lock(fd)
        size = os.fstat(fd).st_size
        # A writer killed mid-line left no newline: close that line with a NUL first, so that
        # this record starts a line of its own and the broken one never parses as a record
        # (not even one cut just before its newline).
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\x00\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return rec


def record_or_log(action: str, *, user: str, study: Path | str,
                  participant_id: str | None = None, session_id: str | None = None,
                  detail: str = "") -> None:
    """:func:`record`, where a log that cannot be written is logged as an error and the action
    goes on: the trail records, it does not gate (the app and the CLI)."""
    try:
        record(action, user=user, study=study, participant_id=participant_id,
               session_id=session_id, detail=detail)
    except OSError as e:
        log.error("audit record not written (%s %s %s): %s", action, participant_id,
                  session_id, e)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue  # the last line of a killed write
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if (isinstance(rec, dict) and set(rec) == set(FIELDS)
                    and rec["action"] in ACTIONS):
                yield rec


def read_log(path: Path | None = None, *, study: Path | str | None = None) -> pd.DataFrame:
    """The audit records (columns :data:`FIELDS`, oldest first), those of ``study`` only when
    given; whole, well-formed lines only. An absent log gives an empty table."""
    target = path or audit_log_path()
    rows = list(_records(target)) if target.exists() else []
    table = pd.DataFrame(rows, columns=list(FIELDS))
    if study is not None:
        table = table[table.study == str(Path(study).expanduser().resolve())]
    return table.reset_index(drop=True)
