"""Request records and the pure functions that summarise them (METRICS.md)."""
