"""Change between visits: lesion tracking, atrophy (PBVC and tissue volumes), the timeline,
clinical outcomes and measurement error.
"""
