"""`lenet bench`: how fast a recipe trains and evaluates on this machine.

It runs the real training loop (lenet.training.run.train, in memory: no files) so the
figures are those of `lenet train`, not of a special benchmark path: training
examples per second, seconds per epoch, evaluation images per second, and the
training seconds (evaluation excluded) until the test accuracy first reaches
``target``, where the loop's own stop condition (``until``) ends the run.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data.datasets import Normalizer, load_data
from ..speed.forward import prepare_forward
from ..training.loop import evaluate, examples_of
from ..configuration.run import RunConfig
from ..device import device_name, resolve_device
from ..speed.choice import Speed
from ..training.run import train


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
    speed: dict[str, Any] = field(default_factory=dict)  # the precision and layout that ran, and why
    test_accuracies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench(cfg: RunConfig, target: float | None = None, eval_repeats: int = 3) -> BenchResult:
    device = resolve_device(cfg.device)
    dataset = load_data(cfg)  # once, for training and evaluation
    until = (lambda row: row["test_accuracy"] >= target) if target is not None else None
    quiet = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": "never"})})
    run = train(quiet, data=dataset, until=until)
    rows = run.history
    # Evaluation throughput, measured apart from training: the test set, in the run's
    # evaluation batches, through the forward the run evaluated with.
    speed = run.speed
    model = prepare_forward(run.model, speed.get("channels_last", False), speed.get("fused_layers", False)).eval()
    test = dataset.test.to(device)
    normalize = Normalizer.for_config(cfg, run.speed.get("channels_last", False))
    evaluate(model, test, normalize, cfg.train.eval_batch_size)  # warm-up
    tic = time.perf_counter()
    for _ in range(eval_repeats):
        evaluate(model, test, normalize, cfg.train.eval_batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    eval_seconds = (time.perf_counter() - tic) / eval_repeats

    seconds = [r["epoch_seconds"] for r in rows]
    examples = sum(examples_of(r) for r in rows)
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
        eval_images_per_second=len(test) / max(eval_seconds, 1e-9),
        final_test_accuracy=rows[-1]["test_accuracy"] if rows else float("nan"), speed=run.speed,
        target=target, seconds_to_target=to_target, epoch_seconds=seconds,
        test_accuracies=[r["test_accuracy"] for r in rows],
    )


def format_bench(r: BenchResult) -> str:
    lines = [
        f"recipe {r.preset or 'custom'} on {r.device} ({r.device_name}), torch {r.torch}, "
        f"python {r.python}, {r.threads} threads, batch {r.batch_size}, "
        f"{Speed.from_dict(r.speed).describe(r.batch_size)} ({r.speed.get('reason', '')})",
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


