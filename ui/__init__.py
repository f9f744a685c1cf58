"""The Streamlit glue shared by app.py and pages/: routing, caching and selection (helpers),
figures, the viewer, cohort tables, prognosis panels and background jobs."""
