"""Change-detection network for two visits (issue 35): synthetic pairs, training, export."""
