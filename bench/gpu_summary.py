"""One summary table from the files bench/gpu_check.sh wrote (``python bench/gpu_summary.py OUT_DIR``).

Reads ``bench.jsonl`` (bench/train.py rows), ``bench.log`` (bench/score.py's protocol line),
``tests.log`` (pytest -m gpu), ``train.log`` (the pre-empted mini-MIAS training) and ``metrics.json``
(the short score) and prints Markdown: s/kimg at 256 and 512 px with the ratio to the reference, GPU
milliseconds per phase, the top kernels, the scoring protocol time, the test outcome, the run's kimg.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ANCHOR_256 = (7.19, 7.57)  # stylegan2-ada-pytorch, paper256, batch 32, H200 (../shared/gpu/README.md)
ANCHOR_V100_256 = (21.6, 24.2)  # its README, one V100, 256 px, batch 16
PHASES = ("G_main", "G_path_length", "D_main", "D_r1", "step_end")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")
    print("\n## Training speed (bench/train.py, steady state, all four phases amortised)\n")
    print(
        "| res | batch | channel_base | R1/PL precision | s/kimg | img/s | ratio to reference | "
        + " | ".join(PHASES)
        + " |"
    )
    print("|---|---|---|---|---|---|---|" + "---|" * len(PHASES))
    rows = [json.loads(line) for line in _read(out / "bench.jsonl").splitlines() if line.strip()]
    for row in rows:
        if row["resolution"] == 256:
            ratio = (
                " / ".join(f"{row['sec_per_kimg'] / a:.2f}x" for a in ANCHOR_256) + " (H200 anchor 7.19/7.57)"
            )
        else:
            ratio = " / ".join(f"{row['sec_per_kimg'] / a:.2f}x" for a in ANCHOR_V100_256) + " (V100 256-px)"
        phases = " | ".join(f"{row['phase_ms_per_iteration'].get(p, float('nan')):.1f} ms" for p in PHASES)
        print(
            f"| {row['resolution']} | {row['batch']} | {row['channel_base']} | {row.get('reg_precision')} | "
            f"{row['sec_per_kimg']:.2f} | "
            f"{row['images_per_s']:.0f} | {ratio} | {phases} |"
        )
    for row in rows:
        if row.get("top_kernels"):
            print(f"\nTop CUDA kernels at {row['resolution']} px (profiled iterations):\n")
            for kernel in row["top_kernels"]:
                print(f"- {kernel['ms']:.1f} ms, {kernel['calls']} calls: `{kernel['kernel']}`")
    protocol = re.findall(r"^.*100 images x \d+ seeds x 1000 steps.*$", _read(out / "bench.log"), re.M)
    devices = re.findall(r"^device=.*$", _read(out / "bench.log"), re.M)
    print("\n## Scoring protocol (bench/score.py)\n")
    for device, line in zip(devices, protocol):
        print(f"- {device}\n- {line}")
    tests = _read(out / "tests.log")
    outcome = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", tests, re.M)
    resume = re.findall(r"GPU resume:.*", tests)
    print("\n## GPU tier (pytest -m gpu)\n")
    print(f"- {outcome[-1] if outcome else 'no result'}")
    for line in resume:
        print(f"- {line}")
    train = _read(out / "train.log")
    print("\n## mini-MIAS training (SIGTERM at 60 s, resumed 30 s)\n")
    for line in re.findall(
        r"^.*(?:received SIG\w+|pre-empted at kimg|exit=\d+|G_ema / D at).*$", train, re.M
    ):
        print(f"- {line.strip()}")
    metrics = out / "metrics.json"
    print("\n## Short score (disc_features, N = 9)\n")
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        test = data.get("test", data)
        keys = ("auc", "accuracy", "sensitivity", "specificity")
        shown = {k: test.get(k) for k in keys if isinstance(test, dict) and k in test}
        print(f"- metrics.json: {json.dumps(shown) if shown else json.dumps(data)[:400]}")
    else:
        print("- no metrics.json")


if __name__ == "__main__":
    main()
