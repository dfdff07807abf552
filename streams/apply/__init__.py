"""Appliers: compare-and-set writes into the CRM and ERP (SQL builders are pure)."""
