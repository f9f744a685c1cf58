"""Report page: the one-patient report of the selected visit, as an HTML preview and as HTML and
PDF downloads (see docs/report.md)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ms_core.clinical.prognosis import PrognosisModel
from ms_core.foundation.errors import InputError
from ms_core.services.report import build_report, report_inputs, write_report
from ms_core.services.report_model import NOTICE, SECTIONS, Report
from ms_core.services.report_render import render_html, render_pdf
from ms_core.services.workflow import model_card_ref
from ui import helpers as ui_helpers
from ui import prognosis as ui_prognosis


@st.cache_data(max_entries=8, show_spinner="Building the report…")
def _report(root: str, pid: str, sid: str | None, models_dir: str,
            stamps: tuple[tuple[int, int], ...],
            _model: PrognosisModel | None) -> tuple[Report, str, bytes]:
    # ``stamps`` (mtime, size of every file the report reads) is only part of the cache key.
    report = build_report(Path(root), pid, session_id=sid, models_dir=models_dir,
                          prognosis_model=_model)
    return report, render_html(report), render_pdf(report)


ui_helpers.ensure_routed()
selection = ui_helpers.current_selection()
study, pid, visit = selection.study, selection.participant_id, selection.visit

st.title(f"Report of {pid}")
st.caption(f"{NOTICE} Model cards: {model_card_ref('lesion_seg')}, "
           f"{model_card_ref('prognosis', models_dir=ui_prognosis.models_dir())}.")
try:
    model: PrognosisModel | None = ui_prognosis.prognosis_model()
except InputError:
    model = None  # the report says why the prognosis is missing
models_dir = ui_prognosis.models_dir()
sid = visit.session_id if visit is not None else None
stamps = tuple(ui_helpers.file_stamp(p) for p in report_inputs(study.root, pid, models_dir))
try:
    report, html, pdf = _report(str(study.root), pid, sid, str(models_dir), stamps, model)
except InputError as e:
    st.error(f"The report cannot be built. {e}")
    st.stop()

if report.missing:
    st.info("Not measured in this report: " + "; ".join(
        f"**{SECTIONS[k]}** ({why.removeprefix('not measured: ')})"
        for k, why in report.missing.items())
        + ". The Timeline page's \"Analyse this patient\" segments and compares the visits.")
html_col, pdf_col, save_col = st.columns(3)
audit_args = ("exported", study.root, pid, report.session_id)
html_col.download_button("Download HTML", html.encode("utf-8"), f"{report.stem}.html",
                         "text/html", on_click=ui_helpers.audit_event,
                         args=(*audit_args, "report downloaded: HTML"),
                         icon=":material/download:")
pdf_col.download_button("Download PDF", pdf, f"{report.stem}.pdf", "application/pdf",
                        on_click=ui_helpers.audit_event,
                        args=(*audit_args, "report downloaded: PDF"),
                        icon=":material/picture_as_pdf:")
if ui_helpers.can_write(study.root) and save_col.button(
        "Save in the study folder", help="Writes the HTML, the PDF and a provenance JSON into "
                                         "derivatives/ms_dash/<patient>/report/."):
    try:
        paths = write_report(report)
    except OSError as e:
        st.error(f"The report could not be saved: {e}")
    else:
        ui_helpers.audit_event(*audit_args, "report saved in the study folder")
        st.success("Saved " + ", ".join(f"`{p}`" for p in paths))
st.iframe(html, height=900, alt=f"Report of {pid}")
