"""reading.py on the real Fashion-MNIST, rewritten by the test as a Kaggle-style CSV and as
a PNG folder: each trains to the test accuracy of `--dataset fashion-mnist`, same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lenet
from lenet.data.datasets import load_dataset

RECIPE = dict(preset="speedrun-fashion-mnist", epochs=4, device="cpu")
NUMBERS = [str(v).encode() for v in range(256)]


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    header = b"label," + b",".join(b"pixel%d" % i for i in range(1, images[0].size + 1))
    with open(path, "wb") as out:
        out.write(header + b"\n")
        for picture, label in zip(images.reshape(len(images), -1), labels):
            out.write(NUMBERS[label] + b"," + b",".join([NUMBERS[v] for v in picture.tolist()]) + b"\n")


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> None:
    folders = [root / name.replace("/", "-") for name in names]
    for folder in folders:
        folder.mkdir(parents=True)
    for i, (picture, label) in enumerate(zip(images, labels)):
        Image.fromarray(picture).save(folders[label] / f"{i:05d}.png", compress_level=1)


@pytest.mark.slow
def test_fashion_mnist_as_csv_and_as_png_folder_trains_as_the_idx_files(real_data_dir, tmp_path):
    data = load_dataset("fashion-mnist", real_data_dir)
    splits = {name: (s.images[:, 0].numpy(), s.labels.numpy()) for name, s in (("train", data.train),
                                                                              ("test", data.test))}
    (tmp_path / "csv").mkdir()
    for name, (images, labels) in splits.items():
        write_csv(tmp_path / "csv" / f"fashion-mnist_{name}.csv", images, labels)
        write_pngs(tmp_path / "png" / name, images, labels, data.class_names)
    reference = lenet.train(lenet.config(data_dir=str(real_data_dir), **RECIPE)).test_accuracy
    as_csv = lenet.train(lenet.config(**RECIPE), data=tmp_path / "csv")
    as_png = lenet.train(lenet.config(**RECIPE), data=tmp_path / "png")
    assert as_csv.config.data.classes == [str(c) for c in range(10)]
    assert as_png.class_names[0] == "Ankle boot"  # folder names, sorted
    assert abs(as_csv.test_accuracy - reference) <= 0.005, (as_csv.test_accuracy, reference)
    assert abs(as_png.test_accuracy - reference) <= 0.005, (as_png.test_accuracy, reference)
