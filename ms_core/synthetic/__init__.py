"""Synthetic data: phantom visits (synth), the demo study and the synthetic prognosis cohort.
"""
