"""Builders of the demo data under data/samples (deterministic, authored here, no public data set)."""
