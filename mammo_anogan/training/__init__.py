"""Training monitors: kimg progress and stopping, throughput, sample grids, fidelity, best checkpoint."""

from mammo_anogan.training.callbacks import (
    FidelityCallback,
    FidelityCheckpoint,
    KimgProgressBar,
    KimgStopping,
    SampleGridCallback,
    ThroughputMonitor,
)

__all__ = [
    "FidelityCallback",
    "FidelityCheckpoint",
    "KimgProgressBar",
    "KimgStopping",
    "SampleGridCallback",
    "ThroughputMonitor",
]
