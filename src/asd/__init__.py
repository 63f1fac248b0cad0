"""First-shot anomalous sound detection (DCASE 2025 Task 2): BEATs + LoRA + ArcFace + KNN."""

__version__ = "0.1.0"
