"""Keyrings: the model, the two secret formats, the sources and the per-process cache."""
