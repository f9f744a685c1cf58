"""EDSS-worsening prognosis: the shipped model's training driver and the real-data sanity check."""
