"""The seed paper's figures: ROC with the operating point (Fig. 4), score histogram by class (Fig. 5),
and case panels image / projection / difference map (Fig. 3).

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot:
no global backend switch, no figure registry to leak, safe in dataloader workers and headless jobs.
Each PNG is rendered into memory and written with :func:`atomic_write_bytes`, so an interrupted run
never leaves a truncated image. The pixel size of every PNG is ``figsize * dpi`` exactly (no
``bbox_inches="tight"``), which keeps figures comparable across runs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from mammo_anogan.evaluation.metrics import binary_metrics, validate_inputs, youden_threshold
from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.io import atomic_write_bytes

CASE_TYPES: tuple[str, ...] = ("TP", "FN", "FP", "TN")
CLASS_COLOURS = {"normal": "tab:blue", "abnormal": "tab:red"}


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    """Render ``figure`` to PNG in memory and write it atomically; returns the path."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())


def _operating_threshold(
    labels: np.ndarray, scores: np.ndarray, threshold: float | None
) -> tuple[float, str]:
    if threshold is None:
        return youden_threshold(labels, scores), "Youden threshold (in-sample)"
    return float(threshold), "threshold"


def plot_roc(
    labels: Any,
    scores: Any,
    path: str | os.PathLike[str],
    threshold: float | None = None,
    title: str = "ROC curve",
    figsize: tuple[float, float] = (5.0, 5.0),
    dpi: int = 100,
) -> Path:
    """ROC curve with the AUC in the legend and the operating point at ``threshold`` marked.

    ``threshold=None`` marks the in-sample Youden point (labelled as such).
    """
    y, s = validate_inputs(labels, scores)
    if y.min() == y.max():
        raise UserError("an ROC curve needs both normal and abnormal images")
    thr, thr_label = _operating_threshold(y, s, threshold)
    point = binary_metrics(y, s, thr)
    fpr, tpr, _ = roc_curve(y, s)

    figure = Figure(figsize=figsize)
    axes = figure.add_subplot()
    axes.plot(fpr, tpr, color="tab:red", lw=2, label=f"AUC = {point['auc']:.3f}")
    axes.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    axes.plot(
        1.0 - point["specificity"],
        point["sensitivity"],
        "o",
        color="black",
        label=f"{thr_label} = {thr:.4g}\nsens {point['sensitivity']:.2f}, spec {point['specificity']:.2f}",
    )
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=title)
    axes.set_xlabel("1 - specificity (false positive rate)")
    axes.set_ylabel("sensitivity (true positive rate)")
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def plot_score_histogram(
    labels: Any,
    scores: Any,
    path: str | os.PathLike[str],
    threshold: float | None = None,
    title: str = "Anomaly scores",
    bins: int = 20,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Histograms of the scores of normal and abnormal images on shared bins, with the threshold line.

    ``threshold=None`` draws the in-sample Youden threshold when both classes are present, else no line.
    """
    y, s = validate_inputs(labels, scores)
    both_classes = y.min() != y.max()
    edges = np.histogram_bin_edges(s, bins=bins)

    figure = Figure(figsize=figsize)
    axes = figure.add_subplot()
    for value, name in ((0, "normal"), (1, "abnormal")):
        members = s[y == value]
        if members.size:
            axes.hist(
                members, bins=edges, alpha=0.55, color=CLASS_COLOURS[name], label=f"{name} (n={members.size})"
            )
    if threshold is not None or both_classes:
        thr, thr_label = _operating_threshold(y, s, threshold)
        axes.axvline(thr, color="black", ls="--", lw=1.5, label=f"{thr_label} = {thr:.4g}")
    axes.set(title=title, xlabel="anomaly score", ylabel="images")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, dpi)


def select_cases(labels: Any, scores: Any, threshold: float, k: int = 2) -> dict[str, list[int]]:
    """Indices of the ``k`` most confident cases of each type: ``{"TP", "FN", "FP", "TN": [...]}``.

    "Most confident" means furthest from the threshold on the side the prediction fell: the highest
    scores for TP and FP, the lowest for FN and TN. Ties keep the original order (stable sort).
    """
    y, s = validate_inputs(labels, scores)
    predicted = s >= float(threshold)
    by_score_desc = np.argsort(-s, kind="stable")
    by_score_asc = np.argsort(s, kind="stable")
    selections = {
        "TP": (by_score_desc, (y == 1) & predicted),
        "FN": (by_score_asc, (y == 1) & ~predicted),
        "FP": (by_score_desc, (y == 0) & predicted),
        "TN": (by_score_asc, (y == 0) & ~predicted),
    }
    return {
        name: [int(i) for i in order[members[order]][:k]] for name, (order, members) in selections.items()
    }


def _plane(values: Any, name: str) -> np.ndarray:
    """A 2-D float array from ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]`` arrays or tensors."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.squeeze(np.asarray(values, dtype=np.float32))
    if array.ndim != 2:
        raise UserError(f"case field '{name}' must be a single 2-D image, got shape {np.shape(values)}")
    return array


def _case_title(case: Mapping[str, Any]) -> str:
    if "title" in case:
        return str(case["title"])
    parts = [str(case[key]) for key in ("case_type",) if key in case]
    if "score" in case:
        parts.append(f"score {float(case['score']):.4g}")
    return ", ".join(parts)


def plot_case_panels(
    cases: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str | None = None,
    panel_inches: float = 2.5,
    dpi: int = 100,
) -> Path:
    """One row per case: image | best projection | difference map (the paper's Fig. 3).

    Each case is a mapping with ``image``, ``projection`` (both in ``[-1, 1]``, shown on that fixed
    grey scale so they are comparable) and ``difference`` (shown from 0 to its maximum inside the
    breast), optionally ``mask`` (breast outline, cyan) and ``lesion_mask`` (lesion contour, lime), and
    ``case_type`` (TP/FN/FP/TN) + ``score`` or a ready ``title``. The PNG is
    ``3 * panel_inches * dpi`` wide and ``len(cases) * panel_inches * dpi`` (+ a title band) high.
    """
    if not cases:
        raise UserError("no cases to plot")
    title_inches = 0.4 if title else 0.0
    figure = Figure(figsize=(3 * panel_inches, len(cases) * panel_inches + title_inches))
    grid = figure.subplots(len(cases), 3, squeeze=False)
    for row_index, (row, case) in enumerate(zip(grid, cases)):
        missing = [key for key in ("image", "projection", "difference") if key not in case]
        if missing:
            raise UserError(f"case is missing {', '.join(missing)}")
        image = _plane(case["image"], "image")
        projection = _plane(case["projection"], "projection")
        difference = _plane(case["difference"], "difference")
        mask = _plane(case["mask"], "mask") > 0.5 if case.get("mask") is not None else None
        lesion = (
            _plane(case["lesion_mask"], "lesion_mask") > 0.5 if case.get("lesion_mask") is not None else None
        )
        inside = difference[mask] if mask is not None and mask.any() else difference
        vmax = float(inside.max()) if inside.size and inside.max() > 0 else 1.0

        row[0].imshow(image, cmap="gray", vmin=-1.0, vmax=1.0)
        row[1].imshow(projection, cmap="gray", vmin=-1.0, vmax=1.0)
        row[2].imshow(difference, cmap="inferno", vmin=0.0, vmax=vmax)
        for axes, label in zip(row, ("image", "projection", "difference")):
            if mask is not None and mask.any() and not mask.all():
                axes.contour(mask, levels=[0.5], colors="cyan", linewidths=0.7)
            if lesion is not None and lesion.any():
                axes.contour(lesion, levels=[0.5], colors="lime", linewidths=0.9)
            axes.set_xticks([])
            axes.set_yticks([])
            if row_index == 0:  # column titles once, so they do not collide with the row above
                axes.set_title(label, fontsize="small")
        row[0].set_ylabel(_case_title(case), fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path, dpi)
