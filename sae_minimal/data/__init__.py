"""Data for SAEs: synthetic activations with a known ground truth (``synthetic``)."""

from .synthetic import SyntheticData, make_synthetic, magnitude_ratio, recovery

__all__ = ["SyntheticData", "make_synthetic", "magnitude_ratio", "recovery"]
