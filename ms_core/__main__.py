"""Command line: ``python -m ms_core COMMAND ...`` (see ``--help``)."""

from __future__ import annotations

import sys

from ms_core.services.cli import main

if __name__ == "__main__":
    sys.exit(main())
