"""Reconciliation: survivorship, conflicts, echo suppression (pure core)."""
