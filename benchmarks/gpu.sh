#!/usr/bin/env bash
# GPU measurements in one go, for a machine with one or more NVIDIA GPUs (run from the repo root, in the
# project's venv with CIFAR-10 at $CIFAR10_DIR). Each step writes its own results file; the CPU figures in
# those files are kept. About 10-15 min on one current GPU.
#   bash benchmarks/gpu.sh
set -euo pipefail
DATA="${CIFAR10_DIR:-../shared/data/cifar10}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# Trial packing: 1, 2, 4 and 8 concurrent trials on one GPU (quick.toml's space, 20k images x 2 epochs a trial);
# merges the cuda rows into results/packing.json, which `--workers auto` reads.
python benchmarks/packing.py --data-dir "$DATA" --device cuda:0 --concurrent 1 2 4 8 --trials 16 \
    --train-size 20000 --val-size 5000 --repeats 2
