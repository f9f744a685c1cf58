"""Prognosis page: risk of confirmed disability worsening within 2 years, and why."""

from __future__ import annotations

import streamlit as st

from ms_core.clinical.prognosis import score
from ms_core.foundation import state_keys
from ms_core.foundation.errors import InputError
from ms_core.lesions.features import LOCATION_FEATURES
from ms_core.services.workflow import research_notice
from ui import helpers as ui_helpers
from ui import prognosis as ui_prognosis

ui_helpers.ensure_routed()
selection = ui_helpers.current_selection()
study, pid, visit, visits = (selection.study, selection.participant_id, selection.visit,
                             selection.visits)

st.title(f"Prognosis of {pid}")
st.caption("Research decision support, not a diagnosis or a treatment recommendation. "
           "Trained on a synthetic cohort (docs/prognosis.md); not validated on real patients.")
if visit is None:
    st.info(f"{pid} has no visits to score.")
    st.stop()
try:
    model = ui_prognosis.prognosis_model()
except InputError as e:
    st.error(f"The prognosis model cannot be used. {e}")
    st.stop()

table = ui_prognosis.feature_table(study.root, study.participants[pid], visits)
row = table.set_index("session_id").loc[visit.session_id]
features = {f: (None if row[f] != row[f] else float(row[f])) for f in model.card["input"]
            ["features"]}
result = score(model, features)

st.subheader(f"Visit {visit.label}")
prob_col, int_col, thr_col = st.columns(3)
prob_col.metric("Probability of confirmed worsening within 2 years", f"{result.prob:.0%}")
lo, hi = result.interval
int_col.metric("Observed in similar test patients", f"{lo:.0%} – {hi:.0%}",
               help="Wilson 95 % interval of the worsening rate among held-out test patients "
                    "whose predicted risk fell in the same tenth (calibration bin).")
thr_col.metric("High-risk threshold", f"{result.threshold:.0%}",
               help="Youden's J on the training out-of-fold predictions (docs/prognosis.md).")
thr_col.caption("This patient is **above** the threshold." if result.prob >= result.threshold
                else "This patient is below the threshold.")
st.caption(research_notice("prognosis", models_dir=ui_prognosis.models_dir()))
if int(row["mri_measured"]) == 0:
    st.warning("No MRI measurement of this patient is stored yet: lesion and brain-volume "
               "inputs are imputed with the training medians. Run \"Analyse this patient\" on "
               "the Timeline page first.")

left, right = st.columns([3, 2], gap="medium")
with left:
    st.plotly_chart(ui_prognosis.waterfall_figure(result))
    st.caption("SHAP values (TreeSHAP or exact linear SHAP) in calibrated log-odds; they add up "
               "to this patient's score. Imputed inputs are marked.")
with right:
    st.plotly_chart(ui_prognosis.calibration_figure(model, result.prob))
    card = model.card
    st.caption(f"Model {card['name']} v{card['version']} ({card['family']}, Platt-calibrated; "
               f"sha256 {model.verified.sha256[:12]}…) on {model.provider}. Held-out AUC "
               f"{card['metrics']['test']['auc']:.2f}, ECE {card['metrics']['test']['ece']:.3f}.")

located = [loc for loc in LOCATION_FEATURES
           if row.get(f"{loc}_count", 0) == row.get(f"{loc}_count", 0)
           and row.get(f"{loc}_count", 0) > 0]
if located:
    st.markdown("**Lesions behind the location features**")
    for col, loc in zip(st.columns(len(located)), located, strict=True):
        if col.button(f"Show {int(row[f'{loc}_count'])} {loc.replace('_', ' ')} lesion(s)",
                      key=f"show-{loc}"):
            st.session_state[state_keys.LESION_LOCATION] = loc
            st.switch_page("pages/patient.py")

st.subheader("What if")
st.caption("Change the modifiable inputs to see how the model's estimate moves. This shows the "
           "model's associations, not the effect of a treatment decision.")
what_if = dict(features)
cols = st.columns(len(ui_prognosis.WHAT_IF))
for col, (name, (label, lo_v, hi_v, step)) in zip(cols, ui_prognosis.WHAT_IF.items(),
                                                   strict=True):
    current = features.get(name)
    start = min(max(current if current is not None else float(model.medians[
        model.card["input"]["features"].index(name)]), lo_v), hi_v)
    what_if[name] = col.slider(label, lo_v, hi_v, float(start), step,
                               key=f"{state_keys.WHAT_IF_PREFIX}{name}")
changed = score(model, what_if)
st.metric("Probability with these inputs", f"{changed.prob:.0%}",
          f"{(changed.prob - result.prob) * 100:+.1f} points")

with st.expander("Inputs of this visit"):
    st.dataframe(result.table()[["label", "value", "imputed", "shap"]], hide_index=True)

# CIS conversion and treatment response (ms_core.clinical.clinical_models), where they apply.
clinical = ui_prognosis.applicable_clinical_models(study.participants[pid], visit)
if clinical:
    st.header("Other clinical models")
    tabs = st.tabs([ui_prognosis.CLINICAL_TITLES[n] for n in clinical])
    for tab, name in zip(tabs, clinical, strict=True):
        with tab:
            ui_prognosis.show_clinical_model(name, study.root, study.participants[pid], visits,
                                             visit, row.to_dict())
