"""The metric a sweep optimises (``optimized_metric``): refused at start-up when it cannot be produced.

Why: Optuna (``hparams_search=optuna``) reads the value ``train()`` returns. A metric that is never
logged - a fidelity metric whose callback is off, that is not in its ``metrics`` list, or whose
weights are missing offline (FID/KID need the Inception weights) - made every trial train to the end
and then return nothing, and the sweep ended in ``ValueError: No trials are completed yet``. The
check below runs before any data or device work of the first trial; a metric it cannot vouch for
(not a ``fidelity/*`` one) is checked when the trial ends (:func:`optimized_metric_value`).
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from mammo_anogan.utils.errors import UserError

FIDELITY_PREFIX = "fidelity/"
_FIDELITY_TARGET = "FidelityCallback"


def _fidelity_block(cfg: DictConfig) -> DictConfig | None:
    callbacks = cfg.get("callbacks") or {}
    for block in callbacks.values():
        if isinstance(block, DictConfig) and str(block.get("_target_", "")).endswith(_FIDELITY_TARGET):
            return block
    return None


def check_optimized_metric(cfg: DictConfig) -> None:
    """Refuse (one line) an ``optimized_metric`` that this run's callbacks and weights cannot log."""
    name = cfg.get("optimized_metric")
    if not name or not str(name).startswith(FIDELITY_PREFIX):
        return
    name = str(name)
    metric = name[len(FIDELITY_PREFIX) :].removesuffix("_baseline")
    block = _fidelity_block(cfg)
    if block is None:
        raise UserError(
            f"optimized_metric={name} is never logged: the fidelity callback is off "
            "(enable callbacks=default, or optimise another metric)"
        )
    metrics = [str(m) for m in block.get("metrics") or []]
    if metric not in metrics:
        raise UserError(
            f"optimized_metric={name} is never logged: add {metric!r} to callbacks.fidelity.metrics "
            f"(now {metrics})"
        )
    from mammo_anogan.evaluation.fidelity import metric_unavailable_reason

    reason = metric_unavailable_reason(metric, block.get("inception_weights"), block.get("frd_image_types"))
    if reason is not None:
        raise UserError(f"optimized_metric={name} cannot be computed here: {reason}")


def optimized_metric_value(cfg: DictConfig, callback_metrics: dict[str, Any]) -> float | None:
    """The value of ``optimized_metric`` after training (``None`` when none is set).

    A metric that was never logged is a one-line :class:`UserError` (in a sweep it stops the sweep
    at its first trial); a NaN/Inf value is returned as NaN, which Optuna records as a failed trial
    (and goes on with the next one).
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = callback_metrics.get(name)
    if value is None:
        logged = ", ".join(sorted(callback_metrics)) or "none"
        raise UserError(f"optimized_metric={name} was never logged (logged: {logged}); optimise one of those")
    value = float(value)
    return value if math.isfinite(value) else math.nan
