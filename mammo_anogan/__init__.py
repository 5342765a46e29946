"""mammo_anogan: learn what normal mammograms look like (StyleGAN2) and flag cancer as an anomaly (AnoGAN)."""

import os as _os

# albumentations checks PyPI for a newer release at import (a network call, and a warning on every run
# offline): medical-imaging machines are often offline and tests must not touch the network.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
