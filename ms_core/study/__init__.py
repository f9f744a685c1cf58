"""A study on disk: the BIDS-like layout and derivatives (layout), locks, provenance text, the
audit trail and per-study access.
"""
