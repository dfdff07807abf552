"""Identity resolution: matching (pure) and the cross-reference."""
