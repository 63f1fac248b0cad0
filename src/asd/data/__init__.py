"""Data stage: DCASE layout and WAV loading, the demo dataset, downloads, the HDF5 feature cache, ground truth."""
