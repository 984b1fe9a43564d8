"""Where and how tensors compute: the device, seeding, autocast, and what the machine is.

Shared by training and inference alike, so that predict, evaluate, export, inspect
and serve never need the training loop to pick a device.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import LenetError, UsageError

if TYPE_CHECKING:
    from .optim import LeanSGD


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; a named device must exist here."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


# Images per evaluation batch where the config leaves it open. A GPU wants big batches to
# stay busy. On a CPU a 2,048-image batch's first activations (2048x6x28x28 float32,
# 38 MB, and as much again for the sigmoid's output) outgrow the caches: the d2l LeNet
# evaluated 10,000 images at 10.5k images/s in batches of 2,048 and 27k in batches of 256
# (1 thread, 2-core AMD EPYC, benchmarks/eval_batch.py).
EVAL_BATCH_GPU, EVAL_BATCH_CPU = 2048, 256


def eval_batch_size(requested: int | None, device: torch.device) -> int:
    """train.eval_batch_size, or this device's default where it is None."""
    if requested is not None:
        return requested
    return EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH_GPU


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA docs, "Reproducibility").
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, enabled: bool, cache: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast (--amp): bf16 needs no loss scaling, unlike fp16, and runs on
    CPUs with AVX-512 BF16/AMX as well as on CUDA. ``cache=False`` while recording a CUDA
    graph: a bf16 copy of a weight cached at recording time would never be refreshed."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer read next measures work done, not work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    try:  # on Linux; cpuinfo names the chip
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return cpu_name()


# --------------------------------------------------------------------------- speed


@dataclass(frozen=True)
class Speed:
    """The speed switches a run uses on this machine, with why ("auto" resolved)."""

    precision: str  # fp32 | bf16 | tf32
    channels_last: bool
    reason: str = ""
    micro_batch: int = 0  # images per forward/backward part of a step; 0: the whole batch at once

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last, "reason": self.reason,
                "micro_batch": self.micro_batch}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16_hardware() -> bool:
    """AMX or AVX-512 BF16: the CPU computes bf16 dot products natively. Whether that makes
    a LeNet faster is measured (calibrate_bf16), not assumed: autocast adds casts."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def resolve_speed(train: Any, device: torch.device, recorded: dict[str, Any] | None = None,
                  batch_norm: bool = False) -> Speed:
    """The run's precision, layout and micro-batches. ``train``: its TrainConfig;
    ``recorded``: the choice a checkpoint holds (a resumed run keeps it, so it continues
    exactly); ``batch_norm``: whether the network has any (no micro-batches then)."""
    if recorded:
        return Speed(recorded["precision"], bool(recorded["channels_last"]), recorded.get("reason", ""),
                     int(recorded.get("micro_batch", 0)))  # checkpoints before micro-batches: none
    channels_last = train.channels_last if train.channels_last is not None else device.type == "cpu"
    precision, reason = _precision(train, device)
    return Speed(precision, channels_last, reason, _micro_batch(train, device, batch_norm))


def _precision(train: Any, device: torch.device) -> tuple[str, str]:
    precision = "bf16" if train.amp else train.precision
    if precision == "tf32" and device.type != "cuda":
        raise UsageError(f"--precision tf32 needs a CUDA device; this run is on {device}")
    if precision != "auto":
        return precision, "asked for"
    if device.type != "cpu" or not fast_bf16_hardware():
        return "fp32", "auto: fp32" + ("" if device.type != "cpu" else " (no AMX or AVX-512 BF16 on this CPU)")
    if train.deterministic:
        return "fp32", "auto: fp32 (--deterministic: no measured choice)"
    ratio = bf16_speedup()
    # bf16 only where it pays clearly: a 10% margin keeps timing noise from choosing it.
    chosen = "bf16" if ratio > BF16_MARGIN else "fp32"
    return chosen, f"auto: bf16 measured at {ratio:.2f}x fp32 on this CPU"


# Images per forward/backward part of a CPU step (train.micro_batch None). A batch of 256
# in one piece has 256x6x28x28 float32 activations (4.8 MB per tensor, several alive at
# once) that outgrow a core's caches, and the sigmoid, pooling and convolution passes over
# them wait on memory; in parts of 128 they fit.
MICRO_BATCH_CPU = 128


def _micro_batch(train: Any, device: torch.device, batch_norm: bool) -> int:
    if train.micro_batch is not None:
        if train.micro_batch and batch_norm:
            raise UsageError(f"--micro-batch {train.micro_batch}: batch norm would take its statistics per part, "
                             "not per batch; use --micro-batch 0 with batch-norm networks")
        if train.micro_batch and train.cuda_graphs:
            raise UsageError("--micro-batch does not combine with --cuda-graphs (one recorded step per batch)")
        return train.micro_batch
    if device.type != "cpu" or batch_norm or train.cuda_graphs or train.batch_size <= MICRO_BATCH_CPU:
        return 0
    return MICRO_BATCH_CPU


BF16_MARGIN = 1.1


def calibration_key() -> str:
    """This machine, as far as the bf16 measurement cares: the CPU, torch and the threads."""
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def calibration_file() -> Path:
    return _cache_dir() / "bf16-speedup.json"


def bf16_speedup(rounds: int = 5) -> float:
    """How much faster the d2l LeNet trains (batch 256, channels-last) under bf16 autocast
    than in float32 on this CPU (>1: bf16 faster). Measured once per machine and kept in
    the user cache, so every run here makes the same choice: delete
    ~/.cache/lenet/bf16-speedup.json to measure again."""
    import json
    import time

    from .models import LeNet, ModelConfig
    from .optim import LeanSGD

    cache, key = calibration_file(), calibration_key()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), (int, float)):
        return float(known[key])
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
        torch.manual_seed(0)
        x = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (256,))
        nets = {bf16: LeNet(ModelConfig()).to(memory_format=torch.channels_last) for bf16 in (False, True)}
        optimizers = {bf16: LeanSGD(net.parameters(), lr=0.01) for bf16, net in nets.items()}
        for bf16 in (False, True):  # warm-up: oneDNN picks and builds its kernels
            _train_step(nets[bf16], optimizers[bf16], x, y, bf16)
        # Alternating rounds of 3 steps each; the median of the ratios taken side by side
        # is not fooled by a neighbour's burst of load.
        ratios = []
        for _ in range(rounds):
            seconds = {}
            for bf16 in (False, True):
                tic = time.perf_counter()
                for _ in range(3):
                    _train_step(nets[bf16], optimizers[bf16], x, y, bf16)
                seconds[bf16] = time.perf_counter() - tic
            ratios.append(seconds[False] / max(seconds[True], 1e-9))
    ratio = sorted(ratios)[len(ratios) // 2]
    record_bf16_speedup(ratio)
    return ratio


def record_bf16_speedup(ratio: float) -> None:
    """Keep this machine's measurement (or a user's decision: ratio 0 = never bf16)."""
    import json

    from .files import atomic_write_text

    cache = calibration_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        known = known if isinstance(known, dict) else {}
        known[calibration_key()] = round(ratio, 3)
        atomic_write_text(cache, json.dumps(known, indent=1) + "\n")
    except (OSError, LenetError):
        pass  # a cache that cannot be written only means measuring again next time


def _train_step(net: torch.nn.Module, optimizer: LeanSGD, x: torch.Tensor, y: torch.Tensor,
                bf16: bool) -> None:
    with autocast(torch.device("cpu"), bf16):
        logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lenet"


def configure_backends(device: torch.device, speed: Speed, graphs: bool, deterministic: bool) -> None:
    """Process-wide settings a run depends on, set (and reset) at its start."""
    if device.type == "cuda":
        # TF32 matmuls only when asked; cuDNN's convolutions use TF32 by PyTorch's default.
        torch.backends.cuda.matmul.allow_tf32 = speed.precision == "tf32"
        # cuDNN timing its algorithms per shape paid for the recorded step (GPU-bound:
        # 588k against 529k examples/s on an H200) and cost the eager step (CPU-bound:
        # 100k against 122k), so it is on with --cuda-graphs only.
        torch.backends.cudnn.benchmark = graphs and not deterministic
