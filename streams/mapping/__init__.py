"""Mapping profiles and pure field conversions (no Kafka or database imports)."""
