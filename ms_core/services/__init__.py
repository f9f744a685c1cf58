"""What the CLI and the app call: batch runs, reports, viewer data, the per-visit workflow,
importing, registering a model, the CLI.
"""
