"""Image-level classification metrics for anomaly scores: Youden threshold, confusion metrics, bootstrap CIs.

Conventions (shared by every function here):

* ``labels`` are 0 (normal) / 1 (abnormal); ``scores`` are higher for "more abnormal".
* An image is predicted abnormal when ``score >= threshold`` (the convention of
  ``sklearn.metrics.roc_curve``, so a threshold read off the ROC reproduces its operating point).
* A ratio whose denominator is zero (e.g. PPV when nothing is predicted positive) is ``NaN``, not 0
  or 1: an undefined value must not look like a measured one. AUC is ``NaN`` when only one class is present.

The seed paper chose the Youden threshold on the test set itself (``evaluate_scores`` with
``threshold=None``), which is optimistic; ``evaluate_protocol`` fits it on validation instead and
reports the in-sample numbers beside it, clearly labelled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from mammo_anogan.utils.errors import UserError

#: ``score.comparison``: which labels are the negative (0) and positive (1) class; others are left out.
COMPARISONS = {
    "abnormal_vs_normal": {"normal": 0, "benign": 1, "malignant": 1},
    "malignant_vs_normal": {"normal": 0, "malignant": 1},
}

ArrayLike = Sequence[float] | np.ndarray | Any  # also torch tensors (converted with .detach().cpu())

#: Metrics that get a bootstrap confidence interval (``<name>_ci_low`` / ``<name>_ci_high``).
CI_METRICS: tuple[str, ...] = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")


# --------------------------------------------------------------------------------------------- inputs
def _to_numpy(values: ArrayLike) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def validate_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels int64, scores float64)`` as 1-D arrays, or raise a one-line :class:`UserError`.

    Checked here once so that every metric fails with the same clear message instead of an sklearn
    traceback deep inside a bootstrap.
    """
    y = _to_numpy(labels).reshape(-1)
    s = _to_numpy(scores).reshape(-1)
    if y.size == 0:
        raise UserError("cannot evaluate an empty set of scores")
    if y.size != s.size:
        raise UserError(f"labels and scores differ in length: {y.size} labels, {s.size} scores")
    try:
        s = s.astype(np.float64)
        y_float = y.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"labels and scores must be numeric: {err}".splitlines()[0]) from err
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise UserError(f"{bad} anomaly score(s) are NaN or infinite; fix or drop those images first")
    if not np.all((y_float == 0) | (y_float == 1)):
        found = sorted({float(v) for v in np.unique(y_float)})[:6]
        raise UserError(f"labels must be 0 (normal) or 1 (abnormal); found values {found}")
    return y_float.astype(np.int64), s


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    """Elementwise ``numerator / denominator`` with NaN where the denominator is zero (no warning)."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _confusion_metrics(
    tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray
) -> dict[str, np.ndarray]:
    """The seed paper's equations 2-6, vectorised over any array shape."""
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def _youden_key(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """An exact integer ranking of ROC points: largest J first, then highest specificity.

    ``J * n_pos * n_neg = tp * n_neg - fp * n_pos`` is an integer, so comparing it avoids float ties;
    multiplying by ``n_neg + 1`` and adding ``n_neg - fp`` breaks equal J towards fewer false positives.
    Two ROC points with the same key have the same (tp, fp), i.e. the same confusion matrix.
    """
    tp = np.asarray(tp, dtype=np.int64)
    fp = np.asarray(fp, dtype=np.int64)
    j_scaled = tp * n_neg - fp * n_pos
    return j_scaled * (n_neg + 1) + (n_neg - fp)


# --------------------------------------------------------------------------------------------- point metrics
def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1 over the ROC.

    Candidates are the finite thresholds of ``roc_curve(..., drop_intermediate=False)``, i.e. the
    observed scores (its first threshold, ``+inf``, predicts nothing positive and is skipped). Ties are
    broken deterministically: the largest J, then the highest specificity; such a point is unique on
    the ROC. The returned value is an observed score, so ``score >= threshold`` reproduces the point.
    """
    y, s = validate_inputs(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        present = "abnormal" if n_neg == 0 else "normal"
        raise UserError(f"Youden threshold needs both normal and abnormal images; only {present} ones given")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    tp = np.rint(tpr[finite] * n_pos)
    fp = np.rint(fpr[finite] * n_neg)
    best = int(np.argmax(_youden_key(tp, fp, n_pos, n_neg)))
    return float(thresholds[finite][best])


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float | int]:
    """AUC and the confusion metrics at ``threshold`` (positive when ``score >= threshold``).

    Returns ``auc, accuracy, sensitivity, specificity, ppv, npv, threshold, tp, fp, tn, fn``; a ratio
    with a zero denominator is NaN, and AUC is NaN when only one class is present.
    """
    y, s = validate_inputs(labels, scores)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise UserError("the decision threshold is NaN")
    predicted = s >= threshold
    positive = y == 1
    tp = int(np.count_nonzero(predicted & positive))
    fp = int(np.count_nonzero(predicted & ~positive))
    fn = int(np.count_nonzero(~predicted & positive))
    tn = int(np.count_nonzero(~predicted & ~positive))
    auc = float(roc_auc_score(y, s)) if 0 < tp + fn < y.size else float("nan")
    ratios = _confusion_metrics(np.array(tp), np.array(fp), np.array(tn), np.array(fn))
    return {
        "auc": auc,
        **{name: float(value) for name, value in ratios.items()},
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# --------------------------------------------------------------------------------------------- bootstrap
def stratified_bootstrap_indices(labels: ArrayLike, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """Indices ``[n_bootstrap, n]`` into the data: each row resamples every class within itself.

    Columns hold the abnormal draws first, then the normal ones, so every resample keeps the class
    counts of the data (and always has both classes when the data has). All draws are made at once.
    """
    y = _to_numpy(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    parts = []
    for members in (np.flatnonzero(y == 1), np.flatnonzero(y != 1)):  # two classes, not a per-sample loop
        if members.size:
            parts.append(members[rng.integers(0, members.size, size=(n_bootstrap, members.size))])
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_bootstrap, 0), dtype=np.int64)


def _bin_counts(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Counts ``[n_bootstrap, n_bins]`` of each row's bin indices, with one ``bincount`` for all rows."""
    n_rows = bins.shape[0]
    offsets = (np.arange(n_rows, dtype=np.int64) * n_bins)[:, None]
    return np.bincount((bins + offsets).ravel(), minlength=n_rows * n_bins).reshape(n_rows, n_bins)


def bootstrap_distribution(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float | None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-resample metrics ``{name: [n_bootstrap]}`` from a stratified bootstrap.

    The resamples are the rows of :func:`stratified_bootstrap_indices` (``n_pos`` abnormal and ``n_neg``
    normal images drawn with replacement within their class). Scores are binned by
    their distinct values; from the per-resample bin counts, cumulative sums give the confusion matrix
    at every candidate threshold at once, and the Mann-Whitney formula gives the AUC (ties count 1/2),
    which equals sklearn's ``roc_auc_score`` on the resample. Memory is ``O(n_bootstrap * distinct
    scores)``: about 8 MB per array for 1000 resamples of 1000 images.

    With ``threshold=None`` the Youden threshold is refitted in each resample (same tie-break as
    :func:`youden_threshold`): the point estimate was tuned on the data, so the interval must include
    the variability of that tuning too, otherwise it would be too narrow.
    """
    y, s = validate_inputs(labels, scores)
    if n_bootstrap < 1:
        raise UserError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    candidates, bins = np.unique(s, return_inverse=True)  # ascending distinct scores
    n_bins = candidates.size
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    resampled_bins = bins[stratified_bootstrap_indices(y, n_bootstrap, seed)]
    hist_pos = _bin_counts(resampled_bins[:, :n_pos], n_bins)
    hist_neg = _bin_counts(resampled_bins[:, n_pos:], n_bins)

    # Counts with score >= candidate k (reverse cumulative sums), for every resample and candidate.
    at_or_above_pos = np.cumsum(hist_pos[:, ::-1], axis=1)[:, ::-1]
    at_or_above_neg = np.cumsum(hist_neg[:, ::-1], axis=1)[:, ::-1]
    below_neg = n_neg - at_or_above_neg
    u_statistic = np.sum(hist_pos * (below_neg + 0.5 * hist_neg), axis=1)
    auc = _ratio(u_statistic, n_pos * n_neg)

    rows = np.arange(n_bootstrap)
    if threshold is None:
        if n_pos == 0 or n_neg == 0:
            raise UserError("Youden threshold needs both normal and abnormal images")
        key = _youden_key(at_or_above_pos, at_or_above_neg, n_pos, n_neg)
        # A candidate above every resampled score predicts nothing positive (the +inf threshold of
        # roc_curve); exclude it, as youden_threshold does.
        key = np.where(at_or_above_pos + at_or_above_neg > 0, key, np.iinfo(np.int64).min)
        # Candidates with equal counts share one confusion matrix; the highest of them is the one
        # observed in the resample (the threshold youden_threshold would return), hence the reversal.
        chosen = n_bins - 1 - np.argmax(key[:, ::-1], axis=1)
        tp, fp = at_or_above_pos[rows, chosen], at_or_above_neg[rows, chosen]
        thresholds = candidates[chosen]
    else:
        # Number of distinct scores below the threshold = first candidate index with score >= threshold.
        first = int(np.searchsorted(candidates, float(threshold), side="left"))
        if first < n_bins:
            tp, fp = at_or_above_pos[:, first], at_or_above_neg[:, first]
        else:
            tp, fp = np.zeros(n_bootstrap, np.int64), np.zeros(n_bootstrap, np.int64)
        thresholds = np.full(n_bootstrap, float(threshold))
    fn, tn = n_pos - tp, n_neg - fp
    return {"auc": auc, **_confusion_metrics(tp, fp, tn, fn), "threshold": thresholds}


def percentile_interval(samples: np.ndarray, ci: float) -> tuple[float, float]:
    """The central ``ci`` percentile interval, ignoring NaN resamples; NaN if all are NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    if not np.any(np.isfinite(samples)):
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - ci) / 2.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------- reports
def evaluate_scores(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Point metrics plus stratified percentile-bootstrap CIs for each of :data:`CI_METRICS`.

    ``threshold=None`` uses the in-sample Youden threshold (the seed paper's protocol, optimistic) and
    refits it per resample; a given threshold is applied unchanged to every resample. The result also
    records ``threshold_source``, ``n``, ``n_abnormal``, ``n_normal``, ``n_bootstrap``, ``ci`` and ``seed``.
    """
    if not 0.0 < ci < 1.0:
        raise UserError(f"ci must be between 0 and 1 (e.g. 0.95), got {ci}")
    y, s = validate_inputs(labels, scores)
    source = "in_sample_youden" if threshold is None else "given"
    point_threshold = youden_threshold(y, s) if threshold is None else float(threshold)
    result: dict[str, Any] = binary_metrics(y, s, point_threshold)
    result["threshold_source"] = source
    distribution = bootstrap_distribution(y, s, threshold, n_bootstrap=n_bootstrap, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in CI_METRICS:
            result[f"{name}_ci_low"], result[f"{name}_ci_high"] = percentile_interval(distribution[name], ci)
        if threshold is None:
            result["threshold_ci_low"], result["threshold_ci_high"] = percentile_interval(
                distribution["threshold"], ci
            )
    result.update(
        n=int(y.size),
        n_abnormal=int(y.sum()),
        n_normal=int(y.size - y.sum()),
        n_bootstrap=int(n_bootstrap),
        ci=float(ci),
        seed=int(seed),
    )
    return result


def evaluate_protocol(
    val_labels: ArrayLike,
    val_scores: ArrayLike,
    test_labels: ArrayLike,
    test_scores: ArrayLike,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Fit the Youden threshold on validation, apply it unchanged to test; keep the optimistic numbers aside.

    The top level holds the honest test metrics (``threshold_source: "validation_youden"``) with their
    bootstrap CIs (which treat the validation threshold as fixed). ``validation`` holds the validation
    metrics at that threshold, and ``optimistic_in_sample`` the seed paper's protocol (Youden fitted on
    the test scores themselves), flagged with ``"optimistic": True`` so it is never mistaken for the result.
    """
    threshold = youden_threshold(val_labels, val_scores)
    result = evaluate_scores(
        test_labels, test_scores, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed, ci=ci
    )
    result["threshold_source"] = "validation_youden"
    result["validation"] = binary_metrics(val_labels, val_scores, threshold)
    optimistic = evaluate_scores(
        test_labels, test_scores, threshold=None, n_bootstrap=n_bootstrap, seed=seed, ci=ci
    )
    optimistic["optimistic"] = True
    optimistic["note"] = "threshold chosen on the test scores themselves (seed paper protocol); optimistic"
    result["optimistic_in_sample"] = optimistic
    return result
