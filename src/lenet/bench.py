"""`lenet bench`: how fast a recipe trains and evaluates on this machine.

It runs the real training loop (lenet.train.train) into a throw-away directory,
so the figures are those of `lenet train`, not of a special benchmark path:
training examples per second, seconds per epoch, evaluation images per second,
and the training seconds (evaluation excluded) until the test accuracy first
reaches ``target``.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .train import evaluate, prepare_data, resolve_device, train


class _TargetReached(Exception):
    pass


@dataclass
class BenchResult:
    preset: str | None
    device: str
    device_name: str
    torch: str
    python: str
    threads: int
    batch_size: int
    epochs_run: int
    examples_per_second: float
    seconds_per_epoch: float
    eval_images_per_second: float
    final_test_accuracy: float
    target: float | None
    seconds_to_target: float | None
    epoch_seconds: list[float] = field(default_factory=list)
    test_accuracies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # platform.processor() says only "x86_64" on Linux; cpuinfo names the chip
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(cfg: RunConfig, target: float | None = None, eval_repeats: int = 3) -> BenchResult:
    rows: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        if target is not None and row["test_accuracy"] >= target:
            raise _TargetReached

    workdir = Path(tempfile.mkdtemp(prefix="lenet-bench-"))
    try:
        run_cfg = cfg.model_copy(update={"out": str(workdir), "name": "bench"})
        run_cfg.train.progress = "never"
        try:
            result = train(run_cfg, quiet=True, on_epoch=on_epoch)
            model = result.model
        except _TargetReached:
            model = None
        device = resolve_device(cfg.device)
        # Evaluation throughput, measured apart from training: the test set, big batches.
        data, normalize = prepare_data(cfg, device)
        if model is None:
            from .checkpoint import load_checkpoint
            from .models import LeNet

            model = LeNet(cfg.model).to(device)
            model.load_state_dict(load_checkpoint(workdir / "bench")["model"])
        evaluate(model, data.test, normalize, cfg.train.eval_batch_size)  # warm-up
        tic = time.perf_counter()
        for _ in range(eval_repeats):
            evaluate(model, data.test, normalize, cfg.train.eval_batch_size)
        eval_seconds = (time.perf_counter() - tic) / eval_repeats
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    seconds = [r["epoch_seconds"] for r in rows]
    examples = sum(r["examples_per_second"] * r["epoch_seconds"] for r in rows)
    to_target = None
    if target is not None:
        elapsed = 0.0
        for r in rows:
            elapsed += r["epoch_seconds"]
            if r["test_accuracy"] >= target:
                to_target = elapsed
                break
    return BenchResult(
        preset=cfg.preset, device=str(device), device_name=device_name(device), torch=torch.__version__,
        python=platform.python_version(), threads=torch.get_num_threads(), batch_size=cfg.train.batch_size,
        epochs_run=len(rows), examples_per_second=examples / max(sum(seconds), 1e-9),
        seconds_per_epoch=sum(seconds) / max(1, len(seconds)),
        eval_images_per_second=len(data.test) / max(eval_seconds, 1e-9),
        final_test_accuracy=rows[-1]["test_accuracy"] if rows else float("nan"),
        target=target, seconds_to_target=to_target, epoch_seconds=seconds,
        test_accuracies=[r["test_accuracy"] for r in rows],
    )


def format_bench(r: BenchResult) -> str:
    lines = [
        f"recipe {r.preset or 'custom'} on {r.device} ({r.device_name}), torch {r.torch}, "
        f"python {r.python}, {r.threads} threads, batch {r.batch_size}",
        f"train: {r.examples_per_second:,.0f} examples/s, {r.seconds_per_epoch:.2f} s/epoch "
        f"over {r.epochs_run} epoch(s)",
        f"eval:  {r.eval_images_per_second:,.0f} images/s",
        f"test accuracy after {r.epochs_run} epoch(s): {r.final_test_accuracy:.4f}",
    ]
    if r.target is not None:
        lines.append(f"time to {r.target:.3f} test accuracy: "
                     + (f"{r.seconds_to_target:.2f} s of training" if r.seconds_to_target is not None
                        else f"not reached in {r.epochs_run} epoch(s)"))
    return "\n".join(lines)


