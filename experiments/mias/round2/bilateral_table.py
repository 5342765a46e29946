"""Table of the bilateral scores beside the single-film scores of the same runs (round 2 README).

Reads ``<sweep>/<job>/bilateral_<comparison>.json`` (``python -m mammo_anogan.evaluation.bilateral``)
and the run's ``metrics.json`` for every job of every sweep given; writes one markdown table.

    python experiments/mias/round2/bilateral_table.py OUT.md SWEEP_DIR [SWEEP_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mammo_anogan.evaluation.table import read_metrics_json
from mammo_anogan.utils.io import atomic_write_text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _auc_ci(block: dict) -> str:
    return f"{_pct(block.get('auc'))} [{_pct(block.get('auc_ci_low'))}, {_pct(block.get('auc_ci_high'))}]"


def rows_of(sweeps: list[Path]) -> list[str]:
    lines = []
    for sweep in sweeps:
        for run_dir in sorted(p.parent for p in sweep.glob("*/metrics.json")):
            metrics = read_metrics_json(run_dir)
            comparison = metrics["comparison"]
            path = run_dir / f"bilateral_{comparison}.json"
            if not path.is_file():
                continue
            bilateral = json.loads(path.read_text(encoding="utf-8"))
            picked = bilateral["picked"]
            single_val = metrics.get("validation", {}).get("auc")
            cells = [
                comparison.replace("_", " "),
                str(metrics["num_seeds"]),
                f"{metrics['score_method']} (val {_pct(single_val)})",
                _auc_ci(metrics),
                f"{picked} (val {_pct(bilateral['validation_aucs'][picked])})",
                _auc_ci(bilateral),
                f"{_pct(bilateral.get('sensitivity'))} / {_pct(bilateral.get('specificity'))}",
                f"{bilateral['n_abnormal']}/{bilateral['n_normal']}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("sweeps", type=Path, nargs="+")
    args = parser.parse_args()
    headers = [
        "Comparison",
        "N",
        "Single-film score (val AUC)",
        "Single-film test AUC [95 % CI]",
        "Bilateral score (val AUC)",
        "Bilateral test AUC [95 % CI]",
        "Bilateral sens / spec",
        "Test (abn/norm)",
    ]
    table = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *rows_of(args.sweeps)]
    atomic_write_text(args.out, "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
