"""Plots of runs and evaluations, each written straight to a PNG file.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot: pyplot keeps
every figure in a global registry until closed (a leak, and a "too many figures"
warning that our tests turn into an error) and needs a GUI-free backend to run
headless. A bare Figure draws with Agg whatever backend is active, is freed like any
object, and leaves a Jupyter user's backend alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 120
RUN_COLORS = [f"C{i}" for i in range(10)]  # matplotlib's default cycle (tab10)
# Beyond this many runs an in-axes legend hides the curves, so it moves below them.
MAX_LEGEND_ENTRIES_INSIDE = 4


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder made if missing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" keeps rotated tick labels and outside legends in the picture.
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, drawn as save_figure draws it (for notebooks and web pages)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _series(metrics: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) for the epochs where ``key`` holds a finite number.

    Dropping the gaps (rather than plotting NaN) keeps a metric measured only every
    few epochs a connected line; a diverged (inf/NaN) loss simply ends the line.
    """
    epochs, values = [], []
    for index, row in enumerate(metrics):
        value = row.get(key)
        if value is None or not math.isfinite(float(value)):
            continue
        epochs.append(row.get("epoch", index + 1))
        values.append(float(value))
    return np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)


def _plot_series(ax, epochs: np.ndarray, values: np.ndarray, **style) -> None:
    # A single point drawn as a line is invisible: one-epoch runs get a marker.
    marker = "o" if len(values) == 1 else None
    ax.plot(epochs, values, marker=marker, **style)


def _style_epoch_axes(ax, ylabel: str | None = None) -> None:
    ax.set_xlabel("epoch")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    left, right = ax.get_xlim()
    if right - left < 1:  # one epoch: autoscale would zoom to fractional epochs
        middle = round((left + right) / 2)
        ax.set_xlim(middle - 0.5, middle + 0.5)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def plot_curves(runs: Sequence[tuple[str, Sequence[Mapping]]], path: Path,
                title: str | None = None) -> Path:
    """Training curves of one run (d2l's Animator plot) or a comparison of several.

    ``runs`` is a list of ``(label, metrics)``; ``metrics`` holds one dict per epoch
    with ``epoch``, ``train_loss``, ``train_accuracy``, ``test_accuracy`` and, with a
    validation split, ``val_loss``/``val_accuracy``. Missing or None values are
    skipped. One run: loss and accuracies on one axes. Several: train loss on the
    left, test (solid) and validation (dashed) accuracy on the right, a colour per run.
    """
    return save_figure(curves_figure(runs, title), path)


def curves_figure(runs: Sequence[tuple[str, Sequence[Mapping]]], title: str | None = None) -> Figure:
    """The figure plot_curves saves (see there), for showing rather than saving."""
    if not runs:
        raise ValueError("plot_curves needs at least one run")
    if len(runs) == 1:
        return _single_run_figure(*runs[0], title=title)
    return _multi_run_figure(runs, title=title)


def _single_run_figure(label: str, metrics: Sequence[Mapping], title: str | None) -> Figure:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    # Colours and dashes follow d2l's Animator (blue loss, purple dashed train acc).
    lines = [
        ("train_loss", "train loss", dict(color="C0", linestyle="-")),
        ("train_accuracy", "train acc", dict(color="C4", linestyle="--")),
        ("val_accuracy", "val acc", dict(color="C1", linestyle="-.")),
        ("test_accuracy", "test acc", dict(color="C2", linestyle=":")),
    ]
    for key, line_label, style in lines:
        epochs, values = _series(metrics, key)
        if len(values):
            _plot_series(ax, epochs, values, label=line_label, linewidth=2, **style)
    _style_epoch_axes(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    ax.set_title(title if title is not None else label)
    return fig


def _multi_run_figure(runs: Sequence[tuple[str, Sequence[Mapping]]],
                      title: str | None) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    any_val = False
    for i, (label, metrics) in enumerate(runs):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        # Every run gets a legend entry, even one without a loss to draw.
        loss_ax.plot([], [], color=color, label=label)
        _plot_series(loss_ax, *_series(metrics, "train_loss"), color=color)
        _plot_series(acc_ax, *_series(metrics, "test_accuracy"), color=color)
        val_epochs, val_values = _series(metrics, "val_accuracy")
        if len(val_values):
            any_val = True
            _plot_series(acc_ax, val_epochs, val_values, color=color, linestyle="--")
    _style_epoch_axes(loss_ax, "train loss")
    _style_epoch_axes(acc_ax, "accuracy")
    loss_ax.set_title("train loss")
    acc_ax.set_title("test and val accuracy" if any_val else "test accuracy")
    if any_val:
        # Colours name the runs (left legend); this key says which line is which split.
        acc_ax.plot([], [], color="0.3", label="test")
        acc_ax.plot([], [], color="0.3", linestyle="--", label="val")
        acc_ax.legend(loc="lower right")

    handles, labels = loss_ax.get_legend_handles_labels()
    if len(runs) <= MAX_LEGEND_ENTRIES_INSIDE:
        loss_ax.legend(handles, labels, loc="best")
    else:
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=min(len(runs), 5), frameon=False)
    if title is not None:
        fig.suptitle(title)
    return fig


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path,
                   title: str | None = None, normalize: bool = True) -> Path:
    """confusion_figure, saved as a PNG."""
    return save_figure(confusion_figure(matrix, class_names, title, normalize), path)


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str | None = None,
                     normalize: bool = True) -> Figure:
    """Heatmap of a (true, predicted) count matrix with the count in every cell.

    With ``normalize`` the colour is the fraction of each true class (row), so a
    rare class's errors show as clearly as a common one's; a class with no examples
    stays blank instead of dividing by zero.
    """
    counts = np.asarray(matrix)
    n_classes = len(class_names)
    if counts.shape != (n_classes, n_classes):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match "
                         f"{n_classes} class names")
    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True).astype(float)
        colour_values = np.divide(counts, row_totals, out=np.zeros(counts.shape),
                                  where=row_totals > 0)
        vmax, colour_label = 1.0, "fraction of true class"
    else:
        colour_values = counts.astype(float)
        vmax, colour_label = max(float(colour_values.max()), 1.0), "count"

    size = max(5.0, 0.6 * n_classes + 2.0)  # ~0.6 in per cell fits a 4-digit count
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(colour_values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, label=colour_label, shrink=0.8)

    font_size = 9 if n_classes <= 10 else max(5, 90 // n_classes)
    for true_class in range(n_classes):
        for predicted in range(n_classes):
            count = counts[true_class, predicted]
            dark_cell = colour_values[true_class, predicted] > 0.5 * vmax
            # Zeros are faded so the errors that did happen stand out.
            colour = "white" if dark_cell else ("0.65" if count == 0 else "black")
            text = f"{count:g}" if np.issubdtype(counts.dtype, np.floating) else f"{count:d}"
            ax.text(predicted, true_class, text, ha="center", va="center",
                    color=colour, fontsize=font_size)

    ax.set_xticks(range(n_classes), labels=class_names, rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(range(n_classes), labels=class_names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if title is not None:
        ax.set_title(title)
    return fig


def _fit_title(text: str, max_chars: int) -> str:
    """Break a long "true: Coat / pred: Shirt" style title at its " / " separators."""
    if len(text) <= max_chars or "\n" in text:
        return text
    return text.replace(" / ", "\n")


def plot_image_grid(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8,
                    title: str | None = None) -> Path:
    """image_grid_figure, saved as a PNG."""
    return save_figure(image_grid_figure(images, titles, columns, title), path)


def image_grid_figure(images: np.ndarray, titles: Sequence[str], columns: int = 8,
                      title: str | None = None) -> Figure:
    """Grayscale images (N, H, W) or (N, 1, H, W), or RGB ones (N, 3, H, W), in a grid,
    each with a small title.

    uint8 images are shown on 0..255; float images on 0..1 when they lie there, else
    on their own range (standardised inputs). An empty set gives a picture saying so,
    so a perfect model's "misclassified examples" plot still exists.
    """
    pictures = np.asarray(images)
    if pictures.ndim == 4 and pictures.shape[1] == 1:
        pictures = pictures[:, 0]  # (N, 1, H, W) -> (N, H, W)
    elif pictures.ndim == 4 and pictures.shape[1] == 3:
        pictures = pictures.transpose(0, 2, 3, 1)  # (N, 3, H, W) -> (N, H, W, 3): imshow's RGB
    if pictures.ndim != 3 and not (pictures.ndim == 4 and pictures.shape[-1] == 3):
        raise ValueError(f"expected images of shape (N, H, W) or (N, 3, H, W), got {np.shape(images)}")
    if len(titles) != len(pictures):
        raise ValueError(f"{len(pictures)} images but {len(titles)} titles")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")

    if len(pictures) == 0:
        fig = Figure(figsize=(4, 1.5), layout="constrained")
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        if title is not None:
            ax.set_title(title)
        return fig

    if np.issubdtype(pictures.dtype, np.integer):
        vmin, vmax = 0, 255
    elif pictures.min() >= 0 and pictures.max() <= 1:
        vmin, vmax = 0.0, 1.0
    else:
        vmin, vmax = float(pictures.min()), float(pictures.max())

    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    cell_titles = [_fit_title(str(t), max_chars=18) for t in titles]
    title_lines = max(t.count("\n") + 1 for t in cell_titles)
    cell_width = 1.3  # inches; an 18-character title at 7 pt fits
    cell_height = cell_width + 0.15 * title_lines
    fig = Figure(figsize=(columns * cell_width, rows * cell_height + (0.4 if title else 0)),
                 layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, picture, cell_title in zip(axes, pictures, cell_titles):
        if picture.ndim == 3:  # RGB: imshow takes uint8 as 0..255, floats as 0..1
            if np.issubdtype(picture.dtype, np.integer):
                shown = np.clip(picture, 0, 255).astype(np.uint8)
            else:
                shown = np.clip((picture - vmin) / max(vmax - vmin, 1e-12), 0, 1)
            ax.imshow(shown, interpolation="nearest")
        else:
            ax.imshow(picture, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(cell_title, fontsize=7)
    if title is not None:
        fig.suptitle(title)
    return fig


def plot_accuracy_bars(labels: Sequence[str], means: Sequence[float], stds: Sequence[float],
                       path: Path, title: str | None = None,
                       baseline: float | None = None, xlabel: str = "test accuracy") -> Path:
    """Horizontal bars of mean accuracy with ±std error bars, first label on top.

    Bars start at 0 so their lengths stay honest; the printed "mean ± std" carries
    the small differences a sweep is about. A NaN std (a single seed) draws no error bar.
    """
    if not (len(labels) == len(means) == len(stds)):
        raise ValueError(f"labels, means and stds differ in length: "
                         f"{len(labels)}, {len(means)}, {len(stds)}")
    if not labels:
        raise ValueError("plot_accuracy_bars needs at least one bar")
    mean_values = np.asarray(means, dtype=float)
    std_given = np.isfinite(np.asarray(stds, dtype=float))
    std_values = np.where(std_given, np.asarray(stds, dtype=float), 0.0)

    fig = Figure(figsize=(7, 1.0 + 0.4 * len(labels)), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(labels))
    ax.barh(positions, mean_values, xerr=std_values, color="C0", alpha=0.8,
            error_kw=dict(ecolor="0.2", capsize=3))
    for position, mean, std, has_std in zip(positions, mean_values, std_values, std_given):
        text = f"{mean:.4f} ± {std:.4f}" if has_std else f"{mean:.4f}"
        # The white box keeps a baseline line from striking through the numbers.
        ax.annotate(text, (mean + std, position), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    ax.set_yticks(positions, labels=labels)
    ax.invert_yaxis()  # first label on top, as given
    if baseline is not None:
        ax.axvline(baseline, color="C3", linestyle="--", linewidth=1.5,
                   label=f"baseline {baseline:.4f}")
        # Below the axes: inside, it would sit on the lowest bar's numbers.
        fig.legend(loc="outside lower right", frameon=False)
    finite_ends = (mean_values + std_values)[np.isfinite(mean_values)]
    right = max([*finite_ends, baseline or 0.0, 1e-9])
    ax.set_xlim(0, right * 1.25)  # room for the "mean ± std" text
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    if title is not None:
        ax.set_title(title)
    return save_figure(fig, path)
