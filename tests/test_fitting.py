"""configuration/fitting.py and datasets.load_data: a run on your own data takes its input
shape and classes from the data, records what prediction needs, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import StoppedAfterEpoch2, stop_after_epoch_2
from PIL import Image

import lenet
from lenet.cli import main
from lenet.data.datasets import data_spec, load_data
from lenet.errors import DataError

CLASSES = 4


def pictures(n: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, side, side, 3) uint8 RGB pictures whose class is a bright band in one colour."""
    labels = np.arange(n) % CLASSES
    rng.shuffle(labels)
    images = (rng.random((n, side, side, 3)) * 60).astype(np.uint8)
    band = side // CLASSES
    for c in range(CLASSES):
        images[labels == c, c * band:(c + 1) * band, :, c % 3] += 150
    return images, labels


@pytest.fixture
def rgb_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = pictures(400, 16, rng), pictures(100, 16, rng)
    path = tmp_path / "bands.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def quick(**options) -> lenet.RunConfig:
    settings = {"epochs": 3, "batch_size": 32, "device": "cpu", **options}
    return lenet.config("d2l", set={"model.activation": "relu", "optim.lr": 0.1, **settings.pop("set", {})},
                        **settings)


def test_a_3_channel_run_takes_its_shape_and_classes_from_the_data_and_records_them(rgb_npz, tmp_path):
    run = lenet.train(quick(set={"data.normalize": "standard"}), out=tmp_path / "runs", data=rgb_npz)
    cfg = run.config
    assert (cfg.model.in_channels, cfg.model.input_size, cfg.model.num_classes) == (3, 16, CLASSES)
    assert cfg.data.path == str(rgb_npz.resolve()) and cfg.data.classes == ["0", "1", "2", "3"]
    images = np.load(rgb_npz)["x_train"]
    assert cfg.data.mean == pytest.approx(images.mean() / 255, abs=1e-5)
    assert cfg.data.std == pytest.approx(images.std() / 255, abs=1e-5)
    assert run.test_accuracy > 0.9
    # What prediction needs comes from the saved config alone, without the data.
    saved = lenet.load(run.run_dir)
    spec = data_spec(saved.config)
    assert (spec.channels, spec.size, spec.class_names, spec.framing) == (3, 16, ("0", "1", "2", "3"), "resize")
    assert lenet.evaluate(run.run_dir).accuracy == pytest.approx(run.test_accuracy)


def test_a_run_on_a_path_resumes_exactly_after_a_kill(rgb_npz, tmp_path):
    whole = lenet.train(quick(name="whole"), out=tmp_path / "runs", data=rgb_npz)
    with pytest.raises(StoppedAfterEpoch2):
        lenet.train(quick(name="part"), out=tmp_path / "runs", data=rgb_npz, on_epoch=stop_after_epoch_2)
    resumed = lenet.resume(tmp_path / "runs" / "part")  # finds the data again by the recorded path
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_config_that_disagrees_with_the_data_is_refused_naming_both(rgb_npz):
    with pytest.raises(DataError, match=r"model.in_channels=1 but the data .* has 3 channels"):
        lenet.train(quick(set={"model.in_channels": 1}), data=rgb_npz)
    with pytest.raises(DataError, match=r"model.input_size=28 .* 16 pixels a side.*--image-size 28"):
        lenet.train(quick(set={"model.input_size": 28}), data=rgb_npz)


def test_a_trained_config_given_other_data_as_a_dataset_is_refused_naming_both(rgb_npz):
    from dataclasses import replace

    from lenet.configuration.fitting import fit_to_data

    cfg = quick(set={"data.path": str(rgb_npz)})
    data = load_data(cfg)
    trained = fit_to_data(cfg, data)  # records the classes "0".."3" and the 3 x 16 x 16 input
    assert fit_to_data(trained, data) == trained
    renamed = replace(data, spec=replace(data.spec, class_names=("a", "b", "c", "d")))
    with pytest.raises(DataError, match=r"now has the classes \['a', 'b', 'c', 'd'\] but this run trained on "
                                        r"\['0', '1', '2', '3'\]; the data changed since the run started"):
        fit_to_data(trained, renamed)


def test_image_size_and_channels_convert_any_data_even_the_catalogues(tiny_data_dir):
    cfg = quick(data_dir=str(tiny_data_dir), image_size=32, channels=3)
    data = load_data(cfg)
    assert tuple(data.train.images.shape[1:]) == (3, 32, 32) and data.spec.name == "fashion-mnist"
    run = lenet.train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}))
    assert (run.config.model.in_channels, run.config.model.input_size) == (3, 32)
    assert run.class_names[0] == "T-shirt/top"


def _png_folder(root: Path, rng: np.random.Generator, val: bool) -> None:
    for split, n in (("train", 120), ("test", 40)) + ((("val", 40),) if val else ()):
        images, labels = pictures(n, 12, rng)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / ["red", "green", "blue", "yellow"][label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")


def test_a_folder_with_its_own_validation_set_uses_it(tmp_path):
    _png_folder(tmp_path / "pics", np.random.default_rng(1), val=True)
    run = lenet.train(quick(epochs=1), data=tmp_path / "pics")
    assert run.history[-1]["val_accuracy"] is not None
    assert run.class_names == ("blue", "green", "red", "yellow")  # the folders' names, sorted
    with pytest.raises(DataError, match="its own validation set .*val_split"):
        lenet.train(quick(epochs=1, val_split=0.1), data=tmp_path / "pics")


def test_cli_trains_on_data_and_evaluates_with_its_class_names(tmp_path, capsys, monkeypatch):
    _png_folder(tmp_path / "pics", np.random.default_rng(2), val=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "pics", "--epochs", "2", "--batch-size", "32", "--lr", "0.1",
                 "--set", "model.activation=relu", "--name", "mine", "--device", "cpu"]) == 0
    assert main(["eval", "runs/mine"]) == 0
    out = capsys.readouterr().out
    assert "pics" in out and "yellow" in out


def test_a_relative_data_path_is_recorded_absolute_so_eval_works_from_elsewhere(rgb_npz, tmp_path, monkeypatch):
    monkeypatch.chdir(rgb_npz.parent)
    run = lenet.train(quick(epochs=1, set={"data.path": rgb_npz.name}), out=tmp_path / "runs")  # as --data bands.npz
    assert run.config.data.path == str(rgb_npz.resolve())
    monkeypatch.chdir(tmp_path / "runs")
    assert lenet.evaluate(run.run_dir).accuracy == pytest.approx(run.test_accuracy)


def test_pictures_too_small_for_the_network_say_image_size(tmp_path):
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = pictures(40, 8, rng), pictures(8, 8, rng)
    np.savez(tmp_path / "small.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    with pytest.raises(DataError, match=r"pictures of 8 x 8, too small for model lenet5 .*--image-size 28"):
        lenet.train(quick(epochs=1), data=tmp_path / "small.npz")  # was "use a smaller kernel, more padding..."
