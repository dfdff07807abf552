"""Document flows: orders and their lines, rollups and canonical documents, configured in YAML."""
