"""Training of the diagnosis-support pattern classifier (synthetic data; see docs/diagnosis.md)."""
