"""Every plot is a readable PNG, copes with odd inputs, and leaves no figure behind."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from lenet.use.figures import plot_accuracy_bars, plot_confusion, plot_curves, plot_image_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_png(path: Path, min_width: int = 300, min_height: int = 200) -> np.ndarray:
    """The pixels of ``path``, after checking it is a PNG of at least the given size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)  # (H, W, channels) floats in [0, 1]
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    return pixels


def d2l_metrics(epochs: int = 10, final_test_accuracy: float = 0.78,
                with_val: bool = False) -> list[dict]:
    """Per-epoch metrics shaped like the chapter's run: loss 2.3 -> 0.47, acc 0.10 -> ~0.8."""
    rows = []
    for epoch in range(1, epochs + 1):
        progress = 1 - np.exp(-4 * (epoch - 1) / max(epochs - 1, 1))
        row = {
            "epoch": epoch,
            "train_loss": 2.3 - (2.3 - 0.47) * progress,
            "train_accuracy": 0.10 + (0.82 - 0.10) * progress,
            "test_accuracy": 0.10 + (final_test_accuracy - 0.10) * progress,
            "lr": 0.9,
            "epoch_seconds": 3.0,
            "examples_per_second": 20000.0,
        }
        if with_val:
            row["val_loss"] = row["train_loss"] + 0.05
            row["val_accuracy"] = row["test_accuracy"] - 0.01
        rows.append(row)
    return rows


@pytest.fixture(autouse=True)
def no_open_figures():
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == []


# --- plot_curves --------------------------------------------------------------------

def test_single_run_curves(tmp_path: Path) -> None:
    path = plot_curves([("lenet5", d2l_metrics())], tmp_path / "curves.png", title="lenet5")
    assert path == tmp_path / "curves.png"
    read_png(path)


def test_single_run_with_validation(tmp_path: Path) -> None:
    read_png(plot_curves([("lenet5", d2l_metrics(with_val=True))], tmp_path / "c.png"))


def test_three_runs_draw_two_panels(tmp_path: Path) -> None:
    runs = [("lenet5", d2l_metrics()),
            ("lenet5-v2", d2l_metrics(final_test_accuracy=0.87)),
            ("lenet5-relu", d2l_metrics(final_test_accuracy=0.89, with_val=True))]
    one = read_png(plot_curves(runs[:1], tmp_path / "one.png"))
    several = read_png(plot_curves(runs, tmp_path / "several.png"), min_width=600)
    # Side-by-side loss and accuracy panels make a clearly wider picture than one axes.
    assert several.shape[1] > 1.5 * one.shape[1]


def test_many_runs_move_the_legend_below(tmp_path: Path) -> None:
    runs = [(f"seed {seed}", d2l_metrics(final_test_accuracy=0.7 + 0.01 * seed))
            for seed in range(7)]
    read_png(plot_curves(runs, tmp_path / "seven.png"), min_width=600)


def test_single_epoch_run(tmp_path: Path) -> None:
    read_png(plot_curves([("smoke", d2l_metrics(epochs=1))], tmp_path / "one_epoch.png"))
    runs = [("smoke", d2l_metrics(epochs=1)), ("longer", d2l_metrics(epochs=3))]
    read_png(plot_curves(runs, tmp_path / "mixed.png"))


def test_runs_without_optional_keys(tmp_path: Path) -> None:
    # No test/val accuracy at all, a None test accuracy, and rows without "epoch".
    bare = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.1 * e} for e in (1, 2, 3)]
    sparse = [dict(row, test_accuracy=None) for row in d2l_metrics(epochs=4)]
    sparse[-1]["test_accuracy"] = 0.7  # measured only at the end: drawn as a lone marker
    unnumbered = [{"train_loss": 2.0}, {"train_loss": 1.5}]
    read_png(plot_curves([("bare", bare)], tmp_path / "bare.png"))
    read_png(plot_curves([("bare", bare), ("sparse", sparse), ("unnumbered", unnumbered)],
                         tmp_path / "mixed.png"))
    read_png(plot_curves([("empty", [])], tmp_path / "empty.png"))


def test_diverged_loss_does_not_break_the_plot(tmp_path: Path) -> None:
    metrics = d2l_metrics(epochs=4)
    metrics[2]["train_loss"] = float("inf")
    metrics[3]["train_loss"] = float("nan")
    read_png(plot_curves([("diverged", metrics)], tmp_path / "diverged.png"))


def test_curves_show_the_data_and_render_deterministically(tmp_path: Path) -> None:
    run = [("lenet5", d2l_metrics())]
    other_run = [("lenet5", d2l_metrics(final_test_accuracy=0.5))]
    first = read_png(plot_curves(run, tmp_path / "a.png"))
    again = read_png(plot_curves(run, tmp_path / "b.png"))
    other = read_png(plot_curves(other_run, tmp_path / "c.png"))
    np.testing.assert_array_equal(first, again)
    assert first.shape == other.shape
    assert not np.array_equal(first, other)


def test_plot_curves_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one run"):
        plot_curves([], tmp_path / "none.png")


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "run" / "plots" / "curves.png"
    read_png(plot_curves([("lenet5", d2l_metrics())], path))


# --- plot_confusion -----------------------------------------------------------------

def fashion_confusion() -> np.ndarray:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 40, size=(10, 10))
    np.fill_diagonal(matrix, rng.integers(600, 980, size=10))
    matrix[3] = 0  # a class absent from the evaluated set: must not divide by zero
    return matrix


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_with_an_empty_class(tmp_path: Path, normalize: bool) -> None:
    path = plot_confusion(fashion_confusion(), FASHION_NAMES, tmp_path / "confusion.png",
                          title="fashion-mnist test", normalize=normalize)
    read_png(path, min_width=500, min_height=500)


def test_confusion_matrix_of_fractions(tmp_path: Path) -> None:
    fractions = np.eye(3) * 0.9 + 0.05
    read_png(plot_confusion(fractions, ["a", "b", "c"], tmp_path / "fractions.png"))


def test_confusion_matrix_must_match_class_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion(np.zeros((10, 10), dtype=int), FASHION_NAMES[:9], tmp_path / "c.png")


# --- plot_image_grid ----------------------------------------------------------------

def misclassified_titles(n: int) -> list[str]:
    return [f"true: {FASHION_NAMES[i % 10]} / pred: {FASHION_NAMES[(i + 3) % 10]}"
            for i in range(n)]


def test_image_grid_rows_follow_the_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    one_row = read_png(plot_image_grid(images[:8], misclassified_titles(8), tmp_path / "8.png"),
                       min_width=600, min_height=100)
    three_rows = read_png(plot_image_grid(images, misclassified_titles(20), tmp_path / "20.png",
                                          title="misclassified"), min_width=600)
    assert three_rows.shape[0] > 2.5 * one_row.shape[0]


@pytest.mark.parametrize("images", [
    np.random.default_rng(1).random((5, 28, 28)),  # floats in [0, 1]
    np.random.default_rng(2).normal(size=(5, 1, 28, 28)).astype(np.float32),  # standardised
], ids=["unit-floats", "standardised-nchw"])
def test_image_grid_float_images(tmp_path: Path, images: np.ndarray) -> None:
    read_png(plot_image_grid(images, misclassified_titles(5), tmp_path / "g.png", columns=4),
             min_width=300, min_height=100)


def test_image_grid_without_images(tmp_path: Path) -> None:
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    read_png(plot_image_grid(empty, [], tmp_path / "none.png", title="misclassified"),
             min_width=100, min_height=50)


def test_image_grid_needs_a_title_per_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="titles"):
        plot_image_grid(np.zeros((3, 28, 28), dtype=np.uint8), ["a"], tmp_path / "g.png")


# --- plot_accuracy_bars -------------------------------------------------------------

def test_accuracy_bars_with_baseline(tmp_path: Path) -> None:
    path = plot_accuracy_bars(["lr=0.1", "lr=0.3", "lr=0.9 (d2l)", "lr=2.0"],
                              [0.71, 0.80, 0.785, 0.55], [0.01, 0.004, 0.006, float("nan")],
                              tmp_path / "sweep.png", title="lr sweep", baseline=0.785)
    read_png(path, min_width=500, min_height=150)


def test_accuracy_bars_height_grows_with_bars(tmp_path: Path) -> None:
    few = read_png(plot_accuracy_bars(["a", "b"], [0.8, 0.9], [0.01, 0.01], tmp_path / "2.png"),
                   min_height=100)
    labels = [f"config {i}" for i in range(12)]
    many = read_png(plot_accuracy_bars(labels, [0.8] * 12, [0.01] * 12, tmp_path / "12.png"))
    assert many.shape[0] > 2 * few.shape[0]


def test_accuracy_bars_need_matching_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        plot_accuracy_bars(["a", "b"], [0.8], [0.01, 0.02], tmp_path / "bars.png")
