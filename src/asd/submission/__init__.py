"""Submission stage: the DCASE result files, meta YAML, archive and its checker."""
