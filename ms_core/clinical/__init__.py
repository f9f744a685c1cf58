"""Clinical models: patient features, EDSS-worsening prognosis and its fitting, diagnosis support,
differential diagnosis, trial statistics.
"""
