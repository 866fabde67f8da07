"""Reports: per-run figures, study tables and plots."""
