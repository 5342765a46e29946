"""Export G_ema / D of one training checkpoint as ``generator.pt`` / ``discriminator.pt``.

Used for the mini-MIAS run: its ``best/`` export had stopped following the best checkpoint (fixed
in ``train.BestNetworkExport``), so the best-SWD checkpoint was exported by hand with this script.
The checkpoint is loaded with ``weights_only=True``.

    python experiments/mias/export_checkpoint.py RUN_DIR/checkpoints/best-v1.ckpt OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mammo_anogan.models.gan_module import StyleGAN2Module
from mammo_anogan.utils.fingerprint import read_stamp
from mammo_anogan.utils.io import safe_torch_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    checkpoint = safe_torch_load(args.checkpoint)
    module = StyleGAN2Module(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.run_fingerprint = read_stamp(checkpoint)  # the exports carry the training run's fingerprint
    kimg = checkpoint["stylegan2"]["cur_nimg"] / 1000
    for path in module.export_networks(args.out_dir):
        print(f"{path} (G_ema / D at {kimg:.1f} kimg)")


if __name__ == "__main__":
    main()
