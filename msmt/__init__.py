"""msmt: the daily retraining pipeline for multi-scenario, multi-task ranking models."""

__version__ = "0.1.0"
