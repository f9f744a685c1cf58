"""A report rendered as HTML (self-contained, images inline) and as PDF (reportlab), with the
same sections, tables and provenance lines.
"""

from __future__ import annotations

import functools
import html
import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ms_core.clinical.patient_features import MRI_FEATURES
from ms_core.longitudinal.measurements import (
    McDonaldChecklist,
    volume_with_range,
)
from ms_core.services.report_model import (
    BLANK,
    N_LESION_IMAGES,
    NOTICE,
    SECTIONS,
    PrognosisSummary,
    Report,
    ReportImage,
    Source,
)

__all__ = [
    "render_html",
    "render_pdf",
]

log = logging.getLogger(__name__)


def _fmt(value: Any, digits: int = 2) -> str:
    """A table cell: ``BLANK`` for missing values, fixed digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return BLANK
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    if value is pd.NA or value is pd.NaT:
        return BLANK
    return str(value)



def _rows(table: pd.DataFrame, columns: Mapping[str, tuple[str, int]]) -> list[list[str]]:
    """Header and text rows of ``table``: ``columns`` maps column -> (title, float digits)."""
    cols = [c for c in columns if c in table.columns]
    out = [[columns[c][0] for c in cols]]
    for rec in table.to_dict("records"):
        out.append([_fmt(rec[c], columns[c][1]) for c in cols])
    return out



_VISIT_COLS = {"session_id": ("visit", 0), "acq_date": ("date", 0), "edss": ("EDSS", 1),
               "relapses_since_last": ("relapses since last", 0), "dmt": ("DMT", 0),
               "scanner": ("scanner", 0), "field_strength_t": ("field (T)", 1),
               "modalities": ("images", 0)}



_MEASURED_COLS = {"session_id": ("visit", 0), "lesion_count": ("lesions", 0),
                  "lesion_volume_ml": ("volume (ml)", 2),
                  "lesion_volume_low_ml": ("plausible from (ml)", 1),
                  "lesion_volume_high_ml": ("plausible to (ml)", 1),
                  "compared_with": ("compared with", 0),
                  "new": ("new", 0), "enlarging": ("enlarging", 0),
                  "shrinking": ("shrinking", 0), "disappeared": ("disappeared", 0)}



_LESION_COLS = {"lesion_id": ("id", 0), "location": ("location", 0),
                "volume_ml": ("volume (ml)", 3), "n_voxels": ("voxels", 0),
                "centroid_x_mm": ("x (mm)", 1), "centroid_y_mm": ("y (mm)", 1),
                "centroid_z_mm": ("z (mm)", 1), "mean_prob": ("mean p", 2),
                "max_prob": ("max p", 2)}



_CHECKLIST_COLS = {"item": ("item", 0), "satisfied": ("met", 0), "lesions": ("lesions", 0),
                   "note": ("note", 0)}



_SHAP_COLS = {"label": ("input", 0), "value": ("value", 2), "imputed": ("imputed", 0),
              "shap": ("SHAP (log-odds)", 3)}



def _measured_text(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["acq_date"] = out["acq_date"].dt.date.astype(str) if len(out) else out["acq_date"]
    out["compared_with"] = out["compared_with"].replace("", None)
    return out



def _checklist_text(checklist: McDonaldChecklist) -> pd.DataFrame:
    met = {True: "yes", False: "no"}
    return pd.DataFrame([{**r, "satisfied": met.get(r["satisfied"], "not assessable")}  # type: ignore[call-overload]
                         for r in checklist.rows])



def _header_pairs(report: Report) -> list[tuple[str, str]]:
    h = report.header
    return [("Participant", h.participant_id), ("Sex", h.sex),
            ("Age at selected visit", _fmt(h.age_years, 0) + (" years" if h.age_years else "")),
            ("MS type", h.ms_type), ("Onset year", _fmt(h.onset_year)),
            ("Trial arm", h.trial_arm or BLANK), ("Visits", str(h.n_visits)),
            ("Selected visit", f"{report.session_id} ({report.acq_date})"
             if report.session_id else BLANK)]



def _prognosis_pairs(p: PrognosisSummary) -> list[tuple[str, str]]:
    lo, hi = p.interval
    interval = (f"{lo:.0%} – {hi:.0%}" if not (math.isnan(lo) or math.isnan(hi)) else BLANK)
    model = p.model
    return [("Question", p.task), ("Probability", f"{p.prob:.0%}"),
            ("Observed in similar test patients (Wilson 95 %)", interval),
            ("High-risk threshold", f"{p.threshold:.0%} "
             f"({'above' if p.prob >= p.threshold else 'below'})"),
            ("Average patient", f"{p.base_prob:.0%}"),
            ("Imputed inputs", f"{p.n_imputed} (MRI inputs measured: {p.mri_measured} of "
                               f"{len(MRI_FEATURES)})"),
            ("Model", f"{model['name']} v{model['version']} ({model['family']}) on "
                      f"{model['provider']}"),
            ("Model sha256", model["sha256"]),
            ("Held-out metrics", ", ".join(f"{k.upper()} {v:.3f}"
                                           for k, v in p.metrics.items()) or BLANK)]



def _source_lines(s: Source) -> list[str]:
    """Plain-text detail lines of a source, shared by HTML and PDF."""
    lines = []
    if s.sha256:
        lines.append(f"sha256 {s.sha256}")
    if s.tool:
        lines.append(f"made by {s.tool}")
    if s.created_utc:
        lines.append(f"created {s.created_utc}")
    if s.model:
        lines.append("model " + ", ".join(f"{k} {v}" for k, v in s.model.items()))
    if s.parameters:
        lines.append("parameters " + _flat(s.parameters))
    lines += list(s.notes)
    return lines



def _flat(obj: Mapping[str, Any], prefix: str = "") -> str:
    parts = []
    for k, v in obj.items():
        if isinstance(v, Mapping):
            parts.append(_flat(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}={json.dumps(v, default=str)}")
    return ", ".join(parts)



def _section_note(report: Report, key: str) -> str:
    ids = report.sources_of(key)
    return ("Sources: " + ", ".join(f"[{i}]" for i in ids)) if ids else ""



_CSS = """
html{background:#fff;color-scheme:light}
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;font-size:13px;color:#222;
max-width:1000px;margin:1.5em auto;padding:0 1em}
h1{font-size:22px;margin-bottom:.2em}h2{font-size:17px;border-bottom:1px solid #ccc;
margin-top:1.6em}
.notice{background:#fff3cd;border:1px solid #e0c36b;padding:.6em .8em;border-radius:4px}
.missing{color:#8a5a00;font-style:italic}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f2f2f2}
table.kv th{width:16em}.src{font-size:11px;color:#555}
.imgs{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0 0 .6em 0}
figcaption{font-size:11px;color:#555}
.prov td{font-size:11px;word-break:break-all}
"""



def _e(text: object) -> str:
    return html.escape(str(text))



def _html_table(rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'



def _html_kv(pairs: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{body}</tbody></table>'



def _html_image(img: ReportImage, width: int) -> str:
    import base64

    data = base64.b64encode(img.png).decode("ascii")
    return (f'<figure style="max-width:{width}px"><img alt="{_e(img.title)}" '
            f'style="width:100%" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(img.caption)}</figcaption></figure>")



def _html_section(report: Report, key: str, body: str, title_extra: str = "") -> str:
    parts = [f'<h2 id="{key}">{_e(SECTIONS[key] + title_extra)}</h2>']
    if key in report.missing:
        parts.append(f'<p class="missing">{_e(report.missing[key])}</p>')
    parts.append(body)
    note = _section_note(report, key)
    if note:
        links = ", ".join(f'<a href="#src-{i}">[{i}]</a>' for i in report.sources_of(key))
        parts.append(f'<p class="src">Sources: {links}</p>')
    return "\n".join(parts)



def _lesion_sentence(report: Report) -> str:
    """The lesion section's first line: count and total volume with its plausible range."""
    lesions = report.lesions if report.lesions is not None else pd.DataFrame()
    total = float(lesions["volume_ml"].sum()) if len(lesions) else 0.0
    return (f"{len(lesions)} lesion(s), total volume "
            f"{volume_with_range(total, report.volume_ratios)}.")



def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (images embedded, no external resources)."""
    h = report.header
    sections = [_html_section(report, "patient", _html_kv(_header_pairs(report)))]
    if len(report.visits):
        sections.append(_html_section(report, "visits", _html_table(
            _rows(report.visits, _VISIT_COLS))))
    else:
        sections.append(_html_section(report, "visits", ""))
    measured = ""
    if len(report.measured) and report.measured["segmented"].any():
        measured = (_html_table(_rows(_measured_text(report.measured), _MEASURED_COLS))
                    + f'<p class="src">{BLANK}: not measured (visit not segmented, or interval '
                      "not compared, with the current model and settings).</p>")
    sections.append(_html_section(report, "measured", measured))
    sections.append(_html_section(report, "trends", "".join(
        _html_image(t, 760) for t in report.trends)))
    title = f" ({report.session_id})" if report.session_id else ""
    lesions = ""
    if report.lesions is not None:
        lesions = (f"<p>{html.escape(_lesion_sentence(report))}</p>"
                   + (_html_table(_rows(report.lesions, _LESION_COLS))
                      if len(report.lesions) else ""))
    sections.append(_html_section(report, "lesions", lesions, title))
    sections.append(_html_section(report, "images", '<div class="imgs">' + "".join(
        _html_image(i, 310) for i in report.images) + "</div>"))
    checklist = ""
    if report.mcdonald is not None:
        checklist = (_html_table(_rows(_checklist_text(report.mcdonald), _CHECKLIST_COLS))
                     + "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.mcdonald.notes)
                     + "</ul>")
    sections.append(_html_section(report, "mcdonald", checklist))
    prognosis = ""
    if report.prognosis is not None:
        p = report.prognosis
        warn = ("<p class=\"missing\">No MRI measurement of this patient is stored: lesion and "
                "brain-volume inputs are imputed with the training medians.</p>"
                if p.mri_measured == 0 else "")
        prognosis = (_html_kv(_prognosis_pairs(p)) + warn
                     + "<p>Largest contributions (SHAP values in calibrated log-odds; positive "
                       "raises the risk):</p>"
                     + _html_table(_rows(p.contributions, _SHAP_COLS))
                     + f'<p class="src">Intended use: {_e(p.intended_use)}. Limits: '
                       f"{_e(p.limits)}.</p>")
    sections.append(_html_section(report, "prognosis", prognosis))
    prov_rows = "".join(
        f'<tr id="src-{i}"><td>[{i}]</td><td>{_e(s.what)}</td><td>{_e(s.path)}</td>'
        f"<td>{_e(', '.join(SECTIONS.get(k, k) for k in s.sections))}</td>"
        f"<td>{'<br>'.join(_e(line) for line in _source_lines(s))}</td></tr>"
        for i, s in enumerate(report.sources, start=1))
    provenance = (
        "<h2 id=\"provenance\">Provenance</h2>"
        f"<p>Report made {_e(report.created_utc)} by ms_core report {_e(report.app_version)} "
        f"from study {_e(report.root)}; parameters {_e(_flat(report.parameters))}. Each "
        "section lists the sources of its numbers.</p>"
        '<table class="prov"><thead><tr><th>#</th><th>what</th><th>file</th><th>sections</th>'
        f"<th>details</th></tr></thead><tbody>{prov_rows}</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>MS MRI report {_e(h.participant_id)}{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>MS MRI report: {_e(h.participant_id)}{_e(title)}</h1>"
        f'<p class="notice"><strong>{_e(NOTICE)}</strong></p>'
        + "\n".join(sections) + provenance
        + f'<p class="src">ms_core {_e(report.app_version)} · {_e(report.created_utc)}</p>'
        "</body></html>\n")



@functools.cache
def _pdf_fonts() -> tuple[str, str]:
    """Register DejaVu Sans (shipped with matplotlib; covers ≥, –, →) with reportlab."""
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFError, TTFont

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    try:
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(ttf / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(ttf / "DejaVuSans-Bold.ttf")))
    except (TTFError, OSError) as e:
        log.warning("DejaVu Sans not usable for the PDF (%s); using Helvetica", e)
        return "Helvetica", "Helvetica-Bold"
    return "DejaVuSans", "DejaVuSans-Bold"



def render_pdf(report: Report) -> bytes:
    """The report as PDF bytes (A4, reportlab), with the same content as :func:`render_html`."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import (
        Image,
        KeepTogether,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    font, bold = _pdf_fonts()
    body = ParagraphStyle("body", fontName=font, fontSize=8.5, leading=11)
    small = ParagraphStyle("small", parent=body, fontSize=7, leading=8.6,
                           textColor=colors.HexColor("#444444"))
    cell = ParagraphStyle("cell", parent=body, fontSize=7, leading=8.4)
    head_cell = ParagraphStyle("head", parent=cell, fontName=bold)
    h1 = ParagraphStyle("h1", parent=body, fontName=bold, fontSize=15, leading=19)
    h2 = ParagraphStyle("h2", parent=body, fontName=bold, fontSize=11, leading=14,
                        spaceBefore=10, spaceAfter=4)
    notice = ParagraphStyle("notice", parent=body, fontName=bold, backColor="#fff3cd",
                            borderColor="#e0c36b", borderWidth=0.5, borderPadding=4)
    missing_style = ParagraphStyle("missing", parent=body, textColor="#8a5a00")
    width = A4[0] - 3.2 * cm

    def para(text: object, style: ParagraphStyle = body) -> Paragraph:
        return Paragraph(escape(str(text)), style)

    def table(rows: list[list[str]], col_widths: list[float] | None = None) -> Table:
        data = [[para(c, head_cell) for c in rows[0]]]
        data += [[para(c, cell) for c in r] for r in rows[1:]]
        t = Table(data, colWidths=col_widths, repeatRows=1, hAlign="LEFT")
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LEFTPADDING", (0, 0), (-1, -1), 3),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 3)]))
        return t

    def kv(pairs: list[tuple[str, str]]) -> Table:
        t = Table([[para(k, head_cell), para(v, cell)] for k, v in pairs],
                  colWidths=[5.5 * cm, width - 5.5 * cm], hAlign="LEFT")
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return t

    def image(img: ReportImage, w: float) -> list[Any]:
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(img.png)) as im:
            px_w, px_h = im.size
        return [Image(io.BytesIO(img.png), width=w, height=w * px_h / px_w),
                para(img.caption, small)]

    story: list[Any] = []

    def section(key: str, *flowables: Any, title_extra: str = "") -> None:
        head = [para(SECTIONS[key] + title_extra, h2)]
        if key in report.missing:
            head.append(para(report.missing[key], missing_style))
        story.append(KeepTogether(head + list(flowables[:1])))
        story.extend(flowables[1:])
        note = _section_note(report, key)
        if note:
            story.append(para(note, small))

    h = report.header
    title = f" ({report.session_id})" if report.session_id else ""
    story += [para(f"MS MRI report: {h.participant_id}{title}", h1), Spacer(1, 4),
              para(NOTICE, notice), Spacer(1, 6)]
    section("patient", kv(_header_pairs(report)))
    section("visits", *([table(_rows(report.visits, _VISIT_COLS))]
                        if len(report.visits) else []))
    if len(report.measured) and report.measured["segmented"].any():
        section("measured", table(_rows(_measured_text(report.measured), _MEASURED_COLS)),
                para(f"{BLANK}: not measured (visit not segmented, or interval not compared, "
                     "with the current model and settings).", small))
    else:
        section("measured")
    trend_flow = [f for t in report.trends for f in image(t, width)]
    section("trends", *trend_flow)
    lesion_flow: list[Any] = []
    if report.lesions is not None:
        lesion_flow.append(para(_lesion_sentence(report)))
        if len(report.lesions):
            lesion_flow.append(table(_rows(report.lesions, _LESION_COLS)))
    section("lesions", *lesion_flow, title_extra=title)
    if report.images:
        w = (width - 0.6 * cm) / N_LESION_IMAGES
        cells = [image(i, w) for i in report.images]
        grid = Table([cells], colWidths=[w + 0.2 * cm] * len(cells), hAlign="LEFT")
        grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
        section("images", grid)
    else:
        section("images")
    if report.mcdonald is not None:
        section("mcdonald", table(_rows(_checklist_text(report.mcdonald), _CHECKLIST_COLS),
                                  [6.2 * cm, 2.0 * cm, 2.0 * cm, width - 10.2 * cm]),
                *[para(f"• {n}", small) for n in report.mcdonald.notes])
    else:
        section("mcdonald")
    if report.prognosis is not None:
        p = report.prognosis
        flow: list[Any] = [kv(_prognosis_pairs(p))]
        if p.mri_measured == 0:
            flow.append(para("No MRI measurement of this patient is stored: lesion and "
                             "brain-volume inputs are imputed with the training medians.",
                             missing_style))
        flow += [Spacer(1, 4), para("Largest contributions (SHAP values in calibrated "
                                    "log-odds; positive raises the risk):"),
                 table(_rows(p.contributions, _SHAP_COLS)),
                 para(f"Intended use: {p.intended_use}. Limits: {p.limits}.", small)]
        section("prognosis", *flow)
    else:
        section("prognosis")
    story.append(para("Provenance", h2))
    story.append(para(f"Report made {report.created_utc} by ms_core report "
                      f"{report.app_version} from study {report.root}; parameters "
                      f"{_flat(report.parameters)}. Each section lists the sources of its "
                      "numbers.", small))
    for i, s in enumerate(report.sources, start=1):
        sections = ", ".join(SECTIONS.get(k, k) for k in s.sections)
        story.append(Paragraph(f"<b>[{i}] {escape(s.what)}</b>: {escape(s.path)} "
                               f"<i>({escape(sections)})</i>", cell))
        for line in _source_lines(s):
            story.append(para(f"    {line}", small))
        story.append(Spacer(1, 3))

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(font, 7)
        canvas.drawString(1.6 * cm, 1.0 * cm, f"{h.participant_id}{title} · research use only, "
                                              "not a medical device")
        canvas.drawRightString(A4[0] - 1.6 * cm, 1.0 * cm,
                               f"page {doc.page} · ms_core {report.app_version} · "
                               f"{report.created_utc}")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=1.6 * cm, rightMargin=1.6 * cm,
                            topMargin=1.5 * cm, bottomMargin=1.6 * cm,
                            title=f"MS MRI report {h.participant_id}{title}",
                            author=f"ms_core {report.app_version}",
                            subject="research use only, not a medical device")
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
