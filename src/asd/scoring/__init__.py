"""Scoring stage: memory banks, KNN and the other scorers, per-machine score jobs, ensembles, decisions."""
