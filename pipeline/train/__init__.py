"""Training entry points (detector)."""
