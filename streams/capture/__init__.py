"""Debezium capture: embedded engine -> Avro topics."""
