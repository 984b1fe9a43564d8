"""How much faster a d2l training step runs through the fused layers on this CPU.

    python benchmarks/fused_step.py [--threads N] [--rounds 9] [--steps 30] [--batch 256]
                                    [--precision fp32|bf16] [--data-dir DIR [--pairs 8]]

Times whole training steps (forward, loss, backward, SGD update) of the d2l LeNet-5
on random images, channels-last, malloc tuned as a CPU run has it: the model's own
layers ("plain") against lenet.speed.fused.fused_forward ("fused"), the two taking turns
round by round (so a burst of load elsewhere hits both), --steps steps per round
after 5 warm-up steps. Prints each path's median ms per step and the median and
range of the per-round ratios, plain / fused (> 1: the fused layers are faster).
This is the measurement behind Speed.fused_layers being on for channels-last CPU
runs.

With --data-dir, then also real training: --pairs pairs of 2-epoch `lenet.train` runs
of the d2l recipe on Fashion-MNIST in this process, without and with the fused layers
(each pair's order alternating), the second epoch's examples/s compared.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lenet.speed.fused import fused_forward
from lenet.model.network import create_model
from lenet.training.optim import Optimizer
from lenet.device import cpu_name
from lenet.speed.allocator import tune_cpu_allocator
from lenet.speed.forward import autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--data-dir", help="also pair real 2-epoch training runs on this data")
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = tune_cpu_allocator()
    cpu = torch.device("cpu")
    x = torch.randn(args.batch, 1, 28, 28)  # NCHW strides with one channel, as the loop hands them over
    y = torch.randint(0, 10, (args.batch,))
    paths = {}
    for name in ("plain", "fused"):
        torch.manual_seed(0)
        model = create_model("lenet5").to(memory_format=torch.channels_last)
        paths[name] = (fused_forward(model) if name == "fused" else model, Optimizer(model.parameters(), lr=0.1))

    def step(name: str) -> None:
        forward, optimizer = paths[name]
        optimizer.zero_grad(set_to_none=True)
        with autocast(cpu, args.precision == "bf16"):
            logits = forward(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    ms: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        for name in (("plain", "fused") if r % 2 == 0 else ("fused", "plain")):
            for _ in range(5):
                step(name)
            tic = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            ms[name].append((time.perf_counter() - tic) / args.steps * 1e3)
    ratios = sorted(p / f for p, f in zip(ms["plain"], ms["fused"]))
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.precision}, malloc: {allocator}")
    for name, values in ms.items():
        print(f"{name:>6}: {sorted(values)[len(values) // 2]:6.2f} ms/step (median of {args.rounds} rounds)")
    print(f"plain / fused: {ratios[len(ratios) // 2]:.3f}x median, {ratios[0]:.3f}x-{ratios[-1]:.3f}x")
    if args.data_dir:
        training_pairs(args)


def training_pairs(args: argparse.Namespace) -> None:
    import lenet

    rates: dict[bool, list[float]] = {False: [], True: []}
    for pair in range(args.pairs):
        for fused in ((False, True) if pair % 2 == 0 else (True, False)):
            cfg = lenet.config("d2l", epochs=2, device="cpu", data_dir=args.data_dir, precision=args.precision,
                               set={"train.progress": "never", "train.fused_layers": fused})
            rates[fused].append(lenet.train(cfg).history[-1]["examples_per_second"])
    ratios = sorted(f / p for p, f in zip(rates[False], rates[True]))
    for fused, values in rates.items():
        print(f"training, {'fused' if fused else 'plain'}: {sorted(values)[len(values) // 2]:,.0f} examples/s "
              f"(median of {args.pairs})")
    print(f"fused / plain, paired: {ratios[len(ratios) // 2]:.3f}x median, {ratios[0]:.3f}x-{ratios[-1]:.3f}x")


if __name__ == "__main__":
    main()
