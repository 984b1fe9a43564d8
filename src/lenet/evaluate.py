"""Evaluation of a trained model: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_model
from .data import Dataset, load_dataset
from .train import Normalizer, predict, resolve_device


@dataclass
class Evaluation:
    class_names: tuple[str, ...]
    confusion: np.ndarray  # (classes, classes): rows = true class, columns = predicted
    probabilities: np.ndarray  # (N, classes)
    labels: np.ndarray  # (N,)

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.confusion.sum()))

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(1)
        return np.divide(np.diag(self.confusion), totals, out=np.zeros(len(totals)), where=totals > 0)

    def most_confused(self, k: int = 5) -> list[tuple[str, str, int]]:
        """The k largest off-diagonal cells: (true class, predicted class, count)."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None)[::-1][:k]
        pairs = []
        for flat in order:
            t, p = np.unravel_index(flat, off.shape)
            if off[t, p] > 0:
                pairs.append((self.class_names[t], self.class_names[p], int(off[t, p])))
        return pairs

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.accuracy,
            "examples": int(self.confusion.sum()),
            "per_class_accuracy": dict(zip(self.class_names, map(float, self.per_class_accuracy))),
            "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in self.most_confused()],
            "confusion_matrix": self.confusion.tolist(),
        }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def evaluate_model(model_path: str | Path, data_dir: str | None = None, device: str = "auto",
                   dataset: Dataset | None = None) -> Evaluation:
    torch_device = resolve_device(device)
    model, cfg, meta = load_model(model_path, torch_device)
    data = dataset or load_dataset(cfg.data.dataset, data_dir or cfg.data.data_dir)
    normalize = Normalizer(cfg.data.normalize, data.spec.mean, data.spec.std)
    logits = predict(model, data.test.images.to(torch_device), normalize, cfg.train.eval_batch_size)
    probabilities = torch.softmax(logits.float(), 1).cpu().numpy()
    labels = data.test.labels.numpy()
    class_names = tuple(meta.get("class_names") or data.class_names)
    matrix = confusion_matrix(labels, probabilities.argmax(1), len(class_names))
    return Evaluation(class_names, matrix, probabilities, labels)


def format_evaluation(ev: Evaluation) -> str:
    lines = [f"test accuracy {ev.accuracy:.4f} on {int(ev.confusion.sum()):,} images", "",
             f"{'class':<14} {'accuracy':>8} {'examples':>9}"]
    for name, acc, total in zip(ev.class_names, ev.per_class_accuracy, ev.confusion.sum(1)):
        lines.append(f"{name:<14} {acc:>8.4f} {int(total):>9,}")
    confused = ev.most_confused()
    if confused:
        lines += ["", "most confused (true -> predicted: count)"]
        lines += [f"  {t} -> {p}: {c}" for t, p, c in confused]
    return "\n".join(lines)
