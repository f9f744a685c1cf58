"""How it works page: the pipeline and how the tasks build on each other, with each step's code,
model and last validation figure (read from the model cards and bench/results when shown)."""

from __future__ import annotations

import streamlit as st

from ms_core.services.workflow import (
    NOT_MEASURED,
    RESEARCH_NOTICE,
    steps_by_doc,
    task_graph,
    to_dot,
    workflow_graph,
)
from ui import helpers as ui_helpers

ui_helpers.ensure_routed()

st.title("How it works")
st.caption(f"{RESEARCH_NOTICE} Each box names the code (paths in the repository), the model it "
           "runs and its last validation figure, read now from `models_onnx/*/model.json` and "
           f"`bench/results/*.json`; \"{NOT_MEASURED}\" means no result was found.")

graphs = (workflow_graph(ui_helpers.REPO_ROOT), task_graph(ui_helpers.REPO_ROOT))
for graph in graphs:
    st.subheader(graph.title)
    st.graphviz_chart(to_dot(graph))
    with st.expander(f"{graph.title}: the steps as a table"):
        st.dataframe(graph.rows(), hide_index=True)

st.subheader("Documentation")
docs = steps_by_doc(*graphs)
st.markdown("\n".join(f"- `{doc}`: {'; '.join(labels)}" for doc, labels in docs.items()))
st.page_link("pages/models.py", label="Model cards, versions and checksums: Models & QC",
             icon=":material/description:")
