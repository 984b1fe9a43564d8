"""Whole training steps with both halves of each batch at once, one per thread, against
the usual step that splits every operation across the threads (src/lenet/speed/halves.py).

    python benchmarks/halves_step.py [--rounds 40] [--steps 20] [--batch 256]
                                     [--precision fp32|bf16]

The d2l LeNet-5 with the fused layers, channels-last, malloc tuned, as a CPU run has it.
Each round times --steps steps of each of three paths in turn (each first in turn, so
a change in the machine's speed reaches them alike):

    split     every operation split across torch's threads (PyTorch's way)
    halves    the two halves at once, each with half the threads (lenet.speed.halves)
    one       the whole batch on one thread, for reference

Prints the median ms per step of each path; the per-round ratios split / halves (> 1:
halves faster) as median and range; and the rounds in which two threads split every
operation gaining less than 1.2x over one thread (the machine's slow state, where the
cores are slow to share data), with the ratio in those rounds and in the others. Run it
for a few minutes: the slow state comes and goes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Iterator

import torch

from lenet.device import cpu_name
from lenet.model.network import create_model
from lenet.speed.allocator import tune_cpu_allocator
from lenet.speed.choice import Speed
from lenet.speed.step import make_step
from lenet.training.loss import cross_entropy
from lenet.training.optim import Optimizer

SLOW_STATE_GAIN = 1.2  # split / one below this: the second thread barely helps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    args = parser.parse_args()
    allocator = tune_cpu_allocator()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    steps = {}
    for path in ("split", "halves", "one"):  # the steps a run takes (speed.step), each its own model
        model = create_model("lenet5")
        speed = Speed(args.precision, True, fused_layers=True, parallel_halves=path == "halves")
        steps[path] = make_step(model, Optimizer(model.parameters(), lr=0.01), cross_entropy, speed)

    def step(path: str) -> None:
        steps[path](x, y)

    @contextlib.contextmanager
    def threads_of(path: str) -> Iterator[None]:
        """Held for a round, as training holds them for an epoch (step.held)."""
        if path == "halves":
            with steps[path].held():
                yield
        else:
            torch.set_num_threads(1 if path == "one" else threads)
            yield
            torch.set_num_threads(threads)

    paths = ("split", "halves", "one")
    ms: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(-1, args.rounds):  # round -1 warms up: oneDNN builds kernels per thread count
        for path in paths[r % 3:] + paths[:r % 3]:
            with threads_of(path):
                step(path)  # untimed: the threads the previous path woke settle
                tic = time.perf_counter()
                for _ in range(args.steps):
                    step(path)
                if r >= 0:
                    ms[path].append((time.perf_counter() - tic) / args.steps * 1e3)
    print(f"{cpu_name()}, torch {torch.__version__}, {threads} threads, batch {args.batch}, {args.precision}, "
          f"fused layers, malloc: {allocator}; {args.rounds} rounds of {args.steps} steps")
    for path in paths:
        print(f"{path:>7}: {statistics.median(ms[path]):6.2f} ms/step (median)")
    ratio = [s / h for s, h in zip(ms["split"], ms["halves"])]
    slow = [o / s < SLOW_STATE_GAIN for s, o in zip(ms["split"], ms["one"])]
    print(f"split / halves: {statistics.median(ratio):.3f}x median, {min(ratio):.3f}x-{max(ratio):.3f}x")
    for name, rounds in (("slow", [q for q, s in zip(ratio, slow) if s]),
                         ("fast", [q for q, s in zip(ratio, slow) if not s])):
        if rounds:
            print(f"  {len(rounds)} rounds in the {name} state (two threads {'<' if name == 'slow' else '>='} "
                  f"{SLOW_STATE_GAIN}x one): split / halves {statistics.median(rounds):.3f}x median, "
                  f"{min(rounds):.3f}x-{max(rounds):.3f}x")


if __name__ == "__main__":
    main()
