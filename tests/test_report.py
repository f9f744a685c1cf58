"""Tests of :mod:`ms_core.services.report` and the Report page: the one-patient HTML/PDF report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ms_core.foundation.errors import InputError
from ms_core.foundation.io import save_labels, save_volume, sha256_file
from ms_core.imaging.preprocess import Grid
from ms_core.lesions.components import lesion_table
from ms_core.segmentation.model_store import MODELS_DIR, load_segmentation_card
from ms_core.services.report import build_report, report_dir, report_inputs, write_report
from ms_core.services.report_figures import axial_plane, lesion_images
from ms_core.services.report_render import render_html, render_pdf
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels
from tests.conftest import copy_study

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
HAS_PROGNOSIS = (MODELS_DIR / "prognosis" / "model.onnx").exists()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(segmented_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the small study with sub-01's first visit segmented; sub-02 stays
    unprocessed."""
    return copy_study(segmented_study, tmp_path_factory.mktemp("report") / "study",
                      drop=(("sub-01", "ses-02"),))


def _external_refs(html: str) -> list[str]:
    """Attribute values and CSS that would load something from outside the page."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    bad = [r for r in refs if not r.startswith(("data:", "#"))]
    bad += re.findall(r"url\(|@import|https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, flags=re.I)
    return bad


def _pdf_pages(pdf: bytes) -> int:
    counts = [int(n) for n in re.findall(rb"/Count (\d+)", pdf)]
    return max(counts, default=0)


# ----------------------------------------------------------------------------- images
def test_axial_plane_is_radiological_whatever_the_voxel_order() -> None:
    # LAS voxel order (x axis flipped), 2 mm voxels: voxel i=0 lies at the patient's right.
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, -10.0, 0.0]
    data = np.zeros((11, 11, 3), dtype=np.float32)
    data[0, 10, 1] = 1.0  # right (x = +10 mm), anterior (y = +10 mm), z = 2 mm
    grid = Grid((21, 21, 5), np.array([[1.0, 0, 0, -10], [0, 1, 0, -10], [0, 0, 1, 0],
                                       [0, 0, 0, 1]]))
    plane = axial_plane(data, affine, grid, 2.0, order=0)
    assert plane.shape == (21, 21)
    assert plane[0, 0] == 1.0  # top row = anterior, first column = patient right
    rows, cols = np.nonzero(plane)  # the 2 mm voxel covers at most 2 x 2 pixels of 1 mm
    assert rows.max() <= 1 and cols.max() <= 1
    assert not axial_plane(data, affine, grid, -2.0, order=0).any()  # outside the volume


def test_lesion_images_on_mismatched_grids_and_empty_table(tmp_path: Path) -> None:
    # FLAIR on an anisotropic grid, mask on a 1 mm grid: both are resampled through world mm.
    flair_aff = anisotropic_affine((1.2, 1.0, 3.0), (-40.0, -40.0, -30.0))
    shape = (67, 80, 20)
    brain = sphere_labels(shape, flair_aff, [((0.0, 0.0, 0.0), 35.0), ((15.0, 10.0, 6.0), 5.0)])
    flair = np.where(brain == 2, 3.0, np.where(brain == 1, 1.0, 0.0)).astype(np.float32)
    save_volume(tmp_path / "flair.nii.gz", flair, flair_aff)
    mask_aff = anisotropic_affine((1.0, 1.0, 1.0), (-40.0, -40.0, -30.0))
    labels = sphere_labels((80, 80, 60), mask_aff, [((15.0, 10.0, 6.0), 5.0)])
    save_labels(tmp_path / "mask.nii.gz", labels, mask_aff)
    table = lesion_table(labels, affine=mask_aff).assign(location="deep_white_matter")
    images = lesion_images(tmp_path / "flair.nii.gz", tmp_path / "mask.nii.gz", table)
    assert len(images) == 1 and images[0].png.startswith(PNG)
    assert "left of image = patient right" in images[0].caption
    assert lesion_images(tmp_path / "flair.nii.gz", tmp_path / "mask.nii.gz",
                         table.iloc[:0]) == ()
    with pytest.raises(InputError, match=r"missing\.nii\.gz"):
        lesion_images(tmp_path / "flair.nii.gz", tmp_path / "missing.nii.gz", table)


# ----------------------------------------------------------------------------- reports
def test_unprocessed_patient_says_not_measured(study: Path) -> None:
    report = build_report(study, "sub-02")
    assert report.session_id == "ses-03"  # the latest visit by default
    for section in ("measured", "lesions", "images", "mcdonald"):
        assert report.missing[section].startswith("not measured"), section
    assert report.lesions is None and report.images == () and report.mcdonald is None
    assert [t.title for t in report.trends] == ["EDSS"]  # clinical trend only
    if HAS_PROGNOSIS:
        assert report.prognosis is not None and report.prognosis.mri_measured == 0
    html = render_html(report)
    assert html.count('class="missing">not measured') >= 4
    assert "Research use only" in html and _external_refs(html) == []
    pdf = render_pdf(report)
    assert pdf.startswith(b"%PDF") and _pdf_pages(pdf) > 0


def test_segmented_visit_has_lesions_images_and_model_provenance(study: Path) -> None:
    report = build_report(study, "sub-01", session_id="ses-01")
    assert report.lesions is not None and len(report.lesions) > 0
    assert {"lesion_id", "location", "volume_ml"} <= set(report.lesions.columns)
    assert report.measured.set_index("session_id").loc["ses-01", "lesion_count"] == len(
        report.lesions)
    assert report.mcdonald is not None and "lesions" not in report.missing
    assert 1 <= len(report.images) <= 3 and all(i.png.startswith(PNG) for i in report.images)
    seg_sha = load_segmentation_card().sha256
    seg = next(s for s in report.sources if s.path.endswith("ses-01/lesions.csv"))
    assert seg.model is not None and seg.model["sha256"] == seg_sha
    assert {"lesions", "measured", "mcdonald"} <= set(seg.sections)
    assert seg.parameters is not None and seg.parameters["threshold"] == 0.5
    assert seg.created_utc and seg.tool and seg.tool.startswith("ms_core segment")
    for section in ("patient", "visits", "measured", "lesions", "images", "mcdonald"):
        assert report.sources_of(section), f"{section} has no source"

    html = render_html(report)
    assert seg_sha in html and html.count("data:image/png;base64,") == (
        len(report.images) + len(report.trends))
    assert _external_refs(html) == []
    pdf = render_pdf(report)
    assert pdf.startswith(b"%PDF") and _pdf_pages(pdf) > 1


def test_write_report_is_atomic_and_keeps_provenance(study: Path) -> None:
    report = build_report(study, "sub-01", session_id="ses-01")
    before = [(p, p.stat().st_mtime_ns) for p in report_inputs(study, "sub-01") if p.exists()]
    html_path, pdf_path = write_report(report)
    assert html_path.parent == report_dir(study, "sub-01")
    assert html_path.name == "sub-01_ses-01_report.html" and pdf_path.suffix == ".pdf"
    prov = json.loads((html_path.parent / "sub-01_ses-01_report_provenance.json").read_text())
    assert prov["outputs"][pdf_path.name]["sha256"] == sha256_file(pdf_path)
    assert prov["tool"] == "ms_core report" and prov["session_id"] == "ses-01"
    assert any((s["model"] or {}).get("name") == "lesion_seg" for s in prov["sources"])
    assert not list(html_path.parent.glob(".*.tmp"))
    # The report's own files are not inputs of the next report (no cache churn).
    after = [(p, p.stat().st_mtime_ns) for p in report_inputs(study, "sub-01") if p.exists()]
    assert after == before


def test_missing_model_and_unknown_ids(study: Path, tmp_path: Path) -> None:
    report = build_report(study, "sub-01", models_dir=tmp_path)
    assert report.prognosis is None
    assert "prognosis model cannot be used" in report.missing["prognosis"]
    assert "manifest.json" in report.missing["prognosis"]
    with pytest.raises(InputError, match="no participant 'sub-99'"):
        build_report(study, "sub-99")
    with pytest.raises(InputError, match="no visit 'ses-09'"):
        build_report(study, "sub-01", session_id="ses-09")


# ----------------------------------------------------------------------------- page
def test_report_page_renders_and_offers_two_downloads(
        study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.switch_page("pages/report.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Report of sub-01"
    downloads = at.get("download_button")
    assert [d.label for d in downloads] == ["Download HTML", "Download PDF"]
    assert len(at.get("iframe")) == 1
    assert any("research use only" in c.value.lower() for c in at.caption)
