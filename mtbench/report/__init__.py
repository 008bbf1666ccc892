"""Results: per-run files (``runs``) and the comparison tables (``table``)."""
