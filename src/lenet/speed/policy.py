"""Where and how tensors compute: the device, seeding, autocast, and what the machine is.

Shared by training and inference alike, so that predict, evaluate, export, inspect
and serve never need the training loop to pick a device.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LenetError, UsageError


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
# evaluates the 10,000 test images at 54k images/s in batches of 2,048 and 85k in
# batches of 1,000, against 74k in batches of 256 (through the fused layers, as a CPU
# run evaluates; 64k against 61k through the model's own layers), 2 threads on a 2-core
# AMD EPYC (`python benchmarks/eval_batch.py`, medians of 9). 1,000 also divides the
# test set and the usual validation splits, so no odd last batch has oneDNN build
# kernels for one more shape.
EVAL_BATCH_GPU, EVAL_BATCH_CPU = 2048, 1000


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
    allocator: str = ""  # how the CPU's malloc was set (tune_cpu_allocator); "" elsewhere
    fused_layers: bool = False  # the forward's rewritten layers (fused.py)
    parallel_halves: bool = False  # each batch's two halves at once on two threads (in_halves)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last, "reason": self.reason,
                "micro_batch": self.micro_batch, "allocator": self.allocator, "fused_layers": self.fused_layers,
                "parallel_halves": self.parallel_halves}

    @classmethod
    def from_dict(cls, record: dict[str, Any], allocator: str | None = None) -> Speed:
        """A recorded choice (``to_dict``: a checkpoint's, a benchmark's); ``allocator``: this
        process's malloc setting in place of the recorded one. Records from before
        micro-batches, fused layers or halves had none; an empty one is float32, NCHW."""
        return cls(str(record.get("precision", "fp32")), bool(record.get("channels_last", False)),
                   str(record.get("reason", "")), int(record.get("micro_batch", 0)),
                   str(record.get("allocator", "")) if allocator is None else allocator,
                   bool(record.get("fused_layers", False)), bool(record.get("parallel_halves", False)))

    def describe(self, batch_size: int | None = None) -> str:
        """What the steps compute with, as the log's first line and the benchmarks print it:
        "bf16, channels-last, micro-batches of 128, fused layers". Micro-batches are named
        only where they split ``batch_size`` (a batch of 128 in parts of 128 is whole)."""
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels-last")
        if self.micro_batch > 0 and (batch_size is None or self.micro_batch < batch_size):
            parts.append(f"micro-batches of {self.micro_batch}")
        if self.parallel_halves:
            parts.append("two halves at once")
        if self.fused_layers:
            parts.append("fused layers")
        return ", ".join(parts)


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
    a LeNet faster is measured (cpu_speedups), not assumed: autocast adds casts."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


# glibc's malloc serves a block above its mmap threshold (128 KB at start, raised only as
# big blocks are freed) with fresh pages from the kernel and hands them back on free, so
# a d2l step's activations (4.8 MB a tensor at batch 256) cost about 1,200 page faults
# each, every step. Pinning the threshold at glibc's maximum and keeping up to 256 MB of
# freed memory for reuse trained the d2l recipe in float32 at 18.0-19.0k examples/s
# against 11.4-13.9k (whole batches, 2 threads, 2-core AMD EPYC, torch 2.13; the same
# process otherwise). PyTorch's CPU tuning guide makes the same point with jemalloc or
# tcmalloc; this needs no preloaded library.
MMAP_THRESHOLD = 32 << 20  # bytes: glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 256 << 20  # bytes of freed heap kept for reuse before returning any
_allocator_tuned: str | None = None


def tune_cpu_allocator() -> str:
    """Set glibc's malloc as described above, once per process (results are unchanged;
    only where memory comes from). Returns what was done, for environment.json."""
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = "unchanged (not glibc)"
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
            gnu = libc.gnu_get_libc_version
        except (OSError, AttributeError):
            return _allocator_tuned
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        if mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD):
            gnu.restype = ctypes.c_char_p
            _allocator_tuned = (f"glibc {gnu().decode()}: mmap threshold {MMAP_THRESHOLD >> 20} MB, "
                                f"trim threshold {TRIM_THRESHOLD >> 20} MB")
    return _allocator_tuned


def resolve_speed(train: Any, device: torch.device, recorded: dict[str, Any] | None = None,
                  batch_norm: bool = False, dropout: bool = False) -> Speed:
    """The run's precision, layout, micro-batches, halves and fused layers. ``train``: its
    TrainConfig; ``recorded``: the choice a checkpoint holds (a resumed run keeps it, so it
    continues exactly); ``batch_norm``, ``dropout``: whether the network has any (no
    micro-batches with batch norm, no halves with either).

    On the CPU, malloc is tuned first (tune_cpu_allocator), then what "auto" and None
    leave open is chosen from this machine's measured step times (cpu_speedups): bf16
    where the CPU has bf16 units and its best step beat float32's best by BF16_MARGIN;
    then, for that precision, two halves at once where they were within HALVES_MARGIN
    of the best, else micro-batches where they were faster. --deterministic takes no
    measured choice: float32, whole batches."""
    allocator = tune_cpu_allocator() if device.type == "cpu" else ""  # before any measuring
    if recorded:
        # Checkpoints from before micro-batches, fused layers or halves had none. Halves
        # are a CPU path: a run resumed on another device goes on without them.
        speed = Speed.from_dict(recorded, allocator)
        return speed if device.type == "cpu" else replace(speed, parallel_halves=False)
    channels_last = train.channels_last if train.channels_last is not None else device.type == "cpu"
    fused = (train.fused_layers if train.fused_layers is not None
             else device.type == "cpu" and channels_last and not train.compile)
    precision = "bf16" if train.amp else train.precision
    if precision == "tf32" and device.type != "cuda":
        raise UsageError(f"--precision tf32 needs a CUDA device; this run is on {device}")
    _check_micro_batch(train, batch_norm)
    can_split = (device.type == "cpu" and not batch_norm and not train.cuda_graphs
                 and train.batch_size > MICRO_BATCH_CPU)
    can_halve = _check_halves(train, device, batch_norm, dropout)
    # The forms of a step this run may take ("": whole batches); one the user fixed is the only one.
    if train.parallel_halves:
        forms: tuple[str, ...] = ("halves",)
    elif train.micro_batch:
        forms = ("micro",)
    else:
        forms = ("", *(("micro",) if can_split and train.micro_batch is None else ()),
                 *(("halves",) if can_halve and train.parallel_halves is None else ()))
    bf16_units = device.type == "cpu" and fast_bf16_hardware()
    measure = device.type == "cpu" and not train.deterministic and (
        (precision == "auto" and bf16_units) or (train.micro_batch is None and can_split)
        or (can_halve and train.parallel_halves is None))
    measured = cpu_speedups() if measure else {}

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
    elif train.deterministic:
        precision, reason = "fp32", "auto: fp32 (--deterministic: no measured choice)"
    else:
        # bf16 only where it pays clearly: a 10% margin keeps timing noise from choosing it.
        precision = "bf16" if best("bf16") > BF16_MARGIN * best("fp32") else "fp32"
        reason = f"auto: bf16 measured at {best('bf16') / best('fp32'):.2f}x fp32 on this CPU"

    # bf16 asked on a CPU without bf16 units was not measured: fp32's verdict stands in.
    key = precision if f"{precision} micro" in measured else "fp32"
    if train.parallel_halves is not None:
        halves = bool(train.parallel_halves)
    elif "halves" not in forms or train.deterministic:
        halves = False
    else:
        others = max(speedup(key, form) for form in forms if form != "halves")
        halves = speedup(key, "halves") >= HALVES_MARGIN * others
        reason += f"; halves measured at {speedup(key, 'halves') / others:.2f}x the best other step"
    if train.micro_batch is not None:
        micro = train.micro_batch
    elif not can_split or train.deterministic or halves:
        micro = 0
    else:
        micro = MICRO_BATCH_CPU if measured[f"{key} micro"] > MICRO_MARGIN * measured.get(key, 1.0) else 0
    return Speed(precision, channels_last, reason, micro, allocator, fused, halves)


def _check_halves(train: Any, device: torch.device, batch_norm: bool, dropout: bool) -> bool:
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
    elif train.compile or train.cuda_graphs:
        why = "it does not combine with --compile or --cuda-graphs"
    elif train.micro_batch:
        why = f"it does not combine with --micro-batch {train.micro_batch}"
    elif train.batch_size < 2 * MIN_HALF:
        why = f"batches of {train.batch_size} are too small to halve (at least {2 * MIN_HALF} images)"
    elif torch.get_num_threads() < 2:
        why = "torch has one thread here"
    if why and train.parallel_halves:
        raise UsageError(f"train.parallel_halves: {why}; leave it unset (measured) or set it false")
    return why is None


def _check_micro_batch(train: Any, batch_norm: bool) -> None:
    if train.micro_batch and batch_norm:
        raise UsageError(f"--micro-batch {train.micro_batch}: batch norm would take its statistics per part, "
                         "not per batch; use --micro-batch 0 with batch-norm networks")
    if train.micro_batch and train.cuda_graphs:
        raise UsageError("--micro-batch does not combine with --cuda-graphs (one recorded step per batch)")


# Images per forward/backward part of a CPU step, where micro-batches measured faster:
# a batch of 256 in one piece has 256x6x28x28 float32 activations (4.8 MB a tensor,
# several alive at once), more than a core's L2 cache. On the 2-core AMD EPYC (1 MB of L2
# a core) parts of 128 trained the d2l recipe at 1.3-1.4x whole batches before malloc
# was tuned, and at 0.89-0.99x after: most of that gain was page faults, which the tuning
# removes, so there the measurement leaves them off. They stay a measured choice for
# other CPUs and allocators (parts of 64 were slower than 128 in every run before it).
MICRO_BATCH_CPU = 128
MICRO_MARGIN = 1.05  # micro-batches only where they are clearly faster
# Two halves at once (halves.py) wherever they measured at least 0.97x the best other
# step: on the 2-core AMD EPYC they were even (1.00x, median of 349 rounds) in its fast
# state and 1.27x (51 rounds) in the slow one, which lasts minutes and which a
# measurement taken once may not meet; a tie within the timing noise therefore goes to
# them (`python benchmarks/halves_step.py`).
HALVES_MARGIN = 0.97
# The measurement is of d2l's batch of 256. Halves below 64 images are not taken on its
# word: one thread stepped 2 parts of 64 slower than 1 of 128 (8.2-10.3 against 6.5-7.6 ms
# for a batch of 256 in bf16), per-operation costs outweighing the smaller activations.
MIN_HALF = 64
BF16_MARGIN = 1.1


def calibration_key() -> str:
    """This machine, as far as the step-time measurement cares: the CPU, torch, the
    threads, and whether malloc was tuned (it changes which step is fastest); "fused
    layers" marks the step measured since it has them, so older measurements are redone."""
    tuned = "" if tune_cpu_allocator().startswith("unchanged") else " | malloc tuned"
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads{tuned} | fused layers"


def calibration_file() -> Path:
    return _cache_dir() / "cpu-speed.json"


CANDIDATES = ("fp32", "fp32 micro", "fp32 halves", "bf16", "bf16 micro", "bf16 halves")


def cpu_speedups(rounds: int = 7) -> dict[str, float]:
    """Speed-ups of the d2l LeNet's training step (batch 256, channels-last, fused layers) on this CPU
    over a whole-batch float32 step: {"fp32": 1.0, "fp32 micro": ..., "fp32 halves": ...,
    "bf16": ..., ...} ("micro": in micro-batches of MICRO_BATCH_CPU; "halves": the two
    halves at once on two threads, halves.py; the bf16 entries only where the CPU has bf16
    units). Measured once per machine and kept in the user
    cache, so every run here makes the same choice: delete ~/.cache/lenet/cpu-speed.json
    to measure again."""
    import time

    from .fused import fused_forward
    from .halves import threads_for
    from ..model.network import LeNet, ModelConfig

    tune_cpu_allocator()  # measured as training will run
    wanted = CANDIDATES if fast_bf16_hardware() else tuple(c for c in CANDIDATES if c.startswith("fp32"))
    known = _calibrations().get(calibration_key())
    if isinstance(known, dict) and all(isinstance(known.get(c), (int, float)) for c in wanted):
        return {c: float(known[c]) for c in wanted}
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
        torch.manual_seed(0)
        x = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (256,))
        nets = {c: fused_forward(LeNet(ModelConfig()).to(memory_format=torch.channels_last)) for c in wanted}
        for c in wanted:  # warm-up: oneDNN picks and builds its kernels
            with threads_for(c.endswith("halves")):  # held over several steps, as training holds them
                for _ in range(3):
                    _train_step(nets[c], x, y, c)
        # Rounds of 3 steps per candidate, each first in turn; the median of each round's
        # ratios is not fooled by a neighbour's burst of load. The timings also depend on
        # malloc's state, which is why it is tuned first: untuned, micro-batches measured
        # 0.92-1.04x in a fresh process and 1.39-1.47x in one that had loaded a dataset.
        # One untimed step first: the threads the previous candidate woke settle.
        ratios: dict[str, list[float]] = {c: [] for c in wanted}
        for r in range(rounds):
            seconds = {}
            for c in wanted[r % len(wanted):] + wanted[:r % len(wanted)]:  # each goes first in turn
                with threads_for(c.endswith("halves")):
                    _train_step(nets[c], x, y, c)
                    tic = time.perf_counter()
                    for _ in range(3):
                        _train_step(nets[c], x, y, c)
                    seconds[c] = time.perf_counter() - tic
            for c in wanted:
                ratios[c].append(seconds["fp32"] / max(seconds[c], 1e-9))
    speedups = {c: sorted(r)[len(r) // 2] for c, r in ratios.items()}
    record_cpu_speedups(speedups)
    return {c: round(v, 3) for c, v in speedups.items()}


def record_cpu_speedups(speedups: dict[str, float]) -> None:
    """Keep this machine's measurement (or a user's decision: {"bf16": 0, "bf16 micro": 0}
    = never bf16)."""
    import json

    from ..store.files import atomic_write_text

    cache, known = calibration_file(), _calibrations()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        known[calibration_key()] = {c: round(float(v), 3) for c, v in speedups.items()}
        atomic_write_text(cache, json.dumps(known, indent=1) + "\n")
    except (OSError, LenetError):
        pass  # a cache that cannot be written only means measuring again next time


def _calibrations() -> dict[str, Any]:
    """The cache file's measurements by machine key; {} where it is missing or unreadable."""
    import json

    try:
        known = json.loads(calibration_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _train_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, candidate: str) -> None:
    """One d2l step as training.Learner takes it, its SGD update written out (an
    inference module may import this one; the optimisers live with the training loop)."""
    params = list(net.parameters())
    for p in params:
        p.grad = None

    def part(xs: torch.Tensor, ys: torch.Tensor) -> None:
        with autocast(torch.device("cpu"), candidate.startswith("bf16")):
            logits = net(xs)
        (torch.nn.functional.cross_entropy(logits.float(), ys) * (len(ys) / len(y))).backward()

    if candidate.endswith("halves"):  # inside threads_for(True)
        from .halves import in_halves

        in_halves(part, x, y)
    else:
        parts = MICRO_BATCH_CPU if candidate.endswith("micro") else len(x)
        for xs, ys in zip(x.split(parts), y.split(parts)):
            part(xs, ys)
    with torch.no_grad():
        torch._foreach_add_(params, [p.grad for p in params], alpha=-0.01)


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
