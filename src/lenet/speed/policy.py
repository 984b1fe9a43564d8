"""What a run computes with on this machine: ``resolve_speed`` decides, once, at the start.

What the config fixes is taken as it is; what it leaves open ("auto", None) is decided
by the device and, on the CPU, by this machine's measured step times (calibration.py):
bf16 where the CPU has bf16 units and its best step beat float32's clearly; then, for
that precision, two halves at once where they were about as fast as the best other
step, else micro-batches where they were faster. A resumed run keeps what its
checkpoint recorded, so it continues exactly; --deterministic takes no measured choice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import torch

from ..device import cpu_flags
from ..errors import UsageError
from .allocator import tune_cpu_allocator
from .calibration import MICRO_BATCH_CPU, calibrating, cpu_speedups
from .choice import Speed
from .config import NOT_STACKED, SpeedConfig

BF16_MARGIN = 1.1  # bf16 only where its best step beat float32's by 10%: noise never chooses it
MICRO_MARGIN = 1.05  # micro-batches only where clearly faster
# Halves wherever they measured within 3% of the best other step: their gain comes in
# spells of slow two-thread sharing that a one-off measurement may not meet (docs/speed.md).
HALVES_MARGIN = 0.97
MIN_HALF = 64  # images: below that, per-operation costs outweigh the smaller activations


def fast_bf16_hardware() -> bool:
    """AMX or AVX-512 BF16: the CPU computes bf16 dot products natively. Whether that makes
    a LeNet faster is measured (calibration.py), not assumed: autocast adds casts."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_speed(cfg: SpeedConfig, device: torch.device, *, batch_size: int, deterministic: bool = False,
                  batch_norm: bool = False, dropout: bool = False, recorded: dict[str, Any] | None = None,
                  measured: Mapping[str, float] | None = None, stacked: bool = False) -> Speed:
    """The run's speed switches. ``recorded``: the choice a checkpoint holds (a resumed run
    keeps it); ``batch_norm``, ``dropout``: whether the network has any (no micro-batches
    with batch norm, no halves with either); ``measured``: step speed-ups as
    calibration.cpu_speedups gives them, instead of this machine's (cached) measurement;
    ``stacked``: K runs as one stacked model, which takes none of NOT_STACKED (the CPU
    would otherwise choose some by itself) and its precision as a run's."""
    if stacked:
        cfg = cfg.model_copy(update={s: 0 if s == "micro_batch" else False for s in NOT_STACKED})
    allocator = tune_cpu_allocator() if device.type == "cpu" else ""  # before any measuring
    compiled = dict(compile=cfg.compile, cuda_graphs=cfg.cuda_graphs)
    if recorded:
        # Halves are a CPU path: a run resumed on another device goes on without them.
        speed = replace(Speed.from_dict(recorded, allocator), **compiled)
        return speed if device.type == "cpu" else replace(speed, parallel_halves=False)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cpu"
    fused = cfg.fused_layers if cfg.fused_layers is not None else device.type == "cpu" and channels_last \
        and not cfg.compile
    precision = "bf16" if cfg.amp else cfg.precision
    if precision == "tf32" and device.type != "cuda":
        raise UsageError(f"--precision tf32 needs a CUDA device; this run is on {device}")
    _check_micro_batch(cfg, batch_norm)
    if cfg.cuda_graphs and device.type != "cuda":
        raise UsageError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    can_split = device.type == "cpu" and not batch_norm and not cfg.cuda_graphs and batch_size > MICRO_BATCH_CPU
    can_halve = _check_halves(cfg, device, batch_size, batch_norm, dropout)
    # The forms of a step this run may take ("": whole batches); one the user fixed is the only one.
    if cfg.parallel_halves:
        forms: tuple[str, ...] = ("halves",)
    elif cfg.micro_batch:
        forms = ("micro",)
    else:
        forms = ("", *(("micro",) if can_split and cfg.micro_batch is None else ()),
                 *(("halves",) if can_halve and cfg.parallel_halves is None else ()))
    bf16_units = device.type == "cpu" and fast_bf16_hardware()
    open_choice = device.type == "cpu" and not deterministic and (
        (precision == "auto" and bf16_units) or (cfg.micro_batch is None and can_split)
        or (can_halve and cfg.parallel_halves is None))
    measure, not_measured = calibrating(cfg.calibrate)
    if not open_choice:
        measured = {}
    elif measured is None:
        measured = cpu_speedups(bf16_units) if measure else {}

    def speedup(p: str, form: str) -> float:
        return measured.get(f"{p} {form}".strip(), 0.0 if form else 1.0)

    def best(p: str) -> float:
        return max(speedup(p, form) for form in forms)

    if precision != "auto":
        reason = "asked for"
    elif device.type != "cpu":
        precision, reason = "fp32", "auto: fp32"
    elif not bf16_units:
        precision, reason = "fp32", "auto: fp32 (no AMX or AVX-512 BF16 on this CPU)"
    elif deterministic:
        precision, reason = "fp32", "auto: fp32 (--deterministic: no measured choice)"
    elif not measured:
        precision, reason = "fp32", f"auto: fp32 (not measured: {not_measured})"
    else:
        precision = "bf16" if best("bf16") > BF16_MARGIN * best("fp32") else "fp32"
        reason = f"auto: bf16 measured at {best('bf16') / best('fp32'):.2f}x fp32 on this CPU"

    # bf16 asked on a CPU without bf16 units was not measured: fp32's verdict stands in.
    key = precision if f"{precision} micro" in measured else "fp32"
    if cfg.parallel_halves is not None:
        halves = bool(cfg.parallel_halves)
    elif "halves" not in forms or deterministic or not measured:
        halves = False
    else:
        others = max(speedup(key, form) for form in forms if form != "halves")
        halves = speedup(key, "halves") >= HALVES_MARGIN * others
        reason += f"; halves measured at {speedup(key, 'halves') / others:.2f}x the best other step"
    if cfg.micro_batch is not None:
        micro = cfg.micro_batch
    elif not can_split or deterministic or halves or not measured:
        micro = 0
    else:
        micro = MICRO_BATCH_CPU if measured[f"{key} micro"] > MICRO_MARGIN * measured.get(key, 1.0) else 0
    return Speed(precision, channels_last, reason, micro, allocator, fused, halves, **compiled)


def _check_halves(cfg: SpeedConfig, device: torch.device, batch_size: int, batch_norm: bool,
                  dropout: bool) -> bool:
    """Whether two halves at once can be measured and chosen for this run; asked for
    where they cannot run, a UsageError that says why."""
    why = None
    if device.type != "cpu":
        why = f"it is a CPU path; this run is on {device}"
    elif batch_norm:
        why = "batch norm would take its statistics per half, not per batch"
    elif dropout:
        why = ("the two halves would draw their dropout masks from one generator at once, "
               "in an order no run repeats")
    elif cfg.compile or cfg.cuda_graphs:
        why = "it does not combine with --compile or --cuda-graphs"
    elif cfg.micro_batch:
        why = f"it does not combine with --micro-batch {cfg.micro_batch}"
    elif batch_size < 2 * MIN_HALF:
        why = f"batches of {batch_size} are too small to halve (at least {2 * MIN_HALF} images)"
    elif torch.get_num_threads() < 2:
        why = "torch has one thread here"
    if why and cfg.parallel_halves:
        raise UsageError(f"speed.parallel_halves: {why}; leave it unset (measured) or set it false")
    return why is None


def _check_micro_batch(cfg: SpeedConfig, batch_norm: bool) -> None:
    if cfg.micro_batch and batch_norm:
        raise UsageError(f"--micro-batch {cfg.micro_batch}: batch norm would take its statistics per part, "
                         "not per batch; use --micro-batch 0 with batch-norm networks")
    if cfg.micro_batch and cfg.cuda_graphs:
        raise UsageError("--micro-batch does not combine with --cuda-graphs (one recorded step per batch)")


def configure_backends(device: torch.device, speed: Speed, deterministic: bool) -> None:
    """Process-wide settings a run depends on, set (and reset) at its start."""
    if device.type == "cuda":
        # TF32 matmuls only when asked; cuDNN's convolutions use TF32 by PyTorch's default.
        torch.backends.cuda.matmul.allow_tf32 = speed.precision == "tf32"
        # cuDNN's per-shape algorithm search pays for a recorded step (GPU-bound) and costs
        # an eager one (launch-bound): on with CUDA graphs only (docs/speed.md).
        torch.backends.cudnn.benchmark = speed.cuda_graphs and not deterministic
