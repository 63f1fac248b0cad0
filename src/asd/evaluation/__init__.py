"""Evaluation stage: the official metrics, Table 1 and summary tables, the report."""
