"""Projection throughput: images per minute for (resolution, seeds, steps), warm-up excluded.

    .venv/bin/python bench/score.py --resolution 64 --seeds 9 --steps 50 --images 8 --batch-images 8
    .venv/bin/python bench/score.py --resolution 512 --seeds 9 --steps 100 --images 16 --batch-images 16 \\
        --device cuda --loss lpips_vgg --random-lpips

A random-init generator of the paper's architecture (config-f widths: channel_base 32768, channel_max
512, z = w = 512) is used unless ``--generator PATH`` is given. The paper's protocol is 100 images x
9 seeds x 1000 steps at 512 px; ``--steps`` scales linearly, so the protocol time is extrapolated as
``100 / images_per_minute * 1000 / steps`` minutes.
"""

from __future__ import annotations

import argparse
import time

import torch

from mammo_anogan.anomaly.losses import build_projection_loss
from mammo_anogan.anomaly.projector import ProjectionSettings, Projector, w_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-images", type=int, default=8)
    parser.add_argument("--loss", default="mse", help="mse | ms_ssim | lpips_vgg | lpips_alex")
    parser.add_argument("--random-lpips", action="store_true", help="random LPIPS trunk (no download)")
    parser.add_argument("--generator", default=None, help="exported generator.pt (default: random init)")
    parser.add_argument("--channel-base", type=int, default=32768)
    parser.add_argument("--channel-max", type=int, default=512)
    parser.add_argument("--latent-dim", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    from mammo_anogan.models.stylegan2.export import load_generator
    from mammo_anogan.models.stylegan2.generator import Generator

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.generator:
        generator = load_generator(args.generator)
    else:
        generator = Generator(
            z_dim=args.latent_dim,
            w_dim=args.latent_dim,
            img_resolution=args.resolution,
            channel_base=args.channel_base,
            channel_max=args.channel_max,
        )
    generator = generator.to(device).eval()
    lpips_net = None
    if args.loss.startswith("lpips") and args.random_lpips:
        import lpips

        lpips_net = lpips.LPIPS(pretrained=False, pnet_rand=True, net=args.loss.split("_")[1], verbose=False)
    loss = build_projection_loss(args.loss, lpips_net=lpips_net).to(device)
    resolution = generator.img_resolution
    targets = torch.rand(args.images, 1, resolution, resolution, device=device) * 2 - 1

    def run(images: torch.Tensor, steps: int) -> None:
        settings = ProjectionSettings(
            num_seeds=args.seeds, steps=steps, precision=args.precision, compile=args.compile
        )
        projector = Projector(generator, loss, settings)
        for start in range(0, images.shape[0], args.batch_images):
            projector.project(images[start : start + args.batch_images])

    w_statistics(generator)  # computed once per generator, not part of the per-image cost
    run(targets[: args.batch_images], steps=3)  # warm-up: kernels, cudnn autotuning, compile
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(targets, steps=args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_minute = args.images / seconds * 60
    protocol_minutes = 100 / per_minute * 1000 / args.steps if per_minute else 0.0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={name} resolution={resolution} seeds={args.seeds} steps={args.steps} images={args.images} "
        f"batch_images={args.batch_images} loss={args.loss} precision={args.precision}"
    )
    print(
        f"{seconds:.2f} s, {per_minute:.2f} images/min, "
        f"{args.images * args.seeds * args.steps / seconds:.0f} sample-steps/s; "
        f"100 images x {args.seeds} seeds x 1000 steps: {protocol_minutes:.1f} min"
    )
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
