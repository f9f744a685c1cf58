"""The objects of a one-patient report (what build_report fills and the renderers read) and the
constants they share: sections, the research notice, the blank cell.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ms_core import __version__
from ms_core.longitudinal.measurements import (
    McDonaldChecklist,
)

__all__ = [
    "BLANK",
    "NOTICE",
    "N_LESION_IMAGES",
    "SECTIONS",
    "PatientHeader",
    "PrognosisSummary",
    "Report",
    "ReportImage",
    "Source",
]


#: Shown at the top of every report, HTML and PDF.
NOTICE = ("Research use only. Not a medical device; not for diagnosis or treatment decisions. "
          "All measurements are automated: check them against the images.")



#: Report sections, in order: key -> title.
SECTIONS = {
    "patient": "Patient",
    "visits": "Visits",
    "measured": "Lesions measured per visit",
    "trends": "Trends",
    "lesions": "Lesions of the selected visit",
    "images": "Images of the selected visit",
    "mcdonald": "McDonald 2017 MRI checklist",
    "prognosis": "Prognosis",
}



#: Shown in table cells without a value.
BLANK = "–"



#: Lesion images per report (the largest lesions on distinct axial planes).
N_LESION_IMAGES = 3



@dataclass(frozen=True)
class Source:
    """One file (or model) that numbers of the report come from.

    ``sections`` are keys of :data:`SECTIONS`; ``path`` is relative to the study folder when
    inside it; ``model`` holds name, version and sha256; ``parameters`` the settings stored in
    the file's ``provenance.json``.
    """

    what: str
    path: str
    sections: tuple[str, ...]
    sha256: str | None = None
    tool: str | None = None
    created_utc: str | None = None
    model: Mapping[str, str] | None = None
    parameters: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()



@dataclass(frozen=True)
class PatientHeader:
    """Who the report is about (no names: the study has none)."""

    participant_id: str
    sex: str
    birth_year: int | None
    age_years: float | None
    ms_type: str
    onset_year: int | None
    trial_arm: str | None
    n_visits: int



@dataclass(frozen=True, eq=False)
class ReportImage:
    """A PNG figure with its title and caption."""

    title: str
    png: bytes
    caption: str



@dataclass(frozen=True, eq=False)
class PrognosisSummary:
    """The prognosis of the selected visit: probability, interval, top SHAP contributions.

    ``contributions`` has columns ``label``, ``value``, ``imputed``, ``shap`` (calibrated
    log-odds), the ``_TOP_CONTRIBUTIONS`` largest |SHAP| first.
    """

    task: str
    prob: float
    interval: tuple[float, float]
    threshold: float
    base_prob: float
    contributions: pd.DataFrame
    n_imputed: int
    mri_measured: int
    model: Mapping[str, str]
    metrics: Mapping[str, float]
    intended_use: str
    limits: str



@dataclass(frozen=True, eq=False)
class Report:
    """Everything the report shows; rendered by :func:`render_html` and :func:`render_pdf`.

    ``missing`` maps a section key to why it is not measured; ``sources`` say where each
    section's numbers come from.
    """

    root: Path
    header: PatientHeader
    session_id: str | None
    acq_date: dt.date | None
    visits: pd.DataFrame
    measured: pd.DataFrame
    lesions: pd.DataFrame | None
    mcdonald: McDonaldChecklist | None
    prognosis: PrognosisSummary | None
    images: tuple[ReportImage, ...]
    trends: tuple[ReportImage, ...]
    missing: Mapping[str, str]
    sources: tuple[Source, ...]
    created_utc: str
    app_version: str = __version__
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Lowest and highest predicted / true lesion volume of the segmentation model on the real
    #: validation set (:func:`ms_core.segmentation.model_store.volume_ratio_range`): lesion loads
    #: carry the plausible range they give.
    volume_ratios: tuple[float, float] | None = None

    @property
    def stem(self) -> str:
        """File name stem: ``sub-X_ses-Y_report`` (``sub-X_report`` without a visit)."""
        parts = [self.header.participant_id, *([self.session_id] if self.session_id else [])]
        return "_".join([*parts, "report"])

    def sources_of(self, section: str) -> list[int]:
        """1-based numbers of the sources of ``section`` (as listed in the provenance)."""
        return [i for i, s in enumerate(self.sources, start=1) if section in s.sections]

    def provenance(self) -> dict[str, Any]:
        """The JSON provenance of the report: who made it, from what, with which settings."""
        return {
            "tool": "ms_core report", "version": self.app_version,
            "created_utc": self.created_utc, "study": str(self.root),
            "participant_id": self.header.participant_id, "session_id": self.session_id,
            "parameters": dict(self.parameters),
            "not_measured": dict(self.missing),
            "sources": [dataclasses.asdict(s) for s in self.sources],
        }
