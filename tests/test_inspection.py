"""Feature maps and kernels: any architecture, class aliases, user pictures, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lenet.cli import main
from lenet.model.network import ModelConfig
from lenet.use.inspection import feature_maps, pick_test_examples, plot_activations, plot_filters
from lenet.model.network import LeNet
from lenet.data.datasets import Normalizer

PNG = b"\x89PNG\r\n\x1a\n"
NORMALIZE = Normalizer("unit", 0.0, 1.0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def random_images(n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def shapes(act):
    return [(layer.name, layer.maps.shape) for layer in act.layers]


def test_lenet5_maps_before_and_after_pooling():
    torch.manual_seed(0)
    acts = feature_maps(LeNet(ModelConfig()), random_images(), NORMALIZE, labels=[3, 4])
    assert len(acts) == 2 and acts[1].label == 4
    assert shapes(acts[0]) == [("act1", (6, 28, 28)), ("pool1", (6, 14, 14)),
                               ("act2", (16, 10, 10)), ("pool2", (16, 5, 5))]
    assert acts[0].probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert "before pooling" in acts[0].layers[0].description


def test_a_non_lenet_architecture_three_gelu_blocks_without_pooling(tmp_path):
    cfg = ModelConfig(conv_channels=[4, 8, 12], kernel_size=3, padding=1, pool="none", activation="gelu",
                      batch_norm=True, dense=[32])
    acts = feature_maps(LeNet(cfg), random_images(1), NORMALIZE)
    assert shapes(acts[0]) == [("act1", (4, 28, 28)), ("act2", (8, 28, 28)), ("act3", (12, 28, 28))]
    assert acts[0].layers[2].description == "block 3, after gelu (no pooling)"
    path = plot_activations(acts[0], [str(i) for i in range(10)], tmp_path / "a.png", title="three blocks")
    assert path.read_bytes()[:8] == PNG
    kernels = plot_filters(LeNet(cfg), tmp_path / "k.png")
    assert kernels.stat().st_size > 5000


def test_first_examples_of_each_class_in_the_order_asked():
    labels = np.array([4, 2, 4, 2, 2, 4, 1])
    assert pick_test_examples(labels, [2, 4], 2) == [1, 3, 0, 2]
    assert pick_test_examples(labels, [1], 5) == [6]


@pytest.fixture
def tiny_run(capsys, tiny_data_dir) -> Path:
    code, _, _ = run(capsys, "train", "--preset", "d2l", "--data-dir", tiny_data_dir, "--epochs", "1",
                     "--batch-size", "64", "--device", "cpu", "--name", "r")
    assert code == 0
    return Path("runs/r")


@pytest.mark.slow
def test_activations_cli_accepts_aliases_indices_and_pictures(capsys, tiny_run, tiny_data_dir, tmp_path):
    code, _, _ = run(capsys, "activations", tiny_run, "--classes", "sweater", "4")
    assert code == 0
    written = sorted(p.name for p in (tiny_run / "activations").glob("*.png"))
    assert sorted(name.split("-", 2)[2] for name in written) == ["coat.png", "pullover.png"]

    picture = np.full((60, 40), 250, np.uint8)
    picture[10:50, 8:32] = 30  # a dark garment on a white page: framed like the dataset by lenet.use.predict
    Image.fromarray(picture).save(tmp_path / "mine.png")
    code, _, _ = run(capsys, "activations", tiny_run, "--index", "7", "--out", "idx")
    assert code == 0 and len(list(Path("idx").glob("test-00007-*.png"))) == 1
    code, _, _ = run(capsys, "activations", tiny_run, "--image", tmp_path / "mine.png", "--out", "own")
    assert code == 0 and Path("own/image-mine.png").read_bytes()[:8] == PNG

    code, _, err = run(capsys, "activations", tiny_run, "--classes", "cardigan")
    assert code == 2 and "unknown class 'cardigan'" in err and "sweater" in err
    code, _, err = run(capsys, "activations", tiny_run, "--index", "99999")
    assert code == 2 and "out of range" in err


def test_filters_cli(capsys, tiny_run):
    code, _, _ = run(capsys, "filters", tiny_run)
    assert code == 0 and (tiny_run / "filters.png").read_bytes()[:8] == PNG
