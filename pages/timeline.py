"""Timeline page: the selected patient's EDSS, relapses, therapies and volumes over all visits."""

from __future__ import annotations

import functools

import streamlit as st

from ms_core.clinical.clinical_models import dmt_switch_activity
from ms_core.longitudinal.timeline import dmt_periods, has_volumes, visit_table
from ui import figures as ui_figures
from ui import helpers as ui_helpers
from ui import jobs as ui_jobs

ui_helpers.ensure_routed()
selection = ui_helpers.current_selection()
study, pid, visits = selection.study, selection.participant_id, selection.visits

st.title(f"Timeline of {pid}")
if not visits:
    st.info(f"{pid} has no visits to show.")
    st.stop()

truths, problems = ui_helpers.truths_for(study.root, visits)
for message in problems:
    st.warning(f"Ground truth skipped. {message}")
table = visit_table(visits, truths)

st.caption("Hover any point for where the number comes from (model, parameters, file).")
st.plotly_chart(ui_figures.shared_figure(ui_figures.edss_figure, table, dmt_periods(visits),
                                          ui_figures.study_dmts(study)))
st.caption("Coloured bands: disease-modifying therapy from the visit it was recorded at. "
           "Stars: relapses since the previous visit (larger = more).")
if has_volumes(table):
    st.plotly_chart(ui_figures.shared_figure(ui_figures.volume_figure, table))
st.dataframe(table, hide_index=True, column_config=ui_figures.visit_table_config())

st.subheader("Measured by the pipeline")
measured = ui_helpers.measured(study.root, visits)
lesions_measured = bool(measured["segmented"].any())
atrophy_measured = ui_figures.has_atrophy(measured)
if lesions_measured:
    st.plotly_chart(ui_figures.shared_figure(ui_figures.measured_figure, measured))
if atrophy_measured:
    st.plotly_chart(ui_figures.shared_figure(ui_figures.atrophy_figure, measured))
if lesions_measured or atrophy_measured:
    st.dataframe(measured, hide_index=True, column_config=ui_figures.visit_table_config())
    st.caption("Network segmentation per visit and lesion matching against the previous visit; "
               "brain volume and BPF per visit (T1w, lesions filled) and PBVC (boundary shift "
               "integral) against the previous visit (research use only). Empty cells: not "
               "analysed yet.")
    history = ui_helpers.lesion_histories(study.root, visits)
    if len(history):
        st.markdown("**Lesion history** (persistent ids; volume in ml per visit)")
        st.dataframe(history, hide_index=True)
else:
    st.write("No visit of this patient has been analysed yet.")
switches = dmt_switch_activity(visits, measured, truths)
if len(switches):
    st.subheader("Activity before and after each DMT switch")
    st.dataframe(switches, hide_index=True, column_config={
        "switch_date": st.column_config.DateColumn("switch", format="YYYY-MM-DD"),
        **{c: st.column_config.NumberColumn(c.replace("_", " "), format="%.2f")
           for c in switches.columns if c.endswith(("_arr", "_per_year", "_years"))}})
    st.caption("Observed, not modelled: annualised relapse rate (relapses per patient-year, "
               "from the visits table) and new or enlarging T2 lesions per year (lesion_source: "
               "the pipeline's measurements, else the demo's ground truth) in the therapy period "
               "before vs after each switch. Short periods give unstable rates, and a switch "
               "often follows a burst of activity (regression to the mean). Research use only.")
pending = ui_helpers.pending(study.root, visits)
if pending.atrophy_note:
    st.caption(pending.atrophy_note)
if pending.any and ui_helpers.can_write(study.root):
    ui_jobs.job_button(pending.label, ui_jobs.job_key("analyse", study.root, pid),
                       f"analysing {pid}",
                       functools.partial(ui_helpers.analyse_patient, study.root, visits,
                                         user=ui_helpers.audit_user()),
                       "Analysis stopped.")
