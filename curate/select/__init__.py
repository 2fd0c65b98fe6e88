"""Select: rules and selectors over a store's scores, in DuckDB, into a selection's manifest."""
