"""Models & QC page: the shipped models (integrity, validation, training, card), the
onnxruntime provider in use, and per-visit QC flags of the study."""

from __future__ import annotations

import streamlit as st

from ms_core.clinical.trial_qc import (
    MIN_REGISTRATION_NCC,
    UNCERTAIN_PROB,
    UNCERTAIN_VOLUME_FRACTION,
)
from ms_core.foundation import state_keys
from ms_core.foundation.errors import InputError
from ms_core.study import audit
from ui import cohort as ui_cohort
from ui import helpers as ui_helpers

ui_helpers.ensure_routed()
study = ui_helpers.current_selection().study

st.title("Models & QC")
st.caption("Every model is checked against the sha256 in its folder's manifest.json and in its "
           "card before use; an altered or unregistered file is refused. MS_DASH_MODELS names "
           "a folder whose models replace the shipped ones (docs/models.md).")

infos = ui_cohort.model_infos()
if not infos:
    st.error("No model manifest found (models_onnx/manifest.json).")
for info in infos:
    st.subheader(f"{info.name} v{info.version}")
    if not info.shipped:
        st.info(f"Served from `{info.folder}` (MS_DASH_MODELS), in place of the shipped "
                f"{info.name}: segmentations made by another model show as not current.")
    if info.verified:
        st.success(f"sha256 verified: `{info.sha256}`")
    else:
        st.error(f"sha256 check failed. {info.error}")
    if info.source:
        st.markdown("  \n".join(f"**Source {k}**: {v}" for k, v in info.source))
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Family**: {info.family}  \n**Task**: {info.task}")
        st.markdown("  \n".join(f"**Training {k}**: `{v}`" for k, v in info.training))
    with right:
        if info.metrics:
            st.table({"validation metric": [m for m, _ in info.metrics],
                      "value": [v for _, v in info.metrics]}, hide_index=True)
        else:
            st.write("No validation metrics in the card.")
    if info.model_card_md:
        with st.expander(f"MODEL_CARD.md of {info.name}"):
            st.markdown(info.model_card_md)

st.subheader("Execution provider")
try:
    runtime = ui_cohort.runtime_info()
except InputError as e:
    st.error(f"The segmentation model cannot be loaded. {e}")
else:
    st.metric("Provider in use (lesion_seg, device auto)", runtime.provider)
    st.caption(f"Session providers: {', '.join(runtime.session_providers)}. Available in this "
               f"onnxruntime build: {', '.join(runtime.available)}. The tabular models "
               "(prognosis, diagnosis) always run on the CPU.")
    if runtime.cuda_unavailable:
        st.caption(f"CUDA is not used: {runtime.cuda_unavailable}.")

st.subheader(f"Per-visit QC of {study.name}")
st.markdown(
    f"- **Protocol change**: scanner or field strength differs from the previous visit "
    f"(session tables).\n"
    f"- **Registration**: normalised cross-correlation of the stored comparison with the "
    f"previous visit below {MIN_REGISTRATION_NCC:.2f}, or its image QC warnings (voxel size, "
    f"orientation, intensity profile).\n"
    f"- **Segmentation uncertainty**: more than {UNCERTAIN_VOLUME_FRACTION:.0%} of the "
    f"segmented lesion volume in lesions whose mean probability is below {UNCERTAIN_PROB:g}.\n"
    "Registration and uncertainty need the visit analysed (Timeline page); empty otherwise.")
qc, problems = ui_cohort.qc_table(study)
for problem in problems:
    st.warning(problem)
flagged = qc[qc["qc_flags"] != ""]
st.write(f"{len(flagged)} of {len(qc)} visits flagged.")
only = st.toggle("Show flagged visits only", key=state_keys.QC_FLAGGED_ONLY)
st.dataframe(flagged if only else qc, hide_index=True, column_config={
    "acq_date": st.column_config.DateColumn("date", format="YYYY-MM-DD"),
    "registration_ncc": st.column_config.NumberColumn("registration NCC", format="%.3f"),
    "lesion_volume_ml": st.column_config.NumberColumn("lesion volume (ml)", format="%.2f"),
    "uncertain_volume_fraction": st.column_config.NumberColumn("uncertain fraction",
                                                               format="%.2f"),
})

st.subheader("Audit trail")
st.caption("Who opened, segmented, compared, exported or imported what in this study, newest "
           f"first (ids only, never images or names). Log: `{audit.audit_log_path()}` "
           "(MS_DASH_AUDIT_LOG); docs/reliability.md says what it does and does not protect.")
trail = audit.read_log(study=study.root)
if trail.empty:
    st.write("Nothing recorded for this study yet.")
else:
    st.dataframe(trail.iloc[::-1].head(500), hide_index=True)
