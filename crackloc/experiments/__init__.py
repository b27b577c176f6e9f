"""Experiments: every method × seed on one split (runner), aggregation with paired t-tests, reports."""
