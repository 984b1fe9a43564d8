"""The baselines lenet is measured against: the d2l recipe as people write it by hand.

    plain  what a competent user writes in 30 lines: the images as one float tensor in
           a TensorDataset, DataLoader(batch_size=256, shuffle=True), the book's LeNet-5
           (sigmoid, avg-pool, Xavier), SGD lr 0.9, cross-entropy; loss and accuracy
           summed on the host once per epoch
    book   the book's own loop (d2l.ai 7.6, train_ch6): a torchvision-style Dataset that
           makes one PIL image and then a float tensor per sample (transforms.ToTensor),
           DataLoader(shuffle=True, num_workers=4), loss and accuracy read back to the
           host every batch (d2l's Accumulator)

Run alone it is one whole process, as `benchmarks/speed.py` times it:

    python benchmarks/plain_loop.py --loader plain --epochs 3 [--device cpu] [--data-dir DIR]

and prints one JSON line: examples/s of training (evaluation excluded), seconds of
training, and the test accuracy after the last epoch.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import Dataset as TorchDataset


class PerSampleLikeTorchvision(TorchDataset):
    """Per-sample access as torchvision.datasets.FashionMNIST + ToTensor does it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images[:, 0].numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])  # uint8 (28, 28) -> mode "L", as torchvision does
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).unsqueeze(0).float().div(255)  # ToTensor
        return x, int(self.labels[i])


def book_net() -> nn.Module:
    """d2l's LeNet-5, written out as the book does, Xavier-uniform init (d2l's init_cnn)."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def loaders(loader: str, train_images, train_labels, test_images, test_labels, workers: int, batch_size: int = 256):
    if loader == "plain":
        train = TensorDataset(train_images.float().div(255), train_labels)
        test = TensorDataset(test_images.float().div(255), test_labels)
        return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers),
                DataLoader(test, batch_size=batch_size, num_workers=workers))
    train = PerSampleLikeTorchvision(train_images, train_labels)
    test = PerSampleLikeTorchvision(test_images, test_labels)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers,
                       persistent_workers=workers > 0),
            DataLoader(test, batch_size=batch_size, num_workers=workers))


def run(loader: str = "plain", epochs: int = 3, device: str = "cpu", data_dir: str | None = None,
        workers: int | None = None, seed: int = 0, data=None) -> dict:
    """Train the d2l recipe with a hand-written loop; the figures of the run."""
    from lenet.data.datasets import load_dataset

    workers = (0 if loader == "plain" else 4) if workers is None else workers
    torch.manual_seed(seed)
    data = data or load_dataset("fashion-mnist", data_dir)
    dev = torch.device(device)
    with warnings.catch_warnings():
        # DataLoader warns that 4 workers exceed 2 cores: that is d2l's setting, kept on purpose.
        warnings.simplefilter("ignore", UserWarning)
        train_iter, test_iter = loaders(loader, data.train.images, data.train.labels, data.test.images,
                                        data.test.labels, workers)
        net = book_net().to(dev)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.9)
        loss_fn = nn.CrossEntropyLoss()
        seconds, seen = 0.0, 0
        for _ in range(epochs):
            net.train()
            tic = time.perf_counter()
            loss_sum = correct = torch.zeros((), device=dev)
            for X, y in train_iter:
                X, y = X.to(dev), y.to(dev)
                optimizer.zero_grad()
                y_hat = net(X)
                loss = loss_fn(y_hat, y)
                loss.backward()
                optimizer.step()
                if loader == "book":  # d2l's Accumulator: host values every batch
                    _ = float(loss) * X.shape[0], int((y_hat.argmax(1) == y).sum())
                else:
                    loss_sum = loss_sum + loss.detach() * X.shape[0]
                    correct = correct + (y_hat.argmax(1) == y).sum()
                seen += X.shape[0]
            float(loss_sum), int(correct)  # the plain loop's one read-back per epoch
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds += time.perf_counter() - tic
        net.eval()
        hits = total = 0
        with torch.no_grad():
            for X, y in test_iter:
                hits += int((net(X.to(dev)).argmax(1) == y.to(dev)).sum())
                total += len(y)
    return {"loader": loader, "epochs": epochs, "examples_per_second": seen / seconds,
            "train_seconds": seconds, "test_accuracy": hits / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loader", choices=["plain", "book"], default="plain")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=None, help="(default: plain 0, book 4)")
    args = parser.parse_args()
    print(json.dumps(run(args.loader, args.epochs, args.device, args.data_dir, args.workers)))


if __name__ == "__main__":
    main()
