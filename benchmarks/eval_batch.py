"""How fast the d2l LeNet evaluates the test set on this CPU, per evaluation batch size.

    python benchmarks/eval_batch.py [--data-dir DIR] [--threads N] [--repeats 5]
                                    [--sizes 2048 1024 768 512 384 256 128] [--unfused]

Evaluates the 10,000 test images with lenet's own evaluation (loop.evaluate: float32,
channels-last as a CPU run has it, no gradients), through the fused layers as a CPU
run's evaluation is (fused.py; --unfused: the model's own layers), in batches of each size, the sizes
taking turns in each repetition; prints images/s (median of --repeats) and each size's
ratio to 2,048, the default before evaluation batches depended on the device. This is
the measurement behind runtime.EVAL_BATCH_CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lenet
from lenet.data.datasets import Normalizer, load_dataset
from lenet.speed.forward import prepare_forward
from lenet.training.loop import evaluate
from lenet.model.network import LeNet
from lenet.device import cpu_name
from lenet.speed.allocator import tune_cpu_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 1024, 768, 512, 384, 256, 128])
    parser.add_argument("--unfused", action="store_true", help="the model's own layers, not the fused ones")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as a training process has it
    cfg = lenet.config("d2l", data_dir=args.data_dir)
    test = load_dataset(cfg.data.dataset, cfg.data.data_dir).test
    torch.manual_seed(0)
    model = LeNet(cfg.model).to(memory_format=torch.channels_last).eval()
    model = prepare_forward(model, channels_last=True, fused_layers=not args.unfused)
    normalize = Normalizer.for_config(cfg, True)
    seconds: dict[int, list[float]] = {size: [] for size in args.sizes}
    for size in args.sizes:  # warm-up: oneDNN builds its kernels per shape
        evaluate(model, test, normalize, size)
    for _ in range(args.repeats):
        for size in args.sizes:
            tic = time.perf_counter()
            evaluate(model, test, normalize, size)
            seconds[size].append(time.perf_counter() - tic)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{'unfused' if args.unfused else 'fused'} layers, {len(test):,} test images, medians of {args.repeats}")
    base = statistics.median(seconds[2048]) if 2048 in seconds else None
    for size in args.sizes:
        median = statistics.median(seconds[size])
        ratio = f"  {base / median:.2f}x batch 2048" if base else ""
        print(f"batch {size:>5}: {len(test) / median:>9,.0f} images/s{ratio}")


if __name__ == "__main__":
    main()
