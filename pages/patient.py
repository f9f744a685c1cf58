"""Patient page: the selected visit's images with the lesion overlay, summary and lesions."""

from __future__ import annotations

import functools

import streamlit as st

from ms_core.clinical.diagnosis import score_lesion_table
from ms_core.clinical.differential import (
    CLASS_LABELS,
    cached_differential_model,
    score_differential_table,
)
from ms_core.foundation import state_keys
from ms_core.foundation.errors import InputError
from ms_core.lesions.features import age_years
from ms_core.lesions.visits import lesion_totals, summarize_visit
from ms_core.longitudinal.measurements import mcdonald_checklist, plausible_volume_ml
from ms_core.longitudinal.tracking import intensity_led_count
from ms_core.segmentation.model_store import volume_ratio_range
from ms_core.services.workflow import research_notice
from ui import figures as ui_figures
from ui import helpers as ui_helpers
from ui import jobs as ui_jobs
from ui import prognosis as ui_prognosis
from ui import viewer as ui_viewer

ui_helpers.ensure_routed()
selection = ui_helpers.current_selection()
study, pid, visit = selection.study, selection.participant_id, selection.visit

st.title(f"Patient {pid}")
for issue in study.issues_for(pid):
    st.warning(str(issue))
if visit is None:
    st.info(f"{pid} has no visits to show.")
    st.stop()

st.subheader(f"Visit {visit.label}")
ui_helpers.audit_opened(study.root, pid, visit.session_id)
files, geometries, problems = ui_helpers.check_images(study.root, visit)
for message in problems.values():
    st.error(message)

segmentation = ui_helpers.segmentation_result(study.root, visit)
previous = ui_helpers.previous_visit(selection.visits, visit)
tracking = (ui_helpers.tracking_result(study.root, previous, visit)
            if previous is not None else None)
location = st.session_state.get(state_keys.LESION_LOCATION)
viewer_col, summary_col = st.columns([3, 2], gap="medium")
with viewer_col:
    viewer = ui_viewer.patient_viewer(study.root, visit, previous, files, geometries, problems,
                                      segmentation=segmentation, tracking=tracking,
                                      location=location)

with summary_col:
    st.subheader("Visit summary")
    st.table(summarize_visit(visit, geometries).as_frame(), hide_index=True, hide_header=True)

st.subheader("Lesion segmentation (network)")
if segmentation is None:
    st.write("This visit has not been segmented with the current model and settings.")
    other = ui_helpers.segmentation_by_other_model(study.root, visit)
    if other:
        st.warning(other)
    if "FLAIR" in visit.images and ui_helpers.can_write(study.root):
        ui_jobs.job_button(
            "Segment this visit", ui_jobs.job_key("segment", study.root, pid, visit.session_id),
            f"segmenting {pid} {visit.session_id}",
            functools.partial(ui_helpers.run_segmentation, study.root, visit,
                              user=ui_helpers.audit_user()),
            "Segmentation failed.")
else:
    prov, seg_table = segmentation
    model = prov.get("model") or {}
    st.caption(f"Model {model.get('name')} v{model.get('version')} "
               f"(sha256 {str(model.get('sha256'))[:12]}…) on {prov['provider']}, "
               f"threshold {prov['parameters']['threshold']}, made {prov['created_utc']}. "
               + research_notice("lesion_seg"))
    live = viewer.preview.table if viewer.preview is not None else seg_table
    n_col, v_col = st.columns(2)
    n_col.metric("Lesions found", len(live))
    total_ml = float(live["volume_ml"].sum())
    span = plausible_volume_ml(total_ml, volume_ratio_range())
    v_col.metric("Lesion volume", f"{total_ml:.2f} ml",
                 help="Plausible range: the volume divided by the highest and the lowest "
                      "predicted / true lesion volume of this model on the real validation "
                      "scans (model card)." if span else None)
    if span is not None:
        v_col.caption(f"plausible {span[0]:.1f}–{span[1]:.1f} ml")
    for warning in (prov.get("qc") or {}).get("header_warnings", []):
        st.warning(f"Image header QC: {warning}.")
    stored_t = prov["parameters"]["threshold"]
    stored_m = prov["parameters"].get("min_lesion_mm3", 0.0)
    shown_at = ((viewer.preview.threshold, viewer.preview.min_lesion_mm3)
                if viewer.preview is not None else (stored_t, stored_m))
    if shown_at != (stored_t, stored_m):
        st.info(f"Preview at threshold {shown_at[0]:g} and at least {shown_at[1]:g} mm³ "
                f"(stored segmentation: {stored_t:g}, {stored_m:g} mm³, {len(seg_table)} "
                "lesions). The McDonald checklist, scores, comparisons and timeline below use "
                "the stored segmentation.")
    if location:
        note, clear = st.columns([4, 1])
        note.info(f"Showing the {location.replace('_', ' ')} lesions (from the Prognosis page).")
        if clear.button("Show all lesions"):
            st.session_state[state_keys.LESION_LOCATION] = None
            st.rerun()
    shown = ui_viewer.shown_lesions(live, location)
    chosen = viewer.selection.lesion
    if chosen is not None and chosen in set(shown["lesion_id"]):
        row = shown[shown["lesion_id"] == chosen].iloc[0]
        st.markdown(f"**Selected lesion {chosen}**: {row['volume_ml']:.3f} ml, "
                    f"{str(row['location']).replace('_', ' ')}, mean probability "
                    f"{row['mean_prob']:.2f}.")
    st.dataframe(ui_viewer.highlight_selected(shown, chosen), hide_index=True,
                 column_config=ui_figures.lesion_table_config(), on_select="rerun",
                 selection_mode="single-row", key=ui_viewer.table_key(pid, visit.session_id))
    if "location" in seg_table.columns:
        st.subheader("McDonald 2017: MRI criteria")
        checklist = mcdonald_checklist(seg_table, tracking[1] if tracking else None,
                                       has_followup=previous is not None)
        st.dataframe(checklist.rows, hide_index=True)
        with st.expander("What this checklist can and cannot say"):
            for note in checklist.notes:
                st.markdown(f"- {note}")
        st.subheader("Lesion pattern (research decision support)")
        try:
            pattern = score_lesion_table(
                ui_prognosis.diagnosis_model(), seg_table,
                age_years=age_years(study.participants[pid], visit.acq_date))
        except (InputError, ValueError) as e:
            st.error(f"Lesion-pattern score not available. {e}")
        else:
            st.metric("Pattern typical of MS (vs small-vessel / migraine-like)",
                      f"{pattern.prob_ms_pattern:.0%}", pattern.pattern, delta_color="off")
            st.caption(pattern.limits)
            st.caption(research_notice("diagnosis"))
        st.subheader("Differential (research)")
        try:
            diff = score_differential_table(
                cached_differential_model(), seg_table,
                age_years=age_years(study.participants[pid], visit.acq_date))
        except (InputError, ValueError) as e:
            st.info(f"Differential not available. {e}")
        else:
            for col, (name, p) in zip(st.columns(3), diff.by_class().items(), strict=True):
                col.metric(name, f"{p:.0%}")
            st.caption(f"Largest contributions to {CLASS_LABELS[diff.most_likely]} (SHAP, "
                       "centred calibrated log-odds; positive favours it):")
            st.dataframe(diff.top_contributions(5), hide_index=True)
            st.caption(f"{diff.limits} {research_notice('differential')}")

if previous is not None:
    st.subheader(f"Changes since {previous.label}")
    if tracking is None:
        st.write("These two visits have not been compared yet (registration, lesion matching; "
                 "stored segmentations are reused).")
        if ("FLAIR" in visit.images and "FLAIR" in previous.images
                and ui_helpers.can_write(study.root)):
            ui_jobs.job_button(
                f"Compare with {previous.session_id}",
                ui_jobs.job_key("compare", study.root, pid, previous.session_id,
                                visit.session_id),
                f"comparing {pid} {visit.session_id} with {previous.session_id}",
                functools.partial(ui_helpers.run_tracking, study.root, previous, visit,
                                  user=ui_helpers.audit_user()),
                "Comparison failed.")
    else:
        track_prov, change_table = tracking
        counts = change_table.status.value_counts()
        for col, status in zip(st.columns(4), ("new", "enlarging", "shrinking", "disappeared"),
                               strict=True):
            col.metric(status.capitalize(), int(counts.get(status, 0)))
        for warning in track_prov["qc"]["protocol_warnings"]:
            st.warning(f"Protocol QC: {warning}. Changes may be inflated.")
        led = intensity_led_count(change_table)
        if led:
            st.info(f"{led} new lesion{'s' if led > 1 else ''} with evidence \"intensity change\": "
                    "seen on the registered FLAIR subtraction but in neither visit's "
                    "segmentation (low confidence). Check on the scans.")
        st.caption(f"Rigid registration QC (normalised cross-correlation) "
                   f"{track_prov['registration']['ncc']:.3f}; method "
                   f"{track_prov['parameters']['method']}; made {track_prov['created_utc']}.")
        st.dataframe(change_table, hide_index=True, column_config=ui_figures.lesion_table_config())

try:
    lesions = ui_helpers.visit_lesions(study.root, visit)
except InputError as e:
    st.error(f"Ground truth not shown. {e}")
    lesions = None
if lesions is not None:
    st.subheader("Ground-truth lesions (synthetic study)")
    totals = lesion_totals(lesions)
    count_col, volume_col, active_col = st.columns(3)
    count_col.metric("Lesions", totals.n_lesions)
    volume_col.metric("Total lesion volume", f"{totals.volume_ml:.2f} ml")
    active_col.metric("New or enlarging", totals.n_new_or_enlarging)
    st.dataframe(lesions, hide_index=True, column_config={
        "volume_ml": st.column_config.NumberColumn("volume (ml)", format="%.3f")})
