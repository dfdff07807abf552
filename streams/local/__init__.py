"""The embedded stack: local PostgreSQL, broker, registry and process supervision."""
