"""Per-study access with sign-in: which signed-in users may read, or also change, which study.

An access file (``MS_DASH_ACCESS_FILE``, JSON) lists studies and who may open them::

    {"studies": [
        {"path": "/data/trial-a", "read": ["group:neuro"], "write": ["alice@example.org"]},
        {"path": "/data/trial-b", "read": ["sub:1234567890"]}
    ]}

A person is known by the identity token's claims: ``email`` (as is), ``sub`` (``sub:<value>``)
and each entry of ``groups`` (``group:<name>``). The entry whose ``path`` is the study or its
nearest enclosing folder decides; ``write`` implies ``read``. A study no entry covers, or whose
entry does not name the person, cannot be opened. Read-only access hides every control that
writes (Segment, Compare, Analyse, Save report, Import), as the read-only demo mode does.
Without an access file (or without sign-in) nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ms_core.foundation.errors import InputError
from ms_core.foundation.io import read_json

__all__ = ["ACCESS_FILE_ENV", "AccessPolicy", "Level", "access_file", "load_policy",
           "principals"]

ACCESS_FILE_ENV = "MS_DASH_ACCESS_FILE"
Level = Literal["none", "read", "write"]


def access_file() -> Path | None:
    """``$MS_DASH_ACCESS_FILE``, or None when unset (no per-study access control)."""
    raw = os.environ.get(ACCESS_FILE_ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def principals(claims: Mapping[str, Any]) -> frozenset[str]:
    """The names a person goes by: e-mail, ``sub:<subject>``, ``group:<name>`` per group."""
    out = set()
    if claims.get("email"):
        out.add(str(claims["email"]))
    if claims.get("sub"):
        out.add(f"sub:{claims['sub']}")
    groups = claims.get("groups") or []
    for group in groups if isinstance(groups, list | tuple) else [groups]:
        out.add(f"group:{group}")
    return frozenset(out)


@dataclass(frozen=True)
class AccessPolicy:
    """Resolved study folder -> (who may read, who may write)."""

    studies: Mapping[Path, tuple[frozenset[str], frozenset[str]]]

    def level(self, study: Path | str, claims: Mapping[str, Any]) -> Level:
        """What the person with ``claims`` may do with ``study``."""
        resolved = Path(study).expanduser().resolve()
        covering = [p for p in self.studies if resolved.is_relative_to(p)]
        if not covering:
            return "none"
        read, write = self.studies[max(covering, key=lambda p: len(p.parts))]
        who = principals(claims)
        if who & write:
            return "write"
        return "read" if who & read else "none"


def load_policy(path: Path) -> AccessPolicy:
    """Read an access file (see the module docstring); :class:`InputError` naming the file
    and the entry for anything malformed."""
    data = read_json(path)
    entries = data.get("studies") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError(path, 'expected {"studies": [{"path": ..., "read": [...], '
                               '"write": [...]}]}')
    studies: dict[Path, tuple[frozenset[str], frozenset[str]]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InputError(path, f"studies[{i}] needs a 'path' string")
        lists = {}
        for key in ("read", "write"):
            names = entry.get(key, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InputError(path, f"studies[{i}].{key} must be a list of strings")
            lists[key] = frozenset(names)
        studies[Path(entry["path"]).expanduser().resolve()] = (lists["read"] | lists["write"],
                                                                lists["write"])
    return AccessPolicy(studies)
