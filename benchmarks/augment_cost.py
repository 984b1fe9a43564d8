"""What augmentation costs in a training epoch, against the same steps without it.

    python benchmarks/augment_cost.py [--data-dir DIR] [--steps 60] [--repeats 5]

For each best-* preset, in one process: training steps of the preset's network on
real batches, with the preset's augmentation (drawn on the device, as training does)
and with none, and the augmentation alone, alternating, --repeats times; the medians,
and the augmentation's share of an augmented step (its time alone over the plain step
plus it: the difference of the two step times is within their noise). The issue's bound is 15% of an epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import lenet
from lenet.data.augment import Augmenter
from lenet.device import cpu_name

BOUND = 0.15


def step_seconds(cfg, data, augment: bool, steps: int) -> float:
    from lenet.training.learners import Learner
    from lenet.speed.policy import resolve_speed
    from lenet.data.datasets import Normalizer

    device = torch.device("cpu")
    speed = resolve_speed(cfg.speed, device, batch_size=cfg.train.batch_size, deterministic=cfg.train.deterministic,
                          batch_norm=cfg.model.batch_norm, dropout=cfg.model.dropout > 0)
    learner = Learner(lenet.LeNet(cfg.model), cfg, steps, speed)
    normalize = Normalizer.for_config(cfg, speed.channels_last)
    augmenter = Augmenter(cfg.data.augment, torch.Generator().manual_seed(0)) if augment else None
    images, labels = data.train.images, data.train.labels
    batch = cfg.train.batch_size
    with learner.threads():  # as an epoch of training holds them
        tic = time.perf_counter()
        for i in range(steps):
            x = images[i * batch:(i + 1) * batch]
            if augmenter is not None:
                x = augmenter(x)
            learner.step(normalize(x), labels[i * batch:(i + 1) * batch], i)
        return (time.perf_counter() - tic) / steps


def augment_seconds(cfg, data, batches: int) -> float:
    """The augmentation alone, per batch: the direct measure (the difference of two
    step times is within their noise on a busy machine)."""
    augmenter = Augmenter(cfg.data.augment, torch.Generator().manual_seed(0))
    images, batch = data.train.images, cfg.train.batch_size
    tic = time.perf_counter()
    for i in range(batches):
        augmenter(images[i * batch:(i + 1) * batch])
    return (time.perf_counter() - tic) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LENET_DATA_DIR"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for preset in ("best-fashion-mnist", "best-mnist"):
        cfg = lenet.config(preset, data_dir=args.data_dir, device="cpu")
        data = lenet.load_dataset(cfg.data.dataset, args.data_dir)
        plain, augmented, alone = [], [], []
        step_seconds(cfg, data, True, 5)  # warm-up: the first steps allocate and pick kernels
        for _ in range(args.repeats):
            plain.append(step_seconds(cfg, data, False, args.steps))
            augmented.append(step_seconds(cfg, data, True, args.steps))
            alone.append(augment_seconds(cfg, data, args.steps))
        p, a, g = statistics.median(plain), statistics.median(augmented), statistics.median(alone)
        share = g / (p + g)
        on = ", ".join(f"{k}={v}" for k, v in cfg.data.augment.model_dump().items() if v and k != "erase_size")
        print(f"{preset} ({on}): step {p * 1000:.1f} ms without, {a * 1000:.1f} ms with augmentation "
              f"(medians of {args.repeats}); augmentation alone {g * 1000:.2f} ms a batch, {share:.1%} of an augmented "
              f"step, bound {BOUND:.0%}: "
              f"{'within' if share < BOUND else 'OVER'}")


if __name__ == "__main__":
    main()
