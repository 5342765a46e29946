"""Print the headline figures of a scoring run: ``python -m mammo_anogan.evaluation.summary RUN_DIR``.

What ``make demo`` shows at the end: the evaluated split's AUC with its bootstrap CI, sensitivity and
specificity at the threshold fitted on validation, the lesion hit rate and pixel AUROC, which score
``score.method=auto`` picked (with every candidate's validation AUC), and - for phantoms with
lesion-free twins - the same figures for the oracle ``|image - twin|``, so the gap that the
generator leaves is visible. Reads ``metrics.json`` only; exits 2 with one line when it is missing.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from mammo_anogan.utils.errors import UserError, exit_on_user_error


def _pct(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{100 * float(value):.1f} %"


def _auc(block: dict[str, Any]) -> str:
    low, high = block.get("auc_ci_low"), block.get("auc_ci_high")
    ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    return f"{_pct(block.get('auc'))}{ci}"


def format_summary(metrics: dict[str, Any]) -> str:
    """The summary lines for a ``metrics.json`` dict (see the module docstring)."""
    m = metrics
    level = int(round(100 * float(m.get("ci", 0.95))))
    lines = [
        f"Detection on the {m.get('evaluated_split', 'test')} split ({m.get('n_abnormal')} abnormal, "
        f"{m.get('n_normal')} normal images; threshold: {m.get('threshold_source')})",
        f"  AUC ({level} % CI)          {_auc(m)}",
        f"  sensitivity            {_pct(m.get('sensitivity'))}   specificity {_pct(m.get('specificity'))}",
        f"  lesion hit rate        {_pct(m.get('hit_rate'))}   (map maximum inside the lesion, "
        f"{m.get('n_localization', 0)} lesion images)",
        f"  pixel AUROC            {_pct(m.get('pixel_auroc'))}",
        f"  score                  {m.get('score_method')} (projection init={m.get('init', 'seeds')}, "
        f"steps={m.get('steps')}, refine={m.get('refine', False)})",
    ]
    if m.get("score_method_requested") == "auto" and m.get("auto_validation_auc"):
        aucs = ", ".join(f"{name} {100 * auc:.1f}" for name, auc in m["auto_validation_auc"].items())
        lines.append(f"  auto: validation AUC % {aucs}")
    oracle = m.get("oracle")
    if oracle:
        lines += [
            f"Oracle |image - lesion-free twin| ({oracle.get('method')}): the ceiling with a perfect "
            "generator",
            f"  AUC ({level} % CI)          {_auc(oracle)}",
            f"  lesion hit rate        {_pct(oracle.get('hit_rate'))}   "
            f"pixel AUROC {_pct(oracle.get('pixel_auroc'))}",
        ]
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python -m mammo_anogan.evaluation.summary RUN_DIR (a scoring run directory)")
    path = Path(args[0]) / "metrics.json"
    if not path.is_file():
        raise UserError(f"no metrics.json in {args[0]}: run python -m mammo_anogan.score first")
    print(format_summary(json.loads(path.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
