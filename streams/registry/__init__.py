"""Confluent-API-compatible schema registry (embedded default)."""
