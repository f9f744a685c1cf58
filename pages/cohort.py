"""Cohort / trial page: per-arm end points, charts, the per-patient table and its exports."""

from __future__ import annotations

import streamlit as st

from ms_core.clinical.trial import SOURCES, arm_summary, filter_patients, km_by_arm
from ms_core.foundation import state_keys
from ms_core.services.workflow import research_notice
from ui import cohort as ui_cohort
from ui import helpers as ui_helpers

ui_helpers.ensure_routed()
study = ui_helpers.current_selection().study

st.title("Cohort / trial")
st.caption("Trial end points per arm over each patient's follow-up (first to last visit). "
           "Definitions, intervals and references: docs/cohort.md. Research use only.")

source = st.radio("Lesion and brain-volume end points from", SOURCES, horizontal=True,
                  format_func=ui_cohort.SOURCE_LABELS.__getitem__, key=state_keys.COHORT_SOURCE)
result = ui_cohort.trial_endpoints(study, source)
for problem in result.problems:
    st.warning(problem)
patients = result.patients
if patients.empty:
    st.info("No patient with visits in this study.")
    st.stop()

filters = {}
for col, (column, label, key) in zip(st.columns(3), (
        ("trial_arm", "Arm", state_keys.COHORT_ARMS),
        ("ms_type", "MS type", state_keys.COHORT_MS_TYPES),
        ("sex", "Sex", state_keys.COHORT_SEXES)), strict=True):
    options = sorted(patients[column].unique())
    ui_cohort.valid_choices(key, options)
    filters[column] = col.multiselect(label, options, key=key)
shown = filter_patients(patients, arms=filters["trial_arm"], ms_types=filters["ms_type"],
                        sexes=filters["sex"])
if shown.empty:
    st.info("No patient matches these filters.")
    st.stop()

summary = arm_summary(shown)
st.subheader(f"Per arm ({len(shown)} of {len(patients)} patients)")
st.dataframe(ui_cohort.summary_display(summary), hide_index=True)
st.markdown("**Where the numbers come from**\n" + ui_cohort.source_note(shown))

colours = ui_cohort.arm_colours(sorted(patients["trial_arm"].unique()))
left, right = st.columns(2)
left.plotly_chart(ui_cohort.lesion_rate_figure(summary, colours))
right.plotly_chart(ui_cohort.neda_figure(summary, colours))
left.plotly_chart(ui_cohort.pbvc_figure(shown, colours))
right.plotly_chart(ui_cohort.km_figure(km_by_arm(shown), colours))
st.caption("Bars: 95 % exact Poisson (lesion rate) and Wilson (NEDA-3) intervals. KM bands: "
           "95 % log-log intervals from Greenwood's variance; ticks mark censored patients. "
           "CDW: 24-week confirmed worsening from the first visit's EDSS.")

st.subheader("Patients")
st.caption("Select a row to open that patient on the Patient page.")
event = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row",
                     key=state_keys.COHORT_TABLE, column_config=ui_cohort.patient_table_config())
rows = [r for r in event.selection.rows if r < len(shown)]
if rows:
    pid = str(shown.iloc[rows[0]]["participant_id"])
    if st.button(f"Open {pid} on the Patient page", type="primary",
                 on_click=ui_cohort.open_patient, args=(pid,)):
        st.switch_page("pages/patient.py")

provenance = ui_cohort.export_provenance(study, source, filters)
csv, parquet, sidecar = ui_cohort.export_files(shown, provenance)
stem = f"{study.name}_trial_patients"
for col, (label, data, name, mime) in zip(st.columns(3), (
        ("Download CSV", csv, f"{stem}.csv", "text/csv"),
        ("Download Parquet", parquet, f"{stem}.parquet", "application/vnd.apache.parquet"),
        ("Download provenance (JSON)", sidecar, f"{stem}.provenance.json", "application/json")),
        strict=True):
    col.download_button(label, data=data, file_name=name, mime=mime,
                        on_click=ui_helpers.audit_event,
                        args=("exported", study.root, None, None, f"cohort table: {name}"))

st.subheader("Batch cohort table (one row per visit)")
batch = ui_cohort.batch_table(study.root)
if batch is None:
    st.write("No batch run stored yet. `python -m ms_core batch STUDY` segments, compares, "
             "measures atrophy and scores every visit, and writes this table.")
else:
    table, report = batch
    st.caption(f"From `{report.get('outputs', ['?'])[0]}`, made {report.get('created_utc')} "
               f"by ms_core {report.get('app_version')} ({report.get('patients')} patients, "
               f"{len(report.get('failures', []))} failed step(s)). Risk: the prognosis model's "
               "probability of confirmed worsening within 2 years (research only).")
    st.caption(research_notice("prognosis"))  # the batch scores with the shipped model
    st.dataframe(table, hide_index=True)
    for failure in report.get("failures", []):
        st.warning(f"{failure['participant_id']} {failure['stage']} {failure['visit']}: "
                   f"{failure['error']}")
