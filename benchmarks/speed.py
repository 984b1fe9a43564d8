"""The d2l recipe three ways, on one machine in one run: how much faster is lenet?

1. d2l: the book's loop (d2l.ai 7.6): a torchvision-style Dataset whose __getitem__
   makes one PIL image and then a float tensor (transforms.ToTensor), a DataLoader
   with shuffle=True, and a training loop that reads loss and accuracy back to the
   host every batch. Run with d2l's 4 workers and with 0 (often faster on 2 cores).
2. lenet default: `lenet train --preset d2l` (lenet.training.train): the dataset as one
   uint8 tensor, batches by indexing a permutation, sums kept on the device.
3. lenet fastest: the same with the speed switches given by --fast (default: the
   ones that pay off on a CPU without AVX-512; see the README's performance section).

Same model, Xavier init, seed, SGD lr 0.9, batch 256. Prints training examples per
second (evaluation excluded), seconds per epoch and final test accuracy of each, and
the ratios of lenet's paths to the d2l loop.

    python benchmarks/speed.py --data-dir ../shared/datasets [--epochs 10] [--workers 4 0]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from lenet.data import load_dataset
from lenet.models import LeNet
from lenet.runconfig import build_config
from lenet.runtime import device_name
from lenet.training import train


class FashionMNISTLikeTorchvision(TorchDataset):
    """Per-sample access as torchvision.datasets.FashionMNIST + ToTensor does it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images[:, 0].numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])  # uint8 (28, 28) -> mode "L", as torchvision does
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0).float().div(255)  # ToTensor
        return x, int(self.labels[i])


def d2l_run(cfg, data, epochs: int, workers: int) -> tuple[float, float, float]:
    """(examples/s, s/epoch, test accuracy) of d2l's train_ch6 loop."""
    torch.manual_seed(cfg.seed)
    model = LeNet(cfg.model)  # Xavier-uniform, as d2l's init_cnn
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = DataLoader(FashionMNISTLikeTorchvision(data.train.images, data.train.labels),
                              batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers,
                              persistent_workers=workers > 0)
    test_loader = DataLoader(FashionMNISTLikeTorchvision(data.test.images, data.test.labels),
                             batch_size=cfg.train.batch_size, num_workers=workers)
    seconds, seen = 0.0, 0
    for _ in range(epochs):
        model.train()
        tic = time.perf_counter()
        for X, y in train_loader:
            optimizer.zero_grad()
            y_hat = model(X)
            loss = loss_fn(y_hat, y)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # d2l's Accumulator: host values every batch
                _ = float(loss) * X.shape[0], int((y_hat.argmax(1) == y).sum()), X.shape[0]
            seen += X.shape[0]
        seconds += time.perf_counter() - tic
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for X, y in test_loader:
            correct += int((model(X).argmax(1) == y).sum())
            total += len(y)
    return seen / seconds, seconds / epochs, correct / total


def lenet_run(cfg) -> tuple[float, float, float]:
    rows = train(cfg).history  # in memory: the loop of `lenet train`, without its files
    seconds = sum(r["epoch_seconds"] for r in rows)
    examples = sum(r["examples_per_second"] * r["epoch_seconds"] for r in rows)
    return examples / seconds, seconds / len(rows), rows[-1]["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=10, help="(default: 10, the chapter's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 0], help="d2l DataLoader workers (default: 4 0)")
    parser.add_argument("--fast", nargs="*", default=["train.channels_last=true"],
                        help="switches for the fastest path (default: train.channels_last=true)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    base = ["train.progress=never", f"train.epochs={args.epochs}", f"device={args.device}"]
    if args.data_dir:
        base.append(f"data.data_dir={args.data_dir}")
    cfg = build_config("d2l", overrides=base)
    fast = build_config("d2l", overrides=base + args.fast)
    data = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    print(f"d2l recipe, {args.epochs} epoch(s), batch {cfg.train.batch_size}, SGD lr {cfg.optim.lr}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name(torch.device(args.device))}")

    results: dict[str, tuple[float, float, float]] = {}
    for workers in args.workers:
        with warnings.catch_warnings():
            # DataLoader warns that 4 workers exceed 2 cores: that is d2l's setting, kept on purpose.
            warnings.simplefilter("ignore", UserWarning)
            results[f"d2l DataLoader loop, {workers} workers"] = d2l_run(cfg, data, args.epochs, workers)
    results["lenet default"] = lenet_run(cfg)
    results["lenet fastest (" + " ".join(s.split("=")[0].split(".")[-1] for s in args.fast) + ")"] = lenet_run(fast)

    for name, (rate, per_epoch, accuracy) in results.items():
        print(f"{name:<38} {rate:>9,.0f} examples/s  {per_epoch:6.2f} s/epoch  test acc {accuracy:.4f}")
    baselines = {k: v for k, v in results.items() if k.startswith("d2l")}
    best_baseline = max(baselines.items(), key=lambda kv: kv[1][0])
    for name, (rate, _, _) in results.items():
        if name.startswith("lenet"):
            print(f"{name} / {best_baseline[0]}: {rate / best_baseline[1][0]:.2f}x")


if __name__ == "__main__":
    main()
