"""Plotly figures and table settings shared by the Patient, Timeline and Prognosis pages: EDSS with
relapses and therapy bands, lesion and brain volumes, atrophy, and a per-session cache of built
figures (shared_figure). Everything they plot comes from ms_core tables.
"""

from __future__ import annotations

import math
import textwrap
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ms_core.longitudinal.measurements import volume_text
from ms_core.longitudinal.timeline import NO_DMT, relapse_visits
from ms_core.study.layout import Study

__all__ = [
    "atrophy_figure",
    "edss_figure",
    "has_atrophy",
    "lesion_table_config",
    "measured_figure",
    "shared_figure",
    "study_dmts",
    "visit_table_config",
    "volume_figure",
]

_BAND_PALETTE = qualitative.Set2



def visit_table_config() -> dict[str, Any]:
    """``st.dataframe`` column settings for :func:`ms_core.longitudinal.timeline.visit_table`."""
    cc = st.column_config
    return {
        "session_id": cc.TextColumn("visit"),
        "acq_date": cc.DateColumn("date", format="YYYY-MM-DD"),
        "years_from_first": cc.NumberColumn("years", format="%.2f"),
        "edss": cc.NumberColumn("EDSS", format="%.1f"),
        "edss_step": None,
        "relapses_since_last": cc.NumberColumn("relapses"),
        "dmt": cc.TextColumn("DMT"),
        "lesion_volume_ml": cc.NumberColumn("lesion volume (ml)", format="%.2f"),
        "brain_volume_ml": cc.NumberColumn("brain volume (ml)", format="%.0f"),
        "lesion_count": cc.NumberColumn("lesions", format="%d"),
        "new_or_enlarging": cc.NumberColumn("new or enlarging", format="%d"),
        "segmented": cc.CheckboxColumn("segmented"),
        "compared_with": cc.TextColumn("compared with"),
        "new": cc.NumberColumn("new", format="%d"),
        "enlarging": cc.NumberColumn("enlarging", format="%d"),
        "shrinking": cc.NumberColumn("shrinking", format="%d"),
        "disappeared": cc.NumberColumn("disappeared", format="%d"),
        "bpf": cc.NumberColumn("BPF", format="%.3f", help="brain parenchymal fraction"),
        "gm_fraction": cc.NumberColumn("GM / ICV", format="%.3f"),
        "wm_fraction": cc.NumberColumn("WM / ICV", format="%.3f"),
        "pbvc_pct": cc.NumberColumn("PBVC (%)", format="%.2f",
                                    help="brain volume change since the previous visit"),
        "pbvc_pct_per_year": cc.NumberColumn("PBVC (%/year)", format="%.2f"),
        "pbvc_from": None,
        **{c: cc.TextColumn(c.replace("_", " "), width="medium") for c in (
            "segmentation_provenance", "change_provenance", "volume_provenance",
            "pbvc_provenance", "clinical_source", "truth_source")},
    }



def lesion_table_config() -> dict[str, Any]:
    """``st.dataframe`` column settings for lesion and lesion-change tables."""
    cc = st.column_config
    ml = {c: cc.NumberColumn(c.replace("_ml", " (ml)").replace("_", " "), format="%.3f")
          for c in ("volume_ml", "volume_baseline_ml", "volume_followup_ml")}
    mm = {c: cc.NumberColumn(c.replace("_mm", " (mm)").replace("_", " "), format="%.1f")
          for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")}
    prob = {c: cc.NumberColumn(c.replace("_", " "), format="%.2f")
            for c in ("mean_prob", "max_prob", "confidence")}
    return {**ml, **mm, **prob, "lesion_id": cc.NumberColumn("id", format="%d")}



def study_dmts(study: Study) -> list[str]:
    """Every DMT recorded in the study, sorted: the order that fixes each DMT's band colour."""
    names = {v.dmt for visits in study.visits.values() for v in visits if v.dmt}
    return sorted(names | {NO_DMT})



def _band_colour(name: str, order: Sequence[str]) -> str:
    """Colour of a DMT band: by position in ``order`` (distinct within a study), else by hash."""
    index = order.index(name) if name in order else zlib.crc32(name.encode("utf-8"))
    return str(_BAND_PALETTE[index % len(_BAND_PALETTE)])



#: Characters per hover line of a provenance text (longer texts wrap at spaces).
_HOVER_WIDTH = 80



def _provenance_hover(table: pd.DataFrame, column: str) -> list[str]:
    """The provenance texts of ``column``, wrapped into hover lines (``<br>``); tables made
    before the column existed say so instead of failing."""
    texts = table[column] if column in table.columns else pd.Series("provenance not recorded",
                                                                    index=table.index)
    return ["<br>".join(textwrap.wrap(str(t), _HOVER_WIDTH, break_long_words=False,
                                      break_on_hyphens=False)) for t in texts]



def _hover_data(table: pd.DataFrame, columns: Sequence[str], provenance: str) -> list[list[Any]]:
    """``customdata`` rows: the values of ``columns`` and then the wrapped ``provenance``."""
    values = table[list(columns)].astype(object).to_numpy().tolist()
    return [[*row, text] for row, text in zip(values, _provenance_hover(table, provenance),
                                              strict=True)]



def shared_figure(build: Callable[..., go.Figure], *args: Any) -> go.Figure:
    """``build(*args)``, built once for equal arguments and shared by every rerun and session.

    Building a plotly figure (``make_subplots``, property validation) costs tens of
    milliseconds, most of a cached Timeline rerun; the arguments (tables, lists) hash in a few.
    The figure is shared, so it is read only: ``st.plotly_chart`` copies it (``to_dict``)
    and nothing may change it after it is built.
    """
    return _shared_figure(f"{build.__module__}.{build.__qualname__}", build, *args)



@st.cache_resource(max_entries=64, show_spinner=False)
def _shared_figure(name: str, _build: Callable[..., go.Figure], *args: Any) -> go.Figure:
    return _build(*args)



def edss_figure(table: pd.DataFrame, periods: pd.DataFrame,
                dmts: Sequence[str] = ()) -> go.Figure:
    """EDSS step plot with relapse markers over DMT background bands.

    ``table`` comes from :func:`ms_core.longitudinal.timeline.visit_table` and ``periods`` from
    :func:`ms_core.longitudinal.timeline.dmt_periods`; ``dmts`` (see :func:`study_dmts`) keeps each
    DMT's colour the same for every patient of a study. Hovers name the file the EDSS and relapses
    come from (``clinical_source``).
    """
    fig = go.Figure()
    for period in periods.itertuples(index=False):
        fig.add_vrect(
            x0=period.start, x1=period.end, fillcolor=_band_colour(str(period.dmt), dmts),
            opacity=0.3, line_width=0, layer="below",
            annotation_text=str(period.dmt), annotation_position="top left",
            annotation_font_size=11,
        )
    fig.add_trace(go.Scatter(
        x=table["acq_date"], y=table["edss"], mode="lines+markers", line_shape="hv",
        connectgaps=True, name="EDSS",
        customdata=_hover_data(table, ["session_id", "dmt"], "clinical_source"),
        hovertemplate="%{customdata[0]} %{x|%Y-%m-%d}<br>EDSS %{y}<br>%{customdata[1]}"
                      "<br>EDSS from %{customdata[2]}<extra></extra>",
    ))
    relapses = relapse_visits(table)
    if not relapses.empty:
        counts = relapses["relapses_since_last"].astype(int)
        fig.add_trace(go.Scatter(
            x=relapses["acq_date"], y=relapses["edss_step"].fillna(0.0), mode="markers",
            name="Relapses since last visit",
            marker={"symbol": "star", "color": "crimson", "size": 10 + 6 * counts,
                    "line": {"width": 1, "color": "white"}},
            customdata=[[n, text] for n, text in zip(
                counts.tolist(), _provenance_hover(relapses, "clinical_source"), strict=True)],
            hovertemplate="%{x|%Y-%m-%d}: %{customdata[0]} relapse(s)<br>Relapses from "
                          "%{customdata[1]}<extra></extra>",
        ))
    edss = table["edss"].dropna()
    lo = max(0.0, float(edss.min()) - 1.0) if not edss.empty else 0.0
    hi = min(10.0, float(edss.max()) + 1.5) if not edss.empty else 10.0
    fig.update_yaxes(title_text="EDSS", range=[lo, hi], dtick=0.5 if hi - lo <= 4 else 1.0)
    fig.update_xaxes(title_text="Visit date")
    fig.update_layout(title="EDSS, relapses and disease-modifying therapy", height=380,
                      margin={"t": 60, "b": 40}, legend={"orientation": "h", "y": -0.2})
    return fig



def volume_figure(table: pd.DataFrame) -> go.Figure:
    """Total lesion volume and brain volume (ml) per visit, from the ground truth; hovers name
    each visit's ``truth.json`` (``truth_source``)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Total lesion volume (ml)", "Brain volume (ml)"))
    for col, (name, colour) in enumerate(
            (("lesion_volume_ml", "crimson"), ("brain_volume_ml", "#4fa3e0")), start=1):
        fig.add_trace(go.Scatter(
            x=table["acq_date"], y=table[name], mode="lines+markers", name=name,
            line={"color": colour},
            customdata=_hover_data(table, ["session_id"], "truth_source"),
            hovertemplate="%{customdata[0]} %{x|%Y-%m-%d}: %{y:.2f} ml<br>%{customdata[1]}"
                          "<extra></extra>",
        ), row=1, col=col)
    fig.update_layout(title="Ground truth volumes per visit", height=340, showlegend=False,
                      margin={"t": 80, "b": 40})
    return fig



def has_atrophy(table: pd.DataFrame) -> bool:
    """True when a :func:`ms_core.longitudinal.measurements.measured_table` has any brain volume or
    PBVC."""
    if table.empty:
        return False
    return bool(table[["brain_volume_ml", "pbvc_pct"]].notna().to_numpy().any())



def atrophy_figure(table: pd.DataFrame) -> go.Figure:
    """Measured brain volume and BPF per visit, and annualised PBVC per interval.

    ``table`` is a :func:`ms_core.longitudinal.measurements.measured_table`; each PBVC bar sits at
    the follow-up visit of its interval. Hovers name the method, settings and file of each number
    (``volume_provenance``, ``pbvc_provenance``).
    """
    fig = make_subplots(rows=1, cols=2, specs=[[{"secondary_y": True}, {}]], subplot_titles=(
        "Brain volume (ml) and BPF", "Brain volume change since previous visit (%/year)"))
    fig.add_trace(go.Scatter(
        x=table["acq_date"], y=table["brain_volume_ml"], mode="lines+markers",
        name="brain volume (ml)", line={"color": "#4fa3e0"},
        customdata=_hover_data(table, ["session_id"], "volume_provenance"),
        hovertemplate="%{customdata[0]} %{x|%Y-%m-%d}: %{y:.0f} ml<br>%{customdata[1]}"
                      "<extra></extra>",
    ), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(
        x=table["acq_date"], y=table["bpf"], mode="lines+markers", name="BPF",
        line={"color": "#7a5195", "dash": "dot"},
        customdata=_hover_data(table, ["session_id"], "volume_provenance"),
        hovertemplate="%{customdata[0]}: BPF %{y:.3f}<br>%{customdata[1]}<extra></extra>",
    ), row=1, col=1, secondary_y=True)
    rate = table["pbvc_pct_per_year"]
    fig.add_trace(go.Bar(
        x=table["acq_date"], y=rate, name="PBVC (%/year)",
        marker_color=["crimson" if r < 0 else "seagreen" for r in rate.fillna(0.0)],
        customdata=_hover_data(table, ["pbvc_from", "pbvc_pct"], "pbvc_provenance"),
        hovertemplate="%{y:.2f} %/year since %{customdata[0]} (PBVC %{customdata[1]:.2f} %)"
                      "<br>%{customdata[2]}<extra></extra>",
    ), row=1, col=2)
    fig.update_yaxes(title_text="ml", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="BPF", row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="%/year", row=1, col=2)
    fig.update_layout(height=340, margin={"t": 60, "b": 40}, title="Brain atrophy (pipeline)",
                      legend={"orientation": "h", "y": -0.2})
    return fig



def _volume_texts(table: pd.DataFrame) -> list[str]:
    """Each visit's lesion volume as text (:func:`ms_core.longitudinal.measurements.volume_text`),
    with its plausible range where the table has one.

    >>> _volume_texts(pd.DataFrame({"lesion_volume_ml": [8.2, float("nan")],
    ...                             "lesion_volume_low_ml": [6.6, float("nan")],
    ...                             "lesion_volume_high_ml": [10.2, float("nan")]}))
    ['8.20 ml, plausible 6.6–10.2 ml', '']
    """
    columns = ("lesion_volume_ml", "lesion_volume_low_ml", "lesion_volume_high_ml")
    values = pd.DataFrame({c: table.get(c, math.nan) for c in columns},
                          index=table.index)  # tables made before the range existed
    return [volume_text(v, (lo, hi) if math.isfinite(lo) else None)
            for v, lo, hi in values.to_numpy(dtype=float)]



def measured_figure(table: pd.DataFrame) -> go.Figure:
    """Measured lesion count per visit and new/enlarging lesions per interval.

    Hovers name the segmentation (model, method, threshold, minimum lesion size, file) of each
    count and the comparison (tracking method, enlarging ratio, change z, registration NCC)
    of each interval: the ``segmentation_provenance`` and ``change_provenance`` columns.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Lesions (network)", "New or enlarging since previous visit"))
    fig.add_trace(go.Scatter(
        x=table["acq_date"], y=table["lesion_count"], mode="lines+markers", name="lesions",
        customdata=_hover_data(table.assign(volume_text=_volume_texts(table)),
                               ["session_id", "volume_text"], "segmentation_provenance"),
        hovertemplate="%{customdata[0]}: %{y} lesions, %{customdata[1]}"
                      "<br>%{customdata[2]}<extra></extra>"), row=1, col=1)
    for status, colour in (("new", "crimson"), ("enlarging", "orange")):
        fig.add_trace(go.Bar(
            x=table["acq_date"], y=table[status], name=status, marker_color=colour,
            customdata=_hover_data(table, ["compared_with"], "change_provenance"),
            hovertemplate=f"%{{y}} {status} vs %{{customdata[0]}}<br>%{{customdata[1]}}"
                          "<extra></extra>"), row=1, col=2)
    fig.update_layout(barmode="stack", height=340, margin={"t": 60, "b": 40},
                      title="Measured by the pipeline", legend={"orientation": "h", "y": -0.2})
    return fig
