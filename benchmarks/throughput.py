"""End-to-end training throughput (data + augmentation + step), original-notebook style vs our fast path.

(a) "original": written the way the original notebooks did it: a torch Dataset applying the albumentations
    pipeline (HorizontalFlip, ShiftScaleRotate, CoarseDropout, Normalize) per image, default DataLoader
    settings (no workers, no pinning), NCHW float32.
(b) "fast": the project's training loop: uint8 images in memory, batched torch augmentation from uint8,
    channels_last, fp32 and bf16 autocast; bf16 with the opt-in fused ReLU+BatchNorm kernel (CIFARNET_FUSED=1) and
    without it (the default).
Same model (the original CifarNet), same batch size, same images. Every measurement runs in a fresh process
after a 2-batch warm-up; loops are interleaved and repeated, and the median counts (this VM's speed drifts by
+-20% over minutes). Also the images/s of each augmentation backend alone. Writes results/throughput.json.

    python benchmarks/throughput.py --data-dir ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifarnet.augment import TorchAugment, albumentations_pipeline
from cifarnet.config import DataConfig, TrainConfig
from cifarnet.data import MEAN, STD, load_cifar10, make_splits
from cifarnet.hardware import describe_hardware, now_iso
from cifarnet.model import build_model
from cifarnet.files import write_json_atomic
from cifarnet.train import RunOptions, train


def original_style_images_per_s(images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    import albumentations as A

    pipe = A.Compose([albumentations_pipeline(0.5), A.Normalize(mean=MEAN, std=STD)])

    class NotebookDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            img = pipe(image=images[i])["image"]
            return torch.from_numpy(img.transpose(2, 0, 1).copy()), int(labels[i])

    torch.manual_seed(0)
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(NotebookDataset(), batch_size=batch_size, shuffle=True)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for x, y in loader:
        loss = F.nll_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def fast_images_per_s(splits, batch_size: int, **recipe) -> float:
    cfg = TrainConfig(epochs=1, batch_size=batch_size, aug_strength=0.5, **recipe)
    return train(cfg, splits, opts=RunOptions(device="cpu", progress=False)).history[0]["images_per_s"]


LOOPS = ("original_style", "fast_fp32_channels_last", "fast_bf16_channels_last", "fast_bf16_native_relu_bn")
# What the opt-in fused ReLU+BatchNorm kernel (cifarnet/fused.py, CIFARNET_FUSED=1) adds: the bf16 fast path is
# measured with it, and without it (the default path, native ops).
LOOP_ENV = {"fast_bf16_channels_last": {"CIFARNET_FUSED": "1"}, "fast_bf16_native_relu_bn": {"CIFARNET_FUSED": "0"}}


def measure_in_this_process(loop: str, batch_size: int, n_images: int, data_dir: str | None) -> float:
    """One measurement, after a 2-batch warm-up of the same loop (oneDNN picks its kernels on first use)."""
    data = load_cifar10(data_dir)
    for n in (2 * batch_size, n_images):
        splits = make_splits(data, DataConfig(train_size=n, val_size=0, test_size=0))
        if loop == "original_style":
            rate = original_style_images_per_s(splits.train.images.numpy(), splits.train.labels.numpy(), batch_size)
        else:
            rate = fast_images_per_s(splits, batch_size, bf16="bf16" in loop)
    return rate


def measure(loop: str, batch_size: int, n_images: int, data_dir: str | None) -> float:
    """Each measurement in a fresh process: nothing one loop leaves behind (kernel caches, a fragmented heap)
    carries over to the next."""
    cmd = [sys.executable, __file__, "--measure", loop, "--batch-sizes", str(batch_size), "--images", str(n_images)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **LOOP_ENV.get(loop, {})})
    if out.returncode:
        raise SystemExit(f"measurement {loop} (batch {batch_size}) failed:\n{out.stderr.strip()[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def measure_batch_size(batch_size: int, n_images: int, repeats: int, data_dir: str | None) -> dict:
    """Each loop `repeats` times, interleaved (a noisy neighbour hits all three alike); the median counts."""
    runs: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    for _ in range(repeats):
        for loop in LOOPS:
            runs[loop].append(measure(loop, batch_size, n_images, data_dir))
    rates = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "train_images_per_s": rates, "all_runs_images_per_s": runs,
        "ratio_fast_fp32_vs_original": rates["fast_fp32_channels_last"] / rates["original_style"],
        "ratio_fast_bf16_vs_original": rates["fast_bf16_channels_last"] / rates["original_style"],
        "ratio_fast_bf16_native_relu_bn_vs_original": rates["fast_bf16_native_relu_bn"] / rates["original_style"],
    }


def augmentation_images_per_s(images: torch.Tensor) -> dict[str, float]:
    pipe = albumentations_pipeline(0.5)
    arr = images.numpy()
    t0 = time.perf_counter()
    for img in arr:
        pipe(image=img)
    albu = len(arr) / (time.perf_counter() - t0)
    aug, gen = TorchAugment(0.5), torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(0, len(images), 512):
        aug.from_uint8(images[i : i + 512], gen, torch.device("cpu"))
    return {"albumentations_per_image": albu, "torch_batched_from_uint8": len(images) / (time.perf_counter() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=10240, help="training images per measurement (one pass)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512],
                   help="each measured for both loops; the first is the headline figure")
    p.add_argument("--repeats", type=int, default=3, help="measurements per loop and batch size (median kept)")
    p.add_argument("--out", type=Path, default=Path("results/throughput.json"))
    p.add_argument("--measure", choices=LOOPS, help=argparse.SUPPRESS)  # internal: one measurement, printed
    args = p.parse_args()
    if args.measure:
        print(measure_in_this_process(args.measure, args.batch_sizes[0], args.images, args.data_dir))
        return
    by_bs = {}
    for bs in args.batch_sizes:
        by_bs[str(bs)] = m = measure_batch_size(bs, args.images, args.repeats, args.data_dir)
        rates = m["train_images_per_s"]
        print(f"batch {bs}: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()) + " images/s (median of "
              f"{args.repeats}); fast/original fp32 {m['ratio_fast_fp32_vs_original']:.2f}x, "
              f"bf16 {m['ratio_fast_bf16_vs_original']:.2f}x (without the fused ReLU+BN kernel "
              f"{m['ratio_fast_bf16_native_relu_bn_vs_original']:.2f}x)", flush=True)
    splits = make_splits(load_cifar10(args.data_dir), DataConfig(train_size=args.images, val_size=0, test_size=0))
    head = by_bs[str(args.batch_sizes[0])]
    result = {
        "command": " ".join([sys.executable, *sys.argv]), "date": now_iso(), "seed": 0,
        "hardware": describe_hardware("cpu"), "images": args.images, "batch_size": args.batch_sizes[0],
        "repeats": args.repeats, "model": "original CifarNet (153,104 parameters)",
        **head, "by_batch_size": by_bs,
        "augmentation_only_images_per_s": augmentation_images_per_s(splits.train.images),
    }
    write_json_atomic(result, args.out)
    for k, v in result["augmentation_only_images_per_s"].items():
        print(f"augmentation {k:<30} {v:8.0f} images/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
