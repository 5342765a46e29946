"""Projection throughput: images per minute for (resolution, seeds, steps), warm-up excluded.

    .venv/bin/python bench/score.py --resolution 64 --seeds 9 --steps 50 --images 8 --batch-images 8
    .venv/bin/python bench/score.py --resolution 512 --seeds 9 --steps 100 --images 16 --batch-images 16 \\
        --device cuda --loss lpips_vgg --random-lpips
    # encoder-initialised scoring (f-AnoGAN one pass with --steps 0; a short W+ refinement otherwise)
    .venv/bin/python bench/score.py --generator RUN/generator.pt --init encoder --encoder ENC/encoder.pt \\
        --steps 0 --images 64 --batch-images 32

``--init encoder`` starts one projection per image from the encoder's W+ code (``--encoder PATH``, or
a random-init encoder of the right shape) instead of ``--seeds`` seeded starts; the time includes the
encoder's forward pass. ``--steps 0`` is a single forward pass ``G(E(x))``.

A random-init generator of the paper's architecture (config-f widths: channel_base 32768, channel_max
512, z = w = 512) is used unless ``--generator PATH`` is given. The paper's protocol is 100 images x
9 seeds x 1000 steps at 512 px; ``--steps`` scales linearly, so the protocol time is extrapolated as
``100 / images_per_minute * 1000 / steps`` minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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
    parser.add_argument("--init", default="seeds", choices=("seeds", "encoder", "encoder+seeds"))
    parser.add_argument(
        "--encoder", default=None, help="encoder.pt for --init encoder (default: random init)"
    )
    parser.add_argument("--lr", type=float, default=0.1, help="projection learning rate")
    parser.add_argument("--discriminator", default=None, help="discriminator.pt for --loss disc_features")
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
    discriminator = None
    if args.loss == "disc_features":
        from mammo_anogan.models.stylegan2.export import load_discriminator

        path = args.discriminator or (
            Path(args.generator).with_name("discriminator.pt") if args.generator else None
        )
        if path is None:
            parser.error(
                "--loss disc_features needs --discriminator or --generator (discriminator.pt beside it)"
            )
        discriminator = load_discriminator(path).to(device)
    loss = build_projection_loss(args.loss, lpips_net=lpips_net, discriminator=discriminator).to(device)
    resolution = generator.img_resolution
    targets = torch.rand(args.images, 1, resolution, resolution, device=device) * 2 - 1
    encoder = None
    if args.init != "seeds":
        from mammo_anogan.models.encoder import encoder_for_generator, load_encoder

        encoder = load_encoder(args.encoder) if args.encoder else encoder_for_generator(generator)
        encoder = encoder.to(device).eval()

    def run(images: torch.Tensor, steps: int) -> None:
        settings = ProjectionSettings(
            num_seeds=args.seeds,
            steps=steps,
            precision=args.precision,
            compile=args.compile,
            init=args.init,
            space="w" if args.init == "seeds" else "w_plus",
            lr=args.lr,
        )
        projector = Projector(generator, loss, settings)
        for start in range(0, images.shape[0], args.batch_images):
            chunk = images[start : start + args.batch_images]
            start_ws = None
            if encoder is not None:
                with torch.no_grad():
                    start_ws = encoder(chunk)
            projector.project(chunk, start_ws)

    w_statistics(generator)  # computed once per generator, not part of the per-image cost
    run(targets[: args.batch_images], steps=min(3, args.steps) if args.init != "seeds" else 3)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(targets, steps=args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_minute = args.images / seconds * 60
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    starts = args.seeds if args.init == "seeds" else 1 if args.init == "encoder" else args.seeds + 1
    print(
        f"device={name} resolution={resolution} init={args.init} starts={starts} steps={args.steps} "
        f"images={args.images} batch_images={args.batch_images} loss={args.loss} precision={args.precision}"
    )
    if args.init == "seeds":
        protocol_minutes = 100 / per_minute * 1000 / args.steps if per_minute else 0.0
        print(
            f"{seconds:.2f} s, {per_minute:.2f} images/min, {args.images / seconds:.3f} images/s, "
            f"{args.images * starts * args.steps / seconds:.0f} sample-steps/s; "
            f"100 images x {args.seeds} seeds x 1000 steps: {protocol_minutes:.1f} min"
        )
    else:
        print(
            f"{seconds:.2f} s, {per_minute:.2f} images/min, {args.images / seconds:.3f} images/s "
            f"(encoder forward included); 100 images: {100 / per_minute:.2f} min"
        )
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
