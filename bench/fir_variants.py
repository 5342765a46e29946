"""Micro-benchmark of the FIR resampling formulations on the GPU (forward + backward, bf16).

    python bench/fir_variants.py                  # shapes of the 256-px paper256 networks, batch 32
    python bench/fir_variants.py --device cpu --batch 2 --reps 2   # smoke test

StyleGAN2's [1, 3, 3, 1] low-pass filter around every resolution change is a large share of the
memory traffic. This times, at the shapes of the top resolutions, the formulations one could use:

* ``depthwise_nhwc``: one depthwise 4x4 convolution on channels_last input (what the layers use);
* ``depthwise_nchw``: the same on contiguous (NCHW) input;
* ``separable``: a 4x1 then a 1x4 depthwise convolution;
* ``down_blur_conv`` vs ``down_composed``: D's blur + stride-2 3x3 conv, against one stride-2 6x6 conv
  whose weight is the 3x3 weight convolved with the filter (mathematically equal);
* ``up_convT_blur`` vs ``up_composed``: G's stride-2 transposed 3x3 conv + blur, against one
  transposed 6x6 conv with the composed weight.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _timed(fn, reps: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.backends.cudnn.benchmark = True
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    k1 = taps / taps.sum()
    k2 = torch.outer(k1, k1)
    print(f"device={device} dtype={dtype} batch={args.batch} (ms per forward+backward)")
    for res, channels in ((256, 64), (128, 128), (64, 256)):
        x0 = torch.randn(args.batch, channels, res, res, device=device, dtype=dtype)
        w3 = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype, requires_grad=True)
        depthwise = k2[None, None].expand(channels, 1, 4, 4).contiguous().to(dtype)
        col = k1.reshape(1, 1, 4, 1).expand(channels, 1, 4, 1).contiguous().to(dtype)
        row = k1.reshape(1, 1, 1, 4).expand(channels, 1, 1, 4).contiguous().to(dtype)
        x_cl = x0.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        x_nchw = x0.clone().requires_grad_(True)
        results = _variants(x_cl, x_nchw, w3, depthwise, col, row, k2)
        timings = {name: _timed(fn, args.reps, device) for name, fn in results.items()}
        print(f"{res:>4}px x{channels:<4}" + "  ".join(f"{name} {ms:7.2f}" for name, ms in timings.items()))


def _variants(x_cl, x_nchw, w3, depthwise, col, row, k2):  # type: ignore[no-untyped-def]
    """name -> a callable running one forward + backward of that formulation."""
    channels, half = x_cl.shape[1], x_cl.shape[2] // 2
    small = x_cl[:, :, :half, :half]

    def run(out: torch.Tensor) -> None:
        out.float().square().mean().backward()

    return {
        "depthwise_nhwc": lambda: run(F.conv2d(x_cl, depthwise, padding=2, groups=channels)),
        "depthwise_nchw": lambda: run(F.conv2d(x_nchw, depthwise, padding=2, groups=channels)),
        "separable": lambda: run(
            F.conv2d(
                F.conv2d(x_cl, col, padding=(2, 0), groups=channels), row, padding=(0, 2), groups=channels
            )
        ),
        "down_blur_conv": lambda: run(
            F.conv2d(F.conv2d(x_cl, depthwise, padding=2, groups=channels), w3, stride=2)
        ),
        "down_composed": lambda: run(F.conv2d(F.pad(x_cl, [2, 2, 2, 2]), _compose(w3, k2), stride=2)),
        "up_convT_blur": lambda: run(
            F.conv2d(F.conv_transpose2d(small, w3, stride=2), depthwise * 4, padding=1, groups=channels)
        ),
        "up_composed": lambda: run(F.conv_transpose2d(small, _compose(w3, k2 * 4), stride=2, padding=1)),
    }


def _compose(weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[O, I, 3, 3] weight convolved (full) with the 4x4 filter -> [O, I, 6, 6] (differentiable)."""
    out_ch, in_ch, kh, kw = weight.shape
    flat = weight.reshape(out_ch * in_ch, 1, kh, kw)
    filt = kernel.flip([0, 1])[None, None].to(weight.dtype)
    composed = F.conv2d(F.pad(flat, [3, 3, 3, 3]), filt)
    return composed.reshape(out_ch, in_ch, kh + 3, kw + 3)


if __name__ == "__main__":
    main()
