"""Inference: loading a model (EMA params), sampling in every mode, the export format and the
files and gallery sampling writes. Imports nothing from training."""
