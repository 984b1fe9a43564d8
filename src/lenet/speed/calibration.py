"""This CPU's step times: each form of the d2l training step timed once per machine.

The measurement takes the steps training takes (step.make_step over the run's own
optimiser and loss), so what it compares is what a run would do. It is cached in the
user cache (~/.cache/lenet/cpu-speed.json) under a key naming the CPU, torch, the
threads and the allocator, so every run on a machine makes the same choice; the
choice and the figures it came from are recorded with every run. ``speed.calibrate``
(or LENET_CALIBRATE=0) turns measuring off: then nothing "auto" leaves open is taken.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..device import cpu_name
from ..errors import LenetError
from ..model.network import LeNet, ModelConfig
from ..store.files import atomic_write_text
from ..training.loss import cross_entropy
from ..training.optim import Optimizer
from .allocator import allocator_tuned, tune_cpu_allocator
from .choice import Speed
from .step import make_step

MICRO_BATCH_CPU = 128  # images per part where micro-batches are chosen: a part's activations fit a core's L2
CANDIDATES = ("fp32", "fp32 micro", "fp32 halves", "bf16", "bf16 micro", "bf16 halves")
ENVIRONMENT = "LENET_CALIBRATE"


def calibrating(asked: bool | None) -> tuple[bool, str]:
    """Whether to measure (``speed.calibrate``; None: LENET_CALIBRATE, else yes), and why not."""
    if asked is not None:
        return asked, "" if asked else "speed.calibrate is false"
    value = os.environ.get(ENVIRONMENT, "1").strip().lower()
    off = value in ("0", "false", "no", "off")
    return not off, f"{ENVIRONMENT}={value}" if off else ""


def calibration_key() -> str:
    """This machine, as far as the step times care: the CPU, torch, the threads, and whether
    malloc was tuned (it changes which step is fastest); "fused layers" marks measurements
    taken since the step has them, so older ones are taken again."""
    tuned = " | malloc tuned" if allocator_tuned() else ""
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads{tuned} | fused layers"


def calibration_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lenet" / "cpu-speed.json"


def cpu_speedups(bf16_units: bool, rounds: int = 7) -> dict[str, float]:
    """Speed-ups of the d2l step (batch 256, channels-last, fused layers) over a whole-batch
    float32 step: {"fp32": 1.0, "fp32 micro": ..., "fp32 halves": ..., "bf16": ...}
    ("micro": in parts of MICRO_BATCH_CPU; "halves": two halves at once; bf16 only where
    the CPU has bf16 units). Read from the cache, else measured and cached."""
    tune_cpu_allocator()  # measured as training will run
    wanted = CANDIDATES if bf16_units else tuple(c for c in CANDIDATES if c.startswith("fp32"))
    known = _calibrations().get(calibration_key())
    if isinstance(known, dict) and all(isinstance(known.get(c), (int, float)) for c in wanted):
        return {c: float(known[c]) for c in wanted}
    speedups = _measure(wanted, rounds)
    record_cpu_speedups(speedups)
    return {c: round(v, 3) for c, v in speedups.items()}


def _measure(wanted: tuple[str, ...], rounds: int) -> dict[str, float]:
    with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
        torch.manual_seed(0)
        x = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (256,))
        steps = {}
        for c in wanted:
            model = LeNet(ModelConfig())
            speed = Speed(c.split()[0], True, micro_batch=MICRO_BATCH_CPU if c.endswith("micro") else 0,
                          fused_layers=True, parallel_halves=c.endswith("halves"))
            steps[c] = make_step(model, Optimizer(model.parameters(), lr=0.01), cross_entropy, speed)
        for c in wanted:  # warm-up: oneDNN picks and builds its kernels
            with steps[c].held():  # held over several steps, as training holds them
                for _ in range(3):
                    steps[c](x, y)
        # Rounds of 3 steps per candidate, each first in turn: the median of each round's
        # ratios is not fooled by a neighbour's burst of load. One untimed step first: the
        # threads the previous candidate woke settle.
        ratios: dict[str, list[float]] = {c: [] for c in wanted}
        for r in range(rounds):
            seconds = {}
            for c in wanted[r % len(wanted):] + wanted[:r % len(wanted)]:
                with steps[c].held():
                    steps[c](x, y)
                    tic = time.perf_counter()
                    for _ in range(3):
                        steps[c](x, y)
                    seconds[c] = time.perf_counter() - tic
            for c in wanted:
                ratios[c].append(seconds["fp32"] / max(seconds[c], 1e-9))
    return {c: sorted(r)[len(r) // 2] for c, r in ratios.items()}


def record_cpu_speedups(speedups: dict[str, float]) -> None:
    """Keep this machine's measurement (or a user's decision: {"bf16": 0, "bf16 micro": 0}
    = never bf16)."""
    cache, known = calibration_file(), _calibrations()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        known[calibration_key()] = {c: round(float(v), 3) for c, v in speedups.items()}
        atomic_write_text(cache, json.dumps(known, indent=1) + "\n")
    except (OSError, LenetError):
        pass  # a cache that cannot be written only means measuring again next time


def _calibrations() -> dict[str, Any]:
    """The cache file's measurements by machine key; {} where it is missing or unreadable."""
    try:
        known = json.loads(calibration_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}
