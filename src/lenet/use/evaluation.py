"""Evaluation of a trained model: accuracy, per class, the confusion matrix, the pairs
of classes most confused, and the most confident mistakes.

    evaluate(run or path) -> Evaluation   the numbers, and figures on demand
    Evaluation.save(folder)               confusion.png, misclassified.png,
                                          most_confused.csv, eval.json (`lenet eval`)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import Dataset, load_data
from ..errors import RunError
from ..store.files import atomic_write_text, write_json
from ..store.models import load_model

MISTAKES_SHOWN = 32  # the most confident mistakes in misclassified.png: 4 rows of 8
CONFUSED_PAIRS_WRITTEN = 10  # rows of most_confused.csv


@dataclass
class Mistake:
    index: int  # in the test set
    true: str
    predicted: str
    confidence: float  # the probability the model gave its (wrong) prediction


@dataclass
class Evaluation:
    class_names: tuple[str, ...]
    confusion: np.ndarray  # (classes, classes): rows = true class, columns = predicted
    probabilities: np.ndarray  # (N, classes)
    labels: np.ndarray  # (N,)
    images: np.ndarray | None = None  # uint8 (N, 1, 28, 28): the test images, for pictures of mistakes
    name: str = "model"  # shown in figure titles

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

    def worst_mistakes(self, k: int = MISTAKES_SHOWN) -> list[Mistake]:
        """The k most confident mistakes: they say most about what the model believes."""
        predictions = self.predictions
        wrong = np.flatnonzero(predictions != self.labels)
        confidence = self.probabilities[wrong, predictions[wrong]]
        chosen = wrong[np.argsort(-confidence, kind="stable")][:k]
        return [Mistake(int(i), self.class_names[self.labels[i]], self.class_names[predictions[i]],
                        float(self.probabilities[i, predictions[i]])) for i in chosen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.accuracy,
            "examples": int(self.confusion.sum()),
            "per_class_accuracy": dict(zip(self.class_names, map(float, self.per_class_accuracy))),
            "most_confused": [{"true": t, "predicted": p, "count": c} for t, p, c in self.most_confused()],
            "confusion_matrix": self.confusion.tolist(),
        }

    def most_confused_csv(self, k: int = CONFUSED_PAIRS_WRITTEN) -> str:
        """The k most confused pairs, each count also as a share of its true class."""
        totals = self.confusion.sum(1)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["true", "predicted", "count", "share_of_true_class"])
        for true, predicted, count in self.most_confused(k):
            writer.writerow([true, predicted, count, f"{count / max(1, totals[self.class_names.index(true)]):.4f}"])
        return buffer.getvalue()

    def plot_confusion(self, title: str | None = None):
        """The confusion matrix as a matplotlib Figure."""
        from .figures import confusion_figure  # matplotlib: loaded only to draw

        return confusion_figure(self.confusion, self.class_names,
                                title or f"{self.name}: test accuracy {self.accuracy:.4f}")

    def plot_mistakes(self, k: int = MISTAKES_SHOWN, title: str | None = None):
        """The k most confident mistakes as a grid of images (a matplotlib Figure)."""
        from .figures import image_grid_figure  # matplotlib: loaded only to draw

        if self.images is None:
            raise ValueError("this evaluation holds no images (evaluate(..., keep_images=True))")
        mistakes = self.worst_mistakes(k)
        wrong = int((self.predictions != self.labels).sum())
        # Three short lines per image: a 1.3-inch cell fits about 18 characters at 7 pt.
        titles = [f"true: {m.true}\npred: {m.predicted}\np={m.confidence:.2f}" for m in mistakes]
        return image_grid_figure(self.images[[m.index for m in mistakes]], titles, columns=8,
                                 title=title or f"{self.name}: {len(mistakes)} most confident of {wrong:,} mistakes")

    def save(self, out: str | Path) -> list[Path]:
        """What `lenet eval` writes into ``out``: the figures, the pairs and the numbers."""
        from .figures import save_figure  # matplotlib: loaded only to draw

        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths = [save_figure(self.plot_confusion(), out / "confusion.png")]
            if self.images is not None:
                paths.append(save_figure(self.plot_mistakes(), out / "misclassified.png"))
        except OSError as exc:
            raise RunError(f"cannot write into {out}: {exc.strerror or exc}; choose another --out") from None
        atomic_write_text(out / "most_confused.csv", self.most_confused_csv())
        write_json(out / "eval.json", self.to_dict())
        return paths + [out / "most_confused.csv", out / "eval.json"]

    def __str__(self) -> str:
        return format_evaluation(self)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def evaluate(target: Any, *, data: Dataset | None = None, data_dir: str | None = None, device: str = "auto",
             keep_images: bool = True) -> Evaluation:
    """Evaluate a run (``lenet.train``'s or ``lenet.load``'s), a run directory or a model
    file on its dataset's test set (``data``: a Dataset already loaded)."""
    trained = load_model(target, device)
    cfg = trained.config
    data = data or load_data(cfg, data_dir)
    logits = trained.logits(data.test.images, cfg.train.eval_batch_size)
    probabilities = torch.softmax(logits.float(), 1).numpy()
    labels = data.test.labels.numpy()
    class_names = tuple(trained.class_names)
    matrix = confusion_matrix(labels, probabilities.argmax(1), len(class_names))
    return Evaluation(class_names, matrix, probabilities, labels,
                      data.test.images.numpy() if keep_images else None, trained.name)


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
