"""Deployment settings read from environment variables (no Streamlit here).

Each setting is read when its function is called, so a test or a server wrapper can change the
environment without re-importing anything. A malformed value raises :class:`InputError` naming
the variable, rather than silently falling back to the default.

==========================  =========  ==========================================================
variable                    default    meaning
==========================  =========  ==========================================================
``MS_DASH_READ_ONLY``       off        ``1``/``true``/``yes``/``on``: demo mode; the app hides
                                       every button that writes results (see docs/reliability.md)
``MS_DASH_DEMO_AUTORUN``    on         ``0``: the app does not analyse the demo study in the
                                       background when it starts on it
``MS_DASH_REQUIRE_LOGIN``   off        ``1``: the app asks for OpenID Connect sign-in
                                       (``st.login``; ``[auth]`` in .streamlit/secrets.toml)
``MS_DASH_MAX_VOXELS``      512**3     largest image accepted, in voxels per 3D volume
``MS_DASH_MAX_FILE_MB``     2048       largest NIfTI file accepted, in MiB (compressed or not)
``MS_DASH_LOCK_TIMEOUT_S``  900        seconds a run waits for another run on the same visit
``MS_DASH_STUDY_ROOTS``     see below  folders (separated by ``:``, ``;`` on Windows) that every
                                       study the app opens or imports into must lie in, after
                                       ``..`` and symbolic links are resolved
``MS_DASH_ACCESS_FILE``     unset      with sign-in: which people may read or change which study
                                       (:mod:`ms_core.study.access`)
``MS_DASH_CACHE_DIR``       see below  folder for maps derived from the MNI152 template (about
                                       220 MB, rebuilt when the code or library versions change);
                                       ``off`` derives them in memory in every process
==========================  =========  ==========================================================

The cache folder defaults to ``$XDG_CACHE_HOME/ms-dash``, else ``~/.cache/ms-dash``. The study
roots default, in the app, to the study it starts with (``$MS_DASH_STUDY`` or the demo); the CLI
confines its study arguments only when ``MS_DASH_STUDY_ROOTS`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path

from ms_core.foundation.errors import InputError

__all__ = [
    "CACHE_DIR_ENV",
    "DEFAULT_LOCK_TIMEOUT_S",
    "DEFAULT_MAX_FILE_MB",
    "DEFAULT_MAX_VOXELS",
    "DEMO_AUTORUN_ENV",
    "LOCK_TIMEOUT_ENV",
    "MAX_FILE_MB_ENV",
    "MAX_VOXELS_ENV",
    "READ_ONLY_ENV",
    "REQUIRE_LOGIN_ENV",
    "STUDY_ROOTS_ENV",
    "cache_dir",
    "demo_autorun",
    "lock_timeout_s",
    "max_file_bytes",
    "max_voxels",
    "read_only",
    "require_login",
    "study_roots",
]

READ_ONLY_ENV = "MS_DASH_READ_ONLY"
REQUIRE_LOGIN_ENV = "MS_DASH_REQUIRE_LOGIN"
MAX_VOXELS_ENV = "MS_DASH_MAX_VOXELS"
MAX_FILE_MB_ENV = "MS_DASH_MAX_FILE_MB"
LOCK_TIMEOUT_ENV = "MS_DASH_LOCK_TIMEOUT_S"
CACHE_DIR_ENV = "MS_DASH_CACHE_DIR"
STUDY_ROOTS_ENV = "MS_DASH_STUDY_ROOTS"
DEMO_AUTORUN_ENV = "MS_DASH_DEMO_AUTORUN"

#: 512^3 voxels: 512 MiB as float32, far above any clinical brain MRI (about 256^3 at most).
DEFAULT_MAX_VOXELS = 512**3
#: A 512^3 float64 volume is 1 GiB uncompressed; 2 GiB leaves room for 4D files.
DEFAULT_MAX_FILE_MB = 2048
#: A CPU segmentation takes about 30 s; a second run on the same visit waits up to 15 min.
DEFAULT_LOCK_TIMEOUT_S = 900.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _switch(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InputError(None, f"{name}={raw!r} is not a switch; use 1 or 0")


def read_only() -> bool:
    """Whether the app runs as a read-only demo (``MS_DASH_READ_ONLY=1``).

    In read-only mode the pages hide the buttons that write into the study (segment, compare,
    analyse, save report, import); reading and downloads stay available. Unset or empty is off.
    """
    return _switch(READ_ONLY_ENV)


def study_roots(default: Path | None = None) -> tuple[Path, ...] | None:
    """The folders studies must lie in (``MS_DASH_STUDY_ROOTS``), resolved; ``(default,)`` when
    the variable is unset or empty, None when it is and there is no ``default`` (no limit)."""
    raw = os.environ.get(STUDY_ROOTS_ENV, "")
    folders = [Path(part.strip()).expanduser() for part in raw.split(os.pathsep) if part.strip()]
    if not folders:
        return None if default is None else (Path(default).expanduser().resolve(),)
    return tuple(folder.resolve() for folder in folders)


def demo_autorun() -> bool:
    """Whether the app analyses the demo study in the background when it starts on it
    (``MS_DASH_DEMO_AUTORUN``, on unless ``0``/``false``/``no``/``off``)."""
    if os.environ.get(DEMO_AUTORUN_ENV, "").strip() == "":
        return True
    return _switch(DEMO_AUTORUN_ENV)


def require_login() -> bool:
    """Whether the app asks for sign-in before showing anything (``MS_DASH_REQUIRE_LOGIN=1``).

    Needs ``Authlib>=1.3.2`` and an ``[auth]`` section in ``.streamlit/secrets.toml``; see
    docs/reliability.md.
    """
    return _switch(REQUIRE_LOGIN_ENV)


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise InputError(None, f"{name}={raw!r} is not a number") from e
    if not value > 0 or value == float("inf"):
        raise InputError(None, f"{name}={raw!r} must be a positive finite number")
    return value


def max_voxels() -> int:
    """Largest 3D image accepted by :mod:`ms_core.foundation.io`, in voxels
    (``MS_DASH_MAX_VOXELS``)."""
    return int(_positive(MAX_VOXELS_ENV, DEFAULT_MAX_VOXELS))


def max_file_bytes() -> int:
    """Largest NIfTI file accepted by :mod:`ms_core.foundation.io`, in bytes
    (``MS_DASH_MAX_FILE_MB``)."""
    return int(_positive(MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB) * 1024 * 1024)


def lock_timeout_s() -> float:
    """Seconds to wait for a visit's folder lock (``MS_DASH_LOCK_TIMEOUT_S``)."""
    return _positive(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S)


def cache_dir() -> Path | None:
    """Folder of the derived-map cache (``MS_DASH_CACHE_DIR``), or None when it is ``off``.

    Unset or empty: ``$XDG_CACHE_HOME/ms-dash``, else ``~/.cache/ms-dash``. The folder need not
    exist yet; it is created on the first write.
    """
    raw = os.environ.get(CACHE_DIR_ENV, "").strip()
    if raw.lower() in ("off", "0", "no", "false"):
        return None
    if raw:
        return Path(raw).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ms-dash"
