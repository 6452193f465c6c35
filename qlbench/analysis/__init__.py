"""Analyses over the aggregated tables (polars only, never a model)."""
