"""Image-level metrics: hand-computed confusion matrices, Youden on a toy ROC, bootstrap CIs, protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mammo_anogan.evaluation.metrics import (
    CI_METRICS,
    binary_metrics,
    bootstrap_distribution,
    evaluate_protocol,
    evaluate_scores,
    stratified_bootstrap_indices,
    youden_threshold,
)
from mammo_anogan.utils.errors import UserError

# 4 abnormal, 6 normal. At threshold 0.45: predicted positive = 0.9, 0.8 (abnormal), 0.7, 0.5 (normal).
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.4, 0.2, 0.7, 0.3, 0.3, 0.1, 0.05, 0.5])


def _noisy_scores(n_per_class: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_per_class, int), np.zeros(n_per_class, int)]
    return labels, rng.normal(size=2 * n_per_class) + separation * labels


def test_binary_metrics_match_hand_computed_confusion_matrix() -> None:
    m = binary_metrics(LABELS, SCORES, 0.45)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 2, 2, 4)
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(2 / 4)
    assert m["npv"] == pytest.approx(4 / 6)
    assert m["threshold"] == 0.45
    # 24 (abnormal, normal) pairs; abnormal above normal: 0.9 -> 6, 0.8 -> 6, 0.4 -> 4, 0.2 -> 2.
    assert m["auc"] == pytest.approx(18 / 24)
    assert m["auc"] == pytest.approx(roc_auc_score(LABELS, SCORES))


def test_score_equal_to_threshold_is_positive_and_tensors_are_accepted() -> None:
    m = binary_metrics(torch.tensor(LABELS), torch.tensor(SCORES), 0.7)
    assert (m["tp"], m["fp"]) == (2, 1)  # 0.7 itself counts as predicted abnormal


def test_zero_denominators_give_nan_not_zero() -> None:
    m = binary_metrics(LABELS, SCORES, 10.0)  # nothing predicted positive
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 6, 4)
    assert math.isnan(m["ppv"])
    assert m["npv"] == pytest.approx(6 / 10)
    assert m["sensitivity"] == 0.0
    only_normals = binary_metrics(np.zeros(3), [0.1, 0.2, 0.3], 0.15)
    assert math.isnan(only_normals["auc"]) and math.isnan(only_normals["sensitivity"])
    assert only_normals["specificity"] == pytest.approx(1 / 3)


def test_youden_threshold_on_hand_computed_roc() -> None:
    # abnormal 0.9, 0.6, 0.35; normal 0.8, 0.4, 0.3, 0.1. J by threshold:
    # 0.9: 1/3 | 0.8: 1/3-1/4 | 0.6: 2/3-1/4 | 0.4: 2/3-2/4 | 0.35: 3/3-2/4 = 0.5 (max) | 0.3: 0.25 | 0.1: 0
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.6, 0.35, 0.8, 0.4, 0.3, 0.1]
    assert youden_threshold(labels, scores) == 0.35


def test_youden_ties_go_to_highest_specificity() -> None:
    # abnormal 0.9, 0.5; normal 0.7, 0.2: J = 0.5 at 0.9 (spec 1.0) and at 0.5 (spec 0.5).
    assert youden_threshold([1, 1, 0, 0], [0.9, 0.5, 0.7, 0.2]) == 0.9


def test_youden_never_returns_infinite_threshold_even_for_inverted_scores() -> None:
    threshold = youden_threshold([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])
    assert math.isfinite(threshold)
    assert threshold == 0.1  # every finite point has J <= 0; J = 0 only at the lowest score


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only abnormal"),
        ([0, 0], [0.1, 0.2], "only normal"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "labels must be 0"),
        ([0, 1], [0.1, float("nan")], "NaN or infinite"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise_one_line_user_error(labels: list, scores: list, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        youden_threshold(labels, scores)
    assert "\n" not in str(info.value)


def test_stratified_resamples_keep_class_counts() -> None:
    indices = stratified_bootstrap_indices(LABELS, n_bootstrap=200, seed=1)
    assert indices.shape == (200, 10)
    assert np.all(LABELS[indices].sum(axis=1) == 4)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_vectorised_bootstrap_equals_per_resample_sklearn_computation(threshold: float | None) -> None:
    labels, scores = _noisy_scores(15, 0.8, seed=2)
    scores = np.round(scores, 1)  # ties, to exercise the 1/2 credit in the rank formula
    n_bootstrap = 60
    distribution = bootstrap_distribution(labels, scores, threshold, n_bootstrap=n_bootstrap, seed=5)
    indices = stratified_bootstrap_indices(labels, n_bootstrap, seed=5)
    for b in range(n_bootstrap):  # the slow reference, looping on purpose
        y, s = labels[indices[b]], scores[indices[b]]
        thr = youden_threshold(y, s) if threshold is None else threshold
        expected = binary_metrics(y, s, thr)
        assert distribution["threshold"][b] == thr
        for name in CI_METRICS:
            assert np.isclose(distribution[name][b], expected[name], equal_nan=True), (name, b)


def test_evaluate_scores_cis_contain_estimate_and_are_seeded() -> None:
    labels, scores = _noisy_scores(50, 1.0, seed=3)
    result = evaluate_scores(labels, scores, n_bootstrap=500, seed=0)
    assert result["threshold_source"] == "in_sample_youden"
    assert result["threshold"] == youden_threshold(labels, scores)
    assert (result["n"], result["n_abnormal"], result["n_normal"]) == (100, 50, 50)
    for name in CI_METRICS:
        assert result[f"{name}_ci_low"] <= result[name] <= result[f"{name}_ci_high"], name
        assert result[f"{name}_ci_low"] < result[f"{name}_ci_high"], name
    again = evaluate_scores(labels, scores, n_bootstrap=500, seed=0)
    other = evaluate_scores(labels, scores, n_bootstrap=500, seed=1)
    assert again == result
    assert other["auc_ci_low"] != result["auc_ci_low"]
    assert other["auc"] == result["auc"]


def test_cis_narrow_with_more_samples() -> None:
    small = evaluate_scores(*_noisy_scores(20, 1.0, seed=4), threshold=0.5, n_bootstrap=400)
    large = evaluate_scores(*_noisy_scores(400, 1.0, seed=4), threshold=0.5, n_bootstrap=400)
    for name in ("auc", "accuracy", "sensitivity", "specificity"):
        small_width = small[f"{name}_ci_high"] - small[f"{name}_ci_low"]
        large_width = large[f"{name}_ci_high"] - large[f"{name}_ci_low"]
        assert large_width < 0.5 * small_width, name  # sqrt(20) times more data: about 4.5x narrower


def test_given_threshold_is_kept_and_perfect_separation_has_degenerate_ci() -> None:
    labels = np.r_[np.ones(10, int), np.zeros(10, int)]
    scores = np.r_[np.linspace(2, 3, 10), np.linspace(0, 1, 10)]
    result = evaluate_scores(labels, scores, threshold=1.5, n_bootstrap=200)
    assert result["threshold_source"] == "given" and result["threshold"] == 1.5
    assert "threshold_ci_low" not in result
    for name in CI_METRICS:
        assert result[name] == result[f"{name}_ci_low"] == result[f"{name}_ci_high"] == 1.0


def test_bad_bootstrap_settings_raise_user_error() -> None:
    with pytest.raises(UserError, match="ci must be"):
        evaluate_scores(LABELS, SCORES, ci=95)
    with pytest.raises(UserError, match="n_bootstrap"):
        evaluate_scores(LABELS, SCORES, n_bootstrap=0)


def test_protocol_applies_validation_threshold_unchanged_to_test() -> None:
    val_labels, val_scores = _noisy_scores(30, 1.0, seed=6)
    test_labels, test_scores = _noisy_scores(30, 1.0, seed=7)
    test_scores = test_scores + 0.7  # a shifted test distribution: the in-sample threshold moves with it
    result = evaluate_protocol(val_labels, val_scores, test_labels, test_scores, n_bootstrap=200, seed=0)
    val_threshold = youden_threshold(val_labels, val_scores)
    assert result["threshold_source"] == "validation_youden"
    assert result["threshold"] == val_threshold
    expected = binary_metrics(test_labels, test_scores, val_threshold)
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc", "tp", "fp", "tn", "fn"):
        assert result[name] == expected[name], name
    assert result["validation"] == binary_metrics(val_labels, val_scores, val_threshold)
    optimistic = result["optimistic_in_sample"]
    assert optimistic["optimistic"] is True
    assert optimistic["threshold_source"] == "in_sample_youden"
    assert optimistic["threshold"] == youden_threshold(test_labels, test_scores) != val_threshold
    # In-sample J is the maximum over all thresholds, so it is at least the validation threshold's J.
    j = lambda m: m["sensitivity"] + m["specificity"] - 1  # noqa: E731
    assert j(optimistic) >= j(result)
