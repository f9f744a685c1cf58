"""Shared by every stage: domain constants, errors, settings, Streamlit-free state keys, NIfTI/JSON
input and output, background jobs.
"""
