"""Shared fixtures: a small demo study built once per test session, and the real data path."""

from __future__ import annotations

from pathlib import Path

import pytest

from ms_core.demo import DemoConfig, build_demo

REPO = Path(__file__).resolve().parents[1]
#: Real MS data (Lesjak et al. 2018, Neuroinformatics 16:51-63; CC-BY), beside the checkout.
OPEN_MS_DATA = REPO.parent / "shared" / "data" / "open_ms_data"

#: Two patients (control arm on the 1.5 T 2D-FLAIR site, treatment arm on the 3 T 3D site).
SMALL_CONFIG = DemoConfig(n_patients=2, visits=(3, 3), workers=1)


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-patient, 3-visit demo study (about 30 s to build)."""
    return build_demo(tmp_path_factory.mktemp("studies") / "small", SMALL_CONFIG)


@pytest.fixture(scope="session")
def open_ms_data() -> Path:
    """The real open_ms_data folder; tests using it are skipped when ../shared is absent."""
    if not OPEN_MS_DATA.is_dir():
        pytest.skip(f"real data not found at {OPEN_MS_DATA}")
    return OPEN_MS_DATA
