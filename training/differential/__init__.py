"""Training of the three-class differential model (synthetic data; see docs/differential.md)."""
