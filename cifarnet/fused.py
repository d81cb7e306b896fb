"""ReLU -> BatchNorm2d in two passes over memory per direction, for training on the CPU.

Opt-in (CIFARNET_FUSED=1): the default path needs no C compiler at run time. Why it exists: on a CPU whose
convolutions are cheap (AMX), the native batch norm plus the ReLU before it take a large share of a bf16
training step (figures: results/throughput.json). This C kernel reads a channels_last activation as a (rows, channels) matrix: one pass gathers the
per-channel sums of relu(x) (and, backward, of grad and grad * relu(x)), the second writes the result.

The C source (cifarnet/relu_bn.c) is compiled once per machine with the system's C compiler (gcc or cc,
`-O3 -march=native -fopenmp`) into ~/.cache/cifarnet and loaded with ctypes. Its OpenMP is the libgomp torch
has already loaded, so the kernel splits rows over torch's own thread pool (a second pool would spin against
it on 2 cores). Without a compiler, on a GPU, for NCHW or other dtypes, in eval mode or under torch.compile,
the module runs the native ReLU + BatchNorm2d: same parameters, same state_dict keys, same result up to
rounding (tests/cifarnet/test_fused.py); so does everything without CIFARNET_FUSED=1.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_C_SOURCE = (Path(__file__).parent / "relu_bn.c").read_text()

_SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}
MAX_CHANNELS = 1024  # MAXC in the C source
_lib: ctypes.CDLL | None = None
_lib_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "cifarnet"


def _machine_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:  # -march=native: a library built on one CPU may not run on another
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256((_C_SOURCE + flags).encode()).hexdigest()[:16]


def _build() -> ctypes.CDLL:
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    target = _cache_dir() / f"relu_bn_{_machine_key()}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, out = Path(tmp) / "relu_bn.c", Path(tmp) / "relu_bn.so"
            src.write_text(_C_SOURCE)
            cmd = [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", str(out), str(src)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
            os.replace(out, target)  # atomic: a concurrent worker sees the old or the whole new file
    lib = ctypes.CDLL(str(target))
    for name in ("stats", "apply", "grad_stats", "grad_apply"):
        for suf in _SUFFIX.values():
            getattr(lib, f"{name}_{suf}").restype = ctypes.c_int
    return lib


def kernel() -> ctypes.CDLL | None:
    """The compiled library, built on first use with CIFARNET_FUSED=1; None without it, or (after one
    warning) where it cannot be built."""
    global _lib, _lib_tried
    if not _lib_tried:
        _lib_tried = True
        if os.environ.get("CIFARNET_FUSED") == "1":
            try:
                _lib = _build()
            except (OSError, RuntimeError) as e:
                log.warning("fused ReLU+BatchNorm kernel unavailable, using the native ops: %s", e)
    return _lib


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _rows_and_width(x: torch.Tensor) -> tuple[int, int, int]:
    """(rows, width, k): x seen as rows of `width` = k * C values. Narrow maps (16 channels) are read k rows at
    a time as one 64-wide row: a 16-wide inner loop ran 20x slower per element than a 64-wide one."""
    c = x.shape[1]
    rows = x.numel() // c
    k = 64 // c if c < 64 and 64 % c == 0 and rows % (64 // c) == 0 else 1
    return rows // k, c * k, k


def _channel_sums(name: str, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float64 sums (s1, s2) of the `name` kernel over all of x = tensors[-1]."""
    rows, width, k = _rows_and_width(tensors[-1])
    sums = torch.zeros(2, width, dtype=torch.float64)
    fn = getattr(_lib, f"{name}_{_SUFFIX[tensors[-1].dtype]}")
    fn(*map(_ptr, tensors), ctypes.c_int64(rows), ctypes.c_int64(width), _ptr(sums[0]), _ptr(sums[1]))
    s1, s2 = sums.view(2, k, width // k).sum(1)  # fold the k rows read as one back onto the channels
    return s1, s2


def _apply(name: str, tensors: list[torch.Tensor], per_channel: list[torch.Tensor]) -> None:
    """Run the `name` write pass; x = tensors[0] for "apply", tensors[1] for "grad_apply" (same shape)."""
    rows, width, k = _rows_and_width(tensors[0])
    fn = getattr(_lib, f"{name}_{_SUFFIX[tensors[0].dtype]}")
    vectors = [v.float().repeat(k) for v in per_channel]  # one value per column of the k-row-wide view
    fn(*map(_ptr, tensors), ctypes.c_int64(rows), ctypes.c_int64(width), *map(_ptr, vectors))


class _ReluBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # x: (N, C, H, W) channels_last: N*H*W rows of C values
        n = x.numel() // x.shape[1]
        s1, s2 = _channel_sums("stats", [x])
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps).float()
        scale = weight.detach().float() * invstd
        shift = bias.detach().float() - mean.float() * scale
        y = torch.empty_like(x, memory_format=torch.channels_last)
        _apply("apply", [x, y], [scale, shift])
        ctx.save_for_backward(x, mean.float(), invstd, scale)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, mean, invstd, scale = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        g = grad_y.to(x.dtype).contiguous(memory_format=torch.channels_last)
        sum_g, sum_gy = (s.float() for s in _channel_sums("grad_stats", [g, x]))
        grad_weight = invstd * (sum_gy - mean * sum_g)
        k1 = -scale * invstd * grad_weight / n
        k0 = -scale * sum_g / n - mean * k1
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        _apply("grad_apply", [g, x, dx], [scale, k1, k0])
        return dx, grad_weight, sum_g, None


class ReLUBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d(relu(x))`; in training on the CPU with a channels_last float32/bf16 input, one fused kernel."""

    def _fusable(self, x: torch.Tensor) -> bool:
        return (
            self.training and self.affine and self.track_running_stats and x.device.type == "cpu"
            and x.dtype in _SUFFIX and self.weight.dtype == torch.float32 and x.dim() == 4
            and x.shape[1] <= MAX_CHANNELS and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and kernel() is not None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable(x):
            return super().forward(F.relu(x))
        y, mean, var = _ReluBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        rows = x.numel() // x.shape[1]
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_((var * rows / (rows - 1)).to(self.running_var.dtype), momentum)
        return y


def fuse_relu_batchnorm(model: nn.Module) -> int:
    """Swap each ReLU -> BatchNorm2d pair inside an nn.Sequential for Identity -> ReLUBatchNorm2d, in place.

    Parameters, buffers and state_dict keys stay as they were (a checkpoint loads into the plain model).
    Returns the number of pairs fused."""
    fused = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            relu, bn = seq[i], seq[i + 1]
            if isinstance(relu, nn.ReLU) and type(bn) is nn.BatchNorm2d:
                bn.__class__ = ReLUBatchNorm2d  # same object: the optimizer and the EMA keep their references
                seq[i] = nn.Identity()
                fused += 1
    return fused


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of giving it back to the kernel.

    Why: each training step frees and reallocates the same activations (4-16 MB each). By default glibc unmaps
    or trims them, and touching them again costs thousands of page faults per step (measured: ~4,000 per batch
    of 256, ~7 ms of system time). Process-wide and harmless elsewhere; a no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 64 << 20)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's ceiling; larger blocks are still mapped on demand
