"""End-to-end training throughput (data + augmentation + step), original-notebook style vs our fast path.

(a) "original": written the way the original notebooks did it: a torch Dataset applying the albumentations
    pipeline (HorizontalFlip, ShiftScaleRotate, CoarseDropout, Normalize) per image, default DataLoader
    settings (no workers, no pinning), NCHW float32.
(b) "fast": the project's training loop: uint8 images in memory, batched torch augmentation, channels_last
    (and the bf16 variant). Same model (the original CifarNet), same batch size, same images.
Also the images/s of each augmentation backend alone. Writes results/throughput.json.

    python benchmarks/throughput.py --data-dir ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
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
from cifarnet.run import write_json_atomic
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
    return {"albumentations_per_image": albu, "torch_batched_incl_normalize": len(images) / (time.perf_counter() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=10240, help="training images per measurement (one pass)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path("results/throughput.json"))
    args = p.parse_args()
    splits = make_splits(load_cifar10(args.data_dir), DataConfig(train_size=args.images, val_size=0, test_size=0))
    # Warm-up pass so neither side pays one-off oneDNN kernel selection.
    fast_images_per_s(make_splits(load_cifar10(args.data_dir), DataConfig(train_size=1024, val_size=0, test_size=0)),
                      args.batch_size)
    rates = {
        "original_style": original_style_images_per_s(splits.train.images.numpy(), splits.train.labels.numpy(),
                                                       args.batch_size),
        "fast_fp32_channels_last": fast_images_per_s(splits, args.batch_size),
        "fast_bf16_channels_last": fast_images_per_s(splits, args.batch_size, bf16=True),
    }
    result = {
        "command": " ".join([sys.executable, *sys.argv]), "date": now_iso(), "seed": 0,
        "hardware": describe_hardware("cpu"), "images": args.images, "batch_size": args.batch_size,
        "model": "original CifarNet (153,104 parameters)", "train_images_per_s": rates,
        "ratio_fast_fp32_vs_original": rates["fast_fp32_channels_last"] / rates["original_style"],
        "ratio_fast_bf16_vs_original": rates["fast_bf16_channels_last"] / rates["original_style"],
        "augmentation_only_images_per_s": augmentation_images_per_s(splits.train.images),
    }
    write_json_atomic(result, args.out)
    for k, v in rates.items():
        print(f"{k:<28} {v:8.0f} images/s")
    print(f"fast/original: fp32 {result['ratio_fast_fp32_vs_original']:.2f}x, "
          f"bf16 {result['ratio_fast_bf16_vs_original']:.2f}x")
    for k, v in result["augmentation_only_images_per_s"].items():
        print(f"augmentation {k:<30} {v:8.0f} images/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
