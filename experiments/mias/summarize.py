"""Collect the pilot's score sweeps into one results table (``results.md`` / ``results.csv``).

Why a separate summary: each sweep's ``table.md`` holds one loss and one comparison with the
validation-threshold protocol only; the README needs both losses, both comparisons, the optimistic
in-sample numbers (labelled as such) and the lesion-localisation figures side by side.

    python experiments/mias/summarize.py OUT_DIR SWEEP_DIR [SWEEP_DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mammo_anogan.evaluation.table import format_percent, read_metrics_json
from mammo_anogan.utils.io import atomic_write_csv, atomic_write_text

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")


def rows_of(sweep_dirs: list[Path]) -> list[dict[str, Any]]:
    """One row per scored run: protocol metrics (val threshold on test) + in-sample AUC/accuracy."""
    rows = []
    for sweep in sweep_dirs:
        for run_dir in sorted(p.parent for p in sweep.glob("*/metrics.json")):
            metrics = read_metrics_json(run_dir)
            optimistic = metrics.get("optimistic_in_sample", {})
            row = {
                key: metrics.get(key) for key in ("loss", "comparison", "num_seeds", "steps", "score_method")
            }
            if metrics.get("score_method_requested") == "auto":  # picked on validation
                row["score_method"] = f"auto: {row['score_method']}"
            row["val_auc"] = metrics.get("validation", {}).get("auc")
            for key in METRICS:
                row.update({k: metrics.get(k) for k in (key, f"{key}_ci_low", f"{key}_ci_high")})
            row.update(
                threshold_source=metrics.get("threshold_source"),
                n_abnormal=metrics.get("n_abnormal"),
                n_normal=metrics.get("n_normal"),
                in_sample_accuracy=optimistic.get("accuracy"),
                in_sample_sensitivity=optimistic.get("sensitivity"),
                in_sample_specificity=optimistic.get("specificity"),
                pixel_auroc=metrics.get("pixel_auroc"),
                hit_rate=metrics.get("hit_rate"),
                n_localization=metrics.get("n_localization"),
                run=str(run_dir),
            )
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    headers = ["Loss", "Score", "Comparison", "N", "Test (abn/norm)", "Val AUC", "AUC", "Acc", "Sens", "Spec"]
    headers += ["PPV", "NPV"]
    headers += ["In-sample Acc / Sens / Spec (optimistic)", "Pixel AUROC", "Hit rate"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(row["loss"]), str(row["score_method"]), str(row["comparison"]).replace("_", " ")]
        cells += [
            str(row["num_seeds"]),
            f"{row['n_abnormal']}/{row['n_normal']}",
            format_percent(row["val_auc"]),
        ]
        cells += [format_percent(row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"]) for k in METRICS]
        cells.append(
            " / ".join(
                format_percent(row[k])
                for k in ("in_sample_accuracy", "in_sample_sensitivity", "in_sample_specificity")
            )
        )
        cells.append("n/a" if row["pixel_auroc"] is None else f"{row['pixel_auroc']:.3f}")
        cells.append("n/a" if row["hit_rate"] is None else f"{row['hit_rate']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("sweep_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    rows = rows_of(args.sweep_dirs)
    atomic_write_text(args.out_dir / "results.md", markdown(rows))
    atomic_write_csv(args.out_dir / "results.csv", rows, list(rows[0]))
    print(markdown(rows))


if __name__ == "__main__":
    main()
