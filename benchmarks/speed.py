"""Examples per second of one d2l-recipe epoch: the d2l book's loop vs lenet's.

Baseline, written the way d2l.ai 7.6 does it: a torchvision-style Dataset whose
__getitem__ turns one uint8 image into a PIL image and then a float tensor
(transforms.ToTensor), a DataLoader with shuffle=True and d2l's 4 workers, and a
training loop that reads the loss and accuracy back to the host every batch.
lenet: the dataset as one uint8 tensor, batches by indexing a permutation,
on-device sums (lenet.train.train_one_epoch). Same model, init, seed, recipe.

    python benchmarks/epoch_speed.py --data-dir ../shared/datasets [--epochs 1] [--workers 4 0]

Prints one line per method and the ratio of lenet to each baseline, measured in
the same process on the same machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from lenet.config import build_config
from lenet.data import load_dataset
from lenet.models import LeNet
from lenet.train import EpochState, Normalizer, StopFlag, evaluate, make_optimizer, make_scheduler, train_one_epoch


class FashionMNISTLikeTorchvision(TorchDataset):
    """Per-sample access as torchvision.datasets.FashionMNIST + ToTensor does it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images[:, 0].numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).unsqueeze(0).float().div(255)  # ToTensor
        return x, int(self.labels[i])


def d2l_epoch(model, loader, optimizer, loss_fn):
    """d2l's train_ch6 inner loop: host-side Accumulator updated every batch."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for X, y in loader:
        optimizer.zero_grad()
        y_hat = model(X)
        loss = loss_fn(y_hat, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += float(loss) * X.shape[0]
            correct += int((y_hat.argmax(1) == y).sum())
            seen += X.shape[0]
    return loss_sum / seen, correct / seen, seen


def d2l_test_accuracy(model, loader):
    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for X, y in loader:
            correct += int((model(X).argmax(1) == y).sum())
            seen += len(y)
    return correct / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 0], help="baseline DataLoader workers")
    args = parser.parse_args()

    cfg = build_config("d2l", flags={"data.data_dir": args.data_dir, "device": "cpu"})
    data = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    print(f"d2l recipe: batch {cfg.train.batch_size}, SGD lr {cfg.optim.lr}, {args.epochs} epoch(s); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    results = {}

    for workers in args.workers:
        torch.manual_seed(0)
        model = LeNet(cfg.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
        train_loader = DataLoader(FashionMNISTLikeTorchvision(data.train.images, data.train.labels),
                                  batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers,
                                  persistent_workers=workers > 0)
        test_loader = DataLoader(FashionMNISTLikeTorchvision(data.test.images, data.test.labels),
                                 batch_size=cfg.train.batch_size, num_workers=workers)
        seconds, seen = 0.0, 0
        for _ in range(args.epochs):
            tic = time.perf_counter()
            _, _, n = d2l_epoch(model, train_loader, optimizer, nn.CrossEntropyLoss())
            seconds += time.perf_counter() - tic
            seen += n
        accuracy = d2l_test_accuracy(model, test_loader)
        results[f"d2l DataLoader, {workers} workers"] = (seen / seconds, seconds / args.epochs, accuracy)

    torch.manual_seed(0)
    model = LeNet(cfg.model)
    optimizer = make_optimizer(model, cfg)
    steps = math.ceil(len(data.train) / cfg.train.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps)
    normalize = Normalizer("unit", 0.0, 1.0)
    shuffle = torch.Generator().manual_seed(0)
    seconds, seen = 0.0, 0
    with StopFlag() as stop:
        for epoch in range(args.epochs):
            state = EpochState(torch.zeros(()), torch.zeros((), dtype=torch.long), first_bad_step=torch.tensor(-1))
            tic = time.perf_counter()
            permutation = torch.randperm(len(data.train), generator=shuffle)
            train_one_epoch(model, data.train, permutation, state, optimizer, scheduler, nn.CrossEntropyLoss(),
                            normalize, cfg.train.batch_size, None, epoch * steps, stop, steps, _NoBar())
            seconds += time.perf_counter() - tic
            seen += state.seen
    _, accuracy = evaluate(model, data.test, normalize, cfg.train.eval_batch_size)
    results["lenet (tensor in memory, index batches)"] = (seen / seconds, seconds / args.epochs, accuracy)

    for name, (rate, per_epoch, accuracy) in results.items():
        print(f"{name:<42} {rate:>9,.0f} examples/s  {per_epoch:6.2f} s/epoch  test acc {accuracy:.4f}")
    ours = results["lenet (tensor in memory, index batches)"][0]
    for name, (rate, _, _) in results.items():
        if name.startswith("d2l"):
            print(f"lenet / {name}: {ours / rate:.2f}x")


class _NoBar:
    def update(self, n: int) -> None:
        pass


if __name__ == "__main__":
    main()
