"""Audit: a selection's catalogue (DuckDB views), its HTML report, and diffs between selections."""
