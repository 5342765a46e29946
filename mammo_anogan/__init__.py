"""mammo_anogan: learn what normal mammograms look like (StyleGAN2) and flag cancer as an anomaly (AnoGAN)."""

__version__ = "0.1.0"
