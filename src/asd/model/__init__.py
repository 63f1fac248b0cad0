"""Model stage: the BEATs backbone, LoRA + pooling + ArcFace, training, per-epoch embeddings, the demo backbone's pre-training."""
