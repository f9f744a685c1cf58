"""Patient page: the selected visit's images with the lesion overlay, summary and lesions."""

from __future__ import annotations

import streamlit as st
from niivue_component import niivue_viewer

import ui_helpers
import ui_prognosis
from ms_core import state_keys
from ms_core.diagnosis import score_lesion_table
from ms_core.differential import (
    CLASS_LABELS,
    cached_differential_model,
    score_differential_table,
)
from ms_core.errors import InputError
from ms_core.features import age_years
from ms_core.measurements import mcdonald_checklist
from ms_core.settings import read_only
from ms_core.visits import lesion_totals, overlay_caption, summarize_visit
from ms_core.workflow import research_notice

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
files, geometries, problems = ui_helpers.check_images(study.root, visit)
for message in problems.values():
    st.error(message)

viewer_col, summary_col = st.columns([3, 2], gap="medium")
with viewer_col:
    modality = st.radio("Image", ui_helpers.VIEW_MODALITIES, horizontal=True,
                        key=state_keys.VIEW_MODALITY)
    try:
        overlay = ui_helpers.lesion_overlay(study.root, visit)
    except InputError as e:
        st.error(f"Lesion overlay not shown. {e}")
        overlay = None
    segmentation = ui_helpers.segmentation_result(study.root, visit)
    prob = ui_helpers.probability_overlay(study.root, visit) if segmentation else None
    previous = ui_helpers.previous_visit(selection.visits, visit)
    tracking = (ui_helpers.tracking_result(study.root, previous, visit)
                if previous is not None else None)
    changes = (ui_helpers.change_overlay(study.root, previous, visit)
               if previous is not None and tracking else None)
    location = st.session_state.get(state_keys.LESION_LOCATION)
    location_ids = (segmentation[1].lesion_id[segmentation[1].location == location].tolist()
                    if location and segmentation and "location" in segmentation[1] else None)
    show_changes = changes is not None and st.toggle(
        "Show lesion changes since the previous visit", key=state_keys.SHOW_CHANGES)
    show_prob = (not show_changes and prob is not None
                 and st.toggle("Show the lesion probability map",
                               key=state_keys.SHOW_PROBABILITY))
    if show_changes:
        layers = [{"data": changes, "name": "change_mask.nii.gz", "colormap": "warm",
                   "opacity": 0.8}]
    elif show_prob:
        layers = [{"data": prob, "name": "lesion_prob.nii.gz", "colormap": "warm",
                   "opacity": 0.6}]
    elif location_ids is not None:
        subset = ui_prognosis.location_overlay(study.root, visit, location_ids)
        layers = [{"data": subset, "name": "lesions_location.nii.gz", "colormap": "green",
                   "opacity": 0.8}] if subset else []
    else:
        layers = [{"data": overlay.data, "name": "lesions.nii.gz", "colormap": "red",
                   "opacity": 0.7}] if overlay else []
    if geometries.get(modality) is not None:
        path = files[modality]
        niivue_viewer(
            nifti_data=ui_helpers.image_file_bytes(path), filename=path.name,
            overlays=layers or None,
            height=560, view_mode="multiplanar", update_interval_ms=None,
            key=f"{state_keys.PATIENT_VIEWER}-{pid}-{visit.session_id}-{modality}",
        )
        st.caption("Changes: bright = new or enlarging lesion tissue, dark red = shrinking or "
                   "disappeared." if show_changes else
                   f"Green: the network's {location.replace('_', ' ')} lesions."
                   if location_ids is not None else
                   overlay_caption(overlay.source, overlay.path) if overlay
                   else "No lesion mask for this visit.")
    elif modality in problems:
        st.info(f"The {modality} image cannot be shown: see the error above.")
    else:
        st.info(f"This visit has no {modality} image.")

with summary_col:
    st.subheader("Visit summary")
    st.table(summarize_visit(visit, geometries).as_frame(), hide_index=True, hide_header=True)

st.subheader("Lesion segmentation (network)")
if segmentation is None:
    st.write("This visit has not been segmented with the current model and settings.")
    if "FLAIR" in visit.images and not read_only() and st.button("Segment this visit"):
        ui_helpers.run_and_refresh(lambda: ui_helpers.run_segmentation(study.root, visit),
                                   "Segmentation failed.")
else:
    prov, seg_table = segmentation
    model = prov.get("model") or {}
    st.caption(f"Model {model.get('name')} v{model.get('version')} "
               f"(sha256 {str(model.get('sha256'))[:12]}…) on {prov['provider']}, "
               f"threshold {prov['parameters']['threshold']}, made {prov['created_utc']}. "
               + research_notice("lesion_seg"))
    n_col, v_col = st.columns(2)
    n_col.metric("Lesions found", len(seg_table))
    v_col.metric("Lesion volume", f"{seg_table['volume_ml'].sum():.2f} ml")
    if location_ids is not None:
        note, clear = st.columns([4, 1])
        note.info(f"Showing the {location.replace('_', ' ')} lesions (from the Prognosis page).")
        if clear.button("Show all lesions"):
            st.session_state[state_keys.LESION_LOCATION] = None
            st.rerun()
        shown = seg_table[seg_table["location"] == location]
    else:
        shown = seg_table
    st.dataframe(shown, hide_index=True, column_config=ui_helpers.lesion_table_config())
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
        if "FLAIR" in visit.images and "FLAIR" in previous.images and not read_only() \
                and st.button(
                f"Compare with {previous.session_id}"):
            ui_helpers.run_and_refresh(
                lambda: ui_helpers.run_tracking(study.root, previous, visit),
                "Comparison failed.")
    else:
        track_prov, change_table = tracking
        counts = change_table.status.value_counts()
        for col, status in zip(st.columns(4), ("new", "enlarging", "shrinking", "disappeared"),
                               strict=True):
            col.metric(status.capitalize(), int(counts.get(status, 0)))
        for warning in track_prov["qc"]["protocol_warnings"]:
            st.warning(f"Protocol QC: {warning}. Changes may be inflated.")
        st.caption(f"Rigid registration QC (normalised cross-correlation) "
                   f"{track_prov['registration']['ncc']:.3f}; method "
                   f"{track_prov['parameters']['method']}; made {track_prov['created_utc']}.")
        st.dataframe(change_table, hide_index=True, column_config=ui_helpers.lesion_table_config())

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
